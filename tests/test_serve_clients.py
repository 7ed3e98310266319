"""softprompt serve as the clients people already run see it, over real HTTP on loopback: the official
`openai` client and LangChain's `ChatOpenAI`, each against classification prompts (one calibrated,
one with more labels than OpenAI's caps of 5 and 20 top log-probabilities), a generation prompt and
the base model. A classification prompt answers its /v1/classify label as the text, and its label
log-probabilities are the logs of /v1/classify's probabilities (to 1e-5)."""

import math

import httpx
import pytest

from serving import GENERATION, METHODS, SENTIMENT, TOPIC, LiveServer, make_prompt
from softprompt.engine import Engine, SamplingParams
from softprompt.serve import PromptRegistry, ServeSettings, create_app
from tiny import tiny_base

WORDS = ["warm", "funny", "film", "great", "cast", "plot", "dull", "terrible", "wonderful", "surprise", "movie",
         "boring", "slow", "long", "bad", "fine", "positive", "negative", "neutral", "good", "awful", "quick"]
MANY = {"kind": "classification", "template": "review : {text} sentiment : {mask}",
        "verbalizer": {f"label-{w}": w for w in WORDS}}  # 22 labels: past both of OpenAI's caps
CLASSIFIERS = ["sent", "topic-cal", "many"]
TEXTS = ["a warm and funny film", "boring , slow and far too long"]
BASE = "tiny-llama"


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clients")
    base = tiny_base("llama")
    specs = {"sent": ("prompt_tuning", SENTIMENT), "topic-cal": ("prefix_tuning", {**TOPIC, "calibrate": True}),
             "many": ("ptuning_v2", MANY), "gen": ("prompt_tuning", GENERATION)}
    registry = PromptRegistry(base, Engine(base))
    for i, (name, (method, task)) in enumerate(specs.items()):
        registry.add_file(name, make_prompt(base, folder / f"{name}.safetensors", METHODS[method], task, seed=i))
    registry.add_base()
    with LiveServer(create_app(registry, ServeSettings(max_tokens=64))) as server:
        server.registry = registry
        yield server


@pytest.fixture(scope="module")
def classified(live):
    """/v1/classify's answer for each classifier and text: (label, probabilities)."""
    answers = {}
    for name in CLASSIFIERS:
        response = httpx.post(f"{live.url}/v1/classify", json={"model": name, "input": TEXTS}, timeout=60)
        assert response.status_code == 200, response.text
        for text, item in zip(TEXTS, response.json()["data"]):
            answers[name, text] = (item["label"], item["probabilities"])
    assert len(answers[("many", TEXTS[0])][1]) == 22
    return answers


def _match(logprobs: dict[str, float], probabilities: dict[str, float]) -> None:
    """Every label's log-probability is the log of its /v1/classify probability."""
    assert set(logprobs) == set(probabilities)
    for label, probability in probabilities.items():
        assert math.exp(logprobs[label]) == pytest.approx(probability, abs=1e-5), label


def _alone(live, name, text, max_tokens, logprobs=None):
    served = live.registry.get(name)
    params = SamplingParams(max_new_tokens=max_tokens, logprobs=logprobs)
    return live.registry.engine.submit_generate(served.entry, served.task.prompt_row(text), params).result()


