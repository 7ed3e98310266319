"""Load test of `softprompt serve` against a baseline server on the same HTTP layer, loopback only.

Both servers run smollm2-135m with --prompts N prompts (16 by default), three quarters classification
prompts (SST-2's sentiment template, label words " negative"/" positive") and a quarter generation
prompts (E2E, "Data: {mr}\\nDescription:", 16 new tokens, greedy): 12 and 4 at N = 16, 192 and 64 at
N = 256. Prompts are untrained starts (speed does not depend on training): ours of mixed methods
(prompt tuning, P-tuning, prefix tuning, P-tuning v2, 20 tokens, and a hard prompt, in rotation), the
baseline's PEFT prompt tuning (20 tokens, one adapter per prompt) since PEFT holds one prompt method
per model.

  ours      `softprompt serve --config` (the engine batches all requests continuously); with
            --replicas K, `softprompt serve --config ... --replicas K` (Ray Serve replicas)
  baseline  FastAPI + uvicorn too, answering each request alone with PEFT: set_adapter to the
            request's prompt, one forward (classification: the label words' scores at the last
            position, logits_to_keep=1) or one generate call, under a lock; a request whose client
            has gone before its turn is skipped (ours drops a departed client's rows too)

Which prompt a request names follows --pattern, the adapter-popularity patterns of the multi-LoRA
serving papers (Punica's Distinct/Uniform/Skewed/Identical, S-LoRA's power law):

  distinct  every request a different prompt from the one before: the N prompts in a fixed rotation
            shared by all clients (classification and generation interleaved 3:1). Punica's
            "Distinct" has one adapter per request up to the batch; with N prompts loaded, distinct
            here means N distinct prompts in rotation, so a batch of more than N requests repeats some.
  uniform   each request a prompt uniformly at random among the N.
  zipf      skewed: the request's kind drawn 3:1 as in uniform, then the prompt of rank r (1-based)
            within that kind with probability proportional to 1 / r^ZIPF_ALPHA (ZIPF_ALPHA = 1.0, the
            alpha ~1 of S-LoRA's power-law workload); which prompt holds which rank is a seeded shuffle.
  same      every request of a kind names that kind's first prompt (c0 or g0): one prompt per route,
            since a classification prompt cannot answer /v1/completions on the baseline.

In every pattern the requests are three quarters classification and a quarter generation (in
expectation; distinct exactly), so the work mix is the same and only the spread over prompts changes.

The load: --clients concurrent clients (asyncio + httpx), each sending requests back to back for
--duration seconds, a request taking its prompt from the pattern (seeded) and a text from SST-2 dev
or E2E test; each server runs in its own process with the same torch thread count (--threads). For
each N the sides start once, both stay up, and each pattern runs on both in turn, the side that goes
first alternating from pattern to pattern (drift of a shared machine's load falls on both); before
each window the bench waits until the servers are back to their idle CPU use. When the
window closes, requests still waiting are cut off (the client disconnects): with many clients in a
closed loop, a request waits about clients / throughput seconds, so many are in flight at the end;
they are neither failures nor in the throughput, but their waits count, at their age then (a
request starved until the end must not vanish from the tail). Reported per pattern and side:
requests/s (answered within the window), the FIFO wait (clients / throughput: every request's wait
if served in order), per route p50, p99 and the longest wait, with the ratios p99/p50 and
longest/FIFO that the fairness target reads (p99 <= 3 x p50, longest <= 3 x FIFO), counts by status,
the CPU seconds each server's processes used in the window, and ours over the baseline (requests/s,
p50, p99). Per side: start-up seconds (loading the model and N prompts), and each server process's
cores (its CPU affinity), OMP_NUM_THREADS (torch's thread count) and OS threads. A second run of
ours with a low --max-queue shows the only failures are the 429s that limit is set to give.

    python bench/serve_load.py --out bench/results/serve_load.json
    python bench/serve_load.py --pattern all --prompts 16 --prompts 256 --clients 32 --duration 40 \\
        --threads 1 --low-queue 0 --out bench/results/serve_patterns.json
    python bench/serve_load.py --report bench/results/serve_patterns.json   # the markdown table
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import itertools
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from fastapi import Request  # noqa: E402  (module level: the baseline's route annotations resolve here)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, machine, write_result  # noqa: E402

TOKENS = 20
CUT_OFF = "cut off at the window's end"
PATTERNS = ("distinct", "uniform", "zipf", "same")
ZIPF_ALPHA = 1.0  # S-LoRA's power-law popularity, alpha ~1
CLASSIFY_SHARE = 0.75  # 12 of 16: classification prompts (and requests) : generation = 3 : 1
SENTIMENT = {"kind": "classification", "template": "Review: {text}\nSentiment: {mask}",
             "verbalizer": {"0": "negative", "1": "positive"}, "max_length": 128}
E2E = {"kind": "generation", "template": "Data: {text}\nDescription: {mask}", "max_new_tokens": 16, "max_length": 128}
ROUTES = {"c": "/v1/classify", "g": "/v1/completions"}


def split(n: int) -> tuple[int, int]:
    """(classification, generation) prompt counts of n prompts, 3:1."""
    classify = min(n - 1, max(1, round(n * CLASSIFY_SHARE)))
    return classify, n - classify


def texts() -> tuple[list[str], list[str]]:
    with (SHARED / "sentence-classification" / "stsa.binary.dev").open(encoding="utf-8") as f:
        reviews = [line.split(" ", 1)[1].strip() for line in f if line.strip()]
    with (SHARED / "e2e" / "testset_w_refs.csv").open(newline="", encoding="utf-8") as f:
        mrs = list(dict.fromkeys(row["mr"] for row in csv.DictReader(f)))
    return reviews, mrs


def write_prompts(folder: Path, n: int) -> Path:
    """n prompt files of mixed methods (c0.., g0..) and a serve config listing them."""
    from generate import our_units  # the same prompt starts as the generation bench

    from softprompt.configs import to_dict
    from softprompt.core import PromptArtifact
    from softprompt.models import load_base
    from softprompt.tasks.runner import export_unit

    base = load_base("smollm2-135m")
    folder.mkdir(parents=True, exist_ok=True)
    listing = {}
    for group, task, count in zip("cg", (SENTIMENT, E2E), split(n)):
        labels = list(task.get("verbalizer", {}))
        units = our_units(base, count, task, labels)
        for i, unit in enumerate(units.values()):
            method = unit.method.name if unit.method is not None else "hard_prompt"
            config = to_dict(unit.method.config) if unit.method is not None else {}
            meta = {"method": method, "method_config": config,
                    "task": {**to_dict(unit.task.config), "kind": unit.task.kind, "labels": labels,
                             **({"template": str(unit.task.template)} if unit.task.kind == "classification" else {})},
                    "base_model": {"name": base.name, "model_type": base.info.model_type,
                                   "hidden_size": base.info.hidden_size, "num_layers": base.info.num_layers,
                                   **base.fingerprint_meta()}}
            name = f"{group}{i}"
            PromptArtifact(export_unit(unit), meta).save(folder / f"{name}.safetensors")
            listing[name] = f"{name}.safetensors"  # a serve config's paths are relative to the config file
    config = folder / "prompts.yaml"
    config.write_text(json.dumps({"model": "smollm2-135m", "prompts": listing}))  # JSON is YAML
    return config


def baseline_app(folder: Path):
    """The baseline: the same routes, each request answered alone with PEFT, set_adapter per request."""
    import peft
    import torch
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    from softprompt.models import load_base

    base = load_base("smollm2-135m")
    tok = base.tokenizer
    model = base.model
    config = peft.PromptTuningConfig(task_type=peft.TaskType.CAUSAL_LM, num_virtual_tokens=TOKENS,
                                     prompt_tuning_init=peft.PromptTuningInit.RANDOM)
    names = list(json.loads((folder / "prompts.yaml").read_text())["prompts"])  # the prompts ours serves
    wrapped = peft.get_peft_model(model, config, adapter_name=names[0])
    for name in names[1:]:
        wrapped.add_adapter(name, config)
    wrapped.eval()
    words = [tok(" negative", add_special_tokens=False).input_ids[0], tok(" positive", add_special_tokens=False).input_ids[0]]
    lock = threading.Lock()
    app = FastAPI()
    known = set(names)

    def classify(gone: threading.Event, name: str, text: str) -> dict | None:
        ids = tok(f"Review: {text}\nSentiment:", return_tensors="pt", truncation=True, max_length=128)
        with lock, torch.inference_mode():
            if gone.is_set():  # the client left while this waited: skip it, as ours drops its rows
                return None
            wrapped.set_adapter(name)
            logits = wrapped(**ids, logits_to_keep=1).logits[0, -1]
        probs = torch.softmax(logits[words].float(), -1).tolist()
        return {"object": "list", "model": name, "data": [{"index": 0, "label": "01"[probs[1] > probs[0]],
                                                            "probabilities": {"0": probs[0], "1": probs[1]}}]}

    def complete(gone: threading.Event, name: str, text: str, max_tokens: int) -> dict | None:
        ids = tok(f"Data: {text}\nDescription:", return_tensors="pt", truncation=True, max_length=128)
        with lock, torch.inference_mode():
            if gone.is_set():
                return None
            wrapped.set_adapter(name)
            out = wrapped.generate(**ids, max_new_tokens=max_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
        new = out[0, ids.input_ids.shape[1]:]
        return {"object": "text_completion", "model": name,
                "choices": [{"index": 0, "text": tok.decode(new, skip_special_tokens=True), "finish_reason": "length"}]}

    async def answer(request: Request, work, *args):
        """work's answer, computed in a thread; a client that disconnects first is answered 499 and its
        work skipped if it has not begun (ours cancels a departed client's rows too)."""
        gone = threading.Event()
        task = asyncio.ensure_future(asyncio.to_thread(work, gone, *args))
        while True:
            done, _ = await asyncio.wait({task}, timeout=0.5)
            if done:
                return task.result()
            if await request.is_disconnected():
                gone.set()
                return JSONResponse({"error": {"message": "client closed the request", "type": "client_closed"}}, 499)

    @app.post("/v1/classify")
    async def classify_route(request: Request):
        body = await request.json()
        if body.get("model") not in known:
            return JSONResponse({"error": {"message": "unknown model", "type": "not_found_error"}}, 404)
        return await answer(request, classify, body["model"], body["input"])

    @app.post("/v1/completions")
    async def complete_route(request: Request):
        body = await request.json()
        if body.get("model") not in known:
            return JSONResponse({"error": {"message": "unknown model", "type": "not_found_error"}}, 404)
        return await answer(request, complete, body["model"], body["prompt"], int(body.get("max_tokens", 16)))

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    return app


class Popularity:
    """Which prompt each request names under one pattern: pick(rng) -> (group "c"/"g", index)."""

    def __init__(self, pattern: str, n: int, seed: int):
        self.pattern, self.counts = pattern, dict(zip("cg", split(n)))
        # distinct: one rotation shared by all clients, the kinds interleaved 3:1 (c0 c1 c2 g0 c3 ...)
        slots = [(g, i) for g, count in self.counts.items() for i in range(count)]
        self.rotation = sorted(slots, key=lambda s: ((s[1] + 0.5) / self.counts[s[0]], s[0]))
        self.turn = itertools.count()
        shuffle = random.Random(seed)  # zipf: which prompt holds which rank
        self.ranked = {g: shuffle.sample(range(count), count) for g, count in self.counts.items()}
        self.weights = {g: list(itertools.accumulate(1 / (r + 1) ** ZIPF_ALPHA for r in range(count)))
                        for g, count in self.counts.items()}

    def pick(self, rng: random.Random) -> tuple[str, int]:
        if self.pattern == "distinct":
            return self.rotation[next(self.turn) % len(self.rotation)]
        group = "c" if rng.random() < self.counts["c"] / sum(self.counts.values()) else "g"
        if self.pattern == "uniform":
            return group, rng.randrange(self.counts[group])
        if self.pattern == "zipf":
            return group, rng.choices(self.ranked[group], cum_weights=self.weights[group])[0]
        return group, 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def has_replicas() -> bool:
    """Whether this checkout's `softprompt serve` takes --replicas (the Ray Serve support)."""
    out = subprocess.run([sys.executable, "-m", "softprompt.cli", "serve", "--help"], capture_output=True, text=True,
                         env={**os.environ, "COLUMNS": "200"})
    if out.returncode != 0:
        raise SystemExit(f"`softprompt serve --help` failed:\n{out.stderr[-2000:]}")
    return "--replicas" in out.stdout


def start(kind: str, a, config: Path, max_queue: int, replicas: int | None) -> tuple[subprocess.Popen, str, float]:
    """Start one server; its process, URL and the seconds until /health answered (model and prompts loaded)."""
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "PYTHONUNBUFFERED": "1"}
    if kind == "ours":
        cmd = [sys.executable, "-m", "softprompt.cli", "serve", "--config", str(config), "--port", str(port),
               "--max-queue", str(max_queue), "--timeout", str(a.duration + 60), "--log-level", "warning",
               "--no-base", *(["--replicas", str(replicas)] if replicas else [])]
    else:
        cmd = [sys.executable, __file__, "--serve-baseline", str(config.parent), "--port", str(port)]
    log = config.parent / f"{kind}{f'-{replicas}r' if replicas else ''}-server.log"
    with log.open("w") as handle:  # the server's own messages, shown when it fails to start
        proc = subprocess.Popen(cmd, env=env, stdout=handle, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    import httpx

    began = time.monotonic()
    deadline = began + 900
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url, time.monotonic() - began
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-5:]
            raise SystemExit(f"the {kind} server exited with code {proc.returncode}:\n" + "\n".join(tail))
        time.sleep(0.5)
    stop(proc)
    raise SystemExit(f"the {kind} server did not start")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()


