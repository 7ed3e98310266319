"""Data readers: every format from small hand-written files, the real shared data, and every error path."""

from __future__ import annotations

import json
import warnings
from collections import Counter
from pathlib import Path

import pytest

from softprompt.errors import ConfigError, DataError
from softprompt.tasks.conll import read_token_examples
from softprompt.tasks.readers import (
    DataFormat,
    DataWarning,
    Example,
    detect_format,
    read_examples,
    sample_k_per_class,
    split_examples,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
if not DATA.is_dir():  # the checkout may live elsewhere; the shared folder is fixed on this machine
    DATA = Path("/work/shared/data")
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="shared data folder not present")


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    p = tmp_path / name
    if isinstance(content, bytes):
        p.write_bytes(content)
    else:
        p.write_text(content, encoding="utf-8")
    return p


# ---------------------------------------------------------------- formats


def test_jsonl_fields_numbers_and_blank_lines(tmp_path):
    p = write(
        tmp_path,
        "train.jsonl",
        '{"text": "  a fine film ", "label": 1, "stars": 4.5, "ok": true}\n'
        "\n"
        '{"text": "dull", "label": "0", "note": null}\n',
    )
    ex = read_examples(p)
    assert [e.text for e in ex] == ["a fine film", "dull"]
    assert [e.label for e in ex] == ["1", "0"]
    assert ex[0].fields == {"text": "a fine film", "label": "1", "stars": "4.5", "ok": "true"}
    assert "note" not in ex[1].fields  # null is absent, not the string "None"
    assert ex[0].source == f"{p}:1" and ex[1].source == f"{p}:3"
    assert ex[0].text_b is None


def test_jsonl_custom_fields_and_pairs(tmp_path):
    p = write(tmp_path, "pairs.jsonl", json.dumps({"premise": "A", "hypothesis": "B", "gold": "yes"}) + "\n")
    (ex,) = read_examples(p, text_field="premise", text_b_field="hypothesis", label_field="gold")
    assert (ex.text, ex.text_b, ex.label) == ("A", "B", "yes")


def test_csv_quoted_fields_and_embedded_newlines(tmp_path):
    p = write(
        tmp_path,
        "train.csv",
        'text,label\n'
        '"hello, world",pos\n'
        '"two\nlines",neg\n'
        'plain,neg\n',
    )
    ex = read_examples(p)
    assert [e.text for e in ex] == ["hello, world", "two\nlines", "plain"]
    assert [e.label for e in ex] == ["pos", "neg", "neg"]
    # A record's line is where it starts: the embedded newline pushes "plain" to line 5.
    assert [e.source.rsplit(":", 1)[1] for e in ex] == ["2", "3", "5"]


def test_csv_bom_and_blank_rows(tmp_path):
    p = write(tmp_path, "bom.csv", "\ufefftext,label\n\na,x\n,\nb,y\n")
    ex = read_examples(p)
    assert [(e.text, e.label) for e in ex] == [("a", "x"), ("b", "y")]
    assert ex[1].source.endswith(":5")


def test_tsv_with_named_columns(tmp_path):
    p = write(tmp_path, "d.tsv", "sentence\tsentiment\nnice one\t1\nbad one\t0\n")
    assert detect_format(p) is DataFormat.TSV
    ex = read_examples(p, text_field="sentence", label_field="sentiment")
    assert [(e.text, e.label) for e in ex] == [("nice one", "1"), ("bad one", "0")]


def test_glue_tsv_unquoted_pairs(tmp_path):
    p = write(
        tmp_path,
        "dev.tsv",
        'index\tsentence1\tsentence2\tlabel\n'
        '0\t"Quoted," he said.\tHe spoke.\tentailment\n'
        '1\tA "b\tC\tnot_entailment\n',
    )
    assert detect_format(p) is DataFormat.GLUE_TSV
    ex = read_examples(p)
    assert ex[0] == Example(
        text='"Quoted," he said.',
        text_b="He spoke.",
        label="entailment",
        source=f"{p}:2",
        fields={"index": "0", "sentence1": '"Quoted," he said.', "sentence2": "He spoke.", "label": "entailment"},
    )
    assert (ex[1].text, ex[1].label) == ('A "b', "not_entailment")


