"""Markdown tables from the transfer experiments' JSON (bench/transfer_experiment.py, with and without --ppt).

    python bench/transfer_report.py bench/results/transfer_experiment.json bench/results/ppt_experiment.json

Per few-shot cell: mean and std of dev accuracy over seeds, and the convergence: the first evaluated step
at which a run reached 90% of its own final dev accuracy (median over seeds).

Runs split over several processes (stopped and resumed with --reuse) are summed up from their logs:

    python bench/transfer_report.py --logs runs/ppt_experiment.part1.log runs/ppt_experiment.log
    python bench/transfer_report.py --logs --kinds vanilla,ppt new.log old.log   # only these columns
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path

RUN_LINE = re.compile(r"^(\w+) (\d+)-shot seed (\d+) (\w+): ([0-9.]+)$")


def steps_to_90(run: dict) -> int | None:
    """First evaluated step whose dev accuracy is at least 90% of the run's final accuracy."""
    target = 0.9 * run["accuracy"]
    for row in run["history"]:
        if "accuracy" in row and row["accuracy"] >= target:
            return int(row["step"])
    return None


def few_shot_table(cells: dict) -> list[str]:
    kinds = list(next(iter(cells.values())))
    lines = ["| target | " + " | ".join(kinds) + " |", "| --- |" + " ---: |" * len(kinds)]
    for key, row in cells.items():
        values = []
        for kind in kinds:
            v = row[kind]
            reach = [s for s in (steps_to_90(r) for r in v["runs"]) if s is not None]
            at = f", 90% at step {statistics.median(reach):.0f}" if reach else ""
            values.append(f"{100 * v['mean']:.1f} ± {100 * v['std']:.1f}{at}")
        lines.append(f"| {key} | " + " | ".join(values) + " |")
    return lines


def spot_report(d: dict) -> list[str]:
    out = ["### Source prompts", "", "| source | dev accuracy | train s |", "| --- | ---: | ---: |"]
    out += [f"| {k} | {100 * v['dev_accuracy']:.1f} | {v['train_seconds']:.0f} |" for k, v in d["sources"].items()]
    m = d["transfer_matrix"]
    out += ["", "### Zero-shot transfer matrix (source row on target column, relative to the target's own prompt)", "",
            "| source \\ target | " + " | ".join(m["cols_target"]) + " |", "| --- |" + " ---: |" * len(m["cols_target"])]
    out += [f"| {s} | " + " | ".join(f"{v:.2f}" for v in row) + " |" for s, row in zip(m["rows_source"], m["relative"])]
    out += ["", "### Retrieval rankings", ""]
    for target, r in d["rankings"].items():
        for by, ranked in r.items():
            out.append(f"- {target}, by {by}: " + ", ".join(f"{n} ({s:.3f})" for n, s in ranked))
    out += ["", "### Few-shot targets (dev accuracy %, mean ± std over seeds)", "", *few_shot_table(d["few_shot"])]
    return out


def ppt_report(d: dict) -> list[str]:
    out = [f"PPT prompt: dev {d['ppt']['dev']} after {d['ppt']['seconds']} s", "",
           "### Few-shot targets (dev accuracy %, mean ± std over seeds)", "", *few_shot_table(d["few_shot"]), "",
           "### Average over targets", ""]
    for shots, kinds in d["average_over_targets"].items():
        out.append(f"- {shots}-shot: " + ", ".join(f"{k} {100 * v:.1f}" for k, v in kinds.items()))
    return out


def from_logs(paths: list[str], only: list[str] | None = None) -> list[str]:
    """Few-shot results from the printed run lines of one or more logs (the first line per run counts);
    only: keep these kinds (columns), in this order."""
    runs: dict[tuple, float] = {}
    for path in paths:
        for line in Path(path).read_text().splitlines():
            m = RUN_LINE.match(line.strip())
            if m:
                runs.setdefault((m[1], int(m[2]), int(m[3]), m[4]), float(m[5]))
    cells: dict[str, dict[str, dict[int, float]]] = {}
    for (target, shots, seed, kind), acc in runs.items():
        cells.setdefault(f"{target}-{shots}", {}).setdefault(kind, {})[seed] = acc
    kinds = list(dict.fromkeys(k for c in cells.values() for k in c))
    if only:
        kinds = [k for k in only if k in kinds]
        cells = {key: {k: v for k, v in row.items() if k in kinds} for key, row in cells.items()}
        cells = {key: row for key, row in cells.items() if row}
    out = ["| target | seeds | " + " | ".join(kinds) + " |", "| --- | --- |" + " ---: |" * len(kinds)]
    for key, row in cells.items():
        seeds = sorted(set.intersection(*(set(v) for v in row.values())))
        values = [f"{100 * statistics.mean(row[k][s] for s in seeds):.1f} ± {100 * statistics.pstdev(row[k][s] for s in seeds):.1f}"
                  if k in row else "" for k in kinds]
        out.append(f"| {key} | {','.join(map(str, seeds))} | " + " | ".join(values) + " |")
    complete = {key: row for key, row in cells.items() if all(k in row for k in kinds)}
    if complete:
        avg = {k: statistics.mean(statistics.mean(row[k][s] for s in set.intersection(*(set(v) for v in row.values())))
                                  for row in complete.values()) for k in kinds}
        out += ["", f"Average over {', '.join(complete)} (seeds every kind has): "
                + ", ".join(f"{k} {100 * v:.1f}" for k, v in avg.items())]
    return out


def main(paths: list[str]) -> None:
    if paths and paths[0] == "--logs":
        only = None
        if len(paths) > 2 and paths[1] == "--kinds":
            only, paths = paths[2].split(","), paths[2:]
        print("\n".join(from_logs(paths[1:], only)))
        return
    for path in paths:
        d = json.loads(Path(path).read_text())
        print(f"## {path}\n\nmachine: {d.get('machine')}; wall {d.get('wall_seconds')} s\n")
        print("\n".join(ppt_report(d) if "ppt" in d else spot_report(d)) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:] or ["bench/results/transfer_experiment.json"])
