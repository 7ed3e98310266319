"""`softprompt serve --replicas 2` on Ray Serve, over loopback: the replicas answer what one process
answers, an admin load reaches every replica (Ray's reconfigure) and the prompt set file, metrics
and answers name the replica; marked slow: a replica killed with kill -9 mid-load costs only the
requests it held and comes back with the same prompts, and a restart of the whole application
comes back with the admin's prompt set. One Ray for the module (it starts in about 20-40 s here)."""

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from serving import METHODS, SENTIMENT, TOPIC, LiveServer, make_prompt
from softprompt.serve import ServeSettings, build_registry, create_app
from tiny import save_tiny, tiny_base

TOKEN = "ray-admin-token"
HEADER = "x-softprompt-replica"
# eight prompts of three methods, two tasks (2 and 3 labels)
SPECS = {
    "s-pt": ("prompt_tuning", SENTIMENT), "s-prefix": ("prefix_tuning", SENTIMENT), "s-v2": ("ptuning_v2", SENTIMENT),
    "t-pt": ("prompt_tuning", TOPIC), "t-prefix": ("prefix_tuning", TOPIC), "t-v2": ("ptuning_v2", TOPIC),
    "s-pt2": ("prompt_tuning", SENTIMENT), "t-v2b": ("ptuning_v2", TOPIC),
}
LATE = "late-v2"  # hot-loaded through the admin route
TEXTS = ["a warm and funny film", "the plot is dull and the acting is terrible", "what a wonderful surprise",
         "boring , slow and far too long", "it was great . it was bad"]


