"""softprompt serve over real HTTP on loopback: the official openai client, OpenAI-shaped errors,
concurrency, the queue limit, admin hot-loading, disconnects, metrics, and the command itself."""

import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest

from serving import GENERATION, METHODS, SENTIMENT, TOPIC, LiveServer, make_prompt
from softprompt.engine import Engine, SamplingParams
from softprompt.serve import PromptRegistry, ServeSettings, create_app
from softprompt.serve.registry import prediction
from softprompt.tasks.readers import Example
from tiny import save_tiny, tiny_base

TOKEN = "s3cret-admin"


@pytest.fixture(scope="module")
def prompt_files(tmp_path_factory):
    """Prompts of five methods on one tiny Llama: classification (2 and 3 labels) and generation."""
    folder = tmp_path_factory.mktemp("prompts")
    base = tiny_base("llama")
    specs = {
        "sent-pt": ("prompt_tuning", SENTIMENT), "sent-p1": ("ptuning", SENTIMENT),
        "sent-prefix": ("prefix_tuning", SENTIMENT), "sent-v2": ("ptuning_v2", SENTIMENT),
        "sent-hard": ("hard_prompt", SENTIMENT), "topic-pt": ("prompt_tuning", TOPIC),
        "gen-pt": ("prompt_tuning", GENERATION), "gen-prefix": ("prefix_tuning", GENERATION),
        "gen-v2": ("ptuning_v2", GENERATION),
    }
    files = {name: make_prompt(base, folder / f"{name}.safetensors", METHODS[m], task, seed=i)
             for i, (name, (m, task)) in enumerate(specs.items())}
    other = tiny_base("llama", seed=1)  # another base model: its prompts must be refused
    files["other-base"] = make_prompt(other, folder / "other.safetensors", METHODS["prompt_tuning"], SENTIMENT)
    corrupt = folder / "corrupt.safetensors"
    corrupt.write_bytes(b"not a safetensors file at all")
    files["corrupt"] = corrupt
    return base, files


def _registry(base, files, names, **engine_options):
    registry = PromptRegistry(base, Engine(base, **engine_options))
    for name in names:
        registry.add_file(name, files[name])
    registry.add_base()
    return registry


SERVED = ["sent-pt", "sent-p1", "sent-prefix", "sent-v2", "sent-hard", "topic-pt", "gen-pt", "gen-prefix", "gen-v2"]


@pytest.fixture(scope="module")
def live(prompt_files):
    base, files = prompt_files
    registry = _registry(base, files, SERVED)
    with LiveServer(create_app(registry, ServeSettings(admin_token=TOKEN, max_tokens=64))) as server:
        server.registry = registry
        server.files = files
        yield server


def _alone(registry, name, text, params=None):
    """What the engine answers for one request alone (nothing else in flight)."""
    served = registry.get(name)
    if "/v1/classify" in served.task.routes:
        item = served.task.prepare(Example(text))
        return prediction(served, registry.engine.submit_score(served.entry, item).result()).probabilities
    return registry.engine.submit_generate(served.entry, served.task.prompt_row(text), params).result().text


