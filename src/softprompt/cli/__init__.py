"""The `softprompt` command: a thin shell over softprompt.api.

One module per command group; this file builds the app and names every command and group in one
place (importing a command module registers nothing by itself). A new group is a module with its
functions or its own Typer app, added to the lists below.
"""

from __future__ import annotations

import os
import sys

import typer

from . import interop, library, ppt, run, search, serve, sweep, transfer
from .common import _STATE

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Prompt learning for frozen transformers: train, evaluate and use kilobyte task prompts.",
    pretty_exceptions_enable=False,
)


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", help="Show tracebacks instead of one-line errors.")):
    _STATE["debug"] = debug


# Commands in the order `softprompt --help` lists them, then the groups.
COMMANDS = {
    "train": run.train,
    "eval": run.eval_,
    "predict": run.predict,
    "sweep": sweep.sweep,
    "models": run.models,
    "info": run.info,
    "demo": run.demo,
    "similarity": transfer.similarity,
    "search": search.search,
    "inspect": search.inspect,
    "serve": serve.serve,
    "import-peft": interop.import_peft,
    "export": interop.export,
}
GROUPS = {
    "library": library.library_app,
    "transfer": transfer.transfer_app,
    "ppt": ppt.ppt_app,
}

for _name, _function in COMMANDS.items():
    app.command(_name)(_function)
for _name, _group in GROUPS.items():
    app.add_typer(_group, name=_name)


def main():
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        app()
    except BrokenPipeError:
        sys.exit(0)