def process_tree(root: int) -> list[int]:
    """root and every process descended from it (a Ray Serve server's workers are its descendants)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    tree, frontier = [root], [root]
    while frontier:
        frontier = [pid for pid, parent in parents.items() if parent in frontier]
        tree += frontier
    return tree


def cpu_seconds(root: int) -> float:
    """User + system CPU seconds the live processes of root's tree have used."""
    total = 0
    for pid in process_tree(root):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            continue
    return total / os.sysconf("SC_CLK_TCK")


def idle_rate(roots: list[int], seconds: float = 3.0) -> float:
    """CPU seconds per second the servers use with nothing to do (a Ray Serve server's own processes
    tick over)."""
    used = sum(cpu_seconds(root) for root in roots)
    time.sleep(seconds)
    return (sum(cpu_seconds(root) for root in roots) - used) / seconds


def settle(roots: list[int], idle: float, limit: float = 120.0) -> float:
    """Wait until the servers are back to their idle CPU use (plus 0.1 s a second, two seconds running):
    a request cut off at the window's end may still be computing (the pass it is in finishes), and that
    work must not land in the next window. The seconds waited."""
    began = time.monotonic()
    used, quiet = sum(cpu_seconds(root) for root in roots), 0
    while time.monotonic() - began < limit and quiet < 2:
        time.sleep(1)
        now = sum(cpu_seconds(root) for root in roots)
        quiet = quiet + 1 if now - used < idle + 0.1 else 0
        used = now
    return time.monotonic() - began


