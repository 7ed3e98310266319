"""Learning-rate x prompt-length search by successive halving: every candidate trains a short
budget, the better 1/eta continue (resuming their own checkpoints) for eta times longer, and so
on; the table of dev scores is written out and the best prompt is kept."""

from __future__ import annotations

import itertools
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from .configs import RunConfig, load_run_config, to_dict
from .errors import ConfigError


@dataclass
class SweepRow:
    lr: float
    length: int
    run_dir: Path
    scores: dict[int, float] = field(default_factory=dict)  # steps -> dev metric

    @property
    def last(self) -> float:
        return self.scores[max(self.scores)] if self.scores else float("-inf")


@dataclass
class SweepResult:
    rows: list[SweepRow]
    best: SweepRow
    artifact: Path
    metric: str

    def table(self) -> str:
        budgets = sorted({s for r in self.rows for s in r.scores})
        head = "| lr | length | " + " | ".join(f"{b} steps" for b in budgets) + " |"
        lines = [head, "| ---: | ---: | " + " | ".join("---:" for _ in budgets) + " |"]
        for r in sorted(self.rows, key=lambda r: (-max(r.scores), -r.last)):
            cells = [f"{r.scores[b]:.4f}" if b in r.scores else "" for b in budgets]
            lines.append(f"| {r.lr:g} | {r.length} | " + " | ".join(cells) + " |")
        return "\n".join(lines)


def length_key(method: dict) -> str:
    """The config key that sets a method's prompt length."""
    name = method.get("name", "prompt_tuning")
    return "prefix_length" if name in ("ptuning_v2", "prefix_tuning") else "num_virtual_tokens"


def sweep(config, lrs: Sequence[float], lengths: Sequence[int], *, min_steps: int = 50, eta: int = 3,
          rungs: int = 3, overrides: Sequence[str] = (), progress: bool = False,
          log: Callable[[str], None] = print) -> SweepResult:
    """Successive halving over (lr, length); returns the table and the best candidate's artifact."""
    from .training.distributed import processes
    from .training.run import load_model, train

    procs = processes()  # under `accelerate launch` every candidate trains data-parallel; the main process writes
    if not procs.main:
        log = lambda message: None  # noqa: E731
    if not lrs or not lengths:
        raise ConfigError("sweep needs at least one learning rate and one prompt length")
    if eta < 2 or rungs < 1 or min_steps < 1:
        raise ConfigError("sweep needs eta >= 2, rungs >= 1 and min_steps >= 1")
    base_config: RunConfig = load_run_config(config, overrides)
    if not base_config.data.dev and base_config.data.dev_fraction <= 0:
        raise ConfigError("sweep compares dev scores: give data.dev or data.dev_fraction > 0")
    key = length_key(base_config.method)
    root = base_config.run_dir / "sweep"
    base = load_model(base_config.model)
    rows = [SweepRow(lr, n, root / f"lr{lr:g}-n{n}") for lr, n in itertools.product(lrs, lengths)]
    alive = list(rows)
    metric = None
    steps = min_steps
    for rung in range(rungs):
        for row in alive:
            data = to_dict(base_config)
            data["method"] = {**data["method"], key: row.length}
            data["training"] = {**data["training"], "lr": row.lr, "steps": steps, "eval_every": steps,
                                "checkpoint_every": steps}
            data["output"] = str(row.run_dir)
            result = train(data, base=base, resume=rung > 0, progress=progress, log=lambda s: None)
            dev = result.metrics["dev"]
            metric = metric or next(k for k in ("accuracy", "f1") if k in dev)
            row.scores[steps] = dev[metric]
            log(f"rung {rung + 1}/{rungs}: lr {row.lr:g} length {row.length} -> dev {metric} {dev[metric]:.4f} at {steps} steps")
        if rung + 1 < rungs:
            keep = max(1, len(alive) // eta)
            alive = sorted(alive, key=lambda r: -r.last)[:keep]
            steps *= eta
    best = max(rows, key=lambda r: (max(r.scores.values()), r.last))
    artifact = base_config.run_dir / "prompt.safetensors"
    result = SweepResult(rows, best, artifact, metric)
    if procs.main:
        artifact.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(best.run_dir / "prompt.safetensors", artifact)
        (base_config.run_dir / "sweep.md").write_text(result.table() + "\n")
        (base_config.run_dir / "sweep.json").write_text(json.dumps(
            [{"lr": r.lr, "length": r.length, "scores": r.scores} for r in rows], indent=1))
    procs.barrier()
    return result
