"""The single-file prompt artifact: tensors plus JSON metadata in a safetensors header."""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..errors import ArtifactError

FORMAT_VERSION = 1
_META_KEY = "softprompt"


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
        """Write the artifact atomically (a crash leaves the old file or none, never half a file)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = dict(self.meta)
        meta.setdefault("format_version", FORMAT_VERSION)
        meta.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        meta["shapes"] = {name: list(t.shape) for name, t in self.tensors.items()}
        tensors = {name: t.detach().to("cpu").contiguous() for name, t in self.tensors.items()}
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        os.close(fd)
        try:
            save_file(tensors, tmp, metadata={_META_KEY: json.dumps(meta, sort_keys=True, separators=(",", ":"))})
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        self.meta, self.path = meta, path
        return path

    @classmethod
    def load(cls, path: str | Path) -> "PromptArtifact":
        """Read an artifact; ArtifactError with the path when it is missing or not an artifact."""
        path = Path(path)
        if not path.exists():
            raise ArtifactError(f"{path}: file not found")
        if path.is_dir():
            raise ArtifactError(f"{path}: is a directory, expected a .safetensors prompt file")
        try:
            with safe_open(str(path), framework="pt") as handle:
                header = handle.metadata() or {}
                tensors = {name: handle.get_tensor(name) for name in handle.keys()}
        except Exception as exc:  # safetensors raises several types for a corrupt file
            raise ArtifactError(f"{path}: not a readable safetensors file ({exc})") from None
        if _META_KEY not in header:
            raise ArtifactError(f"{path}: a safetensors file without softprompt metadata (not a prompt artifact)")
        try:
            meta = json.loads(header[_META_KEY])
        except json.JSONDecodeError as exc:
            raise ArtifactError(f"{path}: corrupt softprompt metadata ({exc})") from None
        version = meta.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise ArtifactError(
                f"{path}: artifact format version {version!r}; this softprompt reads up to {FORMAT_VERSION} (upgrade softprompt)"
            )
        for name, shape in meta.get("shapes", {}).items():
            if name not in tensors or list(tensors[name].shape) != shape:
                raise ArtifactError(f"{path}: tensor {name!r} does not match the shape its metadata records")
        return cls(tensors, meta, path)

    def check_fits(self, base, *, allow_mismatch: bool = False) -> None:
        """Refuse a base model the artifact was not made for (fingerprint, width), unless allowed."""
        where = self.path or "artifact"
        recorded = self.meta.get("base_model", {})
        width = recorded.get("hidden_size")
        if width is not None and width != base.info.hidden_size:
            # A width mismatch cannot work even with the override: the tensors would not fit.
            raise ArtifactError(
                f"{where}: made for {recorded.get('name')!r} (hidden size {width}), "
                f"but {base.name!r} has hidden size {base.info.hidden_size}"
            )
        if recorded.get("fingerprint") != base.fingerprint and not allow_mismatch:
            raise ArtifactError(
                f"{where}: made for base model {recorded.get('name')!r} (fingerprint {recorded.get('fingerprint')}), "
                f"not {base.name!r} (fingerprint {base.fingerprint}); pass --allow-model-mismatch to use it anyway"
            )