@pytest.fixture(scope="module")
def ray_serve(missing_tool):
    try:
        import ray.serve  # noqa: F401
    except ImportError:
        missing_tool("Ray Serve", "pip install 'softprompt[ray]' (make test installs it with the dev extra)")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny Llama saved as a model directory, and prompt files on it in one prompt directory."""
    root = tmp_path_factory.mktemp("ray")
    model = save_tiny("llama", root / "model")
    base = tiny_base("llama")
    folder = root / "prompts"
    folder.mkdir()
    paths = {name: make_prompt(base, folder / f"{name}.safetensors", METHODS[m], task, seed=i)
             for i, (name, (m, task)) in enumerate({**SPECS, LATE: ("ptuning_v2", TOPIC)}.items())}
    return model, folder, paths


@pytest.fixture(scope="module")
def reference(files):
    """What one process (the one-process server over the same files) answers for every prompt and text."""
    model, _, paths = files
    registry = build_registry(model=model, prompts=list(paths.items()), serve_base=False, log=lambda *_: None)
    answers = {}
    with LiveServer(create_app(registry, ServeSettings())) as server:
        for name in paths:
            reply = httpx.post(f"{server.url}/v1/classify", json={"model": name, "input": TEXTS}, timeout=60)
            answers[name] = {TEXTS[d["index"]]: (d["label"], d["probabilities"]) for d in reply.json()["data"]}
    registry.engine.close()
    return answers


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Replicated:
    """`softprompt serve --replicas 2` in a subprocess (its own local Ray), its log in a file."""

    def __init__(self, files, log_path: Path):
        model, folder, paths = files
        self.folder = folder
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = [sys.executable, "-m", "softprompt.cli", "serve", "--model", model, "--prompt-dir", str(folder),
                        "--replicas", "2", "--replica-threads", "1", "--port", str(self.port), "--no-base",
                        *[arg for name in SPECS for arg in ("--prompt", f"{name}={paths[name]}")]]
        self.log_path = log_path
        self.proc = None

    def start(self) -> "Replicated":
        env = {**os.environ, "SOFTPROMPT_ADMIN_TOKEN": TOKEN, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
               "RAY_USAGE_STATS_ENABLED": "0"}
        self.log = open(self.log_path, "a")
        offset = self.log.tell()  # a restart appends to the same log
        self.proc = subprocess.Popen(self.command, env=env, stdout=self.log, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 300
        while "serving " not in self.log_path.read_text()[offset:]:  # printed once every replica is up
            assert self.proc.poll() is None, self.log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, "the replicas did not start in 300 s"
            time.sleep(0.5)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # stops Serve and the Ray it started
            try:
                self.proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        self.log.close()


@pytest.fixture(scope="module")
def cluster(ray_serve, files, tmp_path_factory):
    server = Replicated(files, tmp_path_factory.mktemp("ray-log") / "serve.log").start()
    yield server
    server.stop()
    assert server.proc.returncode == 0, server.log_path.read_text()[-3000:]


async def _classify_many(url: str, jobs: list[tuple[str, str]], concurrency: int, on_done=None) -> list:
    """(status, replica, body or error, when it was sent) per job, `concurrency` requests in flight at most."""
    gate = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        async def one(name: str, text: str):
            async with gate:
                sent = time.monotonic()
                try:
                    reply = await client.post("/v1/classify", json={"model": name, "input": text})
                    result = (reply.status_code, reply.headers.get(HEADER), reply.json(), sent)
                except (httpx.HTTPError, ValueError) as exc:  # a connection the killed replica dropped
                    result = (None, None, repr(exc), sent)
                if on_done is not None:
                    on_done(result)
                return result

        return await asyncio.gather(*[one(name, text) for name, text in jobs])


def _same_as_one_process(reference, name: str, text: str, body: dict) -> None:
    (item,) = body["data"]
    label, probabilities = reference[name][text]
    assert item["label"] == label, (name, text)
    assert item["probabilities"].keys() == probabilities.keys()
    assert all(abs(item["probabilities"][k] - p) <= 1e-5 for k, p in probabilities.items()), (name, text)


def test_two_replicas_answer_200_concurrent_requests_as_one_process_does(cluster, reference):
    jobs = [(list(SPECS)[i % len(SPECS)], TEXTS[i % len(TEXTS)]) for i in range(200)]
    results = asyncio.run(_classify_many(cluster.url, jobs, concurrency=64))
    assert [status for status, *_ in results] == [200] * len(jobs), [r for r in results if r[0] != 200][:3]
    for (name, text), (_, _, body, _) in zip(jobs, results):
        _same_as_one_process(reference, name, text, body)
    assert len({replica for _, replica, *_ in results}) == 2  # Ray spread them over both replicas


def _served_by_both(url: str, name: str, rounds: int = 8) -> dict[str, dict]:
    """A reply of each replica for `name`: rounds of 16 requests at once, since Ray's router sends
    requests one at a time to the replica it picked before (`rounds` at most)."""
    seen = {}
    for _ in range(rounds):
        for status, replica, body, _ in asyncio.run(_classify_many(url, [(name, TEXTS[0])] * 16, concurrency=16)):
            assert status == 200, body
            seen[replica] = body
        if len(seen) == 2:
            break
    return seen


def test_an_admin_load_is_served_by_every_replica_and_kept_in_the_set_file(cluster, files, reference):
    _, folder, paths = files
    admin = {"authorization": f"Bearer {TOKEN}"}
    refused = httpx.post(f"{cluster.url}/admin/prompts", headers=admin, timeout=60,
                         json={"name": "passwd", "path": "/etc/passwd"})
    assert refused.status_code == 403 and "/etc/passwd" in refused.json()["error"]["message"]
    replicas = set(_served_by_both(cluster.url, "s-pt"))
    loaded = httpx.post(f"{cluster.url}/admin/prompts", headers=admin, timeout=120,
                        json={"name": LATE, "path": str(paths[LATE])})
    assert loaded.status_code == 200, loaded.text
    # the answer came once every replica had it: no replica answers 404 for it from now on
    seen = _served_by_both(cluster.url, LATE)
    assert set(seen) == replicas  # the same two replicas: reconfigured in place, not restarted
    for body in seen.values():
        _same_as_one_process(reference, LATE, TEXTS[0], body)
    kept = json.loads((folder / "softprompt-served.json").read_text())
    assert kept["prompts"][LATE] == {"path": str(Path(paths[LATE]).resolve())}
    assert set(kept["prompts"]) == {*SPECS, LATE}
    # each replica's metrics carry its name
    with httpx.Client(base_url=cluster.url, timeout=60) as client:
        for _ in range(4):
            reply = client.get("/metrics")
            replica = reply.headers[HEADER]
            assert f'softprompt_prompts_loaded{{replica="{replica}"}} {len(SPECS) + 1}.0' in reply.text
            assert re.search(rf'^softprompt_requests_total{{[^}}]*replica="{replica}"', reply.text, re.M)
    # an unload too: gone from every replica and from the file
    gone = httpx.delete(f"{cluster.url}/admin/prompts/s-pt2", headers=admin, timeout=120)
    assert gone.status_code == 200, gone.text
    answers = asyncio.run(_classify_many(cluster.url, [("s-pt2", TEXTS[0])] * 32, concurrency=16))
    assert {status for status, *_ in answers} == {404} and len({replica for _, replica, *_ in answers}) == 2
    assert "s-pt2" not in json.loads((folder / "softprompt-served.json").read_text())["prompts"]


def _replica_pids() -> list[int]:
    """The processes of this machine's Serve replicas of softprompt (Ray names them ray::ServeReplica:APP:DEPLOYMENT)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                title = (entry / "cmdline").read_bytes().split(b"\0")[0]
            except OSError:
                continue
            if title.startswith(b"ray::ServeReplica:softprompt:softprompt"):
                pids.append(int(entry.name))
    return pids


