"""`softprompt search` (hard prompts scored on dev data) and `softprompt inspect` (a soft prompt read as
words): thin shells over softprompt.search."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from .common import _run


def search(
    config: Path = typer.Argument(..., help="YAML search config (model, data, candidates; optional ape, autoprompt)."),
    overrides: Optional[List[str]] = typer.Argument(None, help="key=value overrides, e.g. k_shot=2"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
):
    """Score hard prompts (templates x verbalizers, zero- or few-shot, calibrated) on dev data; report
    the sensitivity (mean, std, range; table and chart) and the best prompt, as JSON."""
    from ..search import search as run_search

    result = _run(run_search, config, overrides or [], progress=not quiet, log=typer.echo)
    best = result.best
    typer.echo(f"done: {result.output_dir / 'search.json'}  best accuracy {best.accuracy:.4f}")


def inspect(
    artifact: Path = typer.Argument(..., help="A prompt .safetensors file (prompt_tuning or ptuning)."),
    data: Optional[Path] = typer.Option(None, "--data", "-d", help="Labelled data: score the soft prompt and its "
                                        "nearest-token projection."),
    format: str = typer.Option("auto", help="Format of --data."),
    limit: Optional[int] = typer.Option(None, help="Score on the first N examples of --data."),
    top_k: int = typer.Option(5, "--top-k", help="Nearest tokens shown per virtual token."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the reading as JSON here."),
    allow_model_mismatch: bool = typer.Option(False, help="Use the prompt on a base model it was not made for."),
):
    """Read a soft prompt as words: nearest vocabulary tokens (cosine) of each virtual token, and the
    score of the prompt made of those tokens."""
    from .. import api
    from ..configs import DataConfig
    from ..search import inspect_prompt

    loaded = _run(api.load_prompt, artifact, allow_model_mismatch=allow_model_mismatch)
    examples = []
    if data is not None:
        fields = DataConfig(**{**loaded.artifact.meta.get("data_fields", {}), "format": format})
        examples = _run(api.read_split, str(data), fields, limit=limit, kind=loaded.unit.task.kind)
    reading = _run(inspect_prompt, loaded.unit, loaded.base, examples, top_k=top_k)
    typer.echo(reading.to_text())
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"artifact": str(artifact), **reading.to_dict()}, indent=1, ensure_ascii=False) + "\n")
        typer.echo(f"wrote {out}")
