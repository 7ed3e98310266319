"""A template filled in as plain text: how a labelled example reads as an in-context demonstration."""

from __future__ import annotations

from typing import Mapping

from ..errors import ConfigError, DataError
from .grammar import Field, Literal, Mask, Special, Template


def filled_text(template: Template, values: Mapping[str, str], answer: str, tokenizer=None) -> tuple[str, str]:
    """(text up to the answer slot, the answer word and the text after the slot) for one example.

    Virtual tokens are left out (a demonstration is plain text); {sep}/{cls}/{bos}/{eos} become the
    tokenizer's token strings, or nothing when it has none.
    """
    if not template.has_mask:
        raise ConfigError(f"template {template.source!r} needs an answer slot {{mask}} for demonstrations")
    before: list[str] = []
    after: list[str] = []
    out = before
    for part in template.parts:
        if isinstance(part, Literal):
            out.append(part.text)
        elif isinstance(part, Field):
            value = values.get(part.name)
            if value is None:
                raise DataError(f"demonstration: template field {{{part.name}}} has no value")
            out.append(str(value))
        elif isinstance(part, Special):
            token = getattr(tokenizer, f"{part.name}_token", None) if tokenizer is not None else None
            out.append(str(token) if token else "")
        elif isinstance(part, Mask):
            out = after
    return "".join(before), answer + "".join(after)
