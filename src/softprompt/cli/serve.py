"""`softprompt serve`: one base model, many prompts, over HTTP."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

import typer

from .common import _LIB, _QUANTIZE, _check_precision, _fail, _run


def serve(
    prompt: Optional[List[str]] = typer.Option(None, "--prompt", "-p",
                                               help="NAME=PATH of a prompt file to serve (repeatable)."),
    library_prompt: Optional[List[str]] = typer.Option(
        None, "--from-library", help="A library prompt to serve: NAME, NAME@VERSION, optionally =SERVED_NAME."),
    config: Optional[Path] = typer.Option(None, "--config", "-c",
                                          help="YAML: {model: ..., library: ..., prompts: {name: path | {library: ref}}}."),
    model: Optional[str] = typer.Option(None, "--model", "-m",
                                        help="Base model (default: the first prompt's own, else smollm2-135m)."),
    dtype: Optional[str] = typer.Option(
        None, "--dtype", help="Base model weights: auto (bfloat16 on a GPU or a CPU with AMX, else "
                              "float32) | float32 | bfloat16 | float16 (default: the --config YAML's dtype, else auto)."),
    quantize: Optional[str] = _QUANTIZE,
    library: Optional[Path] = _LIB,
    prompt_dir: Optional[List[Path]] = typer.Option(
        None, "--prompt-dir", help="A directory the admin route may load prompt files from (repeatable); "
                                   "without one, those of the prompt files served at start-up. A named "
                                   "--library is always one."),
    host: str = typer.Option("127.0.0.1", help="Address to bind (loopback by default)."),
    port: int = typer.Option(8000, help="Port."),
    max_queue: int = typer.Option(256, help="Requests waiting at most; past it, 429 with Retry-After."),
    max_tokens: int = typer.Option(512, help="New tokens per request at most."),
    timeout: float = typer.Option(120.0, help="Seconds a request may take before it is cancelled (504)."),
    max_batch_rows: int = typer.Option(32, help="Rows per forward pass over new requests."),
    max_running: int = typer.Option(64, help="Generation rows decoded together at most."),
    admin_token_file: Optional[Path] = typer.Option(
        None, help="File holding the bearer token of the admin routes (or set SOFTPROMPT_ADMIN_TOKEN); "
                   "without one they are off."),
    no_base: bool = typer.Option(False, "--no-base", help="Do not serve the base model itself under its own name."),
    log_level: str = typer.Option("info", help="uvicorn's log level (access logs are JSON lines on stderr)."),
    replicas: Optional[int] = typer.Option(  # \\[ray]: Rich would read [ray] as markup and drop it
        None, "--replicas", min=1, help="Serve with N replicas of this server on Ray Serve, behind Ray's HTTP "
                                        "proxy on --host/--port (a local Ray, started here; needs pip install "
                                        "'softprompt\\[ray]'). Without it: one process, no Ray."),
    replica_threads: int = typer.Option(1, "--replica-threads", min=1,
                                        help="With --replicas: torch threads (and Ray CPUs) per replica."),
    replica_gpus: float = typer.Option(0.0, "--replica-gpus", min=0.0, help="With --replicas: GPUs per replica."),
    prompt_set: Optional[Path] = typer.Option(
        None, "--prompt-set", help="With --replicas: the JSON file that keeps the set of prompts served (admin "
                                   "loads and unloads), read again at start (default: softprompt-served.json "
                                   "in the first prompt directory)."),
):
    """Serve prompts of one base model over HTTP: OpenAI-compatible completions and chat completions
    (`model` names a prompt), /v1/classify, /v1/tag, /metrics, /health and a page at /. With no
    prompts named, the bundled demo prompt on the embedded default model."""
    from ..serve import ServeSettings, build_registry, run

    _check_precision(dtype, quantize)
    if replicas is None and (replica_threads != 1 or replica_gpus or prompt_set is not None):
        _fail("--replica-threads, --replica-gpus and --prompt-set go with --replicas N")
    token = os.environ.get("SOFTPROMPT_ADMIN_TOKEN")
    if admin_token_file is not None:
        if not admin_token_file.is_file():
            _fail(f"{admin_token_file}: admin token file not found")
        token = admin_token_file.read_text(encoding="utf-8").strip()
        if not token:
            _fail(f"{admin_token_file}: the admin token file is empty")
    pairs = []
    for spec in prompt or []:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            _fail(f"--prompt {spec!r}: expected NAME=PATH")
        pairs.append((name, path))
    if replicas is not None:
        _replicated(replicas, replica_threads, replica_gpus, host=host, port=port, args={
            "model": model, "dtype": dtype, "quantize": quantize, "library": _absolute(library),
            "config": _absolute(config), "prompts": {n: _absolute(Path(p)) for n, p in pairs},
            "from_library": library_prompt or [], "prompt_dir": [_absolute(d) for d in prompt_dir or []],
            "prompt_set": _absolute(prompt_set), "serve_base": not no_base, "threads": replica_threads,
            "admin_token_file": _absolute(admin_token_file), "max_queue": max_queue, "max_batch_rows": max_batch_rows,
            "max_running": max_running, "max_tokens": max_tokens, "timeout": timeout})
        return
    registry = _run(build_registry, model=model, prompts=pairs, library_refs=library_prompt or [], config=config,
                    library=library, serve_base=not no_base, prompt_dirs=prompt_dir or [],
                    dtype=dtype, quantize=quantize,
                    engine_options={"max_queue": max_queue, "max_batch_rows": max_batch_rows,
                                    "max_running": max_running}, log=typer.echo)
    names = ", ".join(registry.names())
    typer.echo(f"serving {names} on {registry.base.name} at http://{host}:{port}/ (admin routes "
               f"{'on' if token else 'off'})", err=True)
    settings = ServeSettings(max_tokens=max_tokens, timeout=timeout, admin_token=token)
    run(registry, settings, host=host, port=port, log_level=log_level)


def _absolute(path: Optional[Path]) -> Optional[str]:
    return None if path is None else str(Path(path).absolute())


def _replicated(replicas: int, threads: int, gpus: float, *, host: str, port: int, args: dict) -> None:
    """`--replicas N`: the server on Ray Serve (softprompt.serve.ray), until SIGTERM or Ctrl-C."""
    try:
        from ..serve import ray as ray_serve
    except ImportError as exc:
        if (exc.name or "").split(".")[0] != "ray":
            raise
        _fail("--replicas needs Ray Serve, which is not installed: pip install 'softprompt[ray]'")
    args = {k: v for k, v in args.items() if v is not None}
    _run(ray_serve.serve_replicas, args, replicas=replicas, host=host, port=port, gpus=gpus,
         log=lambda line: typer.echo(line, err=True))
