"""Training checkpoints that resume bit-exactly, stored as safetensors plus JSON only.

``state.safetensors`` holds every tensor (weights, buffers, optimizer moments, RNG states) and
``state.json`` the rest, tagged so tuples, int dict keys and tensor references come back exactly.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from safetensors.torch import load_file
from safetensors.torch import save as serialize

from softprompt.core.artifact import fsync_directory, write_durably
from softprompt.errors import ArtifactError

FORMAT = "softprompt-training-state"
VERSION = 1
TENSORS_FILE = "state.safetensors"
JSON_FILE = "state.json"
_STEP_DIR = re.compile(r"step-(\d+)")
# Tags of the JSON encoding; a str-keyed dict that uses one as a key falls back to "__items__".
_TAGS = ("__tensor__", "__tuple__", "__items__")


def _encode(obj: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Return a JSON-able copy of ``obj``; tensors move into ``tensors`` under their path key."""
    if isinstance(obj, torch.Tensor):
        key, n = path, 1
        while key in tensors:  # keys containing "/" could collide with nested paths
            key, n = f"{path}#{n}", n + 1
        # A private contiguous CPU copy: safetensors refuses views sharing storage (tied weights).
        tensors[key] = obj.detach().to("cpu", copy=True).contiguous()
        return {"__tensor__": key}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, f"{path}/{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, f"{path}/{i}", tensors) for i, v in enumerate(obj)]
    if isinstance(obj, Mapping):
        if all(isinstance(k, str) for k in obj) and not any(k in _TAGS for k in obj):
            return {k: _encode(v, f"{path}/{k}", tensors) for k, v in obj.items()}
        # Optimizer state is keyed by int param ids; keep key types by storing pairs.
        return {"__items__": [[_encode(k, path, {}), _encode(v, f"{path}/{k}", tensors)] for k, v in obj.items()]}
    raise TypeError(f"cannot store {type(obj).__name__} at {path!r} in a training checkpoint")


def _decode(obj: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """Return the Python object that ``_encode`` turned into ``obj``."""
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if len(obj) == 1 and next(iter(obj)) in _TAGS:
        (tag, value), = obj.items()
        if tag == "__tensor__":
            if value not in tensors:
                raise ValueError(f"tensor {value!r} is missing from {TENSORS_FILE}")
            return tensors[value]
        if tag == "__tuple__":
            return tuple(_decode(v, tensors) for v in value)
        return {_decode(k, tensors): _decode(v, tensors) for k, v in value}
    return {k: _decode(v, tensors) for k, v in obj.items()}


def _rng_state(generators: Mapping[str, torch.Generator]) -> dict[str, Any]:
    """Return every RNG state that training draws from: torch, CUDA, random, numpy, named generators."""
    name, key, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        # numpy's key is a uint32 array: JSON ints hold it exactly.
        "numpy": [str(name), [int(k) for k in key], int(pos), int(has_gauss), float(gauss)],
        "generators": {n: g.get_state() for n, g in generators.items()},
    }


def _set_rng_state(state: Mapping[str, Any], generators: Mapping[str, torch.Generator]) -> None:
    """Restore the states ``_rng_state`` captured (CUDA only for devices present now)."""
    if missing := sorted(set(generators) - set(state["generators"])):
        raise ValueError(f"no saved state for generator(s) {', '.join(missing)}")
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available():
        for index, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, index)
    random.setstate(state["python"])
    name, key, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, np.asarray(key, dtype=np.uint32), pos, has_gauss, gauss))
    for gen_name, generator in generators.items():
        generator.set_state(state["generators"][gen_name])


def _scheduler_state(scheduler: Any, tensors: dict[str, torch.Tensor]) -> dict[str, Any] | None:
    """Return the scheduler's state_dict encoded, leaving out entries JSON cannot hold."""
    encoded: dict[str, Any] = {}
    for key, value in (scheduler.state_dict() if scheduler is not None else {}).items():
        try:
            encoded[key] = _encode(value, f"scheduler/{key}", tensors)
        except TypeError:  # e.g. callables: they are code, rebuilt along with the scheduler
            pass
    return encoded if scheduler is not None else None


