"""Every non-2xx answer of the server is OpenAI's error object, for what schemathesis does not send:
bodies that are not UTF-8, JSON nested thousands deep, forms and text, wrong methods, unknown routes;
and an input over a prompt's task.max_length is refused (400 context_length_exceeded), never cut."""

import httpx
import pytest

from serving import GENERATION, METHODS, SENTIMENT, LiveServer, make_prompt
from softprompt.api import build_task
from softprompt.engine import Engine
from softprompt.serve import PromptRegistry, ServeSettings, create_app
from softprompt.tasks.conll import TokenExample
from softprompt.tasks.generation import InputTooLong
from softprompt.tasks.readers import Example
from tiny import tiny_base

TOKEN = "errors-admin"
AUTH = {"authorization": f"Bearer {TOKEN}"}
LIMIT = 32  # the classification prompt's task.max_length
POSTS = ["/v1/classify", "/v1/tag", "/v1/completions", "/v1/chat/completions", "/admin/prompts"]


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    folder = tmp_path_factory.mktemp("errors")
    base = tiny_base("llama")
    registry = PromptRegistry(base, Engine(base, max_queue=64))
    registry.add_file("sentiment", make_prompt(base, folder / "s.safetensors", METHODS["prompt_tuning"],
                                               {**SENTIMENT, "max_length": LIMIT}))
    registry.add_file("answers", make_prompt(base, folder / "g.safetensors", METHODS["prefix_tuning"], GENERATION))
    registry.add_base()
    with LiveServer(create_app(registry, ServeSettings(max_tokens=8, timeout=30, admin_token=TOKEN))) as server:
        server.registry = registry
        yield server


