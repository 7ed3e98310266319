"""`softprompt import-peft` and `softprompt export`: prompts to and from PEFT adapter directories."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import _fail, _run


def import_peft(
    adapter: Path = typer.Argument(..., help="A PEFT adapter directory (adapter_config.json + adapter_model.safetensors)."),
    out: Path = typer.Option(..., "--out", "-o", help="The softprompt artifact to write (.safetensors)."),
    model: Optional[str] = typer.Option(None, "--model", "-m",
                                        help="Base model (default: the adapter's base_model_name_or_path)."),
    task: Optional[Path] = typer.Option(None, "--task", help="YAML task section (default: generation, '{text}{mask}')."),
    name: Optional[str] = typer.Option(None, help="Name recorded in the artifact (default: the directory's)."),
    allow_model_mismatch: bool = typer.Option(False, help="Import onto a base model of another name (same sizes)."),
):
    """Turn a PEFT prompt-tuning, P-tuning or prefix-tuning adapter into a softprompt artifact."""
    from ..configs import read_yaml
    from ..interop import import_peft as convert

    section = _run(read_yaml, task) if task is not None else None
    if section is not None and not isinstance(section, dict):
        _fail(f"{task}: expected a task section (a mapping with kind, template, ...)")
    artifact = _run(convert, adapter, model, task=section, name=name, out=out, allow_model_mismatch=allow_model_mismatch)
    typer.echo(f"wrote {out} ({artifact.method}, {artifact.num_parameters:,} numbers, "
               f"base {artifact.meta['base_model']['name']})")


def export(
    artifact: Path = typer.Argument(..., help="A softprompt prompt file (.safetensors)."),
    out: Path = typer.Option(..., "--out", "-o", help="The directory to write."),
    format: str = typer.Option("peft", "--format", help="peft: adapter_config.json + adapter_model.safetensors."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Base model (default: the artifact's own)."),
    allow_model_mismatch: bool = typer.Option(False, help="Export for a base model the artifact was not made for."),
):
    """Write a prompt in another library's format (PEFT: PeftModel.from_pretrained loads it)."""
    from ..interop import export_peft

    if format != "peft":
        _fail(f"--format {format!r}: the formats are: peft")
    written = _run(export_peft, artifact, out, model, allow_model_mismatch=allow_model_mismatch)
    typer.echo(f"wrote {written}")
