"""What every command module shares: one-line errors with exit code 2, the --debug switch, and the
--library option with its opener."""

from __future__ import annotations

import errno
from pathlib import Path

import typer

_STATE = {"debug": False}

_LIB = typer.Option(None, "--library", "-L", envvar="SOFTPROMPT_LIBRARY",
                    help="Library directory (default: $SOFTPROMPT_LIBRARY or ~/.local/share/softprompt/library).")


_DTYPE = typer.Option("auto", "--dtype", help="Base model weights: auto (bfloat16 on a GPU or a CPU with AMX, "
                                                  "else float32) | float32 | bfloat16 | float16.")


_QUANTIZE = typer.Option(None, "--quantize", help="int8: the base's linear layers as int8 (torchao), for inference.")


def _check_precision(dtype: str | None, quantize: str | None = None) -> None:
    """One error line (exit 2) for a --dtype or --quantize that is not one of the names, before anything loads."""
    from ..models.precision import check_dtype
    from ..models.quantize import check_quantize

    if dtype is not None:
        _run(check_dtype, dtype, "--dtype")
    _run(check_quantize, quantize, "--quantize")


def _fail(message: str, code: int = 2):
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _run(fn, *args, **kwargs):
    """Call an API function; user errors become one line on stderr and exit code 2."""
    from ..errors import SoftpromptError

    try:
        return fn(*args, **kwargs)
    except SoftpromptError as exc:
        if _STATE["debug"]:
            raise
        _fail(str(exc))
    except OSError as exc:
        # a full or read-only disk while writing run files (config, history, metrics): one line, not a traceback
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS) or _STATE["debug"]:
            raise
        _fail(f"cannot write {exc.filename or 'a file'}: {exc.strerror}")
    except KeyboardInterrupt:
        typer.echo("interrupted: the last finished step is checkpointed; run again with --resume", err=True)
        raise typer.Exit(130)


def _library(root: Path | None):
    """The prompt library at root (default location when None), or one error line."""
    from ..library import Library

    return _run(Library, root)