def threads_of(root: int) -> list[dict]:
    """Per server process (the server, or each Ray worker and replica): its command, the cores it may
    run on (CPU affinity), OMP_NUM_THREADS in its environment (torch's thread count) and its OS threads."""
    rows = []
    for pid in process_tree(root):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            environ = dict(item.split("=", 1) for item in
                           Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace").split("\0") if "=" in item)
            status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
            rows.append({"pid": pid, "command": command[:120], "cores": len(os.sched_getaffinity(pid)),
                         "omp_num_threads": environ.get("OMP_NUM_THREADS"), "os_threads": int(status["Threads"])})
        except (OSError, KeyError, ValueError):
            continue
    return rows


async def warm_up(url: str, n: int, reviews: list[str], mrs: list[str]) -> float:
    """One request per prompt, untimed (16 at a time), so that neither server's first-use work (compiling
    a prompt, allocating caches) lands in the window; the seconds it took."""
    import httpx

    classify, generate = split(n)
    bodies = [("/v1/classify", {"model": f"c{k}", "input": reviews[k % len(reviews)]}) for k in range(classify)]
    bodies += [("/v1/completions", {"model": f"g{k}", "prompt": mrs[k % len(mrs)], "max_tokens": 2, "temperature": 0})
               for k in range(generate)]
    gate = asyncio.Semaphore(16)
    began = time.monotonic()

    async def one(http, route, body):
        async with gate:
            (await http.post(url + route, json=body, timeout=900)).raise_for_status()

    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=16)) as http:
        await asyncio.gather(*(one(http, route, body) for route, body in bodies))
    return time.monotonic() - began


