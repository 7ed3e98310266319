"""The method contract and registry.

A method is an nn.Module with a `Config` dataclass and a registered `name`. Training builds one with
`initialise` (from its config, the base model and the task's label words), loading with
`from_export` (from an artifact's tensors); the core and the engine ask it only for
`prompt_tensors()` (an input prompt and/or per-layer key/value prefixes). Reparameterisation stays
inside the module; `export()` gives the final tensors that an artifact stores.
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol, Sequence

import torch

from ..errors import ConfigError


class PromptMethod(Protocol):
    """What training, tasks, the engine, transfer and interop use of a method: nothing else."""

    name: ClassVar[str]
    Config: ClassVar[type]  # the dataclass a config's method section is read into
    default_lrs: ClassVar[dict]  # training.lr when unset: {"any": lr, optionally a model kind: lr}

    @classmethod
    def input_positions(cls, config: Any) -> int:
        """The positions a prompt of this config adds to the input sequence (virtual tokens; deep
        and hard prompts add none): known before the module exists, since the task lays out its rows
        with them and the method is initialised from the task's label words."""
        ...

    @property
    def num_virtual_tokens(self) -> int:
        """input_positions of this module's config."""
        ...

    @classmethod
    def initialise(cls, config: Any, base: Any, label_words: Sequence[str] = ()) -> "PromptMethod": ...

    @classmethod
    def from_export(cls, config: Any, tensors: dict[str, torch.Tensor]) -> "PromptMethod": ...

    def prompt_tensors(self) -> Any:
        """The prompt as core.PromptTensors (input and/or deep), with gradients in training."""
        ...

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
    lrs = method_cls.default_lrs
    return lrs.get(getattr(kind, "value", kind), lrs["any"])


class InputPrompt:
    """input_positions and num_virtual_tokens for methods that write num_virtual_tokens vectors into the input."""

    @classmethod
    def input_positions(cls, config) -> int:
        return config.num_virtual_tokens

    @property
    def num_virtual_tokens(self) -> int:
        return self.config.num_virtual_tokens


class NoInputPrompt:
    """input_positions and num_virtual_tokens for methods that add nothing to the input (deep and hard prompts)."""

    @classmethod
    def input_positions(cls, config) -> int:
        return 0

    num_virtual_tokens: ClassVar[int] = 0
