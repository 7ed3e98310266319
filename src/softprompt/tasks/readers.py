"""Read labelled (or unlabelled) text examples from data files, and split or sample them.

Formats: JSON Lines, CSV, TSV, GLUE TSV (tab-separated, unquoted, sentence pairs), label-first
lines (``LABEL sentence``, the SST-2/MR/CR/SUBJ/TREC files) and plain text (one example per line).
Every problem a user can fix raises :class:`~softprompt.errors.DataError` with one line that names
the file, usually the line, and the fix.

Files are read as bytes and split on ``\\n`` only: ``str.splitlines`` would also break lines at
U+0085 and friends, which legacy cp1252 files (MR, SUBJ) decode to. A byte-order mark anywhere
(the file's start, a line's start, a line of its own where files were concatenated) is
whitespace. A line that is not valid in the requested encoding is an error in JSON Lines (JSON
is UTF-8 by definition, so such a file is damaged, and guessing would change its texts); in the
other formats, where legacy corpora and spreadsheet exports are cp1252, it is decoded as cp1252
(or latin-1 when cp1252 cannot) and one :class:`DataWarning` per file names the first such line
as ``file:line`` and how many there are.
"""

from __future__ import annotations

import codecs
import csv
import json
import random
import re
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

from softprompt.errors import ConfigError, DataError

__all__ = [
    "DataFormat",
    "DataWarning",
    "Example",
    "detect_format",
    "read_examples",
    "sample_k_per_class",
    "split_examples",
]


class DataWarning(UserWarning):
    """A data file was readable but not quite as expected (e.g. lines in a legacy encoding)."""


@dataclass(frozen=True)
class Example:
    """One example: its text (and optional second text), its label as a string, and where it came from."""

    text: str
    text_b: str | None = None
    label: str | None = None  # always a string ("0"/"1" stay strings); None for unlabelled input
    source: str = ""  # "path:line", for messages
    # Every column/key of the row as str, for templates with named fields. Left out of the hash
    # (a dict is unhashable) but kept in ==, so equal examples still hash equally.
    fields: Mapping[str, str] = field(default_factory=dict, hash=False)


class DataFormat(str, Enum):
    """The data file formats :func:`read_examples` understands."""

    JSONL = "jsonl"
    CSV = "csv"
    TSV = "tsv"
    LABEL_FIRST = "label-first"
    GLUE_TSV = "glue-tsv"
    TEXT = "text"


# Fallback decodings, in order, for a line that the requested encoding rejects: cp1252 first
# because the legacy review corpora use its curly quotes, dashes and ellipsis (0x85, 0x91-0x97);
# latin-1 last because it decodes any byte.
_FALLBACK_ENCODINGS = ("cp1252", "latin-1")

# Pairs of GLUE columns that become (text, text_b) when text_field is left at its default.
_GLUE_TEXT_COLUMNS = (
    ("sentence1", "sentence2"),  # RTE, MRPC, STS-B, WNLI
    ("question", "sentence"),  # QNLI
    ("question1", "question2"),  # QQP
    ("premise", "hypothesis"),
    ("sentence", None),  # SST-2, CoLA
)

# A first token that is certainly a label: an integer, a fastText "__label__x" or a TREC
# fine-grained "NUM:date". Word labels ("pos") are not guessed: a line of prose starts with a word
# too, and reading "What" as a label would be silently wrong; pass format="label-first" for those.
_LABEL_TOKEN = re.compile(r"[+-]?\d+|__label__\S+|[A-Z]+:\S+")
_BOM = "\ufeff"
_UTF8_BOM = _BOM.encode("utf-8")
_SNIFF_LINES = 200


# --------------------------------------------------------------------------------------------
# public API


def detect_format(path: str | Path) -> DataFormat:
    """Return the format of a data file, from its extension and, where that is not enough, its first lines.

    ``.jsonl``/``.json``/``.ndjson`` -> jsonl, ``.csv`` -> csv, ``.tsv`` -> glue-tsv when the header
    has an ``index`` column and a GLUE sentence pair (sentence1/sentence2 or question/sentence),
    else tsv. Any other file is jsonl when its first non-empty line starts with ``{``, label-first
    when every sampled line starts with a label-like token (an integer, ``__label__x`` or
    ``NUM:date``), most are followed by text and the tokens take few distinct values, and text
    otherwise (word labels such as ``pos`` are not guessed: pass format="label-first").
    """
    p = check_file(path)
    ext = p.suffix.lower()
    if ext in (".jsonl", ".json", ".ndjson"):
        return DataFormat.JSONL
    if ext == ".csv":
        return DataFormat.CSV
    lines = _sniff_lines(p)
    if ext == ".tsv":
        header = {c.strip().lower() for c in lines[0].split("\t")} if lines else set()
        pair = {"sentence1", "sentence2"} <= header or {"question", "sentence"} <= header
        return DataFormat.GLUE_TSV if pair and "index" in header else DataFormat.TSV
    if lines and lines[0].lstrip().startswith("{"):
        return DataFormat.JSONL
    return DataFormat.LABEL_FIRST if _looks_label_first(lines) else DataFormat.TEXT


