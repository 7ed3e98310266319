"""The prompts a server answers for: loaded from files, the prompt library or a YAML list, checked
against the one base model, registered with the engine; replaced or removed while serving.

A prompt that fails its checks (another base model, a corrupt file) raises before anything changes,
so the prompts already served keep serving. Requests in flight keep the entry they started with.
Files loaded while serving must lie under the directories the operator named (`confined`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..api import LoadedPrompt, Prediction, load_prompt
from ..engine import Engine, EnginePrompt
from ..errors import ConfigError, DataError, SoftpromptError
from ..models import BaseModel, ModelKind
from ..tasks.generation import GenerationTask
from ..tasks.runner import TaskPrompt, register_units


class PromptNotFound(DataError):
    """No prompt of that name is loaded."""


class PathRefused(SoftpromptError):
    """A prompt file outside the directories the server may load from while serving."""


def confined(path: str | Path, roots: Sequence[Path]) -> Path:
    """The path with its symbolic links resolved, when that lies under one of roots (resolved
    directories); PathRefused otherwise, naming only the path: the answer should not map the disk
    for whoever holds the admin token, nor say which directories are allowed."""
    refused = PathRefused(f"{path}: not under a directory this server loads prompts from")
    given = Path(path)
    if ".." in given.parts or not roots:  # refused as written, whatever it would resolve to
        raise refused
    try:
        resolved = given.resolve()
    except (OSError, RuntimeError, ValueError):  # a loop of links, a NUL byte
        raise refused from None
    if not any(resolved.is_relative_to(root) for root in roots):
        raise refused
    return resolved


BASE_SOURCE = "base model"  # the source of the base model's own entry


@dataclass
class ServedPrompt:
    """A loaded prompt as the server sees it."""

    name: str
    unit: TaskPrompt
    entry: EnginePrompt
    method: str
    source: str
    bytes: int | None = None
    metrics: dict = field(default_factory=dict)
    path: Path | None = None  # the file it was loaded from (None: a library entry or the base model)

    @property
    def task(self):
        return self.unit.task

    @property
    def kind(self) -> str:
        return self.unit.task.kind

    @property
    def labels(self) -> list[str]:
        return list(getattr(self.unit.task, "labels", []))

    @property
    def parameters(self) -> int:
        tensors = self.entry.tensors
        if tensors is None:
            return 0
        return (tensors.input.numel() if tensors.input is not None else 0) + sum(
            t.numel() for t in (tensors.deep or {}).values())

    @property
    def template(self) -> str | None:
        template = getattr(self.unit.task, "template", None)
        return getattr(template, "source", None) if template is not None else None

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "method": self.method, "kind": self.kind, "view": self.task.view, "labels": self.labels,
                "parameters": self.parameters, "bytes": self.bytes, "metrics": self.metrics, "source": self.source,
                "template": self.template}


def prediction(served: ServedPrompt, logits) -> Prediction:
    """Label and every label's probability from a classification prompt's logits."""
    import torch

    probs = torch.softmax(logits.float(), -1).tolist()
    labels = served.labels
    best = max(range(len(probs)), key=probs.__getitem__)
    return Prediction(labels[best], dict(zip(labels, probs)))


class PromptRegistry:
    """Named prompts of one base model, registered with its engine."""

    def __init__(self, base: BaseModel, engine: Engine, library: str | Path | None = None,
                 prompt_dirs: Sequence[str | Path] | None = None):
        """prompt_dirs: the directories prompt files may be loaded from while serving (None: those of the
        prompt files loaded before serving starts; see load_roots)."""
        self.base = base
        self.engine = engine
        self.library_root = library
        self.prompt_dirs = None if prompt_dirs is None else [Path(d) for d in prompt_dirs]
        self._prompts: dict[str, ServedPrompt] = {}
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._prompts)

    def all(self) -> list[ServedPrompt]:
        with self._lock:
            return [self._prompts[n] for n in sorted(self._prompts)]

    def get(self, name: str) -> ServedPrompt:
        with self._lock:
            served = self._prompts.get(name)
        if served is None:
            known = ", ".join(self.names()) or "none"
            raise PromptNotFound(f"no prompt named {name!r} is loaded (loaded: {known})")
        return served

    def load_roots(self) -> list[Path]:
        """The directories (resolved) that prompt files may be loaded from while serving: the named
        prompt directories, else the directories of the prompt files served now; and the library,
        when one was named. The server takes them once, at start-up."""
        dirs = self.prompt_dirs if self.prompt_dirs is not None else [s.path.parent for s in self.all() if s.path]
        if self.library_root is not None:
            dirs = [*dirs, Path(self.library_root)]
        return list(dict.fromkeys(d.resolve() for d in dirs))

    def _register(self, name: str, unit: TaskPrompt, method: str, source: str, bytes_: int | None,
                  metrics: Mapping | None, path: Path | None = None) -> ServedPrompt:
        unit.key = name
        entry = register_units(self.engine, {name: unit})[name]
        served = ServedPrompt(name, unit, entry, method, source, bytes_, dict(metrics or {}), path)
        with self._lock:
            self._prompts[name] = served
        return served

    def add_loaded(self, name: str, loaded: LoadedPrompt, source: str, path: Path | None = None) -> ServedPrompt:
        """Serve an attached prompt under name (replacing one of that name); path: the file it came from."""
        if loaded.base is not self.base:
            raise ConfigError(f"prompt {name!r} is attached to another base model object than the server's")
        artifact = loaded.artifact
        size = artifact.path.stat().st_size if artifact.path is not None and artifact.path.exists() else None
        metrics = artifact.meta.get("metrics", {}).get("dev", {})
        return self._register(name, loaded.unit, artifact.method, source, size, metrics, path)

    def add_file(self, name: str, path: str | Path) -> ServedPrompt:
        """Load a prompt file (checked against the base model) and serve it under name."""
        loaded = load_prompt(path, self.base, key=name)
        return self.add_loaded(name, loaded, str(path), Path(path).resolve())

    def add_library(self, ref: str, name: str | None = None) -> ServedPrompt:
        """Load a prompt from the library ('name', 'name@version' or 'name:version') and serve it."""
        from ..library import Library

        ref = ref.replace("@", ":")
        library = Library(self.library_root)
        entry = library.get(ref)
        loaded = load_prompt(entry.path, self.base, key=name or entry.name)
        return self.add_loaded(name or entry.name, loaded, f"library:{entry.name}:{entry.version}")

    def add_base(self) -> ServedPrompt:
        """The base model itself, no prompt, its input as written: served under its own name for
        completions (causal LMs and encoder-decoders)."""
        if self.base.info.kind is ModelKind.ENCODER:
            raise ConfigError("an encoder has no completions to serve without a prompt")
        task = GenerationTask.for_base(self.base)
        return self._register(self.base.name, TaskPrompt(self.base.name, None, task), "none", BASE_SOURCE, 0, {})

    def remove(self, name: str) -> None:
        self.get(name)
        with self._lock:
            self._prompts.pop(name, None)
        self.engine.remove_prompt(name)


def read_prompt_list(path: str | Path) -> dict[str, Any]:
    """A YAML file of prompts to serve: {model: ..., dtype: ..., quantize: ..., library: ...,
    prompt_dir: dir | [dirs], prompts: {name: path | {library: ref}}}; relative paths are relative to
    the file's folder, and prompt_dir comes back as a list."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict) or not isinstance(data.get("prompts"), dict) or not data["prompts"]:
        raise ConfigError(f"{path}: expected a mapping with 'prompts: {{name: path or {{library: ref}}}}'")
    unknown = set(data) - {"model", "dtype", "quantize", "library", "prompt_dir", "prompts"}
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {sorted(unknown)} "
                          "(known: model, dtype, quantize, library, prompt_dir, prompts)")
    for name, spec in data["prompts"].items():
        ok = isinstance(spec, str) or (isinstance(spec, dict) and set(spec) == {"library"} and isinstance(spec["library"], str))
        if not ok:
            raise ConfigError(f"{path}: prompt {name!r} must be a file path or {{library: name@version}}")
        if isinstance(spec, str) and not Path(spec).is_absolute():
            data["prompts"][name] = str(path.parent / spec)
    if "prompt_dir" in data:
        dirs = data["prompt_dir"] if isinstance(data["prompt_dir"], list) else [data["prompt_dir"]]
        if not dirs or not all(isinstance(d, str) and d for d in dirs):
            raise ConfigError(f"{path}: prompt_dir must be a directory or a list of directories")
        data["prompt_dir"] = [str(path.parent / d) for d in dirs]  # an absolute d stays as it is
    return data
