"""`softprompt train`, `eval`, `predict`, `info`, `models` and `demo`: one prompt, from training to use;
thin shells over softprompt.api."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from .common import _DTYPE, _QUANTIZE, _check_precision, _fail, _run


def train(
    config: Path = typer.Argument(..., help="YAML run config (model, task, method, data, training)."),
    overrides: Optional[List[str]] = typer.Argument(None, help="key=value overrides, e.g. training.lr=0.01"),
    resume: bool = typer.Option(False, "--resume", help="Continue from the run directory's latest checkpoint."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
):
    """Train a prompt; writes prompt.safetensors, config.yaml, metrics and logs to the run directory."""
    from .. import api
    from ..training.distributed import processes

    result = _run(api.train, config, overrides or [], resume=resume, progress=not quiet, log=typer.echo)
    if not processes().main:  # under a data-parallel launcher the main process reports
        return
    for name, one in (result.tasks or {None: result}).items():
        summary = {k: round(v, 4) for k, v in one.metrics.get("dev", {}).items() if isinstance(v, float)}
        typer.echo(f"done{'' if name is None else ' ' + name}: {one.artifact}  dev {summary}  "
                   f"{result.samples_per_second:.1f} samples/s")


def eval_(
    artifact: Path = typer.Argument(..., help="A prompt .safetensors file."),
    data: Path = typer.Argument(..., help="Labelled examples (JSONL, CSV/TSV, label-first lines, GLUE tsv)."),
    format: str = typer.Option("auto", help="auto | jsonl | csv | tsv | label-first | glue-tsv"),
    text_field: Optional[str] = typer.Option(None, help="Field of the text (default: as in training)."),
    text_b_field: Optional[str] = typer.Option(None, help="Field of the second text of a pair."),
    label_field: Optional[str] = typer.Option(None, help="Field of the label."),
    batch_size: int = typer.Option(32, help="Examples per forward pass."),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON."),
    allow_model_mismatch: bool = typer.Option(False, help="Use the prompt on a base model it was not made for."),
    calibrate: Optional[bool] = typer.Option(None, "--calibrate/--no-calibrate",
                                             help="Contextual calibration of a classification prompt's label "
                                                  "probabilities (default: as the prompt's task says)."),
    dtype: str = _DTYPE,
    quantize: Optional[str] = _QUANTIZE,
):
    """Evaluate a prompt on labelled data: accuracy, macro-F1 and a per-class report."""
    from .. import api
    from ..tasks.metrics import format_report

    _check_precision(dtype, quantize)
    metrics = _run(api.evaluate, artifact, data, format=format, text_field=text_field, text_b_field=text_b_field,
                   label_field=label_field, batch_size=batch_size, allow_model_mismatch=allow_model_mismatch,
                   calibrate=calibrate, dtype=dtype, quantize=quantize)
    typer.echo(json.dumps(metrics, indent=1) if as_json else format_report(metrics))


def predict(
    artifact: Path = typer.Argument(..., help="A prompt .safetensors file."),
    text: Optional[str] = typer.Argument(None, help="A text to classify (or use --file)."),
    text_b: Optional[str] = typer.Option(None, help="Second text, for text-pair tasks."),
    file: Optional[Path] = typer.Option(None, "--file", "-f", help="Classify every example of a file."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="With --file: write JSONL here (default: stdout)."),
    format: str = typer.Option("auto", help="Format of --file."),
    batch_size: int = typer.Option(32),
    allow_model_mismatch: bool = typer.Option(False, help="Use the prompt on a base model it was not made for."),
    calibrate: Optional[bool] = typer.Option(None, "--calibrate/--no-calibrate",
                                             help="Contextual calibration of a classification prompt's label "
                                                  "probabilities (default: as the prompt's task says)."),
    dtype: str = _DTYPE,
    quantize: Optional[str] = _QUANTIZE,
):
    """Predict the label and probabilities of a text, or of every example of a file (JSONL out)."""
    from .. import api
    from ..tasks.readers import Example

    if (text is None) == (file is None):
        _fail("give either a TEXT or --file PATH")
    _check_precision(dtype, quantize)
    if file is not None:
        preds = _run(api.predict_file, artifact, file, out, format=format, batch_size=batch_size,
                     allow_model_mismatch=allow_model_mismatch, calibrate=calibrate, dtype=dtype,
                     quantize=quantize)
        if out is None:
            for p in preds:
                typer.echo(json.dumps({"source": p.source, "text": p.text, "label": p.label,
                                       "probabilities": p.probabilities}, ensure_ascii=False))
        else:
            typer.echo(f"wrote {len(preds)} predictions to {out}")
        return
    (pred,) = _run(api.predict, artifact, [Example(text=text, text_b=text_b, source="text")],
                   batch_size=batch_size, allow_model_mismatch=allow_model_mismatch, calibrate=calibrate, dtype=dtype,
                   quantize=quantize)
    if pred.tags is not None:
        typer.echo(" ".join(f"{word}/{tag}" for word, tag in zip(pred.text.split(" "), pred.tags)))
        return
    if not pred.probabilities:  # generation: the output text
        typer.echo(pred.label)
        return
    probs = "  ".join(f"{label} {p:.3f}" for label, p in sorted(pred.probabilities.items(), key=lambda kv: -kv[1]))
    typer.echo(f"{pred.label}\t{probs}")


def models():
    """List the embedded default models and whether they are installed."""
    from .. import api

    for row in api.list_models():
        typer.echo(f"{row['name']:<14} {row['status']:<36} {row['description']}")
        if row["status"] == "not installed":
            typer.echo(f"{'':<14} install: {row['install']}")
    typer.echo("Any Hugging Face model id (cached) or local model directory works as model.name too.")


def info(
    artifact: Path = typer.Argument(..., help="A prompt .safetensors file."),
    model: Optional[str] = typer.Option(None, help="Check that the prompt fits this base model."),
):
    """Show what a prompt file holds (method, task, base model, metrics) and check it fits a model."""
    from .. import api
    from ..core import PromptArtifact

    art = _run(PromptArtifact.load, artifact)
    meta = art.meta
    size = artifact.stat().st_size
    typer.echo(f"{artifact}: {size:,} bytes, {art.num_parameters:,} parameters")
    typer.echo(f"method   {meta.get('method')}  {json.dumps(meta.get('method_config', {}))}")
    task = meta.get("task", {})
    typer.echo(f"task     {task.get('kind')}  labels {task.get('labels')}  template {task.get('template')!r}")
    base = meta.get("base_model", {})
    typer.echo(f"base     {base.get('name')}  fingerprint {base.get('fingerprint')}  hidden {base.get('hidden_size')}")
    typer.echo(f"metrics  {json.dumps(meta.get('metrics', {}))}")
    if model:
        loaded = _run(api.load_model, model)
        _run(art.check_fits, loaded)
        typer.echo(f"fits {loaded.name} (fingerprint {loaded.fingerprint})")


def demo(
    output: Path = typer.Option(Path("runs/demo"), help="Run directory."),
    steps: int = typer.Option(60, help="Training steps."),
    model: str = typer.Option("smollm2-135m", help="Base model."),
):
    """Train a soft prompt on the bundled sentiment examples, evaluate it, then predict with the file."""
    from .. import api
    from ..configs import read_yaml

    examples = Path(__file__).parent.parent / "examples"
    config = read_yaml(examples / "demo.yaml")
    config["data"]["train"] = str(examples / config["data"]["train"])
    config["data"]["dev"] = str(examples / config["data"]["dev"])
    config["model"]["name"] = model
    config["output"] = str(output)
    config["training"]["steps"] = steps
    result = _run(api.train, config, log=typer.echo)
    typer.echo(f"\nartifact: {result.artifact} ({result.artifact.stat().st_size:,} bytes)")
    for text in ("An absolute delight from start to finish.", "I want those two hours of my life back."):
        (pred,) = _run(api.predict, result.artifact, [text])
        typer.echo(f"predict  {text!r} -> {pred.label} ({pred.probabilities[pred.label]:.2f})")