def read_examples(
    path: str | Path,
    *,
    format: str | DataFormat | None = None,
    text_field: str = "text",
    text_b_field: str | None = None,
    label_field: str | None = "label",
    require_label: bool = True,
    limit: int | None = None,
    encoding: str = "utf-8",
    skip_empty: bool = False,
) -> list[Example]:
    """Return the examples of a data file, in file order, texts stripped of surrounding whitespace.

    ``format`` is detected with :func:`detect_format` when None. ``text_field``, ``text_b_field``
    and ``label_field`` name the key/column of JSONL and CSV/TSV rows (for glue-tsv, the default
    ``text_field`` picks sentence1/sentence2, question/sentence, ... as text/text_b). Label-first
    lines always give fields ``label`` and ``text``. With ``label_field=None`` labels are not
    read; with ``require_label=False`` a missing label gives ``label=None`` instead of an error.
    ``limit`` keeps the first N examples (and stops reading there). ``skip_empty`` skips rows
    whose text is empty instead of raising (CR's ``custrev.all`` has four such lines).
    ``encoding`` must be ASCII-compatible (utf-8, cp1252, latin-1, ...).
    """
    p = check_file(path)
    if p.stat().st_size == 0:
        raise DataError(f"{path}: no examples (the file is empty)")
    fmt = _parse_format(format) if format is not None else detect_format(p)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"limit must be a positive integer or None, got {limit!r}")
    if fmt is DataFormat.TEXT and label_field is not None and require_label:
        raise DataError(
            f"{path}: plain-text lines carry no labels; pass format='label-first' if lines are "
            f"'LABEL sentence', or require_label=False (or label_field=None) for unlabelled text"
        )

    opts = _Options(str(path), text_field, text_b_field, label_field, require_label, skip_empty)
    # JSON is UTF-8 by definition: a line that is not is damage, not a legacy encoding to guess.
    lines = LineReader(p, str(path), encoding, strict=fmt is DataFormat.JSONL)
    parse = {
        DataFormat.JSONL: _parse_jsonl,
        DataFormat.CSV: _parse_delimited,
        DataFormat.TSV: _parse_delimited,
        DataFormat.GLUE_TSV: _parse_delimited,
        DataFormat.LABEL_FIRST: _parse_label_first,
        DataFormat.TEXT: _parse_text,
    }[fmt]
    examples: list[Example] = []
    try:
        for ex in parse(lines, opts, fmt):
            examples.append(ex)
            if limit is not None and len(examples) >= limit:
                break
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    finally:
        lines.close()
    lines.warn_fallback()
    if not examples:
        raise DataError(f"{path}: no examples ({opts.why_empty or _why_no_examples(lines)})")
    return examples