def test_label_first_lines(tmp_path):
    p = write(tmp_path, "sst.train", "1 a great film .\n0  . . . awful\n\n3\tTREC style tab\n")
    assert detect_format(p) is DataFormat.LABEL_FIRST
    ex = read_examples(p)
    assert [(e.label, e.text) for e in ex] == [("1", "a great film ."), ("0", ". . . awful"), ("3", "TREC style tab")]
    assert ex[2].source == f"{p}:4"
    assert ex[0].fields == {"label": "1", "text": "a great film ."}


def test_label_first_legacy_encoding_falls_back_per_line_and_warns(tmp_path):
    # cp1252 bytes as in MR/SUBJ: 0x85 is an ellipsis (and would be a line break, NEL, if the
    # file were split with str.splitlines), 0xe9 is e-acute; line 1 is valid UTF-8.
    p = write(tmp_path, "mr.all", "1 caf\u00e9 ok\n".encode() + b"0 clich\xe9s\x85 pile up\n1 fine\n")
    with pytest.warns(DataWarning, match=r"mr\.all:2: not valid utf-8, read as cp1252$"):
        ex = read_examples(p)
    assert [e.text for e in ex] == ["caf\u00e9 ok", "clich\u00e9s\u2026 pile up", "fine"]


def test_text_format_and_limit(tmp_path):
    p = write(tmp_path, "raw.txt", "The cat sat.\n\n  What is it ?  \nA third line\n")
    assert detect_format(p) is DataFormat.TEXT
    ex = read_examples(p, require_label=False, limit=2)
    assert [(e.text, e.label) for e in ex] == [("The cat sat.", None), ("What is it ?", None)]


def test_detect_format_by_extension_and_content(tmp_path):
    assert detect_format(write(tmp_path, "a.json", "{}")) is DataFormat.JSONL
    assert detect_format(write(tmp_path, "a.csv", "text\nx\n")) is DataFormat.CSV
    assert detect_format(write(tmp_path, "noext", '{"text": "x"}\n')) is DataFormat.JSONL
    qnli = write(tmp_path, "qnli.tsv", "index\tquestion\tsentence\tlabel\n0\tq?\ts.\tentailment\n")
    assert detect_format(qnli) is DataFormat.GLUE_TSV
    # Numbered lines are not labels: every head differs.
    numbered = "".join(f"{i} line number {i}\n" for i in range(1, 41))
    assert detect_format(write(tmp_path, "numbered.txt", numbered)) is DataFormat.TEXT
    assert detect_format(write(tmp_path, "fast.txt", "__label__pos good\n__label__neg bad\n")) is DataFormat.LABEL_FIRST


def test_label_optional(tmp_path):
    p = write(tmp_path, "u.jsonl", '{"text": "a"}\n{"text": "b", "label": ""}\n')
    assert [e.label for e in read_examples(p, require_label=False)] == [None, None]
    q = write(tmp_path, "l.jsonl", '{"text": "a", "label": "x"}\n')
    assert read_examples(q, label_field=None)[0].label is None
    c = write(tmp_path, "u.csv", "text\nhello\n")
    assert read_examples(c, require_label=False)[0].label is None


def test_format_given_as_string(tmp_path):
    p = write(tmp_path, "data.dat", "text,label\na,b\n")
    assert read_examples(p, format="csv")[0].label == "b"
    with pytest.raises(ConfigError, match="unknown data format 'xml'"):
        read_examples(p, format="xml")


# ---------------------------------------------------------------- errors


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"nope\.jsonl: file not found$"):
        read_examples(tmp_path / "nope.jsonl")


def test_directory(tmp_path):
    with pytest.raises(DataError, match="is a directory"):
        read_examples(tmp_path)


@pytest.mark.parametrize("name", ["empty.jsonl", "empty.csv", "empty.txt", "empty.tsv"])
def test_empty_file(tmp_path, name):
    p = write(tmp_path, name, "")
    with pytest.raises(DataError, match=r": no examples \(the file is empty\)$"):
        read_examples(p)


def test_blank_and_header_only_files(tmp_path):
    with pytest.raises(DataError, match=r"no examples \(the file is empty\)"):
        read_examples(write(tmp_path, "blank.jsonl", "\n  \n"))
    with pytest.raises(DataError, match=r"h\.csv: no examples \(only a header row\)"):
        read_examples(write(tmp_path, "h.csv", "text,label\n"))


