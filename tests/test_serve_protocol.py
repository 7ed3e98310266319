"""The wire types' own logic, without a server: what a request asks of the engine (to_sampling_params),
the status and code each user error gets (by its type, never its wording), and the task's input row
and chat input that the completion routes use."""

import pytest

from softprompt.engine import EngineBusy, EngineClosed
from softprompt.errors import ConfigError, DataError
from softprompt.serve import APIError, PromptNotFound
from softprompt.serve import protocol as p
from softprompt.serve.errors import refuse
from softprompt.tasks.generation import GenerationTask, InputTooLong
from softprompt.tasks.readers import Example
from tiny import tiny_base


def _completion(**fields):
    return p.CompletionRequest(**{"model": "m", "prompt": "x", **fields})


def test_sampling_params_follow_openai_defaults_and_names():
    params = _completion().to_sampling_params(512)
    assert (params.max_new_tokens, params.temperature, params.top_p, params.top_k, params.stop) == (16, 1.0, 1.0, 0, ())
    params = _completion(max_tokens=7, temperature=0, top_k=3, repetition_penalty=1.2, seed=5, stop="END"
                         ).to_sampling_params(512)
    assert (params.max_new_tokens, params.temperature, params.top_k, params.repetition_penalty, params.seed,
            params.stop) == (7, 0.0, 3, 1.2, 5, ("END",))
    chat = p.ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "x"}], max_tokens=9,
                                   max_completion_tokens=4)
    assert chat.to_sampling_params(512).max_new_tokens == 4  # OpenAI's newer name wins
    assert chat.model_copy(update={"max_completion_tokens": None}).to_sampling_params(512).max_new_tokens == 9


@pytest.mark.parametrize("field, value", [("presence_penalty", 0.5), ("frequency_penalty", -1.0),
                                          ("logit_bias", {"1": 2.0}), ("echo", True), ("suffix", "tail"),
                                          ("best_of", 3), ("best_of", True), ("service_tier", "flex")])
def test_fields_softprompt_does_not_implement_are_refused_naming_the_field(field, value):
    with pytest.raises(APIError) as caught:
        _completion(**{field: value})
    assert (caught.value.status, caught.value.param, caught.value.code) == (400, field, "unsupported")
    assert caught.value.message.startswith(f"{field}=")


def _chat(**fields):
    return p.ChatCompletionRequest(**{"model": "m", "messages": [{"role": "user", "content": "x"}], **fields})


@pytest.mark.parametrize("fields, param", [
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"), ({"tool_choice": "auto"}, "tool_choice"),
    ({"functions": [{"name": "f"}]}, "functions"), ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"modalities": ["text", "audio"]}, "modalities"), ({"reasoning_effort": "low"}, "reasoning_effort"),
    ({"messages": [{"role": "tool", "content": "x", "tool_call_id": "1"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {
        "url": "http://x"}}]}]}, "messages[0].content[1].type"),
])
def test_chat_fields_we_cannot_honour_are_refused_naming_the_field(fields, param):
    with pytest.raises(APIError) as caught:
        _chat(**fields)
    assert (caught.value.status, caught.value.param, caught.value.code) == (400, param, "unsupported")
    assert param in caught.value.message


@pytest.mark.parametrize("make, fields, param", [
    (_completion, {"temprature": 0.5}, "temprature"), (_chat, {"stream_options": {"usage": True}}, "stream_options.usage"),
    (_chat, {"messages": [{"role": "user", "content": "x", "mood": "calm"}]}, "messages[0].mood"),
    (_chat, {"messages": [{"role": "user", "content": [{"type": "text", "text": "x", "lang": "en"}]}]},
     "messages[0].content[0].lang"),
    (lambda **f: p.ClassifyRequest(model="m", **f), {"input": [{"text": "a", "txt_b": "b"}]}, "input[0].txt_b"),
])
def test_unknown_fields_are_refused_naming_them_where_they_are(make, fields, param):
    with pytest.raises(APIError) as caught:
        make(**fields)
    assert (caught.value.status, caught.value.param, caught.value.code) == (400, param, "unknown_field")


def test_what_real_clients_send_is_accepted():
    chat = _chat(messages=[{"role": "developer", "content": [{"type": "text", "text": "be "}, {"type": "text",
                                                                                               "text": "brief"}]},
                           {"role": "user", "content": "hi"}],
                 stream=True, stream_options={"include_usage": True}, response_format={"type": "text"},
                 metadata={"run": "7"}, store=False, user="ann", tools=None, tool_choice="none", logprobs=True,
                 top_logprobs=3, presence_penalty=0, frequency_penalty=0.0)
    assert chat.turns() == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    assert chat.include_usage and chat.to_sampling_params(512).logprobs == 3
    assert not _chat(stream_options={"include_usage": True}).include_usage  # usage chunks come with streams only
    assert _chat(logprobs=True).to_sampling_params(512).logprobs == 0 and _chat().to_sampling_params(512).logprobs is None
    with pytest.raises(APIError, match="needs logprobs") as caught:
        _chat(top_logprobs=2).to_sampling_params(512)
    assert caught.value.param == "top_logprobs"
    assert _completion(logprobs=0).to_sampling_params(512).logprobs == 0  # 0: the chosen token's alone
    assert _completion(logprobs=5).to_sampling_params(512).logprobs == 5


