"""`softprompt ppt ...`: pre-trained prompts from running text; a thin shell over softprompt.transfer.ppt."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import _fail, _run

ppt_app = typer.Typer(no_args_is_help=True, help="PPT: prompts pre-trained on self-supervised tasks from unlabelled text.")


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
    from ..transfer.ppt import ppt_examples, read_corpus, write_jsonl

    corpus = _run(read_corpus, text, window=window)
    examples = _run(ppt_examples, corpus, n, tasks=_tasks(tasks), n_options=options, seed=seed)
    typer.echo(f"wrote {len(examples)} examples -> {write_jsonl(examples, out)}")


@ppt_app.command("pretrain")
def ppt_pretrain(
    model: Annotated[str, typer.Argument(help="Base model: a name (smollm2-135m), HF id or local directory.")],
    text: Annotated[Path, typer.Argument(help="Running text: one sentence per line, or CoNLL token lines.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory; the prompt goes to OUT/prompt.safetensors.")],
    format: Annotated[str, typer.Option("--format", help="unified (lettered options), pair (answers yes / maybe / "
                                                         "no) or single (pseudo-labelled terrible ... great): "
                                                         "pre-train in the format the downstream task uses.")] = "unified",
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
    from ..training.distributed import processes
    from ..transfer.ppt import pretrain_prompt
    from ..transfer.spot import init_overrides

    path = _run(pretrain_prompt, model, text, out, format=format, steps=steps, n_examples=examples, tasks=_tasks(tasks),
                num_virtual_tokens=tokens, n_options=options, lr=lr, batch_size=batch_size, seed=seed, window=window,
                overrides=overrides or [], progress=True, log=typer.echo)
    if not processes().main:  # under a data-parallel launcher the main process reports
        return
    typer.echo(f"done: {path}")
    typer.echo("downstream init: " + " ".join(f'"{o}"' for o in init_overrides([path]))
               + f" method.num_virtual_tokens={tokens}")