def test_malformed_json_names_file_and_line(tmp_path):
    p = write(tmp_path, "train.jsonl", '{"text": "a", "label": "x"}\n{"text": "b" "label": "y"}\n')
    with pytest.raises(DataError, match=r"train\.jsonl:2: not valid JSON \(Expecting ',' delimiter at column 14\)"):
        read_examples(p)


def test_json_line_not_an_object(tmp_path):
    p = write(tmp_path, "a.jsonl", '{"text": "a", "label": "x"}\n["b", "y"]\n')
    with pytest.raises(DataError, match=r"a\.jsonl:2: expected a JSON object \{\.\.\.\}, found an array"):
        read_examples(p)


def test_pretty_printed_json_gets_a_hint(tmp_path):
    p = write(tmp_path, "a.json", '[\n  {"text": "a"}\n]\n')
    with pytest.raises(DataError, match=r"a\.json:1: not valid JSON .*one complete object per line"):
        read_examples(p)


def test_csv_wrong_column_count(tmp_path):
    p = write(tmp_path, "train.csv", "text,label\na,x\nb,with, comma,y\n")
    with pytest.raises(DataError, match=r"train\.csv:3: 4 columns, but the header \(line 1\) has 2; quote fields"):
        read_examples(p)


def test_csv_unclosed_quote(tmp_path):
    p = write(tmp_path, "q.csv", 'text,label\na,x\n"never closed,y\nc,z\n')
    with pytest.raises(DataError, match=r"q\.csv:3: a quoted field that starts here is never closed"):
        read_examples(p)


def test_jsonl_missing_label_field(tmp_path):
    p = write(tmp_path, "train.jsonl", '{"text": "a", "label": "x"}\n' * 3 + '{"text": "b", "sentiment": "y"}\n')
    with pytest.raises(
        DataError, match=r"train\.jsonl:4: missing field 'label' \(fields here: text, sentiment\); set label_field"
    ):
        read_examples(p)


def test_csv_missing_label_column(tmp_path):
    p = write(tmp_path, "t.csv", "review,stars\nok,5\n")
    with pytest.raises(DataError, match=r"t\.csv:1: no column 'text' \(columns here: review, stars\); set text_field"):
        read_examples(p)
    with pytest.raises(DataError, match=r"t\.csv:1: no column 'label' .*set label_field"):
        read_examples(p, text_field="review")


def test_csv_empty_label_cell(tmp_path):
    p = write(tmp_path, "t.csv", "text,label\nok,\n")
    with pytest.raises(DataError, match=r"t\.csv:2: empty label in column 'label'"):
        read_examples(p)


@pytest.mark.parametrize(
    "name, content, where",
    [
        ("e.jsonl", '{"text": "fine", "label": "x"}\n{"text": "   ", "label": "y"}\n', r"e\.jsonl:2: empty text in field 'text'"),
        ("e.csv", "text,label\nfine,x\n  ,y\n", r"e\.csv:3: empty text in column 'text'"),
        ("e.all", "1 fine\n0 \n", r"e\.all:2: empty text after the label '0'"),
    ],
)
def test_empty_text(tmp_path, name, content, where):
    p = write(tmp_path, name, content)
    with pytest.raises(DataError, match=where):
        read_examples(p)
    assert [e.text for e in read_examples(p, skip_empty=True)] == ["fine"]


def test_label_first_line_without_space(tmp_path):
    p = write(tmp_path, "x.all", "1 good\n0 bad\nlonely\n")
    with pytest.raises(DataError, match=r"x\.all:3: expected 'LABEL sentence', found no space after 'lonely'"):
        read_examples(p, format="label-first")


def test_text_format_needs_require_label_false(tmp_path):
    p = write(tmp_path, "raw.txt", "Just some prose.\n")
    with pytest.raises(DataError, match=r"raw\.txt: plain-text lines carry no labels; pass format='label-first'"):
        read_examples(p)


def test_bad_limit(tmp_path):
    p = write(tmp_path, "a.jsonl", '{"text": "a", "label": "x"}\n')
    with pytest.raises(ConfigError, match="limit"):
        read_examples(p, limit=0)


# ---------------------------------------------------------------- split and k-shot