async def load(url: str, a, popularity: Popularity, reviews: list[str], mrs: list[str]) -> dict:
    """--clients clients sending requests back to back for --duration seconds."""
    import httpx

    waits: dict[str, list[float]] = {}  # per route: answered requests' latency, cut-off requests' age
    answered, cut_off, statuses, named = {}, {}, {}, {}
    stop_at = time.monotonic() + a.duration
    limits = httpx.Limits(max_connections=a.clients, max_keepalive_connections=a.clients)

    async def client(k: int, http: httpx.AsyncClient):
        rng = random.Random(a.seed * 100_003 + k)
        while time.monotonic() < stop_at:
            group, index = popularity.pick(rng)
            name = f"{group}{index}"
            named[name] = named.get(name, 0) + 1
            route = ROUTES[group]
            body = ({"model": name, "input": rng.choice(reviews)} if group == "c" else
                    {"model": name, "prompt": rng.choice(mrs), "max_tokens": 16, "temperature": 0})
            started = time.monotonic()
            try:
                # A request still waiting when the window closes is cut off (the client disconnects, which
                # frees its rows on the server): its wait counts at its age, since it waited at least that.
                async with asyncio.timeout(stop_at - started):
                    response = await http.post(url + route, json=body, timeout=None)
                status = str(response.status_code)
                if response.status_code == 429:
                    await asyncio.sleep(float(response.headers.get("retry-after", 1)))
            except TimeoutError:
                status = CUT_OFF
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            if status in ("200", CUT_OFF):
                waits.setdefault(route, []).append(time.monotonic() - started)
                counts = answered if status == "200" else cut_off
                counts[route] = counts.get(route, 0) + 1
            statuses[status] = statuses.get(status, 0) + 1

    started = time.monotonic()
    async with httpx.AsyncClient(limits=limits) as http:
        await asyncio.gather(*(client(k, http) for k in range(a.clients)))
    wall = time.monotonic() - started
    result = summarise(waits, answered, cut_off, statuses, wall, a.clients)
    sent = sum(named.values())
    result["prompts_named"] = {"distinct": len(named), "top_share": max(named.values()) / sent if sent else None}
    return result