def split_examples(examples: Sequence[Example], dev_fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """Return (train, dev): a seeded random split, stratified by label when every example has one.

    The dev part holds ``round(len(examples) * dev_fraction)`` examples (at least one, and at
    least one is left for train); with labels, each class gives its share by largest remainder,
    so class proportions match as closely as whole numbers allow. Both parts keep file order.
    """
    if isinstance(dev_fraction, bool) or not isinstance(dev_fraction, (int, float)) or not 0 < dev_fraction < 1:
        raise ConfigError(f"dev_fraction must be between 0 and 1 (exclusive), got {dev_fraction!r}")
    n = len(examples)
    if n < 2:
        raise DataError(f"need at least 2 examples to split off a dev set, got {n}")
    n_dev = min(max(round(n * dev_fraction), 1), n - 1)
    rng = random.Random(seed)
    if all(ex.label is not None for ex in examples):
        groups = _group_by_label(examples)
        # Largest-remainder allocation: floors first, then the classes with the largest fractional
        # quota get one more (ties by label), so the total is exactly n_dev.
        quotas = {lab: len(idx) * n_dev / n for lab, idx in groups.items()}
        take = {lab: int(q) for lab, q in quotas.items()}
        by_remainder = sorted(groups, key=lambda lab: (-(quotas[lab] - take[lab]), lab))
        for lab in by_remainder[: n_dev - sum(take.values())]:
            take[lab] += 1
        dev_idx = set()
        for lab in sorted(groups):
            idx = list(groups[lab])
            rng.shuffle(idx)
            dev_idx.update(idx[: take[lab]])
    else:
        idx = list(range(n))
        rng.shuffle(idx)
        dev_idx = set(idx[:n_dev])
    train = [ex for i, ex in enumerate(examples) if i not in dev_idx]
    dev = [ex for i, ex in enumerate(examples) if i in dev_idx]
    return train, dev


def sample_k_per_class(examples: Sequence[Example], k: int, seed: int) -> list[Example]:
    """Return k seeded random examples of every label (k-shot), in file order.

    Raises DataError when an example has no label or a class has fewer than k examples.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"k must be a positive integer, got {k!r}")
    if not examples:
        raise DataError("no examples to sample from")
    unlabelled = next((ex for ex in examples if ex.label is None), None)
    if unlabelled is not None:
        where = unlabelled.source or "an example"
        raise DataError(f"{where}: no label; k-shot sampling needs a label on every example")
    groups = _group_by_label(examples)
    short = [lab for lab in sorted(groups) if len(groups[lab]) < k]
    if short:
        counts = ", ".join(f"{lab!r}: {len(groups[lab])}" for lab in sorted(groups))
        names = ", ".join(repr(lab) for lab in short)
        which = f"class {names} has" if len(short) == 1 else f"classes {names} have"
        raise DataError(f"cannot sample k={k} per class: {which} fewer than {k} examples (counts: {counts})")
    rng = random.Random(seed)
    chosen: set[int] = set()
    for lab in sorted(groups):  # sorted, so the draws do not depend on file order of classes
        chosen.update(rng.sample(groups[lab], k))
    return [ex for i, ex in enumerate(examples) if i in chosen]


# --------------------------------------------------------------------------------------------
# files and lines


def check_file(path: str | Path) -> Path:
    """Return path as a Path after checking it names a readable regular file."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{path}: file not found")
    if p.is_dir():
        raise DataError(f"{path}: is a directory, not a data file; name a file inside it")
    if not p.is_file():
        raise DataError(f"{path}: not a regular file")
    return p


def _parse_format(format: str | DataFormat) -> DataFormat:
    """Return the DataFormat named by format (a DataFormat or its value, any case)."""
    if isinstance(format, DataFormat):
        return format
    try:
        return DataFormat(str(format).strip().lower())
    except ValueError:
        choices = ", ".join(f.value for f in DataFormat)
        raise ConfigError(f"unknown data format {format!r}; choose one of: {choices}") from None


def _sniff_lines(p: Path) -> list[str]:
    """Return up to _SNIFF_LINES first non-empty lines, leniently decoded, for format detection."""
    out: list[str] = []
    try:
        with p.open("rb") as f:
            for raw in f:
                line = without_bom(raw.decode("utf-8", errors="replace")).rstrip("\r\n")
                if line.strip():
                    out.append(line)
                    if len(out) >= _SNIFF_LINES:
                        break
    except OSError as e:
        raise DataError(f"{p}: cannot read ({e.strerror or e})") from None
    return out