def _labelled(n_pos: int, n_neg: int) -> list[Example]:
    labels = ["pos"] * n_pos + ["neg"] * n_neg
    return [Example(text=f"t{i}", label=lab, source=f"f:{i + 1}") for i, lab in enumerate(labels)]


def test_split_is_seeded_stratified_and_ordered():
    data = _labelled(30, 10)
    train, dev = split_examples(data, 0.25, seed=7)
    assert len(dev) == 10 and len(train) == 30
    # Quotas 7.5 and 2.5: floors 7 and 2, the one left over goes to the tie's first label, "neg".
    assert Counter(e.label for e in dev) == {"pos": 7, "neg": 3}
    assert sorted(e.text for e in train + dev) == sorted(e.text for e in data)  # a partition
    assert [data.index(e) for e in dev] == sorted(data.index(e) for e in dev)  # file order kept
    assert split_examples(data, 0.25, seed=7) == (train, dev)
    assert split_examples(data, 0.25, seed=8) != (train, dev)


def test_split_exact_class_shares():
    train, dev = split_examples(_labelled(60, 20), 0.1, seed=0)
    assert Counter(e.label for e in dev) == {"pos": 6, "neg": 2}
    assert Counter(e.label for e in train) == {"pos": 54, "neg": 18}


def test_split_unlabelled_and_tiny():
    data = [Example(text=str(i)) for i in range(10)]
    train, dev = split_examples(data, 0.3, seed=1)
    assert len(dev) == 3 and len(train) == 7
    train, dev = split_examples(data[:2], 0.01, seed=1)
    assert len(dev) == 1 and len(train) == 1  # never an empty part
    with pytest.raises(DataError, match="at least 2 examples"):
        split_examples(data[:1], 0.5, seed=1)
    with pytest.raises(ConfigError, match="dev_fraction"):
        split_examples(data, 1.0, seed=1)


def test_k_shot_is_seeded_balanced_and_checks_counts():
    data = _labelled(20, 5)
    picked = sample_k_per_class(data, 4, seed=3)
    assert Counter(e.label for e in picked) == {"pos": 4, "neg": 4}
    assert sample_k_per_class(data, 4, seed=3) == picked
    assert sample_k_per_class(data, 4, seed=4) != picked
    assert [data.index(e) for e in picked] == sorted(data.index(e) for e in picked)
    with pytest.raises(DataError, match=r"class 'neg' has fewer than 6 examples \(counts: 'neg': 5, 'pos': 20\)"):
        sample_k_per_class(data, 6, seed=0)
    with pytest.raises(DataError, match=r"f:1: no label"):
        sample_k_per_class([Example(text="x", source="f:1")], 1, seed=0)


# ---------------------------------------------------------------- the real shared data (first lines only)


@needs_data
def test_real_sst2_label_first():
    p = DATA / "sentence-classification" / "stsa.binary.train"
    assert detect_format(p) is DataFormat.LABEL_FIRST
    ex = read_examples(p, limit=50)
    assert len(ex) == 50 and {e.label for e in ex} == {"0", "1"}
    assert ex[0].text.startswith("a stirring , funny") and ex[0].label == "1"


@needs_data
def test_real_trec_label_first():
    p = DATA / "sentence-classification" / "TREC.train.all"
    ex = read_examples(p, limit=50)
    assert len(ex) == 50 and {e.label for e in ex} <= {"0", "1", "2", "3", "4", "5"}
    assert ex[0] == Example(
        text="How did serfdom develop in and then leave Russia ?",
        label="0",
        source=f"{p}:1",
        fields={"label": "0", "text": "How did serfdom develop in and then leave Russia ?"},
    )
    # Line 66 holds one stray non-UTF-8 byte (0xf0 for a hyphen, "sister\xf0city").
    with pytest.warns(DataWarning, match=rf"{p}:66: not valid utf-8"):
        assert read_examples(p, limit=66)[-1].text == "Which city has the oldest relationship as a sister\u00f0city with Los Angeles ?"


@needs_data
def test_real_rte_glue_tsv():
    p = DATA / "rte" / "dev.tsv"
    assert detect_format(p) is DataFormat.GLUE_TSV
    ex = read_examples(p, limit=50)
    assert len(ex) == 50
    assert all(e.text and e.text_b for e in ex)
    assert {e.label for e in ex} == {"entailment", "not_entailment"}
    assert ex[0].source == f"{p}:2" and ex[0].fields["index"] == "0"