def test_the_openai_client_gets_completions_chat_completions_and_streams(live):
    import openai

    client = openai.OpenAI(base_url=f"{live.url}/v1", api_key="unused")
    assert {m.id for m in client.models.list().data} >= set(SERVED) | {"tiny-llama"}
    params = SamplingParams(max_new_tokens=6)
    for name in ("gen-pt", "gen-prefix", "gen-v2"):
        completion = client.completions.create(model=name, prompt="a warm film", max_tokens=6, temperature=0)
        assert completion.choices[0].text == _alone(live.registry, name, "a warm film", params)
        assert completion.usage.completion_tokens == 6 and completion.choices[0].finish_reason == "length"
        stream = client.completions.create(model=name, prompt="a warm film", max_tokens=6, temperature=0, stream=True)
        assert "".join(chunk.choices[0].text for chunk in stream) == completion.choices[0].text
    messages = [{"role": "user", "content": "what a wonderful surprise"}]
    chat = client.chat.completions.create(model="tiny-llama", messages=messages, max_tokens=5, temperature=0)
    assert chat.choices[0].message.role == "assistant" and chat.choices[0].message.content
    streamed = client.chat.completions.create(model="tiny-llama", messages=messages, max_tokens=5, temperature=0,
                                              stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == chat.choices[0].message.content
    # A task prompt takes the last user message as its input, as /v1/completions takes its prompt: the
    # chat template around it would be text the prompt never saw in training.
    turns = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "dull plot"},
             {"role": "assistant", "content": "bad"}, {"role": "user", "content": "a warm film"}]
    task_chat = client.chat.completions.create(model="gen-pt", messages=turns, max_tokens=6, temperature=0)
    assert task_chat.choices[0].message.content == _alone(live.registry, "gen-pt", "a warm film", params)
    with pytest.raises(openai.BadRequestError, match="no user message"):
        client.chat.completions.create(model="gen-pt", messages=[{"role": "system", "content": "hi"}], max_tokens=2)
    sampled = [client.completions.create(model="gen-pt", prompt="great", max_tokens=8, temperature=1.0, seed=7, n=2)
               for _ in range(2)]
    assert [c.text for c in sampled[0].choices] == [c.text for c in sampled[1].choices]  # same seed, same text
    assert len(sampled[0].choices) == 2
    stopped = client.completions.create(model="gen-pt", prompt="a warm film", max_tokens=6, temperature=0,
                                        stop=[completion.choices[0].text.split()[1]])
    assert stopped.choices[0].finish_reason == "stop"


def test_errors_have_openai_shape_and_the_right_status(live):
    url = live.url
    cases = [
        (dict(json={"model": "nope", "prompt": "x"}), "/v1/completions", 404, "model"),
        (dict(json={"model": "gen-pt", "input": "x"}), "/v1/classify", 400, "model"),
        (dict(json={"model": "gen-pt"}), "/v1/completions", 422, "prompt"),
        (dict(json={"model": "gen-pt", "prompt": "x", "temperature": 9}), "/v1/completions", 422, "temperature"),
        (dict(content=b"{not json", headers={"content-type": "application/json"}), "/v1/completions", 400, None),
        (dict(json={"model": "gen-pt", "prompt": "great " * 60}), "/v1/completions", 400, "prompt"),  # too long
        (dict(json={"model": "gen-pt", "prompt": "x", "max_tokens": 10_000}), "/v1/completions", 400, "max_tokens"),
        (dict(json={"model": "gen-pt", "prompt": "x", "echo": True}), "/v1/completions", 400, "echo"),
        (dict(json={"model": "gen-pt", "prompt": "x", "temprature": 0}), "/v1/completions", 400, "temprature"),
        (dict(json={"model": "sent-pt", "messages": [{"role": "user", "content": "x"}], "tools": [
            {"type": "function", "function": {"name": "f"}}]}), "/v1/chat/completions", 400, "tools"),
        (dict(json={"model": "sent-pt", "prompt": " "}), "/v1/completions", 400, "prompt"),
        (dict(json={"model": "sent-pt", "input": ["fine", "  "]}), "/v1/classify", 400, "input"),
        (dict(json={"model": "sent-pt", "input": "x"}), "/v1/tag", 400, "model"),
    ]
    for kwargs, route, status, param in cases:
        response = httpx.post(url + route, timeout=30, **kwargs)
        assert response.status_code == status, (route, kwargs, response.text)
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"]
        assert error["param"] == param, (route, error)
    too_long = httpx.post(url + "/v1/completions", json={"model": "gen-pt", "prompt": "great " * 60}, timeout=30)
    assert "32" in too_long.json()["error"]["message"]  # names the limit