def _looks_label_first(lines: list[str]) -> bool:
    """Return whether sampled lines look like 'LABEL sentence' with a small set of label tokens."""
    if not lines:
        return False
    heads = []
    with_text = 0
    for line in lines:
        parts = line.split(None, 1)
        if not _LABEL_TOKEN.fullmatch(parts[0]):
            return False
        heads.append(parts[0])
        with_text += len(parts) == 2
    # Few distinct heads: labels repeat, while numbered lines ("1 ...", "2 ...") do not.
    # A lone label with no text is tolerated (the reader then reports that line precisely).
    return with_text * 2 >= len(lines) and len(set(heads)) <= max(10, len(heads) // 2)


def without_bom(line: str) -> str:
    """The line with each byte-order mark read as whitespace: gone at the start, a space elsewhere."""
    return line.lstrip(_BOM).replace(_BOM, " ") if _BOM in line else line


class LineReader:
    """Iterates (line number, decoded line with its newline) over a file read in binary mode.

    Decoding is per line so one stray byte costs one line, not the file. A line the requested
    encoding rejects raises DataError naming file, line and byte when ``strict``; otherwise it falls
    back to cp1252/latin-1 and is counted for one warning (:meth:`warn_fallback`).
    """

    def __init__(self, p: Path, name: str, encoding: str = "utf-8", *, strict: bool = False):
        self.name = name
        self.encoding = encoding
        self.strict = strict
        self.fallback_lines: list[int] = []
        self.fallback_used: set[str] = set()
        self.saw_content = False  # any non-whitespace at all, for the "no examples" message
        self.header_only = False
        try:
            self._utf8 = codecs.lookup(encoding).name in ("utf-8", "utf-8-sig")
        except LookupError:
            raise ConfigError(f"unknown encoding {encoding!r}") from None
        try:
            self._file = p.open("rb")
        except OSError as e:
            raise DataError(f"{name}: cannot read ({e.strerror or e})") from None

    def close(self) -> None:
        self._file.close()

    def __iter__(self) -> Iterator[tuple[int, str]]:
        for lineno, raw in enumerate(self._file, start=1):
            if self._utf8 and _UTF8_BOM in raw:
                # As bytes, so a BOM on a line that falls back to cp1252 does not become "ï»¿".
                raw = raw.lstrip(_UTF8_BOM).replace(_UTF8_BOM, b" ")
            line = without_bom(self._decode(raw, lineno))
            if not self.saw_content and line.strip():
                self.saw_content = True
            yield lineno, line

    def _decode(self, raw: bytes, lineno: int) -> str:
        try:
            return raw.decode(self.encoding)
        except UnicodeDecodeError as exc:
            if self.strict:
                column = len(raw[: exc.start].decode(self.encoding, errors="replace")) + 1
                raise DataError(
                    f"{self.name}:{lineno}: not valid {self.encoding} (byte 0x{raw[exc.start]:02x} at column "
                    f"{column}); save the file as {self.encoding}"
                ) from None
        for enc in _FALLBACK_ENCODINGS:
            try:
                text = raw.decode(enc)
            except UnicodeDecodeError:
                continue
            self.fallback_lines.append(lineno)
            self.fallback_used.add(enc)
            return text
        raise AssertionError("latin-1 decodes any bytes")  # pragma: no cover

    def warn_fallback(self) -> None:
        """One DataWarning naming the first line that fell back (file:line) and how many did."""
        if not self.fallback_lines:
            return
        n = len(self.fallback_lines)
        more = f" ({n} lines like this, the first here)" if n > 1 else ""
        used = " or ".join(e for e in _FALLBACK_ENCODINGS if e in self.fallback_used)
        warnings.warn(
            f"{self.name}:{self.fallback_lines[0]}: not valid {self.encoding}, read as {used}{more}",
            DataWarning,
            stacklevel=3,
        )


def _why_no_examples(lines: LineReader) -> str:
    """Return why a file that is not zero bytes gave no examples, for the DataError message."""
    if not lines.saw_content:
        return "the file is empty"
    if lines.header_only:
        return "only a header row"
    return "every line is blank"


# --------------------------------------------------------------------------------------------
# parsers: each yields Examples and raises DataError naming path:line


@dataclass
class _Options:
    path: str
    text_field: str
    text_b_field: str | None
    label_field: str | None
    require_label: bool
    skip_empty: bool
    why_empty: str = ""  # set when every row was skipped as empty text


def _finish(
    opts: _Options,
    lineno: int,
    text: str | None,
    text_b: str | None,
    label: str | None,
    fields: dict[str, str],
    *,
    text_where: str,
    text_b_where: str = "",
    label_where: str,
) -> Example | None:
    """Return the Example for one row after the checks every format shares (None: skip the row)."""
    where = f"{opts.path}:{lineno}"
    text = (text or "").strip()
    if text_b is not None:
        text_b = text_b.strip()
    for value, place in ((text, text_where), (text_b, text_b_where)):
        if value == "":
            if opts.skip_empty:
                opts.why_empty = "every row has empty text"
                return None
            raise DataError(f"{where}: empty text {place}; fix the row, or pass skip_empty=True to skip such rows")
    if label is not None:
        label = label.strip() or None
    if opts.label_field is None:
        label = None
    elif label is None and opts.require_label:
        raise DataError(
            f"{where}: empty label {label_where}; give every row a label, or require_label=False for unlabelled data"
        )
    return Example(text=text, text_b=text_b, label=label, source=where, fields=fields)


def _json_str(value: Any) -> str:
    """Return a JSON value as the text a template or label should see (numbers and bools as written)."""
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, int, float)):
        return json.dumps(value)  # true/false and 1/1.5 as in the file, not Python's True
    return json.dumps(value, ensure_ascii=False)


