"""Token-labelled data: CoNLL-style files (one `token tag` per line, a blank line between sentences),
including WikiANN's `lang:token<TAB>tag` lines.

Lines are decoded as the other line formats are (:class:`~softprompt.tasks.readers.LineReader`):
a byte-order mark anywhere is whitespace, and a line that is not valid UTF-8 is read as cp1252
with one warning naming its file and line (CoNLL-2003 and its kin circulate in latin-1).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError
from .readers import LineReader, check_file

_LANG_PREFIX = re.compile(r"^[a-z]{2,3}:")


@dataclass(frozen=True)
class TokenExample:
    """One sentence: its words and (when labelled) one tag per word."""

    tokens: tuple[str, ...]
    tags: tuple[str, ...] | None
    source: str = ""  # "path:line" of the sentence's first word


def read_token_examples(path: str | Path, *, require_tags: bool = True, limit: int | None = None) -> list[TokenExample]:
    """Sentences of a CoNLL-style file; DataError names file and line for anything malformed."""
    path = check_file(path)
    sentences: list[TokenExample] = []
    tokens: list[str] = []
    tags: list[str] = []
    start = 0

    def flush():
        if tokens:
            sentences.append(TokenExample(tuple(tokens), tuple(tags) if tags else None, f"{path}:{start}"))
        tokens.clear()
        tags.clear()

    lines = LineReader(path, str(path))
    try:
        for number, raw in lines:
            line = raw.rstrip("\r\n")
            if not line.strip() or line.startswith("-DOCSTART-"):
                flush()
                if limit is not None and len(sentences) >= limit:
                    break
                continue
            parts = line.split("\t") if "\t" in line else line.split()
            word, tag = parts[0], (parts[-1].strip() or None) if len(parts) >= 2 else None
            if tag is None and require_tags:
                found = "an empty tag" if len(parts) >= 2 else repr(line if len(line) <= 40 else line[:37] + "...")
                raise DataError(f"{path}:{number}: expected 'token tag', found {found}")
            word = _LANG_PREFIX.sub("", word, count=1) if "\t" in line else word
            if not word.strip():
                raise DataError(f"{path}:{number}: empty token")
            if not tokens:
                start = number
            elif (tag is None) != (not tags):
                raise DataError(f"{path}:{number}: {'no tag' if tag is None else 'a tag'} here, but the sentence "
                                f"from line {start} {'has tags' if tag is None else 'has none'}; tag every word or none")
            tokens.append(word)
            if tag is not None:
                tags.append(tag)
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    finally:
        lines.close()
    lines.warn_fallback()
    flush()
    if not sentences:
        raise DataError(f"{path}: no sentences (the file is empty)")
    return sentences[:limit] if limit is not None else sentences