def openai_error(response, status: int, code: str | None = None) -> dict:
    """The error object of a response that must be exactly OpenAI's shape with this status."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert list(body) == ["error"] and set(body["error"]) == {"message", "type", "param", "code"}, body
    error = body["error"]
    assert isinstance(error["message"], str) and error["message"] and isinstance(error["type"], str)
    if code is not None:
        assert error["code"] == code, error
    return error


def post(live, route: str, content: bytes, content_type: str | None = "application/json") -> httpx.Response:
    headers = {**AUTH, **({"content-type": content_type} if content_type is not None else {})}
    return httpx.post(f"{live.url}{route}", content=content, headers=headers, timeout=30)


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("route", POSTS)
def test_a_body_that_is_not_utf8_is_a_400_in_openai_shape(live, route):
    body = b'{"model": "sentiment", "input": "caf\xe9 \xff\xfe", "prompt": "\xc3\x28"}'
    error = openai_error(post(live, route, body), 400, "invalid_json")
    assert "UTF-8" in error["message"] and "\\x" not in error["message"]  # says why, quotes nothing


@pytest.mark.parametrize("route", POSTS)
@pytest.mark.parametrize("where", ["body", "field"])
def test_json_nested_5000_deep_is_a_400_in_openai_shape(live, route, where):
    deep = nested(5000)
    body = deep if where == "body" else '{"model": "sentiment", "input": %s, "prompt": %s, "messages": %s}' % (
        deep, deep, deep)
    error = openai_error(post(live, route, body.encode()), 400, "invalid_json")
    assert "nested too deeply" in error["message"]


@pytest.mark.parametrize("route", POSTS)
def test_json_nested_just_under_the_readers_limit_is_refused_without_a_server_error(live, route):
    """Deep enough to parse, then refused by validation (a 4xx, never a RecursionError's 500)."""
    deep = nested(800)
    for body in (deep, '{"model": "sentiment", "input": %s}' % deep, '{"model": "answers", "prompt": %s}' % deep,
                 '{"model": "answers", "messages": [{"role": "user", "content": %s}]}' % deep,
                 '{"model": "answers", "prompt": "x", "stop": %s}' % deep):
        response = post(live, route, body.encode())
        assert 400 <= response.status_code < 500
        openai_error(response, response.status_code)


@pytest.mark.parametrize("route", POSTS)
@pytest.mark.parametrize("content_type", ["application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                                          "text/plain", None])
def test_a_body_that_is_not_sent_as_json_is_a_400_in_openai_shape(live, route, content_type):
    body = b"model=sentiment&input=great" if content_type != "text/plain" else b'{"model": "sentiment", "input": "x"}'
    error = openai_error(post(live, route, body, content_type), 400, "invalid_content_type")
    assert "Content-Type: application/json" in error["message"]


def test_a_real_form_post_is_a_400_in_openai_shape(live):
    response = httpx.post(f"{live.url}/v1/classify", data={"model": "sentiment", "input": "great"}, timeout=30)
    error = openai_error(response, 400, "invalid_content_type")  # status, shape and code checked inside
    assert error["type"] == "invalid_request_error" and "JSON" in error["message"]


@pytest.mark.parametrize("method, route, allowed", [
    ("GET", "/v1/classify", "POST"), ("PUT", "/v1/completions", "POST"), ("DELETE", "/v1/chat/completions", "POST"),
    ("POST", "/v1/models", "GET"), ("POST", "/health", "GET"), ("PATCH", "/admin/prompts/sentiment", "DELETE"),
])
def test_a_method_a_route_does_not_take_is_a_405_naming_the_allowed_ones(live, method, route, allowed):
    response = httpx.request(method, f"{live.url}{route}", headers=AUTH, timeout=30)
    error = openai_error(response, 405, "method_not_allowed")
    assert allowed in response.headers["allow"] and method in error["message"] and allowed in error["message"]


@pytest.mark.parametrize("method, route", [("GET", "/v1/nope"), ("POST", "/v2/completions"), ("GET", "/admin"),
                                           ("DELETE", "/v1/models/x")])
def test_an_unknown_route_is_a_404_in_openai_shape(live, method, route):
    error = openai_error(httpx.request(method, f"{live.url}{route}", timeout=30), 404, "unknown_route")
    assert route in error["message"]


def test_validation_errors_keep_their_422_in_openai_shape(live):
    response = httpx.post(f"{live.url}/v1/classify", json={"model": "sentiment", "input": 5}, timeout=30)
    assert openai_error(response, 422)["param"].startswith("input")


def test_an_unknown_field_is_a_400_naming_it(live):
    response = httpx.post(f"{live.url}/v1/classify", json={"model": "sentiment", "input": "x", "nope": 1}, timeout=30)
    assert openai_error(response, 400, "unknown_field")["param"] == "nope"


# ------------------------------------------------------------------ over-length inputs

def test_a_classification_input_over_max_length_is_refused_with_the_count_and_limit(live):
    url = f"{live.url}/v1/classify"
    fits = httpx.post(url, json={"model": "sentiment", "input": "a warm film"}, timeout=30)
    assert fits.status_code == 200
    long = "a warm and wonderful film " * 20
    error = openai_error(httpx.post(url, json={"model": "sentiment", "input": long}, timeout=30), 400,
                         "context_length_exceeded")
    assert error["param"] == "input" and error["type"] == "invalid_request_error"
    assert f"over the {LIMIT} tokens" in error["message"] and "max_length" in error["message"]
    # one input too long in a batch refuses the request, naming which
    batch = httpx.post(url, json={"model": "sentiment", "input": ["a warm film", {"text": long}]}, timeout=30)
    assert openai_error(batch, 400, "context_length_exceeded")["message"].startswith("input[1] is ")


def _first_refused(prepare_strict, make, lengths):
    """The first length whose example prepare_strict refuses (after checking it says why)."""
    for n in lengths:
        try:
            prepare_strict(make(n))
        except InputTooLong as exc:
            assert exc.tokens > exc.limit and f"{exc.tokens} tokens" in str(exc) and f"over the {exc.limit}" in str(exc)
            return n
    return None


@pytest.mark.parametrize("family, task", [
    ("llama", {"kind": "classification", "template": "review : {text} sentiment : {mask}",
               "verbalizer": {"positive": "good", "negative": "very bad indeed"}}),
    ("llama", {"kind": "classification", "pair": True, "template": "{text} ? {text_b} : {mask}",
               "verbalizer": {"yes": "yes", "no": "no"}}),
    ("bert", {"kind": "classification", "labels": ["a", "b"]}),  # a linear head
    ("bert", {"kind": "classification", "template": "{text} it was {mask}",  # a masked LM's verbalizer
              "verbalizer": {"good": "good", "bad": "very bad"}}),
])
def test_prepare_strict_refuses_exactly_the_inputs_training_would_shorten(family, task):
    """Serving refuses an input where and only where prepare (training's path) would cut it: the
    rows of a task with room to spare differ from prepare's."""
    base = tiny_base(family)
    labels = task.get("labels") or list(task["verbalizer"])
    strict = build_task({**task, "max_length": 24}, base, labels, 2)
    roomy = build_task({**task, "max_length": 4096}, base, labels, 2)
    pair = task.get("pair", False)

    def make(n):
        return Example("word " * n, "other " * n if pair else None)

    refused = _first_refused(strict.prepare_strict, make, range(1, 40))
    assert refused is not None and refused > 1
    for n in (refused - 1, refused):
        cut = strict.prepare(make(n)).rows != roomy.prepare(make(n)).rows
        assert cut == (n == refused)
    assert strict.prepare_strict(make(refused - 1)).rows == strict.prepare(make(refused - 1)).rows


def test_a_token_labelling_input_over_max_length_is_refused_where_prepare_would_cut():
    base = tiny_base("bert")
    labels = ["O", "B-PER", "I-PER"]
    strict = build_task({"kind": "token_labelling", "max_length": 16}, base, labels, 2)
    roomy = build_task({"kind": "token_labelling", "max_length": 4096}, base, labels, 2)

    def make(n):
        return TokenExample(tuple(["wonderful"] * n), None, "input[0]")

    refused = _first_refused(strict.prepare_strict, make, range(1, 20))
    assert refused is not None and refused > 1
    assert strict.prepare(make(refused)).rows != roomy.prepare(make(refused)).rows
    assert strict.prepare(make(refused - 1)).rows == roomy.prepare(make(refused - 1)).rows
    with pytest.raises(InputTooLong, match=r"^input\[0\] is \d+ tokens .* over the 16 tokens"):
        strict.prepare_strict(make(refused))


def test_a_recursion_error_past_the_json_reader_is_a_400_not_a_500():
    """A reader deeper in than the JSON parser (a validator, a template) hitting the recursion limit on
    a nested input is the input's fault: 400 in OpenAI's shape, not an internal error."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from softprompt.serve.errors import add_handlers

    app = FastAPI()
    add_handlers(app)

    @app.post("/nested")
    async def nested_route():
        def down(n):
            return down(n + 1)
        return down(0)

    error = openai_error(TestClient(app, raise_server_exceptions=False).post("/nested"), 400, "invalid_json")
    assert "nested too deeply" in error["message"]
