"""Shared pieces of the benchmarks: data, timing, peak memory, subprocess sides, medians."""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

SHARED = Path(os.environ.get("SOFTPROMPT_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} cores ({cpu}), {gpu}, torch {torch.__version__}, threads {torch.get_num_threads()}"


def run_side(script: str, side: str, args: list[str], keep_going: bool = False) -> dict:
    """Run one side in a fresh process (so peak RSS is its own) and parse its JSON result line.

    A side that fails stops the benchmark, or with keep_going is recorded as {"error": its last
    stderr line} (a competitor that crashes on a task is a result too)."""
    cmd = [sys.executable, script, "--side", side, *args]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        if keep_going:
            lines = proc.stderr.strip().splitlines()
            return {"error": lines[-1] if lines else f"exit code {proc.returncode}"}
        raise SystemExit(f"{side} failed with exit code {proc.returncode}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_s"] = time.perf_counter() - started
    return result


def medians(runs: list[dict]) -> dict:
    keys = [k for k, v in runs[0].items() if isinstance(v, (int, float))]
    return {k: statistics.median(r[k] for r in runs) for k in keys}


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def side_or_lrs(a, ours, other) -> dict[str, str] | None:
    """With --side: run that side here, print its JSON and return None. Otherwise the per-side
    learning rates of --lr ("side=lr,...") for the parent to pass on."""
    if a.side:
        a.lr = float(a.lr)
        print(json.dumps(ours(a) if a.side == "ours" else other(a)))
        return None
    return dict(item.split("=") for item in a.lr.split(","))


def llama_1b_config():
    """The Llama-3.2-1B architecture (random weights are made from it: no download), sdpa attention."""
    import transformers

    config = transformers.LlamaConfig(
        vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
        num_key_value_heads=8, head_dim=64, max_position_embeddings=131072, rope_theta=500000.0,
        rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 8192},
        tie_word_embeddings=True, bos_token_id=128000, eos_token_id=128001, pad_token_id=128001)
    config._attn_implementation = "sdpa"
    return config


def write_result(result: dict, out) -> None:
    """Print a result as JSON, and write it to out when given."""
    print(json.dumps(result, indent=1))
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n")