def quantile(values: list[float], q: float) -> float | None:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else None


def summarise(waits: dict[str, list[float]], answered: dict, cut_off: dict, statuses: dict, wall: float,
              clients: int) -> dict:
    """Throughput of answered requests, the FIFO wait (clients / throughput: what every request would
    wait if served in order), and per route p50, p99 and the longest wait (cut-off requests at their
    age) with p99/p50 and longest/FIFO."""
    ok = sum(answered.values())
    rate = ok / wall
    fifo = clients / rate if rate else None
    routes = {}
    for route, values in sorted(waits.items()):
        p50, p99, longest = quantile(values, 0.5), quantile(values, 0.99), max(values)
        routes[route] = {"answered": answered.get(route, 0), "waiting_at_end": cut_off.get(route, 0),
                         "p50_s": p50, "p99_s": p99, "longest_s": longest,
                         "p99_over_p50": p99 / p50 if p50 else None,
                         "longest_over_fifo": longest / fifo if fifo else None}
    everything = [w for values in waits.values() for w in values]
    failures = {k: v for k, v in statuses.items() if k not in ("200", "429", CUT_OFF)}
    return {"requests_per_s": rate, "ok": ok, "statuses": statuses, "failures": failures, "wall_s": wall,
            "fifo_wait_s": fifo, "routes": routes,
            "p50_s": quantile(everything, 0.5), "p99_s": quantile(everything, 0.99),
            "longest_s": max(everything) if everything else None,
            "longest_over_fifo": max(everything) / fifo if everything and fifo else None,
            "mean_s": statistics.mean(everything) if everything else None}