def test_the_openai_client_gets_a_classification_prompts_label_and_every_labels_logprob(live, classified):
    import openai

    client = openai.OpenAI(base_url=f"{live.url}/v1", api_key="unused")
    for name in CLASSIFIERS:
        for text in TEXTS:
            label, probabilities = classified[name, text]
            completion = client.completions.create(model=name, prompt=text, logprobs=1)
            choice = completion.choices[0]
            assert (choice.text, choice.finish_reason) == (label, "stop")
            assert choice.logprobs.tokens == [label] and choice.logprobs.text_offset == [0]
            assert math.exp(choice.logprobs.token_logprobs[0]) == pytest.approx(probabilities[label], abs=1e-5)
            _match(choice.logprobs.top_logprobs[0], probabilities)  # every label, though 1 was asked
            messages = [{"role": "system", "content": "classify"},
                        {"role": "user", "content": [{"type": "text", "text": text}]}]  # content as text parts
            chat = client.chat.completions.create(model=name, messages=messages, logprobs=True, top_logprobs=2,
                                                  n=2, metadata={"run": "test"}, store=False, user="ann",
                                                  response_format={"type": "text"})
            assert [c.message.content for c in chat.choices] == [label, label]
            assert chat.choices[0].finish_reason == "stop"
            (token,) = chat.choices[0].logprobs.content
            assert token.token == label and bytes(token.bytes) == label.encode()
            _match({t.token: t.logprob for t in token.top_logprobs}, probabilities)
    # streamed: one chunk with the label (and its log-probabilities), then the end, then the usage
    label, probabilities = classified["many", TEXTS[1]]
    chunks = list(client.chat.completions.create(
        model="many", messages=[{"role": "user", "content": TEXTS[1]}], stream=True, logprobs=True,
        stream_options={"include_usage": True}))
    assert [c.choices[0].delta.content for c in chunks[:2]] == [label, None]
    assert chunks[1].choices[0].finish_reason == "stop"
    _match({t.token: t.logprob for t in chunks[0].choices[0].logprobs.content[0].top_logprobs}, probabilities)
    assert chunks[2].choices == [] and chunks[2].usage.prompt_tokens > 0 and len(chunks) == 3
    chunks = list(client.completions.create(model="many", prompt=TEXTS[1], stream=True, logprobs=0,
                                            stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks[:-1]) == label and chunks[-1].usage.total_tokens > 0
    _match(chunks[0].choices[0].logprobs.top_logprobs[0], probabilities)


def test_the_openai_client_gets_real_token_logprobs_from_a_generation_prompt_and_the_base_model(live):
    import openai

    client = openai.OpenAI(base_url=f"{live.url}/v1", api_key="unused")
    alone = _alone(live, "gen", TEXTS[0], 6, logprobs=3)
    completion = client.completions.create(model="gen", prompt=TEXTS[0], max_tokens=6, temperature=0, logprobs=3)
    choice = completion.choices[0]
    assert choice.text == alone.text
    assert "".join(choice.logprobs.tokens) == choice.text  # the tokens' texts make the answer's
    assert choice.logprobs.token_logprobs == pytest.approx([lp for lp, _ in alone.logprobs], abs=1e-5)
    offsets = [sum(len(t) for t in choice.logprobs.tokens[:i]) for i in range(len(choice.logprobs.tokens))]
    assert choice.logprobs.text_offset == offsets
    for chosen, top in zip(choice.logprobs.token_logprobs, choice.logprobs.top_logprobs):
        assert 1 <= len(top) <= 4 and max(top.values()) == pytest.approx(chosen, abs=1e-6)  # greedy: the top token
    for model in ("gen", BASE):
        messages = [{"role": "user", "content": [{"type": "text", "text": "what a "}, {"type": "text", "text": "film"}]}]
        chat = client.chat.completions.create(model=model, messages=messages, max_tokens=5, temperature=0,
                                              logprobs=True, top_logprobs=2)
        content = chat.choices[0].logprobs.content
        assert "".join(t.token for t in content) == chat.choices[0].message.content
        assert all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in content)
        assert all(t.top_logprobs[0].logprob == pytest.approx(t.logprob, abs=1e-6) for t in content)
        chunks = list(client.chat.completions.create(model=model, messages=messages, max_tokens=5, temperature=0,
                                                     stream=True, stream_options={"include_usage": True}))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == chat.choices[0].message.content
        assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == chat.usage.completion_tokens
        assert all(c.usage is None for c in chunks[:-1])


def test_langchain_chat_openai_invokes_streams_and_counts_usage(live, classified, missing_tool):
    try:
        from langchain_openai import ChatOpenAI
    except ImportError:
        missing_tool("langchain-openai", "pip install langchain-openai")
    url = f"{live.url}/v1"
    for name in CLASSIFIERS:
        label, probabilities = classified[name, TEXTS[0]]
        llm = ChatOpenAI(model=name, base_url=url, api_key="unused", stream_usage=True, logprobs=True)
        message = llm.invoke(TEXTS[0])
        assert message.content == label and message.response_metadata["finish_reason"] == "stop"
        (token,) = message.response_metadata["logprobs"]["content"]
        _match({t["token"]: t["logprob"] for t in token["top_logprobs"]}, probabilities)
        chunks = list(llm.stream(TEXTS[0]))
        assert "".join(c.content for c in chunks) == label
        total = sum(chunks[1:], chunks[0])
        assert total.usage_metadata["input_tokens"] > 0 and total.usage_metadata["output_tokens"] == 0
    for name in ("gen", BASE):
        llm = ChatOpenAI(model=name, base_url=url, api_key="unused", temperature=0, max_tokens=6, stream_usage=True)
        message = llm.invoke([("system", "be brief"), ("human", TEXTS[0])])
        if name == "gen":  # a trained prompt takes the last user message as its input
            assert message.content == _alone(live, "gen", TEXTS[0], 6).text
        assert message.usage_metadata["output_tokens"] == message.response_metadata["token_usage"]["completion_tokens"]
        chunks = list(llm.stream([("system", "be brief"), ("human", TEXTS[0])]))
        total = sum(chunks[1:], chunks[0])
        assert total.content == message.content
        assert total.usage_metadata["output_tokens"] == message.usage_metadata["output_tokens"] > 0
