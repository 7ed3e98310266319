"""A small grid of prompt-tuning settings on SST-2 with smollm2-135m: dev accuracy per setting.

Used to choose the defaults and the >=88% configuration in BENCHMARKS.md; each run is an ordinary
`softprompt.train` call, so any row can be rerun from the CLI with the printed overrides.

    python bench/sweep_sst2.py --steps 300 --lrs 0.03 0.1 0.3 --out bench/results/sweep_sst2.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, machine  # noqa: E402

TEMPLATES = {
    "review": "Review: {text}\nSentiment: {mask}",
    "itwas": "{text} It was {mask}",
    "question": "Is the following movie review positive or negative?\n{text}\nAnswer: {mask}",
}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--lrs", type=float, nargs="+", default=[0.03, 0.1, 0.3])
    p.add_argument("--tokens", type=int, nargs="+", default=[20])
    p.add_argument("--templates", nargs="+", default=list(TEMPLATES))
    p.add_argument("--inits", nargs="+", default=["text"])
    p.add_argument("--warmups", type=float, nargs="+", default=[0.06])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--group", choices=["true", "false"], nargs="+", default=["true"], help="group_by_length")
    p.add_argument("--device", default="auto")
    p.add_argument("--data", default=str(SHARED / "sentence-classification"))
    p.add_argument("--workdir", default="runs/sweep")
    p.add_argument("--out", default=None)
    a = p.parse_args()

    from softprompt import api

    base = None
    rows = []
    grid = itertools.product(a.templates, a.lrs, a.tokens, a.inits, a.warmups, a.seeds, a.group)
    for template, lr, tokens, init, warmup, seed, group in grid:
        overrides = [f"training.lr={lr}", f"method.num_virtual_tokens={tokens}", f"method.init={init}",
                     f"training.warmup={warmup}", f"training.seed={seed}", f"training.group_by_length={group}"]
        config = {
            "name": f"{template}-lr{lr}-n{tokens}-{init}-w{warmup}-s{seed}-g{group}",
            "model": {"name": "smollm2-135m", "device": a.device},
            "task": {"kind": "classification", "template": TEMPLATES[template],
                     "verbalizer": {"0": "negative", "1": "positive"}, "max_length": 84},
            "method": {"name": "prompt_tuning", "init_text": "Classify the sentiment of the review as positive or negative."},
            "data": {"train": f"{a.data}/stsa.binary.train", "dev": f"{a.data}/stsa.binary.dev", "format": "label-first"},
            "training": {"steps": a.steps, "batch_size": a.batch, "eval_every": a.eval_every, "log_every": 50},
            "output": f"{a.workdir}/{{name}}",
        }
        if base is None:
            base = api.load_model(config["model"])
        started = time.perf_counter()
        result = api.train(config, overrides, base=base, progress=False, log=lambda s: None)
        curve = {h["step"]: round(h["accuracy"], 4) for h in result.history if "accuracy" in h}
        row = {"template": template, "lr": lr, "tokens": tokens, "init": init, "warmup": warmup, "seed": seed,
               "group_by_length": group, "best": max(curve.values()), "final": curve[max(curve)],
               "best_step": result.best_step, "curve": curve, "train_seconds": round(result.train_seconds, 1),
               "samples_per_s": round(result.samples_per_second, 2), "wall_s": round(time.perf_counter() - started, 1)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"machine: {machine()}")
    for r in sorted(rows, key=lambda r: -r["best"]):
        print(f"{r['best']:.4f} at {r['best_step']:>4} (final {r['final']:.4f})  {r['template']:<9} lr {r['lr']:<5} "
              f"n {r['tokens']:<3} {r['init']} warmup {r['warmup']} seed {r['seed']} group {r['group_by_length']}")
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps({"settings": vars(a), "machine": machine(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
