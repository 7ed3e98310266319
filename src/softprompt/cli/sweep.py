"""`softprompt sweep`: learning rate x prompt length by successive halving; a thin shell over softprompt.sweep."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .common import _run


def sweep(
    config: Path = typer.Argument(..., help="YAML run config; its method and data are swept."),
    overrides: Optional[List[str]] = typer.Argument(None, help="key=value overrides"),
    lr: List[float] = typer.Option([0.003, 0.01, 0.03], "--lr", help="Learning rates to try (repeat the option)."),
    length: List[int] = typer.Option([10, 20], "--length", help="Prompt lengths to try (repeat the option)."),
    min_steps: int = typer.Option(50, help="Steps of the first rung."),
    eta: int = typer.Option(3, help="Keep 1/eta of the candidates per rung; the budget grows eta times."),
    rungs: int = typer.Option(3, help="Number of rungs."),
):
    """Search learning rate and prompt length by successive halving; keep the best prompt."""
    from ..sweep import sweep as run_sweep
    from ..training.distributed import processes

    result = _run(run_sweep, config, lr, length, min_steps=min_steps, eta=eta, rungs=rungs,
                  overrides=overrides or [], log=typer.echo)
    if not processes().main:  # under a data-parallel launcher the main process reports
        return
    typer.echo(result.table())
    typer.echo(f"best: lr {result.best.lr:g}, length {result.best.length}; prompt kept at {result.artifact}")
