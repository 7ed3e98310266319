"""`softprompt transfer ...` (zero-shot transfer, source ranking, cross-model projection) and
`softprompt similarity`: thin shells over softprompt.transfer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from .common import _LIB, _fail, _library, _run

transfer_app = typer.Typer(no_args_is_help=True, help="Reuse prompts across tasks: zero-shot transfer and source ranking.")


def similarity(
    prompts: Annotated[list[str], typer.Argument(help="Prompt files or library names (name[:version]), two or more.")],
    measure: Annotated[str, typer.Option(help="cosine | cosine_mean | euclidean | neurons")] = "cosine_mean",
    csv: Annotated[Path | None, typer.Option("--csv", help="Write the matrix as CSV here.")] = None,
    png: Annotated[Path | None, typer.Option("--png", help="Draw a heatmap PNG here.")] = None,
    model: Annotated[str | None, typer.Option(help="Base model for --measure neurons (default: the prompts' own).")] = None,
    probe: Annotated[str | None, typer.Option(help="Probe text for --measure neurons.")] = None,
    library: Path | None = _LIB,
):
    """Similarity matrix of prompts of one base model (TPT measures), printed and optionally saved."""
    from .. import api
    from ..transfer import similarity as sim

    if len(prompts) < 2:
        _fail("give at least two prompts to compare")
    lib = None
    arts = []
    for item in prompts:
        if Path(item).exists() or item.endswith(".safetensors"):
            from ..core import PromptArtifact

            arts.append(_run(PromptArtifact.load, item))
        else:
            lib = lib or _library(library)
            arts.append(_run(lib.load, item))
    names = [Path(p).stem if p.endswith(".safetensors") else p for p in prompts]
    base = None
    if measure == "neurons":
        base = _run(api.load_model, model or arts[0].meta.get("base_model", {}).get("name", ""))
    matrix = _run(sim.similarity_matrix, arts, measure, names=names, base=base, probe=probe or sim.DEFAULT_PROBE)
    width = max(len(n) for n in names)
    typer.echo(" " * width + "  " + "  ".join(f"{n[:10]:>10}" for n in names))
    for n, row in zip(names, matrix.values):
        typer.echo(f"{n:<{width}}  " + "  ".join(f"{v:>10.4f}" for v in row))
    if csv:
        typer.echo(f"wrote {matrix.to_csv(csv)}")
    if png:
        typer.echo(f"wrote {matrix.heatmap(png)}")


def _label_map(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        if "=" not in pair:
            _fail(f"--map {pair!r} must look like target_label=source_label")
        target, source = pair.split("=", 1)
        out[target] = source
    return out


@transfer_app.command("zero-shot")
def transfer_zero_shot(
    source: Annotated[str, typer.Argument(help="Source prompt: a file or a library name[:version].")],
    data: Annotated[Path, typer.Argument(help="Labelled target examples.")],
    target_config: Annotated[Path | None, typer.Option(help="Target run config: its task (template, words) is used.")] = None,
    label_map: Annotated[list[str] | None, typer.Option("--map", help="target_label=source_label (repeat).")] = None,
    format: Annotated[str, typer.Option(help="Format of DATA.")] = "auto",
    limit: Annotated[int | None, typer.Option(help="Score only the first N examples.")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    library: Path | None = _LIB,
):
    """Apply a source task's prompt directly to a target task and report its scores."""
    from ..configs import load_run_config
    from ..core import PromptArtifact
    from ..tasks.metrics import format_report
    from ..transfer import zero_shot

    art = _run(PromptArtifact.load, source) if Path(source).exists() else _run(_library(library).load, source)
    task = None
    if target_config is not None:
        task = dict(_run(load_run_config, target_config).task)
        task.setdefault("labels", list((task.get("verbalizer") or {}).keys()) or None)
    metrics = _run(zero_shot, art, data, target_task=task, label_map=_label_map(label_map or []) or None,
                   format=format, limit=limit)
    typer.echo(json.dumps(metrics, indent=1) if as_json else format_report(metrics))


