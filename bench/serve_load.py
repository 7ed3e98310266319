"""Load test of `softprompt serve` against a baseline server on the same HTTP layer, loopback only.

Both servers run smollm2-135m with 16 prompts: 12 classification prompts (SST-2's sentiment
template, label words " negative"/" positive") and 4 generation prompts (E2E, "Data: {mr}\\n
Description:", 16 new tokens, greedy). Prompts are untrained starts (speed does not depend on
training): ours of mixed methods (prompt tuning, P-tuning, prefix tuning, P-tuning v2, 20 tokens, and a
hard prompt), the baseline's PEFT prompt tuning (20 tokens) since PEFT holds one prompt method per model.

  ours      `softprompt serve --config` (the engine batches all requests continuously)
  baseline  FastAPI + uvicorn too, answering each request alone with PEFT: set_adapter to the
            request's prompt, one forward (classification: the label words' scores at the last
            position, logits_to_keep=1) or one generate call, under a lock

The load: --clients concurrent clients (asyncio + httpx), each sending requests back to back for
--duration seconds, a request picking a prompt uniformly at random (seeded) and a text from SST-2 dev
or E2E test; each server runs in its own process with the same torch thread count. When the window
closes, requests still waiting are cut off (the client disconnects): with 500 clients in a closed
loop, a request waits about clients / throughput seconds, so many are in flight at the end; they are
neither failures nor in the throughput, but their waits count, at their age then (a request starved
until the end must not vanish from the tail). Reported: requests/s (answered within the window),
the FIFO wait (clients / throughput: every request's wait if served in order), and per route p50,
p99 and the longest wait, with the ratios p99/p50 and longest/FIFO that the fairness target reads
(p99 <= 3 x p50, longest <= 3 x FIFO), and counts by status. A second run of ours with a low
--max-queue shows the only failures are the 429s that limit is set to give.

    python bench/serve_load.py --out bench/results/serve_load.json
"""

from __future__ import annotations

import argparse
import asyncio
import csv
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
CLASSIFY, GENERATE = 12, 4
SENTIMENT = {"kind": "classification", "template": "Review: {text}\nSentiment: {mask}",
             "verbalizer": {"0": "negative", "1": "positive"}, "max_length": 128}
E2E = {"kind": "generation", "template": "Data: {text}\nDescription: {mask}", "max_new_tokens": 16, "max_length": 128}


def texts() -> tuple[list[str], list[str]]:
    with (SHARED / "sentence-classification" / "stsa.binary.dev").open(encoding="utf-8") as f:
        reviews = [line.split(" ", 1)[1].strip() for line in f if line.strip()]
    with (SHARED / "e2e" / "testset_w_refs.csv").open(newline="", encoding="utf-8") as f:
        mrs = list(dict.fromkeys(row["mr"] for row in csv.DictReader(f)))
    return reviews, mrs