def ratios(ours: dict, baseline: dict) -> dict:
    """Ours over the baseline: requests/s (above 1: ours answers more), p50 and p99 overall and per
    route (below 1: ours waits less)."""
    def over(x, y):
        return x / y if x is not None and y else None

    return {"requests_per_s": over(ours["requests_per_s"], baseline["requests_per_s"]),
            "p50": over(ours["p50_s"], baseline["p50_s"]), "p99": over(ours["p99_s"], baseline["p99_s"]),
            "routes": {route: {"p50": over(r["p50_s"], baseline["routes"].get(route, {}).get("p50_s")),
                               "p99": over(r["p99_s"], baseline["routes"].get(route, {}).get("p99_s"))}
                       for route, r in ours["routes"].items()}}


def report(name: str, result: dict) -> None:
    """One line per route: the numbers the fairness target reads."""
    print(f"{name}: {result['requests_per_s']:.2f} requests/s, FIFO wait {result['fifo_wait_s'] or 0:.1f} s, "
          f"statuses {result['statuses']}, server CPU {result.get('server_cpu_s', 0):.0f} s", flush=True)
    for route, r in result["routes"].items():
        print(f"  {route}: {r['answered']} answered, {r['waiting_at_end']} waiting at the end; p50 {r['p50_s']:.2f} s, "
              f"p99 {r['p99_s']:.2f} s, longest {r['longest_s']:.2f} s; p99/p50 {r['p99_over_p50'] or 0:.2f}, "
              f"longest/FIFO {r['longest_over_fifo'] or 0:.2f}", flush=True)


def markdown(summary: dict) -> str:
    """Two tables of a result file, a row per prompt count and pattern: throughput (requests/s and
    answered requests per CPU second of the server, which a shared machine's other load disturbs
    less), and per route p50 / p99; each with ours over the baseline (PEFT), and ours with K replicas
    over ours with 1 where run."""
    def s(x, digits=2):
        return "-" if x is None else f"{x:.{digits}f}"

    def over(x, y):
        return x / y if x is not None and y else None

    def per_cpu(r):
        return over(r["ok"], r.get("server_cpu_s"))

    def answered(r):
        return " + ".join(str(r["routes"].get(route, {}).get("answered", 0)) for route in ROUTES.values())

    def both(ours, peft, digits=2):
        return f"{s(ours, digits)} / {s(peft, digits)} ({s(over(ours, peft))}x)"

    speed = ["| prompts | pattern | requests/s ours / PEFT (ratio) | answered per server CPU s ours / PEFT (ratio) | "
             "answered, classify + completions, ours / PEFT | cut off ours / PEFT | 1 vs 2 replicas (ours) |",
             "| ---: | --- | ---: | ---: | ---: | ---: | --- |"]
    wait = ["| prompts | pattern | classify p50, ours / PEFT (ratio) | classify p99 | completions p50 | completions p99 |",
            "| ---: | --- | ---: | ---: | ---: | ---: |"]
    for n, patterns in summary["results"].items():
        for pattern, sides in patterns.items():
            ours, peft = sides.get("ours"), sides.get("baseline")
            if not ours or not peft:
                continue
            scaled = [f"{side.split('-')[1]}: {s(r['requests_per_s'])} requests/s" for side, r in sides.items()
                      if side.endswith("-replicas")]
            speed.append(f"| {n} | {pattern} | {both(ours['requests_per_s'], peft['requests_per_s'])} | "
                         f"{both(per_cpu(ours), per_cpu(peft))} | {answered(ours)} / {answered(peft)} | "
                         f"{ours['statuses'].get(CUT_OFF, 0)} / {peft['statuses'].get(CUT_OFF, 0)} | "
                         f"{'; '.join(scaled) or 'not run'} |")
            cells = [both(ours["routes"].get(route, {}).get(q), peft["routes"].get(route, {}).get(q), 1)
                     for route in ROUTES.values() for q in ("p50_s", "p99_s")]
            wait.append(f"| {n} | {pattern} | " + " | ".join(f"{c.replace(' (', ' s (')}" for c in cells) + " |")
    return "\n".join(speed) + "\n\n" + "\n".join(wait)