@transfer_app.command("rank")
def transfer_rank(
    config: Annotated[Path, typer.Argument(help="Target run config (its data and task).")],
    sources: Annotated[list[str] | None, typer.Argument(help="Source prompts (files or library names); default: the whole library.")] = None,
    by: Annotated[str, typer.Option(help="spot (short target run, prompt similarity) | zero_shot (TPT).")] = "spot",
    k: Annotated[int, typer.Option("--k", "-k", help="Show the top k.")] = 3,
    steps: Annotated[int, typer.Option(help="spot: training steps of the target's task embedding.")] = 30,
    limit: Annotated[int | None, typer.Option(help="zero_shot: score on the first N dev examples.")] = None,
    library: Path | None = _LIB,
):
    """Rank source prompts for a target task; prints the top k and the overrides to start from them."""
    from ..transfer import rank_sources, weighted_average_init

    lib = _library(library) if (not sources or any(not Path(s).exists() for s in sources)) else None
    from ..transfer.retrieval import resolve_sources

    found = _run(resolve_sources, lib if not sources else sources, lib)
    ranked = _run(rank_sources, config, found, by=by, k=k, steps=steps, limit=limit, log=typer.echo)
    for i, r in enumerate(ranked, 1):
        typer.echo(f"{i}. {r.name:<24} {r.score:.4f}  {r.path or ''}")
    if ranked and all(r.path for r in ranked):
        overrides = weighted_average_init([(r.path, r.score) for r in ranked])
        typer.echo("weighted-average init: " + " ".join(f'"{o}"' for o in overrides))


@transfer_app.command("project")
def transfer_project(
    artifact: Annotated[Path, typer.Argument(help="A prompt of the projector's source model.")],
    projector: Annotated[Path, typer.Option(help="Projector file (fit-projector or vocab-projector).")],
    model: Annotated[str, typer.Option(help="Target model (the projector's target).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Projected prompt file to write.")],
    target_config: Annotated[Path | None, typer.Option(help="Record this run config's task (template, words) instead of the source's.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the new artifact's metadata.")] = False,
):
    """Project a prompt to another base model; the result loads on the target like any prompt."""
    from .. import api
    from ..configs import load_run_config
    from ..transfer.projector import project

    task = None
    if target_config is not None:
        task = dict(_run(load_run_config, target_config).task)
        task.setdefault("labels", list((task.get("verbalizer") or {}).keys()) or None)
    base = _run(api.load_model, model)
    moved = _run(project, artifact, projector, base, task=task)
    path = moved.save(out)
    typer.echo(json.dumps(moved.meta, indent=1, default=str) if as_json else f"projected {artifact} -> {path} "
               f"(for {base.name}, fingerprint {base.fingerprint})")


@transfer_app.command("fit-projector")
def transfer_fit_projector(
    pairs: Annotated[list[str], typer.Argument(help="SOURCE.safetensors=TARGET.safetensors: prompts of one task on both models.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Projector file to write (.safetensors).")],
    kind: Annotated[str, typer.Option(help="linear (closed-form ridge) or mlp.")] = "linear",
    hidden: Annotated[int, typer.Option(help="mlp: hidden width.")] = 256,
    ridge: float = 1e-3,
    steps: Annotated[int, typer.Option(help="mlp: Adam steps.")] = 500,
):
    """Fit a projector token by token on paired prompts (the same tasks on a source and a target model)."""
    from ..transfer.projector import fit_from_artifacts

    split = []
    for pair in pairs:
        source, sep, target = pair.partition("=")
        if not sep or not source or not target:
            _fail(f"{pair!r}: give each pair as SOURCE.safetensors=TARGET.safetensors")
        split.append((source, target))
    projector = _run(fit_from_artifacts, split, kind=kind, hidden=hidden, ridge=ridge, steps=steps)
    typer.echo(f"projector {projector.meta['source'].get('name')} -> {projector.meta['target'].get('name')} "
               f"({projector.kind.value}, {len(split)} pairs) -> {projector.save(out)}")


@transfer_app.command("vocab-projector")
def transfer_vocab_projector(
    source_model: Annotated[str, typer.Argument(help="Model the prompts come from.")],
    target_model: Annotated[str, typer.Argument(help="Model the prompts go to.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Projector file to write (.safetensors).")],
    ridge: float = 1e-2,
    max_words: Annotated[int, typer.Option(help="At most this many shared words as anchors.")] = 20000,
):
    """Fit a linear projector between two models' input embeddings of shared single-token words (no prompts needed)."""
    from .. import api
    from ..transfer.projector import vocab_projector

    base_a, base_b = _run(api.load_model, source_model), _run(api.load_model, target_model)
    projector = _run(vocab_projector, base_a, base_b, ridge=ridge, max_words=max_words)
    typer.echo(f"projector {base_a.name} -> {base_b.name} on {projector.meta['fit']['anchors']} shared words "
               f"-> {projector.save(out)}")
