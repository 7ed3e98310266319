"""`softprompt serve`: one base model, many prompts, over HTTP (FastAPI on uvicorn).

`build_registry` loads the prompts a command line or a YAML file names onto one base model and its
engine; `create_app` puts the routes over them; `run` serves until SIGTERM or Ctrl-C, finishing the
requests in flight.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Sequence

from ..errors import ArtifactError, ConfigError
from .app import create_app
from .errors import APIError
from .registry import PromptNotFound, PromptRegistry, ServedPrompt, read_prompt_list
from .state import ServeSettings

__all__ = ["APIError", "PromptNotFound", "PromptRegistry", "ServeSettings", "ServedPrompt", "build_registry",
           "create_app", "demo_prompt", "run"]


def demo_prompt(log=print) -> Path:
    """The bundled demo prompt on the embedded default model, trained (once, about two minutes on a
    CPU) into the cache directory when it is not there yet."""
    from ..api import train
    from ..configs import read_yaml
    from ..models.loading import cache_dir

    path = cache_dir() / "demo" / "prompt.safetensors"
    if path.exists():
        return path
    log(f"training the demo prompt once into {path.parent} (60 steps on the bundled sentiment examples)...")
    examples = Path(__file__).resolve().parent.parent / "examples"
    config = read_yaml(examples / "demo.yaml")
    config["data"]["train"] = str(examples / config["data"]["train"])
    config["data"]["dev"] = str(examples / config["data"]["dev"])
    config["output"] = str(path.parent)
    train(config, progress=False, log=log)
    return path


def build_registry(*, model: str | None = None, prompts: Sequence[tuple[str, str]] = (), library_refs: Sequence[str] = (),
                   config: str | Path | None = None, library: str | Path | None = None, serve_base: bool = True,
                   engine_options: dict | None = None, prompt_dirs: Sequence[str | Path] = (),
                   dtype: str | None = None, quantize: str | None = None, log=print) -> PromptRegistry:
    """Load the base model and every named prompt (files as (name, path), library references, a
    YAML list); with none named, the bundled demo prompt on the embedded default model. prompt_dirs
    (and the YAML's prompt_dir): where admin loads may read files; none named, the directories of
    the prompt files loaded here. dtype: the base's weights (auto | float32 | bfloat16 | float16;
    None: the YAML's dtype, else auto); quantize: "int8" for its linear layers (None: the YAML's
    quantize, else none)."""
    from ..api import load_model
    from ..configs import ModelConfig
    from ..core import PromptArtifact
    from ..engine import Engine
    from ..models.precision import check_dtype
    from ..models.quantize import check_quantize

    prompts = list(prompts)
    library_refs = list(library_refs)
    prompt_dirs = [Path(d) for d in prompt_dirs]
    if config is not None:
        listed = read_prompt_list(config)
        model = model or listed.get("model")
        if dtype is None and listed.get("dtype") is not None:
            dtype = check_dtype(str(listed["dtype"]), f"{config}: dtype")
        if quantize is None and listed.get("quantize") is not None:
            quantize = check_quantize(str(listed["quantize"]), f"{config}: quantize")
        library = library or listed.get("library")
        prompt_dirs += [Path(d) for d in listed.get("prompt_dir", [])]
        for name, spec in listed["prompts"].items():
            if isinstance(spec, str):
                prompts.append((name, spec))
            else:
                library_refs.append(f"{spec['library']}={name}")
    for name, path in prompts:  # before the model loads: a typo costs no waiting
        if not Path(path).is_file():
            raise ArtifactError(f"{path}: prompt file not found (for --prompt {name}=...)")
    for folder in prompt_dirs:
        if not folder.is_dir():
            raise ConfigError(f"{folder}: prompt directory not found (--prompt-dir or prompt_dir)")
    if not prompts and not library_refs:
        prompts.append(("sentiment", str(demo_prompt(log))))
    if model is None:
        if prompts:
            model = PromptArtifact.load(prompts[0][1]).meta.get("base_model", {}).get("name")
        model = model or "smollm2-135m"
    base = load_model(ModelConfig(name=model, dtype=check_dtype(dtype or "auto", "dtype"),
                                  quantize=check_quantize(quantize, "quantize")))
    log(f"base model {base.name} in {base.precision}")
    engine = Engine(base, **(engine_options or {}))
    registry = PromptRegistry(base, engine, library, prompt_dirs or None)
    names = set()
    for name, path in prompts:
        if name in names:
            raise ConfigError(f"two prompts are named {name!r}")
        names.add(name)
        registry.add_file(name, path)
    for spec in library_refs:
        ref, _, name = spec.partition("=")
        served = registry.add_library(ref, name or None)
        if served.name in names:
            raise ConfigError(f"two prompts are named {served.name!r}")
        names.add(served.name)
    if serve_base and base.info.kind.value != "encoder" and base.name not in names:
        registry.add_base()
    return registry


def run(registry: PromptRegistry, settings: ServeSettings, host: str = "127.0.0.1", port: int = 8000,
        log_level: str = "info") -> None:
    """Serve until SIGTERM or Ctrl-C: new connections stop, requests in flight finish, the engine drains."""
    import uvicorn

    access = logging.getLogger("softprompt.access")
    if not access.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        access.addHandler(handler)
        access.setLevel(logging.INFO)
        access.propagate = False
    app = create_app(registry, settings)
    # keep-alive 30 s, not uvicorn's 5: a client that waits out a 429's Retry-After, or pauses between
    # requests, should not race the server closing its idle connection (seen as a read error at 500 clients)
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False, timeout_graceful_shutdown=30,
                timeout_keep_alive=30)
