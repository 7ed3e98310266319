"""`softprompt library ...`: store, find and export prompts; a thin shell over softprompt.library."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from .common import _LIB, _library, _run

library_app = typer.Typer(no_args_is_help=True, help="The prompt library: store, find and export prompts.")


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
                         ("file without index row", report.orphan_files), ("temporary file", report.temp_files),
                         ("link or path outside the store", getattr(report, "unsafe_paths", []))):
        for item in items:
            typer.echo(f"{label}: {item}{' (repaired)' if repair and label != 'changed file' else ''}")
    typer.echo(f"{report.entries} entries; {'consistent' if report.ok else 'repaired' if repair else 'problems found'}")
    if not report.ok and not repair:
        raise typer.Exit(1)