def save_training_state(
    directory: str | Path, *, modules: Mapping[str, torch.nn.Module], optimizer: torch.optim.Optimizer,
    scheduler: Any, step: int, extra: Mapping[str, Any] | None = None,
    generator_states: Mapping[str, torch.Generator] | None = None,
) -> Path:
    """Return the checkpoint directory after atomically writing modules, optimizer, scheduler and RNG state.

    Files are written into a temporary sibling and renamed into place, so ``directory`` is always
    either the previous complete checkpoint or the new one. ``extra`` must be JSON-like (tuples,
    int keys and tensors are also kept exactly). A write that fails (a full disk) raises
    ArtifactError, and the previous checkpoint stays as it was.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    document = {
        "format": FORMAT, "version": VERSION, "step": int(step),
        "modules": {name: _encode(m.state_dict(), f"module/{name}", tensors) for name, m in modules.items()},
        "optimizer": _encode(optimizer.state_dict(), "optim", tensors),
        "scheduler": _scheduler_state(scheduler, tensors),
        "rng": _encode(_rng_state(generator_states or {}), "rng", tensors),
        "extra": _encode(dict(extra or {}), "extra", tensors),
    }
    tensors_data = serialize(tensors, metadata={"format": FORMAT})  # written by Python: a full disk is an OSError
    json_data = json.dumps(document).encode("utf-8")
    tmp = old = None
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
        old = tmp.with_name(tmp.name + "-old")
        write_durably(tmp / TENSORS_FILE, tensors_data)  # each on disk before the rename publishes them
        write_durably(tmp / JSON_FILE, json_data)
        fsync_directory(tmp)
        if directory.exists():
            os.replace(directory, old)
        try:
            os.replace(tmp, directory)
        except BaseException:
            if old.exists() and not directory.exists():
                os.replace(old, directory)  # put the previous checkpoint back
            raise
        fsync_directory(directory.parent)
    except OSError as exc:
        raise ArtifactError(f"cannot write training checkpoint {directory} ({exc.strerror or exc}); "
                            "the previous checkpoint is kept") from None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and directory.exists():  # never drop the previous checkpoint unless one is in place
            shutil.rmtree(old, ignore_errors=True)
    return directory


def load_training_state(
    directory: str | Path, *, modules: Mapping[str, torch.nn.Module], optimizer: torch.optim.Optimizer,
    scheduler: Any, generator_states: Mapping[str, torch.Generator] | None = None,
) -> tuple[int, dict[str, Any]]:
    """Return ``(step, extra)`` after restoring modules, optimizer, scheduler and RNG states in place.

    Raises ArtifactError, naming the path, when the checkpoint is missing, corrupt or does not fit.
    """
    directory = Path(directory)
    try:
        with open(directory / JSON_FILE, encoding="utf-8") as handle:
            document = json.load(handle)
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise ValueError(f"{JSON_FILE} is not a softprompt training state")
        if document.get("version") != VERSION:
            raise ValueError(f"format version {document.get('version')!r} is not {VERSION}")
        tensors = load_file(str(directory / TENSORS_FILE))
        # Decode everything before touching the live objects, so a bad file changes nothing.
        saved = _decode({k: document[k] for k in ("modules", "optimizer", "scheduler", "rng", "extra")}, tensors)
        if set(saved["modules"]) != set(modules):
            raise ValueError(f"holds modules {sorted(saved['modules'])}, expected {sorted(modules)}")
        for name, module in modules.items():
            module.load_state_dict(saved["modules"][name])
        optimizer.load_state_dict(saved["optimizer"])
        if scheduler is not None and saved["scheduler"] is not None:
            scheduler.load_state_dict(saved["scheduler"])
        _set_rng_state(saved["rng"], generator_states or {})
        return int(document["step"]), saved["extra"]
    except Exception as exc:  # noqa: BLE001 - every failure becomes one user-facing line
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise ArtifactError(f"cannot load training checkpoint {directory}: {reason}") from exc


def checkpoint_dir(run_dir: str | Path, step: int) -> Path:
    """Return the directory for the checkpoint of ``step``: ``run_dir/checkpoints/step-000123``."""
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    return Path(run_dir) / "checkpoints" / f"step-{step:06d}"


def _step_dirs(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Return ``(step, path)`` for every step directory under ``run_dir/checkpoints``, oldest first."""
    root = Path(run_dir) / "checkpoints"
    dirs = [p for p in root.iterdir() if p.is_dir()] if root.is_dir() else []
    return sorted((int(m.group(1)), p) for p in dirs if (m := _STEP_DIR.fullmatch(p.name)))


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """Return the complete checkpoint with the highest step under ``run_dir/checkpoints``, or None.

    Complete means a tensors file and a parseable state.json, so a damaged newest one is skipped.
    """
    for _, path in reversed(_step_dirs(run_dir)):
        try:
            with open(path / JSON_FILE, encoding="utf-8") as handle:
                if json.load(handle).get("format") == FORMAT and (path / TENSORS_FILE).is_file():
                    return path
        except (OSError, ValueError, AttributeError):
            continue
    return None


def prune_checkpoints(run_dir: str | Path, keep: int) -> list[Path]:
    """Return the paths removed after deleting all but the newest ``keep`` step directories.

    Also removes temporary directories left by a save that was killed mid-write.
    """
    if keep < 0:
        raise ValueError(f"keep must be >= 0, got {keep}")
    steps = _step_dirs(run_dir)
    doomed = [path for _, path in steps[: max(0, len(steps) - keep)]]
    # Leftovers of a save killed mid-write (prefix from save_training_state's mkdtemp).
    doomed += sorted(p for p in (Path(run_dir) / "checkpoints").glob(".step-*.tmp-*") if p.is_dir())
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed
