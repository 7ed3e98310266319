"""What every command module shares: one-line errors with exit code 2, and the --debug switch."""

from __future__ import annotations

import typer

_STATE = {"debug": False}


def _fail(message: str, code: int = 2):
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _run(fn, *args, **kwargs):
    """Call an API function; user errors become one line on stderr and exit code 2."""
    from .errors import SoftpromptError

    try:
        return fn(*args, **kwargs)
    except SoftpromptError as exc:
        if _STATE["debug"]:
            raise
        _fail(str(exc))
    except KeyboardInterrupt:
        typer.echo("interrupted: the last finished step is checkpointed; run again with --resume", err=True)
        raise typer.Exit(130)