def test_two_hundred_concurrent_requests_get_their_answers_alone(live):
    registry = live.registry
    texts = ["a warm and funny film", "boring , slow and far too long", "the plot is dull", "great cast",
             "what a wonderful surprise this movie was"]
    requests = []
    for i in range(200):
        name = SERVED[i % len(SERVED)]
        requests.append((name, texts[(i // len(SERVED)) % len(texts)]))
    params = SamplingParams(max_new_tokens=8)
    expected = {(n, t): _alone(registry, n, t, params) for n, t in set(requests)}
    passes = []
    remove = registry.engine.add_hook("pass", lambda kind, rows, tokens: passes.append((kind, rows)))

    def call(name, text):
        with httpx.Client(timeout=120) as client:
            if "/v1/classify" in registry.get(name).task.routes:
                body = client.post(f"{live.url}/v1/classify", json={"model": name, "input": text}).json()
                return body["data"][0]["probabilities"]
            body = client.post(f"{live.url}/v1/completions",
                               json={"model": name, "prompt": text, "max_tokens": 8, "temperature": 0}).json()
            return body["choices"][0]["text"]

    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=64) as pool:
            answers = list(pool.map(lambda r: call(*r), requests))
    finally:
        remove()
    for (name, text), answer in zip(requests, answers):
        want = expected[(name, text)]
        if isinstance(want, dict):
            assert answer.keys() == want.keys()
            assert all(abs(answer[k] - want[k]) < 1e-5 for k in want), (name, text)
        else:
            assert answer == want, (name, text)
    assert max(rows for kind, rows in passes if kind == "prefill") > 1  # requests shared passes
    assert max(rows for kind, rows in passes if kind == "decode") > 1


def test_a_full_queue_answers_429_with_retry_after(prompt_files):
    base, files = prompt_files
    registry = _registry(base, files, ["sent-pt", "gen-pt"], max_queue=2)
    gate = threading.Event()
    with LiveServer(create_app(registry, ServeSettings())) as server:
        remove = registry.engine.add_hook("pass", lambda *a: gate.wait(30))  # hold the worker: requests pile up
        body = {"model": "gen-pt", "prompt": "great", "max_tokens": 2, "temperature": 0}
        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
            futures = [pool.submit(httpx.post, f"{server.url}/v1/completions", json=body, timeout=60) for _ in range(8)]
            time.sleep(1.5)
            gate.set()
            statuses = [f.result().status_code for f in futures]
        refused = [f.result() for f in futures if f.result().status_code == 429]
        assert refused and set(statuses) <= {200, 429}
        assert refused[0].headers["retry-after"] == "1"
        assert refused[0].json()["error"]["type"] == "rate_limit_error"
        remove()
        assert httpx.post(f"{server.url}/v1/completions", json=body, timeout=60).status_code == 200


def test_admin_routes_need_the_token_and_a_bad_file_leaves_serving_untouched(live):
    url, files = live.url, live.files
    auth = {"authorization": f"Bearer {TOKEN}"}
    load = {"name": "late", "path": str(files["sent-pt"])}
    assert httpx.post(f"{url}/admin/prompts", json=load, timeout=30).status_code == 401
    assert httpx.post(f"{url}/admin/prompts", json=load, headers={"authorization": "Bearer wrong"},
                      timeout=30).status_code == 401
    before = httpx.post(f"{url}/v1/classify", json={"model": "sent-v2", "input": "great"}, timeout=30).json()
    for bad in ("other-base", "corrupt"):
        response = httpx.post(f"{url}/admin/prompts", json={"name": "sent-v2", "path": str(files[bad])},
                              headers=auth, timeout=30)
        assert response.status_code == 400 and response.json()["error"]["message"]
    after = httpx.post(f"{url}/v1/classify", json={"model": "sent-v2", "input": "great"}, timeout=30).json()
    assert after == before  # the refused files replaced nothing
    loaded = httpx.post(f"{url}/admin/prompts", json=load, headers=auth, timeout=30)
    assert loaded.status_code == 200 and loaded.json()["method"] == "prompt_tuning"
    assert httpx.post(f"{url}/v1/classify", json={"model": "late", "input": "great"}, timeout=30).status_code == 200
    assert httpx.delete(f"{url}/admin/prompts/late", timeout=30).status_code == 401
    assert httpx.delete(f"{url}/admin/prompts/late", headers=auth, timeout=30).status_code == 200
    assert httpx.post(f"{url}/v1/classify", json={"model": "late", "input": "great"}, timeout=30).status_code == 404


def test_admin_routes_are_off_without_a_token(prompt_files):
    base, files = prompt_files
    registry = _registry(base, files, ["sent-pt"])
    with LiveServer(create_app(registry, ServeSettings(admin_token=None))) as server:
        response = httpx.post(f"{server.url}/admin/prompts", json={"name": "x", "path": str(files["sent-pt"])},
                              headers={"authorization": "Bearer anything"}, timeout=30)
        assert response.status_code == 404 and "off" in response.json()["error"]["message"]


def test_hot_loading_keeps_in_flight_requests_and_a_disconnect_frees_the_rows(live):
    url, registry = live.url, live.registry
    auth = {"authorization": f"Bearer {TOKEN}"}
    body = {"model": "gen-prefix", "prompt": "a warm film", "max_tokens": 64, "temperature": 0, "stream": True}
    expected = _alone(registry, "gen-prefix", "a warm film", SamplingParams(max_new_tokens=64))
    with httpx.Client(timeout=60) as client, client.stream("POST", f"{url}/v1/completions", json=body) as stream:
        lines = stream.iter_lines()
        first = next(line for line in lines if line.startswith("data: "))
        # replace the prompt under the same name while it streams: this request keeps the old one
        replaced = httpx.post(f"{url}/admin/prompts", json={"name": "gen-prefix", "path": str(live.files["gen-v2"])},
                              headers=auth, timeout=30)
        assert replaced.status_code == 200
        text = json.loads(first[6:])["choices"][0]["text"]
        for line in lines:
            if line.startswith("data: ") and line != "data: [DONE]":
                text += json.loads(line[6:])["choices"][0]["text"]
    assert text == expected
    httpx.post(f"{url}/admin/prompts", json={"name": "gen-prefix", "path": str(live.files["gen-prefix"])},
               headers=auth, timeout=30)
    remove = registry.engine.add_hook("pass", lambda *a: time.sleep(0.05))  # 64 steps now take over 3 s
    try:
        with httpx.Client(timeout=60) as client:
            with client.stream("POST", f"{url}/v1/completions",
                               json={**body, "max_tokens": 64, "model": "gen-pt"}) as stream:
                first = next(line for line in stream.iter_lines() if line.startswith("data: "))
                # its rows are decoding (64 steps of over 0.05 s each); read until seen: one run in about
                # fifteen on a loaded machine read 0 once right after the first event (not explained yet)
                seen = time.monotonic() + 1
                while registry.engine.running() < 1 and time.monotonic() < seen:
                    time.sleep(0.01)
                assert registry.engine.running() >= 1, first
                closed = time.monotonic()
            # the client closed the stream after one event: its rows leave the engine
        while registry.engine.running() and time.monotonic() < closed + 20:
            time.sleep(0.02)
        assert registry.engine.running() == 0 and time.monotonic() - closed < 2.5
    finally:
        remove()


def test_health_metrics_and_prompt_list(live):
    url = live.url
    httpx.post(f"{url}/v1/classify", json={"model": "topic-pt", "input": ["great", "awful"]}, timeout=30)
    httpx.post(f"{url}/v1/classify", json={"model": "no-such-prompt", "input": "great"}, timeout=30)  # an error
    httpx.post(f"{url}/v1/completions", json={"model": "gen-pt", "prompt": "great", "max_tokens": 2}, timeout=30)
    health = httpx.get(f"{url}/health", timeout=30).json()
    assert health["status"] == "ok" and health["prompts"] >= len(SERVED)
    listed = httpx.get(f"{url}/v1/prompts", timeout=30).json()
    methods = {p["name"]: p for p in listed["data"]}
    assert methods["sent-prefix"]["method"] == "prefix_tuning" and methods["topic-pt"]["labels"] == ["great", "awful", "fine"]
    assert methods["sent-pt"]["bytes"] > 0 and methods["sent-pt"]["metrics"] == {"accuracy": 0.5}
    text = httpx.get(f"{url}/metrics", timeout=30).text
    for name in ("softprompt_requests_total{", "softprompt_request_errors_total{", "softprompt_queue_depth",
                 "softprompt_batch_rows_bucket", "softprompt_batch_tokens_bucket", "softprompt_queue_seconds_bucket",
                 "softprompt_request_seconds_bucket", "softprompt_generated_tokens_total", "softprompt_running_rows"):
        assert name in text, name
    assert 'prompt="topic-pt",route="/v1/classify",status="200"' in text
    assert 'softprompt_request_errors_total{prompt="none",route="/v1/classify",status="404"}' in text


def test_tag_and_classify_with_a_head_on_an_encoder(tmp_path):
    from softprompt.api import build_task, method_config
    from softprompt.configs import to_dict
    from softprompt.core import PromptArtifact
    from softprompt.tasks.runner import TaskPrompt, export_unit

    base = tiny_base("bert")
    method_cls, config = method_config({"name": "ptuning_v2", "prefix_length": 2, "init": "random"})
    labels = ["O", "B-PER", "I-PER"]
    task = build_task({"kind": "token_labelling"}, base, labels, 0)
    unit = TaskPrompt("t", method_cls.initialise(config, base), task).eval()
    meta = {"method": "ptuning_v2", "method_config": to_dict(config),
            "task": {**to_dict(task.config), "kind": "token_labelling", "labels": labels},
            "base_model": {"name": base.name, "hidden_size": base.info.hidden_size, **base.fingerprint_meta()}}
    path = PromptArtifact(export_unit(unit), meta).save(tmp_path / "ner.safetensors")
    classes = make_prompt(base, tmp_path / "cls.safetensors", METHODS["ptuning_v2"],
                          {"kind": "classification", "labels": ["a", "b"]})
    registry = PromptRegistry(base, Engine(base))
    registry.add_file("ner", path)
    registry.add_file("cls", classes)
    with LiveServer(create_app(registry)) as server:
        tagged = httpx.post(f"{server.url}/v1/tag", json={"model": "ner", "input": ["the quick fox", "a dog"]},
                            timeout=30).json()
        assert [d["tokens"] for d in tagged["data"]] == [["the", "quick", "fox"], ["a", "dog"]]
        assert all(set(d["tags"]) <= set(labels) and len(d["tags"]) == len(d["tokens"]) for d in tagged["data"])
        classified = httpx.post(f"{server.url}/v1/classify", json={"model": "cls", "input": {"text": "a warm film"}},
                                timeout=30).json()
        assert abs(sum(classified["data"][0]["probabilities"].values()) - 1) < 1e-5
        # a head on an encoder answers the completion routes too; token labelling keeps to /v1/tag
        chat = httpx.post(f"{server.url}/v1/chat/completions", timeout=30, json={
            "model": "cls", "messages": [{"role": "user", "content": "a warm film"}], "logprobs": True}).json()
        assert chat["choices"][0]["message"]["content"] == classified["data"][0]["label"]
        assert {t["token"] for t in chat["choices"][0]["logprobs"]["content"][0]["top_logprobs"]} == {"a", "b"}
        refused = httpx.post(f"{server.url}/v1/completions", json={"model": "ner", "prompt": "the fox"}, timeout=30)
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "model"
        assert "/v1/tag" in refused.json()["error"]["message"]


def test_the_serve_command_answers_curl_style_requests_and_drains_on_sigterm(prompt_files, tmp_path):
    """`softprompt serve` as a user runs it: a local model directory and a prompt file; SIGTERM lets the
    request in flight finish before the process exits."""
    base, files = prompt_files
    model_dir = save_tiny("llama", tmp_path / "tiny-llama")
    prompt = make_prompt(tiny_base("llama"), tmp_path / "gen.safetensors", METHODS["prefix_tuning"], GENERATION)
    with __import__("socket").socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "SOFTPROMPT_ADMIN_TOKEN": TOKEN, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "softprompt.cli", "serve", "--model", model_dir, "--prompt",
                             f"answers={prompt}", "--port", str(port), "--log-level", "warning"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.2)
        body = {"model": "answers", "prompt": "great", "max_tokens": 100, "temperature": 0, "stream": True}
        with httpx.Client(timeout=60) as client, client.stream("POST", f"{url}/v1/completions", json=body) as stream:
            lines = stream.iter_lines()
            events = [next(line for line in lines if line.startswith("data: "))]  # in flight for sure
            proc.send_signal(signal.SIGTERM)
            events += [line for line in lines if line.startswith("data: ")]
        assert events[-1] == "data: [DONE]" and len(events) > 2  # it finished after the signal
        # uvicorn drains, then re-raises the signal so the parent sees why it stopped
        assert proc.wait(timeout=60) in (0, -signal.SIGTERM)
        log = proc.stderr.read()
        assert '"path": "/v1/completions", "status": 200' in log  # structured access log
        (line,) = [json.loads(x) for x in log.splitlines() if '"path": "/v1/completions"' in x]
        # the stream's first byte came before its last (which waited through the drain)
        assert line["prompt"] == "answers" and line["total_ms"] > line["ms"] > 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_missing_prompt_file_is_one_error_line_and_exit_code_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "softprompt.cli", "serve", "--model", "x", "--prompt",
                           f"a={tmp_path / 'none.safetensors'}"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and "none.safetensors" in lines[-1]
    assert len([line for line in lines if line.startswith("error")]) == 1
