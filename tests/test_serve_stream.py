"""Streams of completions and chat completions over real HTTP: every event is one of the typed chunks
of serve/protocol.py (nothing more, nothing less), each choice ends with its finish chunk or an error
event, the stream ends with [DONE]; a choice that fails, a timeout and a client that goes away end the
stream as before and free the engine's rows."""

import json
import time

import httpx
import pytest

from serving import GENERATION, METHODS, SENTIMENT, LiveServer, make_prompt
from softprompt.engine import Engine, GenerationHandle
from softprompt.errors import DataError
from softprompt.serve import PromptRegistry, ServeSettings, create_app
from softprompt.serve import protocol as p
from tiny import tiny_base


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory):
    base = tiny_base("llama")
    return base, make_prompt(base, tmp_path_factory.mktemp("stream") / "gen.safetensors", METHODS["prompt_tuning"],
                             GENERATION)


def _server(prompt_file, **settings) -> LiveServer:
    base, path = prompt_file
    registry = PromptRegistry(base, Engine(base))
    registry.add_file("gen", path)
    registry.add_base()
    server = LiveServer(create_app(registry, ServeSettings(**settings)))
    server.registry = registry
    return server


def _events(url: str, route: str, body: dict, keep=None) -> list[str]:
    """The data of each server-sent event (keep: stop reading after that many)."""
    events = []
    with httpx.Client(timeout=60) as client, client.stream("POST", url + route, json={**body, "stream": True}) as stream:
        assert stream.status_code == 200 and stream.headers["content-type"].startswith("text/event-stream")
        for line in stream.iter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
                if keep is not None and len(events) >= keep:
                    break
    return events


def _typed(event: str, model):
    """The event as the typed chunk, checked to carry exactly the chunk's fields (pydantic alone would
    ignore extra keys)."""
    chunk = model.model_validate_json(event)
    assert json.loads(chunk.model_dump_json()) == json.loads(event), event
    return chunk


def _choices(chunks, n: int) -> dict[int, tuple[str, list]]:
    """Per choice index: its text and the finish reasons its chunks carried (exactly one, last)."""
    texts, finishes = {}, {}
    for chunk in chunks:
        (choice,) = chunk.choices
        assert choice.index not in finishes or finishes[choice.index] == [None], "text after the choice ended"
        piece = choice.text if hasattr(choice, "text") else (choice.delta.content or "")
        texts[choice.index] = texts.get(choice.index, "") + piece
        if choice.finish_reason is not None:
            finishes.setdefault(choice.index, []).append(choice.finish_reason)
    assert sorted(finishes) == list(range(n)) and all(len(f) == 1 for f in finishes.values())
    return {i: (texts[i], finishes[i]) for i in range(n)}


def test_every_stream_event_is_a_typed_chunk_and_each_choice_ends_once(prompt_file):
    with _server(prompt_file, max_tokens=16) as server:
        body = {"model": "gen", "prompt": ["a warm film", "dull"], "n": 2, "max_tokens": 5, "temperature": 0}
        events = _events(server.url, "/v1/completions", body)
        assert events[-1] == "[DONE]"
        chunks = [_typed(e, p.CompletionChunk) for e in events[:-1]]
        assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("cmpl-")
        whole = httpx.post(server.url + "/v1/completions", json=body, timeout=60).json()["choices"]
        streamed = _choices(chunks, 4)
        assert [streamed[i][0] for i in range(4)] == [c["text"] for c in whole]
        assert [streamed[i][1][0] for i in range(4)] == [c["finish_reason"] for c in whole]

        chat = {"model": "tiny-llama", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4,
                "temperature": 0}
        events = _events(server.url, "/v1/chat/completions", chat)
        assert events[-1] == "[DONE]"
        chunks = [_typed(e, p.ChatCompletionChunk) for e in events[:-1]]
        first, last = json.loads(events[0]), json.loads(events[-2])
        assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}  # OpenAI's opening chunk
        assert last["choices"][0]["delta"] == {} and last["choices"][0]["finish_reason"] == "length"
        reply = httpx.post(server.url + "/v1/chat/completions", json=chat, timeout=60).json()["choices"][0]
        assert _choices(chunks, 1)[0][0] == reply["message"]["content"]