def sides_of(a) -> list[tuple[str, str, int, int | None]]:
    """(name, kind, queue limit, replicas) of every server this run starts."""
    sides = [("ours", "ours", a.max_queue, None), ("baseline", "baseline", 0, None)]
    if a.low_queue:
        sides.append(("ours-low-queue", "ours", a.low_queue, None))
    sides += [(f"ours-{k}-replicas", "ours", a.max_queue, k) for k in a.replicas]
    return [side for side in sides if not a.only or side[0] == a.only]


def run_prompts(a, n: int, reviews: list[str], mrs: list[str], summary: dict) -> None:
    """Every pattern at n prompts: all sides up at once, each pattern on each side in turn, the side
    that goes first rotating from pattern to pattern."""
    began = time.monotonic()
    config = write_prompts(a.workdir / f"n{n}", n)
    summary["prompts"][str(n)] = dict(zip(("classification", "generation"), split(n)), write_s=time.monotonic() - began)
    servers, info = {}, summary["servers"].setdefault(str(n), {})
    try:
        for name, kind, queue, replicas in sides_of(a):
            proc, url, startup = start(kind, a, config, queue, replicas)
            servers[name] = proc, url
            warm = asyncio.run(warm_up(url, n, reviews, mrs))
            info[name] = {"startup_s": startup, "warm_up_s": warm, "processes": threads_of(proc.pid)}
            print(f"{name} at {n} prompts: up in {startup:.1f} s, warmed up in {warm:.1f} s", flush=True)
        pids = [proc.pid for proc, _ in servers.values()]
        idle = summary["servers"][str(n)]["idle_cpu_per_s"] = idle_rate(pids)
        for p, pattern in enumerate(a.pattern):
            names = list(servers)
            order = names[p % len(names):] + names[: p % len(names)]
            done = summary["results"].setdefault(str(n), {}).setdefault(pattern, {})
            done["order"] = order
            for name in order:
                proc, url = servers[name]
                settled = settle(pids, idle)
                print(f"{name}, {pattern}, {n} prompts: {a.clients} clients for {a.duration:g} s ...", flush=True)
                cpu = {other: cpu_seconds(o.pid) for other, (o, _) in servers.items()}
                load_before = os.getloadavg()[0]
                result = asyncio.run(load(url, a, Popularity(pattern, n, a.seed), reviews, mrs))
                used = {other: cpu_seconds(o.pid) - cpu[other] for other, (o, _) in servers.items()}
                result.update(server_cpu_s=used.pop(name), idle_servers_cpu_s=used, settled_before_s=settled,
                              load_average_1min={"before": load_before, "after": os.getloadavg()[0]})
                done[name] = result
                report(name, result)
            if "baseline" in done:
                done["ratios"] = {side: ratios(r, done["baseline"]) for side, r in done.items()
                                  if side.startswith("ours") and isinstance(r, dict) and "routes" in r}
    finally:
        for proc, _ in servers.values():
            stop(proc)


