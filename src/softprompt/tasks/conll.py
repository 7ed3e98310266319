"""Token-labelled data: CoNLL-style files (one `token tag` per line, a blank line between sentences),
including WikiANN's `lang:token<TAB>tag` lines."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError

_LANG_PREFIX = re.compile(r"^[a-z]{2,3}:")


@dataclass(frozen=True)
class TokenExample:
    """One sentence: its words and (when labelled) one tag per word."""

    tokens: tuple[str, ...]
    tags: tuple[str, ...] | None
    source: str = ""  # "path:line" of the sentence's first word


def read_token_examples(path: str | Path, *, require_tags: bool = True, limit: int | None = None) -> list[TokenExample]:
    """Sentences of a CoNLL-style file; DataError names file and line for anything malformed."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a CoNLL-style file")
    sentences: list[TokenExample] = []
    tokens: list[str] = []
    tags: list[str] = []
    start = 0

    def flush():
        if tokens:
            sentences.append(TokenExample(tuple(tokens), tuple(tags) if tags else None, f"{path}:{start}"))
        tokens.clear()
        tags.clear()

    with path.open("rb") as handle:
        for number, raw in enumerate(handle, 1):
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            if not line.strip() or line.startswith("-DOCSTART-"):
                flush()
                if limit is not None and len(sentences) >= limit:
                    break
                continue
            parts = line.split("\t") if "\t" in line else line.split()
            if len(parts) == 1 and not require_tags:
                word, tag = parts[0], None
            elif len(parts) >= 2:
                word, tag = parts[0], parts[-1]
            else:
                raise DataError(f"{path}:{number}: expected 'token tag', found {line!r}")
            word = _LANG_PREFIX.sub("", word, count=1) if "\t" in line else word
            if not word:
                raise DataError(f"{path}:{number}: empty token")
            if not tokens:
                start = number
            tokens.append(word)
            if tag is not None:
                tags.append(tag)
    flush()
    if not sentences:
        raise DataError(f"{path}: no sentences (the file is empty)")
    return sentences[:limit] if limit is not None else sentences
