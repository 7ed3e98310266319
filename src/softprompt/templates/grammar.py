"""A small template grammar, parsed by a hand-written scanner (never eval).

    template := part*
    part     := literal | "{" name "}" | "[P]" | "[P*" count "]" | "{{" | "}}"
    name     := identifier; "mask" is the answer slot, "sep" "cls" "bos" "eos" are the
                tokenizer's special tokens, anything else is an input field ({text}, {text_b}, ...)

Examples: ``Review: {text}\nSentiment: {mask}``, ``[P*3] {text} [P*2] It was {mask}.``
A square bracket that does not start ``[P]``/``[P*n]`` is plain text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import ConfigError

SPECIAL_NAMES = ("sep", "cls", "bos", "eos")
MAX_VIRTUAL = 4096
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_VIRTUAL = re.compile(r"\[P(?:\*([0-9]+))?\]")  # ASCII digits: \d would take any script's


class TemplateError(ConfigError):
    """A template that does not parse; the message gives the column."""


@dataclass(frozen=True)
class Literal:
    text: str


@dataclass(frozen=True)
class Field:
    name: str


@dataclass(frozen=True)
class Mask:
    pass


@dataclass(frozen=True)
class Special:
    name: str


@dataclass(frozen=True)
class Virtual:
    count: int


Part = Literal | Field | Mask | Special | Virtual


@dataclass(frozen=True)
class Template:
    """A parsed template: its parts in order and the source string."""

    source: str
    parts: tuple[Part, ...]

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(p.name for p in self.parts if isinstance(p, Field)))

    @property
    def num_virtual(self) -> int:
        return sum(p.count for p in self.parts if isinstance(p, Virtual))

    @property
    def has_mask(self) -> bool:
        return any(isinstance(p, Mask) for p in self.parts)

    def __str__(self) -> str:
        return self.source


def source_of(parts) -> str:
    """The template text that parses back to these parts (braces in literal text doubled)."""
    out = []
    for part in parts:
        if isinstance(part, Literal):
            out.append(part.text.replace("{", "{{").replace("}", "}}"))
        elif isinstance(part, Virtual):
            out.append("[P]" if part.count == 1 else f"[P*{part.count}]")
        else:
            out.append("{" + ("mask" if isinstance(part, Mask) else part.name) + "}")
    return "".join(out)


def _error(source: str, column: int, what: str) -> TemplateError:
    shown = source if len(source) <= 80 else source[:77] + "..."  # the column says where, past the cut too
    return TemplateError(f"template {shown!r}, column {column + 1}: {what}")


def parse_template(source: str) -> Template:
    """Parse a template string; raises TemplateError naming the column of the first problem."""
    if not isinstance(source, str):
        raise TemplateError(f"a template must be a string, got {type(source).__name__}")
    parts: list[Part] = []
    text: list[str] = []
    i = 0

    def flush():
        if text:
            parts.append(Literal("".join(text)))
            text.clear()

    while i < len(source):
        ch = source[i]
        if source.startswith("{{", i) or source.startswith("}}", i):
            text.append(ch)
            i += 2
        elif ch == "{":
            end = source.find("}", i + 1)
            if end < 0:
                raise _error(source, i, "'{' is never closed (write '{{' for a literal brace)")
            name = source[i + 1 : end].strip()
            if not _NAME.match(name):
                bad = source[i : end + 1] if end - i < 40 else source[i : i + 37] + "..."
                raise _error(source, i, f"{bad!r} is not a field name (letters, digits, _)")
            flush()
            if name == "mask":
                if any(isinstance(p, Mask) for p in parts):
                    raise _error(source, i, "the answer slot {mask} appears twice")
                parts.append(Mask())
            elif name in SPECIAL_NAMES:
                parts.append(Special(name))
            else:
                parts.append(Field(name))
            i = end + 1
        elif ch == "}":
            raise _error(source, i, "'}' without '{' (write '}}' for a literal brace)")
        elif source.startswith("[P", i) and (m := _VIRTUAL.match(source, i)):
            digits = (m.group(1) or "1").lstrip("0") or "0"
            # Length first: int() refuses over 4300 digits, and no valid count has more than a few.
            count = int(digits) if len(digits) <= len(str(MAX_VIRTUAL)) else MAX_VIRTUAL + 1
            if not 1 <= count <= MAX_VIRTUAL:
                shown = digits if len(digits) <= 12 else digits[:9] + "..."
                raise _error(source, i, f"virtual-token count must be 1..{MAX_VIRTUAL}, got {shown}")
            flush()
            parts.append(Virtual(count))
            i = m.end()
        elif source.startswith("[P*", i):
            raise _error(source, i, "expected [P*n] with a whole number n, e.g. [P*4]")
        else:
            text.append(ch)
            i += 1
    flush()
    return Template(source, tuple(parts))
