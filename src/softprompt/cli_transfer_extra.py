"""`softprompt ppt ...` (pre-trained prompts from running text) and `softprompt transfer project ...`,
`fit-projector`, `vocab-projector` (cross-model transfer): thin shells over softprompt.transfer.ppt
and softprompt.transfer.projector. cli.py calls `register(app)`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from .cli_common import _fail, _run

ppt_app = typer.Typer(no_args_is_help=True, help="PPT: prompts pre-trained on self-supervised tasks from unlabelled text.")


def register(app: typer.Typer) -> None:
    """Add `ppt` and the projector commands (under `transfer`) to the main app."""
    from .cli_library import transfer_app

    app.add_typer(ppt_app, name="ppt")
    transfer_app.command("project")(transfer_project)
    transfer_app.command("fit-projector")(transfer_fit_projector)
    transfer_app.command("vocab-projector")(transfer_vocab_projector)


def _tasks(value: str) -> list[str]:
    tasks = [t.strip() for t in value.split(",") if t.strip()]
    if not tasks or set(tasks) - {"pair", "choice"}:
        _fail(f"--tasks {value!r}: give pair, choice or pair,choice")
    return tasks


@ppt_app.command("examples")
def ppt_examples_cmd(
    text: Annotated[Path, typer.Argument(help="Running text: one sentence per line, or CoNLL token lines.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="JSONL file to write ({text, text_b, label}).")],
    n: Annotated[int, typer.Option("--n", help="Number of examples.")] = 300,
    tasks: Annotated[str, typer.Option(help="pair (3-class sentence pair), choice (next sentence), or both.")] = "pair,choice",
    options: Annotated[int, typer.Option(help="Options per next-sentence question.")] = 3,
    window: Annotated[int, typer.Option(help="Sentences per pseudo-document when the text has no -DOCSTART-.")] = 20,
    seed: int = 0,
):
    """Write the self-supervised examples in the unified multiple-choice format (to inspect or train on)."""
    from .transfer.ppt import ppt_examples, read_corpus, write_jsonl

    corpus = _run(read_corpus, text, window=window)
    examples = _run(ppt_examples, corpus, n, tasks=_tasks(tasks), n_options=options, seed=seed)
    typer.echo(f"wrote {len(examples)} examples -> {write_jsonl(examples, out)}")


@ppt_app.command("pretrain")
def ppt_pretrain(
    model: Annotated[str, typer.Argument(help="Base model: a name (smollm2-135m), HF id or local directory.")],
    text: Annotated[Path, typer.Argument(help="Running text: one sentence per line, or CoNLL token lines.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory; the prompt goes to OUT/prompt.safetensors.")],
    steps: Annotated[int, typer.Option(help="Training steps.")] = 200,
    examples: Annotated[int, typer.Option(help="Self-supervised examples to generate.")] = 2000,
    tokens: Annotated[int, typer.Option(help="Virtual tokens (downstream runs must use the same number).")] = 20,
    tasks: Annotated[str, typer.Option(help="pair, choice, or pair,choice.")] = "pair,choice",
    options: Annotated[int, typer.Option(help="Options per next-sentence question.")] = 3,
    lr: float = 0.03,
    batch_size: int = 8,
    window: Annotated[int, typer.Option(help="Sentences per pseudo-document when the text has no -DOCSTART-.")] = 20,
    seed: int = 0,
    overrides: Annotated[list[str] | None, typer.Argument(help="key=value overrides of the run config.")] = None,
):
    """Pre-train a prompt on self-supervised tasks; prints the overrides that start a downstream run from it."""
    from .transfer.ppt import pretrain_prompt
    from .transfer.spot import init_overrides

    path = _run(pretrain_prompt, model, text, out, steps=steps, n_examples=examples, tasks=_tasks(tasks),
                num_virtual_tokens=tokens, n_options=options, lr=lr, batch_size=batch_size, seed=seed, window=window,
                overrides=overrides or [], progress=True, log=typer.echo)
    typer.echo(f"done: {path}")
    typer.echo("downstream init: " + " ".join(f'"{o}"' for o in init_overrides([path]))
               + f" method.num_virtual_tokens={tokens}")


def transfer_fit_projector(
    pairs: Annotated[list[str], typer.Argument(help="SOURCE.safetensors=TARGET.safetensors: prompts of one task on both models.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Projector file to write (.safetensors).")],
    kind: Annotated[str, typer.Option(help="linear (closed-form ridge) or mlp.")] = "linear",
    hidden: Annotated[int, typer.Option(help="mlp: hidden width.")] = 256,
    ridge: float = 1e-3,
    steps: Annotated[int, typer.Option(help="mlp: Adam steps.")] = 500,
):
    """Fit a projector token by token on paired prompts (the same tasks on a source and a target model)."""
    from .transfer.projector import fit_from_artifacts

    split = []
    for pair in pairs:
        source, sep, target = pair.partition("=")
        if not sep or not source or not target:
            _fail(f"{pair!r}: give each pair as SOURCE.safetensors=TARGET.safetensors")
        split.append((source, target))
    projector = _run(fit_from_artifacts, split, kind=kind, hidden=hidden, ridge=ridge, steps=steps)
    typer.echo(f"projector {projector.meta['source'].get('name')} -> {projector.meta['target'].get('name')} "
               f"({projector.kind.value}, {len(split)} pairs) -> {projector.save(out)}")


def transfer_vocab_projector(
    source_model: Annotated[str, typer.Argument(help="Model the prompts come from.")],
    target_model: Annotated[str, typer.Argument(help="Model the prompts go to.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Projector file to write (.safetensors).")],
    ridge: float = 1e-2,
    max_words: Annotated[int, typer.Option(help="At most this many shared words as anchors.")] = 20000,
):
    """Fit a linear projector between two models' input embeddings of shared single-token words (no prompts needed)."""
    from . import api
    from .transfer.projector import vocab_projector

    base_a, base_b = _run(api.load_model, source_model), _run(api.load_model, target_model)
    projector = _run(vocab_projector, base_a, base_b, ridge=ridge, max_words=max_words)
    typer.echo(f"projector {base_a.name} -> {base_b.name} on {projector.meta['fit']['anchors']} shared words "
               f"-> {projector.save(out)}")


def transfer_project(
    artifact: Annotated[Path, typer.Argument(help="A prompt of the projector's source model.")],
    projector: Annotated[Path, typer.Option(help="Projector file (fit-projector or vocab-projector).")],
    model: Annotated[str, typer.Option(help="Target model (the projector's target).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Projected prompt file to write.")],
    target_config: Annotated[Path | None, typer.Option(help="Record this run config's task (template, words) instead of the source's.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the new artifact's metadata.")] = False,
):
    """Project a prompt to another base model; the result loads on the target like any prompt."""
    from . import api
    from .configs import load_run_config
    from .transfer.projector import project

    task = None
    if target_config is not None:
        task = dict(_run(load_run_config, target_config).task)
        task.setdefault("labels", list((task.get("verbalizer") or {}).keys()) or None)
    base = _run(api.load_model, model)
    moved = _run(project, artifact, projector, base, task=task)
    path = moved.save(out)
    typer.echo(json.dumps(moved.meta, indent=1, default=str) if as_json else f"projected {artifact} -> {path} "
               f"(for {base.name}, fingerprint {base.fingerprint})")