# A \u escape of a UTF-16 surrogate: only a valid pair of them makes a character.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _check_unicode(obj: dict, where: str) -> None:
    """DataError unless every key and value of a JSON object is valid Unicode (no lone surrogate)."""
    try:
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise DataError(f"{where}: a \\u escape makes half a character (a lone UTF-16 surrogate); "
                        "fix the line's escapes") from None


def _parse_jsonl(lines: LineReader, opts: _Options, fmt: DataFormat) -> Iterator[Example]:
    first = True
    for lineno, line in lines:
        if not line.strip():
            continue
        where = f"{opts.path}:{lineno}"
        try:
            obj = json.loads(line)
            # Nested values become JSON text, which needs the same depth again.
            fields = {k: without_bom(_json_str(v)).strip() for k, v in obj.items() if v is not None} \
                if isinstance(obj, dict) else {}
            if isinstance(obj, dict) and _SURROGATE_ESCAPE.search(line):
                _check_unicode(obj, where)
        except json.JSONDecodeError as e:
            hint = ""
            if first and line.strip() in ("[", "{"):
                hint = "; JSON Lines needs one complete object per line (is this a pretty-printed .json file?)"
            raise DataError(f"{where}: not valid JSON ({e.msg} at column {e.colno}){hint}") from None
        except RecursionError:
            raise DataError(f"{where}: JSON nested too deeply to read") from None
        except ValueError:  # Python refuses integers of more than 4300 digits
            raise DataError(f"{where}: a JSON number too long to read") from None
        first = False
        if not isinstance(obj, dict):
            kind = {list: "an array", str: "a string", type(None): "null", bool: "a boolean"}.get(type(obj), "a number")
            raise DataError(f"{where}: expected a JSON object {{...}}, found {kind}")
        keys = ", ".join(k if k.isprintable() and k == k.strip() and k else repr(k) for k in list(obj)[:10])
        keys = keys + (", ..." if len(obj) > 10 else "") or "none"

        def get(name: str, option: str, required: bool) -> str | None:
            value = obj.get(name)
            if value is None:
                if required:
                    raise DataError(f"{where}: missing field {name!r} (fields here: {keys}); set {option}")
                return None
            if isinstance(value, (dict, list)):
                kind = "an object" if isinstance(value, dict) else "an array"
                raise DataError(f"{where}: field {name!r} is {kind}, expected text; set {option}")
            return without_bom(_json_str(value))

        text = get(opts.text_field, "text_field", True)
        text_b = get(opts.text_b_field, "text_b_field", True) if opts.text_b_field else None
        label = None
        if opts.label_field is not None:
            label = get(opts.label_field, "label_field, or require_label=False for unlabelled data", opts.require_label)
        ex = _finish(
            opts, lineno, text, text_b, label, fields,
            text_where=f"in field {opts.text_field!r}", text_b_where=f"in field {opts.text_b_field!r}",
            label_where=f"in field {opts.label_field!r}",
        )
        if ex is not None:
            yield ex


def _csv_records(lines: LineReader, reader_kwargs: dict, opts: _Options) -> Iterator[tuple[int, list[str]]]:
    """Yield (line where the record starts, cells) for each non-blank CSV/TSV record."""
    # csv.reader takes any iterable of lines and counts them in line_num, so feeding it decoded
    # physical lines (newline kept, for embedded newlines in quoted fields) gives the start line.
    physical = (line for _, line in lines)
    reader = csv.reader(physical, strict=True, **reader_kwargs)
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            msg = str(e)
            if "end of data" in msg or "unexpected end" in msg:
                msg = "a quoted field that starts here is never closed"
                if reader_kwargs.get("delimiter") == "\t":
                    msg += "; if fields are not quoted, use format='glue-tsv' (tab-separated, no quoting)"
                raise DataError(f"{opts.path}:{start}: {msg}") from None
            raise DataError(f"{opts.path}:{start}: malformed record ({msg})") from None
        # Skip blank lines and all-empty rows (",,," left by spreadsheet exports): nothing to read.
        if not any(cell.strip() for cell in row):
            continue
        # csv yields a blank line as its own empty record, so `start` is the record's first line
        # even when quoted newlines make it span several.
        yield start, row


