"""The method contract and registry.

A method is an nn.Module with a `Config` dataclass, a registered `name` and the set of injections
it produces. The core asks it only for tensors: `input_prompt()` for an input prompt, and (for
deep prompts) per-layer key/value prefixes. Reparameterisation stays inside the module; `export()`
gives the final tensors that an artifact stores, and `from_export` rebuilds a module from them.
"""

from __future__ import annotations

from enum import Enum
from typing import ClassVar, Protocol

import torch

from ..errors import ConfigError


class Injection(str, Enum):
    """Where a method's prompt enters the frozen model."""

    INPUT = "input"  # virtual-token embeddings in the input sequence
    DEEP = "deep"  # key/value prefixes in every attention layer


class PromptMethod(Protocol):
    name: ClassVar[str]
    default_lrs: ClassVar[dict]  # training.lr when unset: {"any": lr, optionally a model kind: lr}
    injections: ClassVar[frozenset[Injection]]

    @property
    def num_virtual_tokens(self) -> int: ...

    def input_prompt(self) -> torch.Tensor: ...

    def export(self) -> dict[str, torch.Tensor]: ...


METHODS: dict[str, type] = {}


def register_method(cls):
    """Class decorator: make a method available by its `name`."""
    METHODS[cls.name] = cls
    return cls


def get_method(name: str) -> type:
    """The method class registered under name; ConfigError listing the known ones otherwise."""
    try:
        return METHODS[name]
    except KeyError:
        known = ", ".join(sorted(METHODS))
        raise ConfigError(f"unknown method {name!r}; known methods: {known}") from None


def default_lr(method_cls, kind) -> float:
    """The learning rate a method trains with when training.lr is not set, for a model kind."""
    lrs = getattr(method_cls, "default_lrs", {"any": 3e-2})
    return lrs.get(getattr(kind, "value", kind), lrs["any"])