def cpu_info() -> dict:
    """The CPU model, its cores, and the vector extensions torch's kernels pick from."""
    text = Path("/proc/cpuinfo").read_text()
    fields = {k.strip(): v for k, v in (line.split(":", 1) for line in text.splitlines() if ":" in line)}
    flags = fields.get("flags", "").split()
    return {"model": fields.get("model name", "?").strip(), "cores": os.cpu_count(),
            "cores_available": len(os.sched_getaffinity(0)),
            "avx_flags": sorted(f for f in flags if f.startswith("avx"))}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=500)
    parser.add_argument("--duration", type=float, default=120.0, help="seconds of load per server and pattern")
    parser.add_argument("--pattern", action="append", choices=(*PATTERNS, "all"),
                        help="which prompt each request names (repeatable; all: the four); default uniform")
    parser.add_argument("--prompts", type=int, action="append",
                        help="prompts loaded on each server, 3:1 classification:generation (repeatable); default 16")
    parser.add_argument("--replicas", type=int, action="append", default=[],
                        help="also run ours as `softprompt serve ... --replicas K` (repeatable; needs the Ray Serve support)")
    parser.add_argument("--max-queue", type=int, default=1024, help="ours: the queue limit of the main runs")
    parser.add_argument("--low-queue", type=int, default=32, help="ours: the queue limit of the 429 run (0: skip)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of each server (OMP_NUM_THREADS)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=Path("runs/serve_load"))
    parser.add_argument("--out", type=Path)
    parser.add_argument("--only", help="run this side alone (ours, baseline, ours-low-queue, ours-K-replicas) "
                                       "and update its entries in --out")
    parser.add_argument("--report", type=Path, nargs="+", help="print the markdown table of these result files and stop")
    parser.add_argument("--serve-baseline", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    a = parser.parse_args()
    if a.serve_baseline is not None:  # the baseline server's own process
        import uvicorn

        uvicorn.run(baseline_app(a.serve_baseline), host="127.0.0.1", port=a.port, log_level="warning", timeout_keep_alive=30,
                    access_log=False)
        return
    if a.report:
        for path in a.report:
            print(f"{path}:\n\n{markdown(json.loads(path.read_text()))}\n")
        return
    a.pattern = list(PATTERNS) if "all" in (a.pattern or []) else list(dict.fromkeys(a.pattern or ["uniform"]))
    a.prompts = list(dict.fromkeys(a.prompts or [16]))
    if any(n < 2 for n in a.prompts):
        parser.error("--prompts must be at least 2 (one classification and one generation prompt)")
    if any(k < 1 for k in a.replicas):
        parser.error("--replicas must be at least 1")
    names = [side[0] for side in sides_of(argparse.Namespace(**{**vars(a), "only": None}))]
    if a.only and a.only not in names:
        parser.error(f"--only {a.only}: this run's sides are {', '.join(names)}")
    if a.replicas and not has_replicas():
        parser.error("--replicas needs the Ray Serve support: this checkout's `softprompt serve` has no --replicas option")
    reviews, mrs = texts()
    fresh = {"prompts": {}, "servers": {}, "results": {}}
    summary = json.loads(a.out.read_text()) if a.only and a.out and a.out.exists() else fresh  # --only: keep the rest
    for key, value in fresh.items():
        summary.setdefault(key, value)
    summary.update(machine=machine(), cpu=cpu_info(), zipf_alpha=ZIPF_ALPHA,
                   args={k: str(v) for k, v in vars(a).items() if k not in ("serve_baseline", "port", "report")})
    for n in a.prompts:
        run_prompts(a, n, reviews, mrs, summary)
    write_result(summary, a.out)
    print(markdown(summary))


if __name__ == "__main__":
    main()