def _parse_delimited(lines: LineReader, opts: _Options, fmt: DataFormat) -> Iterator[Example]:
    if fmt is DataFormat.CSV:
        kwargs: dict = {"delimiter": ","}
    elif fmt is DataFormat.TSV:
        kwargs = {"delimiter": "\t"}
    else:  # GLUE: tab-separated and never quoted, and texts do start with '"' (RTE has 58 such rows)
        kwargs = {"delimiter": "\t", "quoting": csv.QUOTE_NONE}
    records = _csv_records(lines, kwargs, opts)
    try:
        header_line, header = next(records)
    except StopIteration:
        return
    header = [h.strip() for h in header]
    where_h = f"{opts.path}:{header_line}"
    dup = [h for h, c in Counter(header).items() if c > 1]
    if dup:
        raise DataError(f"{where_h}: column {dup[0]!r} appears {header.count(dup[0])} times in the header")
    columns = ", ".join(header)
    col = {name: i for i, name in enumerate(header)}

    text_field, text_b_field = opts.text_field, opts.text_b_field
    if fmt is DataFormat.GLUE_TSV and text_field == "text" and "text" not in col:
        for a, b in _GLUE_TEXT_COLUMNS:
            if a in col and (b is None or b in col):
                text_field = a
                text_b_field = text_b_field or b
                break

    def need(name: str, option: str) -> int:
        if name not in col:
            raise DataError(f"{where_h}: no column {name!r} (columns here: {columns}); set {option}")
        return col[name]

    i_text = need(text_field, "text_field")
    i_text_b = need(text_b_field, "text_b_field") if text_b_field else None
    i_label = None
    if opts.label_field is not None:
        if opts.label_field in col:
            i_label = col[opts.label_field]
        elif opts.require_label:
            need(opts.label_field, "label_field, or require_label=False for unlabelled data")

    width_hint = {
        DataFormat.CSV: "quote fields that contain ','",
        DataFormat.TSV: "quote fields that contain a tab",
        DataFormat.GLUE_TSV: "a text contains a tab, or a field is missing",
    }[fmt]
    any_row = False
    for lineno, row in records:
        any_row = True
        if len(row) != len(header):
            raise DataError(
                f"{opts.path}:{lineno}: {len(row)} columns, but the header (line {header_line}) has "
                f"{len(header)}; {width_hint}"
            )
        fields = {name: cell.strip() for name, cell in zip(header, row)}
        ex = _finish(
            opts, lineno, row[i_text],
            row[i_text_b] if i_text_b is not None else None,
            row[i_label] if i_label is not None else None,
            fields,
            text_where=f"in column {text_field!r}", text_b_where=f"in column {text_b_field!r}",
            label_where=f"in column {opts.label_field!r}",
        )
        if ex is not None:
            yield ex
    if not any_row:
        lines.header_only = True


def _parse_label_first(lines: LineReader, opts: _Options, fmt: DataFormat) -> Iterator[Example]:
    for lineno, line in lines:
        body = line.rstrip("\r\n").lstrip()
        if not body.strip():
            continue
        # Split at the first space or tab only: the rest, stripped, is the sentence (MR and SUBJ
        # put two spaces after the label on some lines).
        parts = re.split(r"[ \t]", body, maxsplit=1)
        if len(parts) == 1:
            raise DataError(
                f"{opts.path}:{lineno}: expected 'LABEL sentence', found no space after {_short(body)!r}"
            )
        label, text = parts[0], parts[1]
        ex = _finish(
            opts, lineno, text, None, label, {"label": label, "text": text.strip()},
            text_where=f"after the label {label!r}", label_where="",
        )
        if ex is not None:
            yield ex


def _parse_text(lines: LineReader, opts: _Options, fmt: DataFormat) -> Iterator[Example]:
    for lineno, line in lines:
        text = line.strip()
        if text:
            yield Example(text=text, source=f"{opts.path}:{lineno}", fields={"text": text})


# --------------------------------------------------------------------------------------------
# helpers


def _short(s: str, n: int = 40) -> str:
    """Return s cut to n characters with an ellipsis, for quoting a line in a message."""
    return s if len(s) <= n else s[: n - 3] + "..."


def _group_by_label(examples: Iterable[Example]) -> dict[str, list[int]]:
    """Return label -> indices of its examples, in file order."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, ex in enumerate(examples):
        groups[ex.label].append(i)  # type: ignore[index]  # callers check labels are present
    return dict(groups)