@pytest.mark.slow
def test_a_replica_killed_mid_load_costs_only_its_requests_and_comes_back_with_the_prompts(cluster, reference):
    names = [n for n in SPECS if n != "s-pt2"] + [LATE]  # the set after the admin test
    before = set(_served_by_both(cluster.url, LATE))
    pids = _replica_pids()
    assert len(pids) == 2, pids
    jobs = [(names[i % len(names)], TEXTS[i % len(TEXTS)]) for i in range(400)]
    state = {"done": 0, "in_flight_at_kill": None, "killed": None}
    concurrency = 16

    def on_done(result):
        state["done"] += 1
        if state["done"] == 60:  # mid-load: every slot busy
            state["in_flight_at_kill"] = min(concurrency, len(jobs) - state["done"])
            state["killed"] = time.monotonic()
            os.kill(pids[0], signal.SIGKILL)

    results = asyncio.run(_classify_many(cluster.url, jobs, concurrency=concurrency, on_done=on_done))
    failed = [r for r in results if r[0] != 200]
    late = [r for r in failed if r[3] > state["killed"]]
    print(f"kill -9 of replica pid {pids[0]}: {len(failed)} of {len(jobs)} requests failed, "
          f"{state['in_flight_at_kill']} in flight on both replicas at the kill, {len(late)} failed sent after it")
    # what the killed replica held when it died failed; nothing else did (Ray routes the rest to the other)
    assert state["in_flight_at_kill"] is not None and len(failed) <= state["in_flight_at_kill"], failed[:3]
    assert not late, late[:3]
    for (name, text), (status, _, body, _) in zip(jobs, results):
        if status == 200:
            _same_as_one_process(reference, name, text, body)
    # Ray starts a new replica in its place, with the deployment's prompt set (the admin's load included)
    deadline = time.monotonic() + 180
    while True:
        seen = _served_by_both(cluster.url, LATE, rounds=3)
        if len(seen) == 2 and set(seen) != before:
            break
        assert time.monotonic() < deadline, f"no new replica answered in 180 s ({seen.keys()} vs {before})"
        time.sleep(1)
    for body in seen.values():
        _same_as_one_process(reference, LATE, TEXTS[0], body)
    assert pids[0] not in _replica_pids() and len(_replica_pids()) == 2


@pytest.mark.slow
def test_a_restart_of_the_whole_application_comes_back_with_the_admin_prompt_set(cluster, reference):
    cluster.stop()
    assert cluster.proc.returncode == 0, cluster.log_path.read_text()[-3000:]
    cluster.start()  # the same command line: it names neither the late prompt nor the unload
    seen = _served_by_both(cluster.url, LATE)
    assert len(seen) == 2
    for body in seen.values():
        _same_as_one_process(reference, LATE, TEXTS[0], body)


def _cli(*args: str, env: dict | None = None, code: str | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", "softprompt.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})})


def _one_error_line(proc: subprocess.CompletedProcess, *words: str) -> None:
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and all(w in errors[0] for w in words), proc.stderr


def test_replicas_without_ray_installed_is_one_error_naming_the_extra(tmp_path):
    blocked = ("import sys; sys.modules['ray'] = None; sys.argv = ['softprompt', *sys.argv[1:]]; "
               "from softprompt.cli import main; main()")
    proc = _cli("serve", "--replicas", "2", "--model", "x", code=blocked)
    _one_error_line(proc, "pip install 'softprompt[ray]'")


def test_replica_options_need_replicas_and_a_missing_file_fails_before_ray_starts(ray_serve, tmp_path):
    _one_error_line(_cli("serve", "--replica-threads", "2"), "--replicas")
    proc = _cli("serve", "--replicas", "2", "--model", "x", "--prompt", f"a={tmp_path / 'none.safetensors'}")
    _one_error_line(proc, "none.safetensors")
    assert "Started a local Ray" not in proc.stderr


def test_the_application_arguments_take_a_config_file_and_the_prompt_set_file(ray_serve, files, tmp_path):
    """What a Ray worker builds the application from: a --config YAML's entries (paths relative to it made
    absolute), the prompt set file under them, and one clear error for a bad argument or set file."""
    import shutil

    from softprompt.errors import ConfigError
    from softprompt.serve.ray import resolve, write_prompt_set

    model, _, paths = files
    shutil.copy(paths["s-v2"], tmp_path / "mine.safetensors")
    (tmp_path / "serve.yaml").write_text(f"model: {model}\nprompts:\n  mine: mine.safetensors\n")
    write_prompt_set(tmp_path / "set.json", {"prompts": {"kept": {"path": str(paths["t-pt"])}}, "base": False})
    spec, prompt_set = resolve({"config": str(tmp_path / "serve.yaml"), "prompt_set": str(tmp_path / "set.json"),
                                "threads": "2"}, log=lambda *_: None)
    assert spec["model"] == model and spec["threads"] == 2 and spec["prompt_dirs"] == [str(tmp_path.resolve())]
    assert prompt_set == {"prompts": {"kept": {"path": str(paths["t-pt"])},
                                      "mine": {"path": str((tmp_path / "mine.safetensors").resolve())}},
                          "base": False}
    with pytest.raises(ConfigError, match=r"unknown argument\(s\) \['modle'\]"):
        resolve({"modle": model, "config": str(tmp_path / "serve.yaml")})
    (tmp_path / "set.json").write_text('{"prompts": {"x": {"path": 1}}}')
    with pytest.raises(ConfigError, match=r"set\.json: prompt 'x' must be"):
        resolve({"config": str(tmp_path / "serve.yaml"), "prompt_set": str(tmp_path / "set.json")})
