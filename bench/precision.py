"""Precision side by side on smollm2-135m: float32, int8 (torchao, model.quantize=int8) and bfloat16.

  speed     the engine scoring --requests SST-2 classification requests (a --length-token body each,
            one prompt-tuning prompt), every precision in the same process, timed in rotating order,
            --repeats times per thread count (1 and 2): medians, requests/s and the ratio to float32
  accuracy  one fixed prompt file (the bundled demo prompt, trained on a float32 base: its sha256 is
            recorded) on SST-2 dev in each precision: accuracy, and the share of labels equal to float32's

    python bench/precision.py --out bench/results/precision.json

The machine's CPU flags (bfloat16 and int8 ones) and what model.dtype auto picks here go in the result.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, machine, write_result  # noqa: E402

SIDES = {"float32": ("float32", None), "int8": ("float32", "int8"), "bfloat16": ("bfloat16", None)}
FLAGS_OF_INTEREST = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8", "avx_vnni")


def sst2(split: str, limit: int | None = None) -> list[tuple[str, str]]:
    rows = []
    with (SHARED / "sentence-classification" / f"stsa.binary.{split}").open(encoding="utf-8") as f:
        for line in f:
            label, _, text = line.strip().partition(" ")
            rows.append((text, label))
    return rows[:limit]


def demo_prompt() -> Path:
    """The bundled demo prompt, trained once on a float32 base (SOFTPROMPT_DTYPE pins auto while it trains)."""
    from softprompt.serve import demo_prompt as make

    pinned = os.environ.get("SOFTPROMPT_DTYPE")
    os.environ["SOFTPROMPT_DTYPE"] = "float32"
    try:
        return make(log=lambda line: print(line, flush=True))
    finally:
        if pinned is None:
            os.environ.pop("SOFTPROMPT_DTYPE")
        else:
            os.environ["SOFTPROMPT_DTYPE"] = pinned


def loaded_sides(artifact: Path) -> dict:
    from softprompt import api

    out = {}
    for name, (dtype, quantize) in SIDES.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # bfloat16 on a CPU without it warns: the table says so
            out[name] = api.attach(artifact, dtype=dtype, quantize=quantize)
        print(f"{name}: {out[name].base.precision}", flush=True)
    return out


def speed(sides: dict, texts: list[str], repeats: int, threads: int) -> dict:
    """{side: median requests/s} with torch on `threads` threads, sides timed in rotating order."""
    from softprompt.api import _base_engine

    torch.set_num_threads(threads)
    runs = {}
    for name, loaded in sides.items():
        held = _base_engine(loaded.base)
        entry = held.entry(loaded)
        items = [loaded.unit.task.prepare(loaded.unit.task.unlabelled(t, "bench")) for t in texts]
        runs[name] = (held.engine, entry, items)

    def once(name):
        engine, entry, items = runs[name]
        start = time.perf_counter()
        for future in [engine.submit_score(entry, item) for item in items]:
            future.result()
        return time.perf_counter() - start

    for name in runs:
        once(name)  # warm up
    times = {name: [] for name in runs}
    names = list(runs)
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            seconds = once(name)
            times[name].append(seconds)
            print(f"  {threads} thread(s) {name}: {len(texts) / seconds:.2f} requests/s", flush=True)
    rates = {name: len(texts) / statistics.median(t) for name, t in times.items()}
    return {"requests_per_s": rates, "vs_float32": {k: v / rates["float32"] for k, v in rates.items()},
            "seconds": {name: t for name, t in times.items()}}


def accuracy(sides: dict, rows: list[tuple[str, str]]) -> dict:
    from softprompt import api

    labels, out = {}, {}
    for name, loaded in sides.items():
        start = time.perf_counter()
        labels[name] = [p.label for p in api.predict(loaded, [t for t, _ in rows], batch_size=32)]
        out[name] = {"accuracy": sum(p == g for p, (_, g) in zip(labels[name], rows)) / len(rows),
                     "seconds": time.perf_counter() - start}
    for name in sides:
        out[name]["same_label_as_float32"] = sum(a == b for a, b in zip(labels[name], labels["float32"])) / len(rows)
    return out


def cpu_facts() -> dict:
    from softprompt.models.precision import choose_auto, cpu_flags

    flags = cpu_flags()
    pinned = os.environ.pop("SOFTPROMPT_DTYPE", None)
    auto = choose_auto("cpu")
    if pinned is not None:
        os.environ["SOFTPROMPT_DTYPE"] = pinned
    return {"flags": sorted(f for f in FLAGS_OF_INTEREST if f in flags),
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "auto_picks": auto.describe()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=24, help="scoring requests per timed run")
    parser.add_argument("--length", type=int, default=64, help="words of SST-2 text per request (at least)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--dev", type=int, default=None, help="SST-2 dev examples for accuracy (default: all 872)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/precision.json"))
    a = parser.parse_args()
    artifact = demo_prompt()
    sides = loaded_sides(artifact)
    train = sst2("train")
    texts, current = [], []
    for text, _ in train:  # requests of about --length words, SST-2 sentences in file order
        current += text.split()
        if len(current) >= a.length:
            texts.append(" ".join(current))
            current = []
        if len(texts) == a.requests:
            break
    result = {"machine": machine(), "cpu": cpu_facts(), "model": "smollm2-135m",
              "prompt": {"path": str(artifact), "sha256": hashlib.sha256(artifact.read_bytes()).hexdigest()},
              "precisions": {name: sides[name].base.precision for name in sides},
              "speed": {f"{t}_threads": speed(sides, texts, a.repeats, t) for t in a.threads},
              "accuracy_sst2_dev": accuracy(sides, sst2("dev", a.dev)),
              "command": "python bench/precision.py " + " ".join(sys.argv[1:])}
    write_result(result, a.out)


if __name__ == "__main__":
    main()