def test_usage_and_logprobs_come_in_typed_chunks_as_openai_sends_them(prompt_file, tmp_path):
    base, path = prompt_file
    registry = PromptRegistry(base, Engine(base))
    registry.add_file("gen", path)
    registry.add_file("sent", make_prompt(base, tmp_path / "sent.safetensors", METHODS["prompt_tuning"], SENTIMENT))
    with LiveServer(create_app(registry, ServeSettings(max_tokens=16))) as server:
        usage = {"stream_options": {"include_usage": True}}
        body = {"model": "gen", "prompt": "a warm film", "n": 2, "max_tokens": 4, "temperature": 0, "logprobs": 2}
        events = _events(server.url, "/v1/completions", {**body, **usage})
        chunks = [_typed(e, p.CompletionChunk) for e in events[:-1]]
        assert events[-1] == "[DONE]" and chunks[-1].choices == [] and all(c.usage is None for c in chunks[:-1])
        whole = httpx.post(server.url + "/v1/completions", json=body, timeout=60).json()
        assert chunks[-1].usage.model_dump() == whole["usage"]
        ends = {c.choices[0].index: c.choices[0] for c in chunks[:-1] if c.choices[0].finish_reason}
        for i, choice in enumerate(whole["choices"]):  # the same, to float noise of another batch shape
            streamed = ends[i].logprobs
            assert (streamed.tokens, streamed.text_offset) == (choice["logprobs"]["tokens"],
                                                               choice["logprobs"]["text_offset"])
            assert streamed.token_logprobs == pytest.approx(choice["logprobs"]["token_logprobs"], abs=1e-5)
            assert [list(t) for t in streamed.top_logprobs] == [list(t) for t in choice["logprobs"]["top_logprobs"]]

        chat = {"model": "sent", "messages": [{"role": "user", "content": "a warm film"}], "logprobs": True}
        events = _events(server.url, "/v1/chat/completions", {**chat, **usage})
        label, end, last = [_typed(e, p.ChatCompletionChunk) for e in events[:-1]]  # the label, its end, the usage
        reply = httpx.post(server.url + "/v1/chat/completions", json=chat, timeout=60).json()["choices"][0]
        assert label.choices[0].delta.content == reply["message"]["content"] and label.choices[0].finish_reason is None
        assert label.choices[0].logprobs.model_dump() == reply["logprobs"]
        assert end.choices[0].finish_reason == "stop" and end.choices[0].delta.content is None
        assert last.choices == [] and last.usage.prompt_tokens > 0 and events[-1] == "[DONE]"


@pytest.mark.parametrize("error, event", [
    (DataError("choice 1 cannot be decoded"), {"message": "choice 1 cannot be decoded", "type": "invalid_request_error"}),
    (RuntimeError("device lost"), {"message": "internal error: RuntimeError", "type": "server_error"}),
])
def test_a_choice_that_fails_mid_stream_is_an_error_event_and_the_others_finish(prompt_file, monkeypatch, error, event):
    server = _server(prompt_file, max_tokens=16)
    engine = server.registry.engine
    real = engine.submit_generate

    def failing_second_choice(entry, row, params=None, *, stream=False, on_delta=None, choice=0):
        if choice != 1:
            return real(entry, row, params, stream=stream, on_delta=on_delta, choice=choice)
        handle = GenerationHandle(stream)
        handle.future.set_exception(error)
        return handle

    monkeypatch.setattr(engine, "submit_generate", failing_second_choice)
    with server:
        body = {"model": "gen", "prompt": "a warm film", "n": 2, "max_tokens": 4, "temperature": 0}
        events = _events(server.url, "/v1/completions", body)
        assert events[-1] == "[DONE]"
        errors = [json.loads(e) for e in events[:-1] if '"error"' in e]
        assert errors == [{"error": event}]
        p.ErrorResponse.model_validate(errors[0])
        chunks = [_typed(e, p.CompletionChunk) for e in events[:-1] if '"error"' not in e]
        assert {c.choices[0].index for c in chunks} == {0}
        assert [c.choices[0].finish_reason for c in chunks][-1] == "length"
        # the same failure without streaming: the whole request fails, 400 for a user error, else 500
        whole = httpx.post(server.url + "/v1/completions", json={**body, "stream": False}, timeout=60)
        assert whole.status_code == (400 if isinstance(error, DataError) else 500)
        assert whole.json()["error"]["type"] == event["type"]
        _until_idle(engine)  # the failed request's other choice was cancelled with it


def _until_idle(engine, seconds: float = 2.5) -> None:
    deadline = time.monotonic() + seconds
    while engine.running() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert engine.running() == 0


def test_a_stream_past_the_timeout_ends_with_a_timeout_event_and_frees_its_rows(prompt_file):
    with _server(prompt_file, max_tokens=64, timeout=1.0) as server:
        engine = server.registry.engine
        remove = engine.add_hook("pass", lambda *a: time.sleep(0.1))  # 64 steps take over 6 s
        try:
            body = {"model": "gen", "prompt": "a warm film", "max_tokens": 64, "temperature": 0}
            started = time.monotonic()
            events = _events(server.url, "/v1/completions", body)
            assert time.monotonic() - started < 5
            assert json.loads(events[-1]) == {"error": {"message": "timed out after 1 s", "type": "timeout"}}
            assert all(_typed(e, p.CompletionChunk).choices[0].finish_reason is None for e in events[:-1])
            _until_idle(engine)
        finally:
            remove()


def test_a_client_that_leaves_a_chat_stream_frees_its_rows_and_the_next_stream_finishes(prompt_file):
    with _server(prompt_file, max_tokens=64) as server:
        engine = server.registry.engine
        remove = engine.add_hook("pass", lambda *a: time.sleep(0.05))
        chat = {"model": "gen", "messages": [{"role": "user", "content": "a warm film"}], "max_tokens": 64,
                "temperature": 0}
        try:
            events = _events(server.url, "/v1/chat/completions", chat, keep=2)  # the opening chunk and one more
            assert [_typed(e, p.ChatCompletionChunk).choices[0].finish_reason for e in events] == [None, None]
            _until_idle(engine)
        finally:
            remove()
        events = _events(server.url, "/v1/chat/completions", {**chat, "max_tokens": 3})
        assert events[-1] == "[DONE]" and _typed(events[-2], p.ChatCompletionChunk).choices[0].finish_reason
