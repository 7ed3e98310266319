"""The single-file prompt artifact: tensors plus JSON metadata in a safetensors header."""

from __future__ import annotations

import json
import re
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import safe_open
from safetensors.torch import save as serialize

from ..errors import ArtifactError
from ..models.fingerprint import fingerprint_mismatch

FORMAT_VERSION = 1
_META_KEY = "softprompt"
# A prompt's header (tensor table and metadata) takes kilobytes; safetensors itself would read
# up to 100 MB of JSON before any check of ours could run.
MAX_HEADER_BYTES = 8 << 20

# The metadata keys code reads, and their JSON types (None: any); other keys are kept as written.
_STR, _INT, _DICT, _STRS = (str,), (int,), (dict,), "list of strings"
_DICT_OR_NULL = (dict, type(None))  # a task without a verbalizer records null
_KEY_TYPES: dict[str, Any] = {
    "format_version": _INT, "method": _STR, "name": _STR, "created": _STR, "shapes": _DICT,
    "base_model": _DICT, "task": _DICT, "method_config": _DICT, "data_fields": _DICT, "metrics": _DICT,
    "training": _DICT, "library": _DICT,
}
_SECTION_TYPES: dict[str, dict[str, Any]] = {
    "base_model": {"name": _STR, "fingerprint": _STR, "fingerprint_version": _INT, "weights": _STR,
                   "dtype": _STR, "model_type": _STR, "hidden_size": _INT, "num_layers": _INT},
    "task": {"kind": _STR, "labels": _STRS, "template": _STR, "verbalizer": _DICT_OR_NULL},
    "library": {"name": _STR, "version": _INT, "task": _STR, "description": _STR},
}
_NAMES = {str: "a string", int: "a whole number", dict: "a mapping"}


def _expected(kind: Any) -> str:
    return "a list of strings" if kind == _STRS else _NAMES[kind[0]]


def _type_problem(value: Any, kind: Any) -> str | None:
    """What is wrong with a metadata value of a known key, or None. Null is allowed for a string or
    number, which code reads with a default, not for a section or a list that code iterates."""
    if value is None:
        return None if kind in (_STR, _INT, _DICT_OR_NULL) else f"must be {_expected(kind)}, got null"
    if kind == _STRS:
        fits = isinstance(value, list) and all(isinstance(v, str) for v in value)
    else:
        fits = isinstance(value, kind) and not isinstance(value, bool)
    return None if fits else f"must be {_expected(kind)}, got {_describe(value)}"


def _describe(value: Any) -> str:
    """A value's JSON type and size, never its content: the metadata is text read from a file."""
    if isinstance(value, (dict, list, str)):
        kind = {dict: "an object", list: "a list", str: "a string"}[type(value)]
        unit = {dict: "key", list: "item", str: "character"}[type(value)]
        return f"{kind} of {len(value)} {unit}{'' if len(value) == 1 else 's'}"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return "a number" if isinstance(value, (int, float)) else type(value).__name__