def write_prompts(folder: Path) -> Path:
    """16 prompt files of mixed methods and a serve config listing them."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from generate import our_units  # noqa: E402  (the same prompt starts as the generation bench)

    from softprompt.configs import to_dict
    from softprompt.core import PromptArtifact
    from softprompt.models import load_base
    from softprompt.tasks.runner import export_unit

    base = load_base("smollm2-135m")
    folder.mkdir(parents=True, exist_ok=True)
    listing = {}
    for group, task, count, offset in (("c", SENTIMENT, CLASSIFY, 0), ("g", E2E, GENERATE, CLASSIFY)):
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
    names = [f"c{i}" for i in range(CLASSIFY)] + [f"g{i}" for i in range(GENERATE)]
    wrapped = peft.get_peft_model(model, config, adapter_name=names[0])
    for name in names[1:]:
        wrapped.add_adapter(name, config)
    wrapped.eval()
    words = [tok(" negative", add_special_tokens=False).input_ids[0], tok(" positive", add_special_tokens=False).input_ids[0]]
    lock = threading.Lock()
    app = FastAPI()

    def classify(name: str, text: str) -> dict:
        ids = tok(f"Review: {text}\nSentiment:", return_tensors="pt", truncation=True, max_length=128)
        with lock, torch.inference_mode():
            wrapped.set_adapter(name)
            logits = wrapped(**ids, logits_to_keep=1).logits[0, -1]
        probs = torch.softmax(logits[words].float(), -1).tolist()
        return {"object": "list", "model": name, "data": [{"index": 0, "label": "01"[probs[1] > probs[0]],
                                                            "probabilities": {"0": probs[0], "1": probs[1]}}]}

    def complete(name: str, text: str, max_tokens: int) -> dict:
        ids = tok(f"Data: {text}\nDescription:", return_tensors="pt", truncation=True, max_length=128)
        with lock, torch.inference_mode():
            wrapped.set_adapter(name)
            out = wrapped.generate(**ids, max_new_tokens=max_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
        new = out[0, ids.input_ids.shape[1]:]
        return {"object": "text_completion", "model": name,
                "choices": [{"index": 0, "text": tok.decode(new, skip_special_tokens=True), "finish_reason": "length"}]}

    @app.post("/v1/classify")
    async def classify_route(request: Request):
        body = await request.json()
        if body.get("model") not in names:
            return JSONResponse({"error": {"message": "unknown model", "type": "not_found_error"}}, 404)
        return await asyncio.to_thread(classify, body["model"], body["input"])

    @app.post("/v1/completions")
    async def complete_route(request: Request):
        body = await request.json()
        if body.get("model") not in names:
            return JSONResponse({"error": {"message": "unknown model", "type": "not_found_error"}}, 404)
        return await asyncio.to_thread(complete, body["model"], body["prompt"], int(body.get("max_tokens", 16)))

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    return app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(kind: str, a, config: Path, max_queue: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "PYTHONUNBUFFERED": "1"}
    if kind == "ours":
        cmd = [sys.executable, "-m", "softprompt.cli", "serve", "--config", str(config), "--port", str(port),
               "--max-queue", str(max_queue), "--timeout", str(a.duration + 60), "--log-level", "warning",
               "--no-base"]
    else:
        cmd = [sys.executable, __file__, "--serve-baseline", str(config.parent), "--port", str(port)]
    log = config.parent / f"{kind}-server.log"
    with log.open("w") as handle:  # the server's own messages, shown when it fails to start
        proc = subprocess.Popen(cmd, env=env, stdout=handle, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    import httpx

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-5:]
            raise SystemExit(f"the {kind} server exited with code {proc.returncode}:\n" + "\n".join(tail))
        time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"the {kind} server did not start")


def warm_up(url: str, reviews: list[str], mrs: list[str]) -> None:
    """One request per prompt, untimed, so that neither server's first-use work (compiling a prompt,
    allocating caches) lands in the window."""
    import httpx

    for k in range(CLASSIFY):
        httpx.post(url + "/v1/classify", json={"model": f"c{k}", "input": reviews[k]}, timeout=300).raise_for_status()
    for k in range(GENERATE):
        httpx.post(url + "/v1/completions", json={"model": f"g{k}", "prompt": mrs[k], "max_tokens": 16,
                                                  "temperature": 0}, timeout=300).raise_for_status()


async def load(url: str, a, reviews: list[str], mrs: list[str]) -> dict:
    """--clients clients sending requests back to back for --duration seconds."""
    import httpx

    waits: dict[str, list[float]] = {}  # per route: answered requests' latency, cut-off requests' age
    answered, cut_off, statuses = {}, {}, {}
    stop_at = time.monotonic() + a.duration
    limits = httpx.Limits(max_connections=a.clients, max_keepalive_connections=a.clients)

    async def client(k: int, http: httpx.AsyncClient):
        rng = random.Random(a.seed * 100_003 + k)
        while time.monotonic() < stop_at:
            prompt = rng.randrange(CLASSIFY + GENERATE)
            if prompt < CLASSIFY:
                route, body = "/v1/classify", {"model": f"c{prompt}", "input": rng.choice(reviews)}
            else:
                route, body = "/v1/completions", {"model": f"g{prompt - CLASSIFY}", "prompt": rng.choice(mrs),
                                                  "max_tokens": 16, "temperature": 0}
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
    return summarise(waits, answered, cut_off, statuses, wall, a.clients)


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


def report(name: str, result: dict) -> None:
    """One line per route: the numbers the fairness target reads."""
    print(f"{name}: {result['requests_per_s']:.2f} requests/s, FIFO wait {result['fifo_wait_s'] or 0:.1f} s, "
          f"statuses {result['statuses']}", flush=True)
    for route, r in result["routes"].items():
        print(f"  {route}: {r['answered']} answered, {r['waiting_at_end']} waiting at the end; p50 {r['p50_s']:.2f} s, "
              f"p99 {r['p99_s']:.2f} s, longest {r['longest_s']:.2f} s; p99/p50 {r['p99_over_p50'] or 0:.2f}, "
              f"longest/FIFO {r['longest_over_fifo'] or 0:.2f}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=500)
    parser.add_argument("--duration", type=float, default=120.0, help="seconds of load per server")
    parser.add_argument("--max-queue", type=int, default=1024, help="ours: the queue limit of the main runs")
    parser.add_argument("--low-queue", type=int, default=32, help="ours: the queue limit of the 429 run (0: skip)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of each server")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=Path("runs/serve_load"))
    parser.add_argument("--out", type=Path)
    parser.add_argument("--only", choices=("ours", "baseline", "ours-low-queue"),
                        help="run this side alone and update its entry in --out")
    parser.add_argument("--serve-baseline", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    a = parser.parse_args()
    if a.serve_baseline is not None:  # the baseline server's own process
        import uvicorn

        uvicorn.run(baseline_app(a.serve_baseline), host="127.0.0.1", port=a.port, log_level="warning", timeout_keep_alive=30,
                    access_log=False)
        return
    reviews, mrs = texts()
    config = write_prompts(a.workdir)
    results = {}
    if a.only:  # rerun one side, keeping the others of the earlier run in --out
        results = json.loads(a.out.read_text())["results"] if a.out and a.out.exists() else {}
    for name, kind, queue in (("ours", "ours", a.max_queue), ("baseline", "baseline", 0),
                              ("ours-low-queue", "ours", a.low_queue)):
        if (name == "ours-low-queue" and not a.low_queue) or (a.only and name != a.only):
            continue
        proc, url = start(kind, a, config, queue)
        try:
            print(f"{name}: {a.clients} clients for {a.duration:g} s ...", flush=True)
            warm_up(url, reviews, mrs)
            results[name] = asyncio.run(load(url, a, reviews, mrs))
            report(name, results[name])
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
    summary = {"machine": machine(), "args": {k: str(v) for k, v in vars(a).items() if k not in ("serve_baseline", "port")},
               "results": results}
    if "ours" in results and "baseline" in results:
        summary["ratio_requests_per_s"] = results["ours"]["requests_per_s"] / max(results["baseline"]["requests_per_s"], 1e-9)
    write_result(summary, a.out)


if __name__ == "__main__":
    main()
