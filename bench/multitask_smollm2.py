"""Two tasks trained together in mixed batches against each trained alone (issue 14, item 2).

One call runs, for one seed, three trainings on smollm2-135m with the same training settings:
SST-2 alone (64 steps of 16), TREC alone (64 steps of 16), and both in one run (128 steps of 16,
mixing=temperature with a very high temperature, so each batch is half SST-2 and half TREC on
average: 64 steps' worth of examples per task). Every run evaluates at its start, middle and end;
each task keeps its own best prompt. Tasks and data are bench/multiclass_defaults.py's (SST-2 with
the README budget's template and text init; TREC with its 300-question dev set and TREC.test.all).
It appends one JSON line per run to --out: dev accuracy (SST-2 dev, TREC dev), TREC test accuracy,
train seconds.

    OMP_NUM_THREADS=1 python bench/multitask_smollm2.py --seed 0 --out bench/results/multitask_smollm2.ndjson
    python bench/multitask_smollm2.py --report bench/results/multitask_smollm2.ndjson
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402
from multiclass_defaults import TASKS, data_files  # noqa: E402

STEPS = 64


def task_entry(name: str, work: Path) -> dict:
    spec, files = TASKS[name], data_files(name, work)
    entry = {
        "name": name,
        "task": {"kind": "classification", "template": spec["template"], "verbalizer": spec["words"],
                 "labels": list(spec["words"]), "max_length": 128},
        "method": {"name": "prompt_tuning"},
        "data": {"train": files["train"], "dev": files["dev"], "format": files["format"] or "auto",
                 **({"test": files["test"]} if files["test"] else {})},
    }
    if name == "sst2":  # the README budget's prompt (BENCHMARKS.md, first table)
        entry["method"] = {"name": "prompt_tuning", "num_virtual_tokens": 20, "init": "text",
                           "init_text": "Classify the sentiment of the review as positive or negative."}
    return entry


def config_for(names: list[str], seed: int, work: Path) -> dict:
    steps = STEPS * len(names)
    config = {
        "name": "+".join(names) + f"-{seed}",
        "model": {"name": "smollm2-135m", "device": "cpu"},
        "training": {"steps": steps, "batch_size": 16, "seed": seed, "eval_every": steps // 2,
                     "mixing": "temperature", "mixing_temperature": 1e6},
        "output": str(work / "runs" / ("+".join(names) + f"-{seed}")),
    }
    entries = [task_entry(n, work) for n in names]
    if len(entries) == 1:
        config.update({k: entries[0][k] for k in ("task", "method", "data")})
    else:
        config["tasks"] = entries
    return config


def run(names: list[str], seed: int, work: Path, out: Path) -> None:
    from softprompt import api

    started = time.perf_counter()
    result = api.train(config_for(names, seed, work), progress=False)
    per_task = result.tasks or {names[0]: result}
    for name, r in per_task.items():
        row = {"task": name, "run": "together" if len(names) > 1 else "alone", "seed": seed,
               "steps_for_task": STEPS, "dev_accuracy": r.metrics["dev"]["accuracy"],
               "test_accuracy": r.metrics.get("test", {}).get("accuracy"), "best_step": r.best_step,
               "train_seconds": round(result.train_seconds, 1), "wall_seconds": round(time.perf_counter() - started),
               "machine": machine()}
        with out.open("a") as h:
            h.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)


def report(path: Path) -> None:
    """Mean ± std over the seeds that have both runs (alone and together) of a task."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    print("| task | split | alone | together | difference | seeds |\n| --- | --- | ---: | ---: | ---: | --- |")
    for task in ("sst2", "trec"):
        for split in ("dev_accuracy", "test_accuracy"):
            values = {kind: {r["seed"]: 100 * r[split] for r in rows
                             if r["task"] == task and r["run"] == kind and r[split] is not None}
                      for kind in ("alone", "together")}
            seeds = sorted(set(values["alone"]) & set(values["together"]))
            if not seeds:
                continue
            cells = []
            for series in ([values["alone"][s] for s in seeds], [values["together"][s] for s in seeds],
                           [values["together"][s] - values["alone"][s] for s in seeds]):
                spread = f" ± {statistics.stdev(series):.1f}" if len(series) > 1 else ""
                cells.append(f"{statistics.mean(series):+.1f}{spread}" if len(cells) == 2 else
                             f"{statistics.mean(series):.1f}{spread}")
            print(f"| {task} | {split.split('_')[0]} | {' | '.join(cells)} | {','.join(map(str, seeds))} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", type=Path, default=Path("runs/multitask"))
    p.add_argument("--out", type=Path, default=Path("bench/results/multitask_smollm2.ndjson"))
    p.add_argument("--only", choices=("alone", "together"), default=None)
    p.add_argument("--report", type=Path, default=None, help="print the table of a results file and stop")
    a = p.parse_args()
    if a.report:
        report(a.report)
        return
    a.out.parent.mkdir(parents=True, exist_ok=True)
    if a.only in (None, "together"):
        run(["sst2", "trec"], a.seed, a.work, a.out)
    if a.only in (None, "alone"):
        run(["sst2"], a.seed, a.work, a.out)
        run(["trec"], a.seed, a.work, a.out)


if __name__ == "__main__":
    main()
