"""`softprompt library`, `softprompt similarity` and `softprompt transfer`: thin shells over
softprompt.library and softprompt.transfer. cli.py calls `register(app)`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from .cli_common import _fail, _run

library_app = typer.Typer(no_args_is_help=True, help="The prompt library: store, find and export prompts.")
transfer_app = typer.Typer(no_args_is_help=True, help="Reuse prompts across tasks: zero-shot transfer and source ranking.")

_LIB = typer.Option(None, "--library", "-L", envvar="SOFTPROMPT_LIBRARY",
                    help="Library directory (default: $SOFTPROMPT_LIBRARY or ~/.local/share/softprompt/library).")


def register(app: typer.Typer) -> None:
    """Add the library, similarity and transfer commands to the main app."""
    app.add_typer(library_app, name="library")
    app.add_typer(transfer_app, name="transfer")
    app.command("similarity")(similarity)


def _library(root: Path | None):
    from .library import Library

    return _run(Library, root)


def _table(entries_scores, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_lines=False)
    for column in ("name", "ver", "task", "method", "base", "labels", "score", "similarity"):
        table.add_column(column, justify="right" if column in ("ver", "score", "similarity") else "left")
    has_similarity = any(s is not None for _, s in entries_scores)
    for e, s in entries_scores:
        labels = ",".join(e.labels[:6]) + ("..." if len(e.labels) > 6 else "")
        table.add_row(e.name, str(e.version), e.task, e.method, f"{e.base_name or '?'} ({(e.fingerprint or '?')[:8]})",
                      labels, "" if e.score is None else f"{e.score:.4f}", "" if s is None else f"{s:.4f}")
    if not has_similarity:
        table.columns.pop()
    Console(width=160).print(table)


@library_app.command("add")
def library_add(
    artifact: Annotated[Path, typer.Argument(help="A prompt .safetensors file.")],
    name: Annotated[str | None, typer.Option(help="Name in the library (default: the artifact's run name).")] = None,
    task: Annotated[str | None, typer.Option(help="Task it solves, e.g. sst2 (default: the name).")] = None,
    description: Annotated[str, typer.Option(help="Free text, searchable.")] = "",
    library: Path | None = _LIB,
):
    """Store a copy of a prompt as the next version of its name."""
    lib = _library(library)
    entry = _run(lib.add, artifact, name, task=task, description=description)
    typer.echo(f"added {entry.ref} ({entry.method}, task {entry.task}, base {entry.base_name}) -> {entry.path}")


@library_app.command("list")
def library_list(
    all_versions: Annotated[bool, typer.Option("--all-versions", help="Every version, not only the latest.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    library: Path | None = _LIB,
):
    """List the stored prompts (latest version of each name)."""
    lib = _library(library)
    entries = _run(lib.entries, all_versions=all_versions)
    if as_json:
        for e in entries:
            typer.echo(json.dumps(e.to_dict()))
    elif not entries:
        typer.echo(f"the library {lib.root} is empty")
    else:
        _table([(e, None) for e in entries], f"{lib.root} ({len(entries)} prompts)")


@library_app.command("show")
def library_show(
    ref: Annotated[str, typer.Argument(help="name (latest version) or name:version")],
    library: Path | None = _LIB,
):
    """Everything the index and the file record about one stored prompt (JSON)."""
    lib = _library(library)
    entry = _run(lib.get, ref)
    artifact = _run(lib.load, ref)
    typer.echo(json.dumps({**entry.to_dict(), "meta": artifact.meta}, indent=1, default=str))


@library_app.command("search")
def library_search(
    task: Annotated[str | None, typer.Option(help="Only this task.")] = None,
    method: Annotated[str | None, typer.Option(help="Only this method.")] = None,
    fingerprint: Annotated[str | None, typer.Option(help="Only prompts for this base-model fingerprint.")] = None,
    label: Annotated[str | None, typer.Option(help="Only prompts whose label set has this label.")] = None,
    text: Annotated[str | None, typer.Option(help="Substring of name, task or description.")] = None,
    similar_to: Annotated[str | None, typer.Option(help="Rank by similarity to this prompt (file or name[:version]).")] = None,
    k: Annotated[int | None, typer.Option("--k", "-k", help="At most k results.")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    library: Path | None = _LIB,
):
    """Find stored prompts by task, method, base model, label or text, or by similarity to a prompt."""
    lib = _library(library)
    found = _run(lib.search, task=task, method=method, fingerprint=fingerprint, label=label, text=text,
                 similar_to=similar_to, k=k)
    if as_json:
        for e, s in found:
            typer.echo(json.dumps({**e.to_dict(), "similarity": s}))
    elif not found:
        typer.echo("no matching prompts")
    else:
        _table(found, f"{len(found)} matching prompts")


@library_app.command("rm")
def library_rm(
    ref: Annotated[str, typer.Argument(help="name (latest version) or name:version")],
    all_versions: Annotated[bool, typer.Option("--all-versions", help="Remove every version of the name.")] = False,
    library: Path | None = _LIB,
):
    """Remove a stored prompt (its index row, then its file)."""
    lib = _library(library)
    for e in _run(lib.remove, ref, all_versions=all_versions):
        typer.echo(f"removed {e.ref}")


@library_app.command("export")
def library_export(
    ref: Annotated[str, typer.Argument(help="name (latest version) or name:version")],
    destination: Annotated[Path, typer.Argument(help="A file, or a directory (file named <name>-v<version>).")],
    library: Path | None = _LIB,
):
    """Copy a stored prompt out of the library."""
    lib = _library(library)
    typer.echo(f"exported {ref} -> {_run(lib.export, ref, destination)}")


@library_app.command("check")
def library_check(
    repair: Annotated[bool, typer.Option("--repair", help="Drop rows without files and files without rows.")] = False,
    rebuild: Annotated[bool, typer.Option("--rebuild", help="Recreate the index from the stored files first.")] = False,
    library: Path | None = _LIB,
):
    """Compare the index with the stored files (after a crash: --repair, or --rebuild for a lost index)."""
    lib = _library(library)
    if rebuild:
        typer.echo(f"rebuilt the index from {_run(lib.rebuild)} stored files")
    report = _run(lib.check, repair=repair)
    for label, items in (("missing file", report.missing_files), ("changed file", report.bad_hashes),
                         ("file without index row", report.orphan_files), ("temporary file", report.temp_files)):
        for item in items:
            typer.echo(f"{label}: {item}{' (repaired)' if repair and label != 'changed file' else ''}")
    typer.echo(f"{report.entries} entries; {'consistent' if report.ok else 'repaired' if repair else 'problems found'}")
    if not report.ok and not repair:
        raise typer.Exit(1)


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
    from . import api
    from .transfer import similarity as sim

    if len(prompts) < 2:
        _fail("give at least two prompts to compare")
    lib = None
    arts = []
    for item in prompts:
        if Path(item).exists() or item.endswith(".safetensors"):
            from .core import PromptArtifact

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
    from .configs import load_run_config
    from .core import PromptArtifact
    from .tasks.metrics import format_report
    from .transfer import zero_shot

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
    from .transfer import rank_sources, weighted_average_init

    lib = _library(library) if (not sources or any(not Path(s).exists() for s in sources)) else None
    from .transfer.retrieval import resolve_sources

    found = _run(resolve_sources, lib if not sources else sources, lib)
    ranked = _run(rank_sources, config, found, by=by, k=k, steps=steps, limit=limit, log=typer.echo)
    for i, r in enumerate(ranked, 1):
        typer.echo(f"{i}. {r.name:<24} {r.score:.4f}  {r.path or ''}")
    if ranked and all(r.path for r in ranked):
        overrides = weighted_average_init([(r.path, r.score) for r in ranked])
        typer.echo("weighted-average init: " + " ".join(f'"{o}"' for o in overrides))