def check_meta(meta: Any, where: str) -> dict[str, Any]:
    """The metadata if its known keys have the JSON types code relies on, else ArtifactError naming the key."""
    if not isinstance(meta, dict):
        raise ArtifactError(f"{where}: softprompt metadata must be a JSON object, got {_describe(meta)}")
    problems = [(key, _type_problem(meta[key], kind)) for key, kind in _KEY_TYPES.items() if key in meta]
    for section, keys in _SECTION_TYPES.items():
        if isinstance(meta.get(section), dict):
            problems += [(f"{section}.{k}", _type_problem(meta[section][k], kind))
                         for k, kind in keys.items() if k in meta[section]]
    for name, shape in (meta["shapes"] if isinstance(meta.get("shapes"), dict) else {}).items():
        if not (isinstance(shape, list) and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)):
            problems.append((f"shapes.{name}", f"must be a list of sizes, got {_describe(shape)}"))
    key, problem = next(((k, p) for k, p in problems if p), (None, None))
    if problem:
        raise ArtifactError(f"{where}: metadata {key!r} {problem} (not a valid prompt artifact)")
    try:
        json.dumps(meta, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:  # a \ud800 escape: half a character, which no file name or index can hold
        raise ArtifactError(f"{where}: metadata holds a lone UTF-16 surrogate (not a valid prompt artifact)") from None
    version = meta.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version > FORMAT_VERSION:
        raise ArtifactError(
            f"{where}: artifact format version {version!r}; this softprompt reads up to {FORMAT_VERSION} (upgrade softprompt)"
        )
    return meta


def write_durably(path: Path, data: bytes) -> None:
    """Write data to path and flush it to disk; OSError (a full disk: ENOSPC) propagates."""
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def fsync_directory(path: Path) -> None:
    """Flush a directory entry (a rename into it) to disk, where the platform can."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # Windows cannot open directories; its renames are durable enough here
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_header_size(path: Path) -> int:
    with open(path, "rb") as handle:
        head = handle.read(8)
    if len(head) < 8:
        raise ArtifactError(f"{path}: not a readable safetensors file ({len(head)} bytes, too short)")
    return int.from_bytes(head, "little")


def _safetensors_reason(exc: Exception) -> str:
    """The kind of a safetensors read error, without its details: those can quote the file (a JSON
    parser's 'invalid type: string "..."', a tensor name), and the file may be anything at all."""
    detail = " ".join(str(exc).split())
    _, found, rest = detail.partition("deserializing header: ")
    kind = re.match(r"[A-Za-z][A-Za-z ]*", rest) if found else None  # stops at the first ':', '(' or quote
    return kind.group(0).strip() if kind else type(exc).__name__


@dataclass
class PromptArtifact:
    """A task prompt as stored: final tensors (no reparameterisation) and what made them."""

    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def method(self) -> str:
        return self.meta["method"]

    @property
    def num_parameters(self) -> int:
        return sum(t.numel() for t in self.tensors.values())

    def save(self, path: str | Path) -> Path:
        """Write the artifact atomically (a crash leaves the old file or none, never half a file).

        A write that fails (a full disk) raises ArtifactError and leaves the previous file as it was.
        """
        path = Path(path)
        meta = dict(self.meta)
        meta.setdefault("format_version", FORMAT_VERSION)
        meta.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        meta["shapes"] = {name: list(t.shape) for name, t in self.tensors.items()}
        tensors = {name: t.detach().to("cpu").contiguous() for name, t in self.tensors.items()}
        # Serialised here and written by Python: safetensors' own file writer reports a full disk
        # as a SafetensorError without its errno, and not at all on some devices.
        data = serialize(tensors, metadata={_META_KEY: json.dumps(meta, sort_keys=True, separators=(",", ":"))})
        existed = path.exists()
        tmp = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
            os.close(fd)
            write_durably(Path(tmp), data)
            os.replace(tmp, path)
            fsync_directory(path.parent)
        except OSError as exc:
            kept = "the previous file is unchanged" if existed else "nothing was written"
            raise ArtifactError(f"{path}: cannot write the artifact ({exc.strerror or exc}); {kept}") from None
        finally:
            if tmp is not None and os.path.exists(tmp):
                os.unlink(tmp)
        self.meta, self.path = meta, path
        return path

    @classmethod
    def load(cls, path: str | Path) -> "PromptArtifact":
        """Read an artifact; ArtifactError with the path when it is missing, not an artifact or malformed."""
        path = Path(path)
        if not path.exists():
            raise ArtifactError(f"{path}: file not found")
        if path.is_dir():
            raise ArtifactError(f"{path}: is a directory, expected a .safetensors prompt file")
        try:
            size = _read_header_size(path)
        except OSError as exc:
            raise ArtifactError(f"{path}: cannot read ({exc.strerror or exc})") from None
        if size > MAX_HEADER_BYTES:
            # The size is the file's first 8 bytes: saying it would echo a file that may be no prompt at all.
            raise ArtifactError(f"{path}: not a safetensors prompt file (its header length is over the "
                                f"{MAX_HEADER_BYTES:,} bytes a prompt artifact may have; damaged, or another "
                                "kind of file)")
        try:
            with safe_open(str(path), framework="pt") as handle:
                header = handle.metadata() or {}
                tensors = {name: handle.get_tensor(name) for name in handle.keys()}
        except Exception as exc:  # safetensors raises several types for a corrupt file
            raise ArtifactError(f"{path}: not a readable safetensors file ({_safetensors_reason(exc)})") from None
        if _META_KEY not in header:
            raise ArtifactError(f"{path}: a safetensors file without softprompt metadata (not a prompt artifact)")
        try:
            meta = json.loads(header[_META_KEY])
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, int too long, nesting too deep
            reason = exc.msg if isinstance(exc, json.JSONDecodeError) else type(exc).__name__
            raise ArtifactError(f"{path}: corrupt softprompt metadata ({reason})") from None
        check_meta(meta, str(path))
        for name, shape in meta.get("shapes", {}).items():
            if name not in tensors or list(tensors[name].shape) != shape:
                raise ArtifactError(f"{path}: tensor {name!r} does not match the shape its metadata records")
        for name, tensor in tensors.items():
            if not tensor.is_floating_point():
                raise ArtifactError(f"{path}: tensor {name!r} holds {tensor.dtype}, expected floating point")
            if not bool(torch.isfinite(tensor).all()):
                raise ArtifactError(f"{path}: tensor {name!r} holds NaN or infinite values")
        return cls(tensors, meta, path)

    def require(self, *keys: str) -> None:
        """ArtifactError naming the first metadata key (dotted: 'task.labels') the artifact lacks."""
        for key in keys:
            node: Any = self.meta
            for part in key.split("."):
                node = node.get(part) if isinstance(node, dict) else None
            if node is None:
                raise ArtifactError(f"{self.path or 'artifact'}: no {key!r} in its metadata (not a trained prompt artifact)")

    def check_fits(self, base, *, allow_mismatch: bool = False) -> None:
        """Refuse a base model the artifact was not made for (fingerprint, width), unless allowed."""
        where = self.path or "artifact"
        recorded: Mapping = self.meta.get("base_model") or {}
        width = recorded.get("hidden_size")
        if width is not None and width != base.info.hidden_size:
            # A width mismatch cannot work even with the override: the tensors would not fit.
            raise ArtifactError(
                f"{where}: made for {recorded.get('name')!r} (hidden size {width}), "
                f"but {base.name!r} has hidden size {base.info.hidden_size}"
            )
        differs = fingerprint_mismatch(recorded, base)
        if differs and not allow_mismatch:
            raise ArtifactError(
                f"{where}: made for base model {recorded.get('name')!r} ({differs[0]}), "
                f"not {base.name!r} ({differs[1]}); pass --allow-model-mismatch to use it anyway"
            )