@needs_data
def test_real_mr_reads_whole_file_with_cp1252_fallback():
    p = DATA / "sentence-classification" / "rt-polarity.all"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ex = read_examples(p)
    # Splitting on "\n" only: 0x85 (an ellipsis in cp1252, NEL in latin-1) must not break lines.
    assert len(ex) == 10662 and Counter(e.label for e in ex) == {"0": 5331, "1": 5331}
    assert [str(w.message) for w in caught if w.category is DataWarning] == [
        f"{p}:32: not valid utf-8, read as cp1252 (202 lines like this, the first here)"
    ]
    assert ex[31].text == "the action clich\u00e9s just pile up ."


def test_max_dev_cutting_a_label_sorted_file_to_one_class_warns(tmp_path):
    """A dev file sorted by label, cut to its first rows, would score every prompt on one class."""
    from helpers import run_config

    from softprompt import api
    from softprompt.tasks.readers import DataWarning

    config = run_config(tmp_path, steps=1, eval_every=1)
    rows = [json.loads(line) for line in open(config["data"]["dev"])]
    rows.sort(key=lambda r: r["label"])
    (tmp_path / "sorted.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config["data"].update(dev=str(tmp_path / "sorted.jsonl"), max_dev=5)
    with pytest.warns(DataWarning, match=r"data.max_dev=5 keeps the first 5 examples.*'positive'"):
        run = api.train(config, progress=False, log=lambda _: None)
    assert run.metrics["dev"]["n"] == 5  # a warning, not an error: the run still trains and scores the 5 rows


# ---------------------------------------------------------------- byte-order marks and invalid UTF-8

BOM = "\ufeff"
# Each file: a BOM at the file's start, at a line's start, alone on a line (concatenated files) and,
# where a line holds text, inside it; every format reads the same two examples.
BOM_FILES = {
    DataFormat.JSONL: f'{BOM}{{"text": "a", "label": "x"}}\n{BOM}\n{BOM}{{"text": "b{BOM}", "label": "y"}}\n{BOM}',
    DataFormat.CSV: f"{BOM}text,label\n{BOM}a,x\n{BOM}\nb,{BOM}y\n{BOM}",
    DataFormat.TSV: f"{BOM}text\tlabel\n{BOM}a\tx\n{BOM}\nb\ty{BOM}\n{BOM}",
    DataFormat.GLUE_TSV: f"{BOM}index\tsentence\tlabel\n{BOM}0\ta\tx\n{BOM}\n1\tb\t{BOM}y\n{BOM}",
    DataFormat.LABEL_FIRST: f"{BOM}x a\n{BOM}\n{BOM}y{BOM}b\n{BOM}",
}


@pytest.mark.parametrize("fmt", list(BOM_FILES))
def test_a_byte_order_mark_anywhere_is_whitespace(tmp_path, fmt):
    p = write(tmp_path, f"bom.{fmt.value}", BOM_FILES[fmt])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning either: the BOM is valid UTF-8
        ex = read_examples(p, format=fmt)
    assert [(e.text, e.label) for e in ex] == [("a", "x"), ("b", "y")]
    assert [e.source for e in ex][0] == f"{p}:{1 if fmt in (DataFormat.JSONL, DataFormat.LABEL_FIRST) else 2}"


def test_a_byte_order_mark_in_a_json_escape_is_whitespace_too(tmp_path):
    p = write(tmp_path, "esc.jsonl", '{"text": "\\ufeffa\\ufeff", "label": "\\ufeffx"}\n')
    assert [(e.text, e.label) for e in read_examples(p)] == [("a", "x")]


def test_a_utf8_bom_on_a_legacy_line_does_not_become_mojibake(tmp_path):
    p = write(tmp_path, "mixed.txt", b"\xef\xbb\xbf1 caf\xe9\n")  # a BOM, then a cp1252 byte
    with pytest.warns(DataWarning, match=r"mixed\.txt:1: not valid utf-8, read as cp1252$"):
        assert read_examples(p, format="label-first")[0].text == "caf\u00e9"


def test_invalid_utf8_in_json_lines_is_an_error_naming_file_line_and_byte(tmp_path):
    p = write(tmp_path, "bad.jsonl", b'{"text": "a", "label": "x"}\n{"text": "caf\xe9", "label": "y"}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2: not valid utf-8 \(byte 0xe9 at column 14\); "
                                        r"save the file as utf-8$"):
        read_examples(p)


@pytest.mark.parametrize("fmt, content", [
    (DataFormat.CSV, b"text,label\na,x\ncaf\xe9,y\n"),
    (DataFormat.TSV, b"text\tlabel\na\tx\ncaf\xe9\ty\n"),
    (DataFormat.GLUE_TSV, b"index\tsentence\tlabel\n0\ta\tx\n1\tcaf\xe9\ty\n"),
    (DataFormat.LABEL_FIRST, b"x a\ny caf\xe9\n"),
    (DataFormat.TEXT, b"a\ncaf\xe9\n"),
])
def test_invalid_utf8_in_line_formats_warns_with_file_and_line(tmp_path, fmt, content):
    # Spreadsheet exports and the legacy corpora are cp1252: read, and said where.
    p = write(tmp_path, f"legacy.{fmt.value}", content)
    with pytest.warns(DataWarning, match=rf"legacy\.{fmt.value}:3: not valid utf-8, read as cp1252$"
                      if fmt in (DataFormat.CSV, DataFormat.TSV, DataFormat.GLUE_TSV)
                      else rf"legacy\.{fmt.value}:2: not valid utf-8, read as cp1252$"):
        ex = read_examples(p, format=fmt, require_label=fmt is not DataFormat.TEXT)
    assert ex[-1].text == "caf\u00e9"


@pytest.mark.parametrize("line, error", [
    ('{"text": "\\ud800", "label": "x"}', r"bad\.jsonl:1: a \\u escape makes half a character"),
    ('{"text": "a", "label": "x", "\\udc00": 1}', r"bad\.jsonl:1: a \\u escape makes half a character"),
    ('{"text": ' + "[" * 100_000 + "]" * 100_000 + "}", r"bad\.jsonl:1: JSON nested too deeply"),
    ('{"text": "a", "label": ' + "9" * 5000 + "}", r"bad\.jsonl:1: a JSON number too long"),
])
def test_json_that_python_cannot_hold_is_a_data_error(tmp_path, line, error):
    with pytest.raises(DataError, match=error):
        read_examples(write(tmp_path, "bad.jsonl", line + "\n"))


def test_a_valid_surrogate_pair_is_one_character(tmp_path):
    p = write(tmp_path, "emoji.jsonl", '{"text": "ok \\ud83d\\ude00", "label": "x"}\n')
    assert read_examples(p)[0].text == "ok \U0001F600"


def test_conll_reads_a_byte_order_mark_anywhere_as_whitespace(tmp_path):
    # The file: a last line that holds only a BOM stopped the reader ("found '\ufeff'").
    p = write(tmp_path, "ner.txt", f"{BOM}EU B-ORG\n{BOM}rejects O\n\n{BOM}\nGerman{BOM}B-MISC\n{BOM}")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sentences = read_token_examples(p)
    assert [(s.tokens, s.tags) for s in sentences] == [(("EU", "rejects"), ("B-ORG", "O")), (("German",), ("B-MISC",))]
    assert sentences[1].source == f"{p}:5"


def test_conll_invalid_utf8_warns_with_file_and_line(tmp_path):
    p = write(tmp_path, "ner.txt", b"EU B-ORG\n\nM\xfcller B-PER\n")
    with pytest.warns(DataWarning, match=r"ner\.txt:3: not valid utf-8, read as cp1252$"):
        assert read_token_examples(p)[1].tokens == ("M\u00fcller",)


@pytest.mark.parametrize("content, require_tags, error", [
    ("EU B-ORG\nrejects\n", False, r"x\.txt:2: no tag here, but the sentence from line 1 has tags"),
    ("EU\nrejects O\n", False, r"x\.txt:2: a tag here, but the sentence from line 1 has none"),
    ("EU\t \n", True, r"x\.txt:1: expected 'token tag', found an empty tag"),
])
def test_conll_tags_on_some_words_only(tmp_path, content, require_tags, error):
    with pytest.raises(DataError, match=error):
        read_token_examples(write(tmp_path, "x.txt", content), require_tags=require_tags)