def test_values_that_ask_nothing_of_an_unimplemented_field_pass():
    # accepted (no APIError) and without effect: the same sampling as a request that leaves them out
    asked = _completion(presence_penalty=0.0, frequency_penalty=0, logit_bias={}, echo=False, best_of=1
                        ).to_sampling_params(512)
    assert asked == _completion().to_sampling_params(512)


@pytest.mark.parametrize("fields, param", [({"stop": ["a", "b", "c", "d", "e"]}, "stop"), ({"stop": [""]}, "stop"),
                                           ({"max_tokens": 513}, "max_tokens")])
def test_stop_strings_and_the_server_limit_are_checked(fields, param):
    with pytest.raises(APIError) as caught:
        _completion(**fields).to_sampling_params(512)
    assert caught.value.status == 400 and caught.value.param == param


def test_texts_and_turns():
    assert _completion(prompt=["a", "b"]).texts() == ["a", "b"]
    with pytest.raises(APIError, match="empty list"):
        _completion(prompt=[]).texts()
    chat = p.ChatCompletionRequest(model="m", messages=[{"role": "developer", "content": "be brief"},
                                                        {"role": "user", "content": "hi", "name": "ann"}])
    assert chat.turns() == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]


@pytest.mark.parametrize("exc, status, type_, code", [
    (EngineBusy("the queue is full"), 429, "rate_limit_error", "queue_full"),
    (EngineClosed("shutting down"), 503, "server_error", "shutting_down"),
    (PromptNotFound("no prompt named 'x'"), 404, "not_found_error", "model_not_found"),
    (InputTooLong("input of 40 tokens", 40, 32), 400, "invalid_request_error", "context_length_exceeded"),
    # the wording says "tokens", but only the type decides the code (a substring match once did)
    (DataError("template uses {eos} but the tokenizer has no such tokens"), 400, "invalid_request_error", None),
    (ConfigError("sampling: top_p must be in (0, 1]"), 400, "invalid_request_error", None),
])
def test_each_user_error_gets_its_status_and_code_by_type(exc, status, type_, code):
    error = refuse(exc, "prompt", retry_after=7)
    assert (error.status, error.type, error.code) == (status, type_, code)
    assert error.message.startswith(str(exc))
    assert error.headers == ({"Retry-After": "7"} if isinstance(exc, EngineBusy) else {})
    assert refuse(exc, where="prompt[2]").message.startswith("prompt[2]: ")


def test_the_task_gives_the_input_row_and_refuses_an_input_over_its_max_length():
    base = tiny_base("llama")
    task = GenerationTask.for_base(base)
    assert task.config.max_length == base.model.config.max_position_embeddings and task.takes_conversation
    from softprompt.api import build_task

    prompt_task = build_task({"kind": "generation", "template": "question : {text} answer : {mask}",
                              "max_length": 16}, base, [], 2)
    row = prompt_task.prompt_row("a warm film")
    assert row == prompt_task.prepare(Example("a warm film")).prefix and sum(t < 0 for t in row) == 2
    with pytest.raises(InputTooLong) as caught:
        prompt_task.prompt_row("great " * 20)  # prepare would shorten it; a caller must hear instead
    assert caught.value.limit == 16 and caught.value.tokens > 16 and "16" in str(caught.value)
    assert len(prompt_task.prepare(Example("great " * 20)).prefix) <= 16


def test_chat_input_is_the_last_user_message_for_a_prompt_and_the_conversation_for_the_base():
    base = tiny_base("llama")
    from softprompt.api import build_task

    prompt_task = build_task({"kind": "generation", "template": "{text} answer : {mask}"}, base, [], 0)
    turns = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "dull"},
             {"role": "assistant", "content": "bad"}, {"role": "user", "content": "a warm film"}]
    assert prompt_task.chat_input(turns) == "a warm film"
    with pytest.raises(DataError, match="no user message"):
        prompt_task.chat_input(turns[:1])
    base_task = GenerationTask.for_base(base)
    base_task.tokenizer.chat_template = None
    assert base_task.chat_input(turns[:2]) == "system: be brief\nuser: dull\nassistant:"
