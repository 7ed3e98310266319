"""Fuzzing with hypothesis over what users hand to softprompt: data files of every format (CoNLL
included), templates, run configs and overrides, artifact files, library names. Every case gives a
result or a typed softprompt error of one line, naming the file (and line) where there is one; a
case that crashes with another exception, runs past its time limit or swells the process fails.
Refusing is not enough: each reader test must see some generated files read, and valid files written
in every format must be read back row for row, so a reader that refuses every input fails.

The default run generates about 1,000 cases. `pytest -m fuzz tests/test_fuzz.py` runs twelve times
as many (over 10,000; SOFTPROMPT_FUZZ_SCALE sets the factor), with fresh random draws each time where
the default run's draws are fixed. The count is checked and printed when the module ends.
"""

from __future__ import annotations

import csv
import io
import json
import os
import resource
import signal
import string
import struct
import warnings
from collections import Counter
from contextlib import contextmanager
from dataclasses import fields as dataclass_fields

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from softprompt.configs import DataConfig, ModelConfig, RunConfig, TrainingConfig, from_dict, load_run_config
from softprompt.core import PromptArtifact
from softprompt.errors import ArtifactError, ConfigError, DataError, SoftpromptError
from softprompt.library import Library
from softprompt.library.store import parse_ref
from softprompt.methods import METHODS
from softprompt.models import ModelKind
from softprompt.tasks.conll import read_token_examples
from softprompt.tasks.readers import DataFormat, DataWarning, read_examples
from softprompt.templates import TemplateRenderer, parse_template
from softprompt.templates.grammar import source_of
from softprompt.tasks.kinds import TASK_KINDS
from tiny import tiny_base, tiny_tokenizer

pytestmark = pytest.mark.fuzz

# Cases per test in the default run; they add up to about 1,000.
BUDGET = {
    "jsonl": 100, "delimited": 100, "line formats": 80, "any bytes": 100, "conll": 80,
    "template parse": 150, "template render": 60, "config file": 80, "overrides": 80, "config classes": 80,
    "artifact metadata": 60, "artifact bytes": 60, "library names": 40, "valid files": 60,
}
CASE_SECONDS = 30  # far above any real case: only a hang reaches it
READERS = ("jsonl", "delimited", "line formats", "any bytes", "conll", "valid files")  # cases of the data readers
MAX_GROWTH_MB = 1024  # the whole module's peak memory may grow by this much at most


class Hang(Exception):
    pass


@contextmanager
def within(seconds: int):
    """Fail a case that runs longer than seconds (a hang) instead of waiting for it forever."""
    def alarm(signum, frame):
        raise Hang(f"case ran past {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def fuzz(request):
    """fuzz(name) gives a case's settings decorator; cases are counted and the total checked at the end."""
    marked_run = "fuzz" in request.config.getoption("markexpr")
    scale = int(os.environ.get("SOFTPROMPT_FUZZ_SCALE", 12 if marked_run else 1))
    counts: Counter = Counter()
    accepted: Counter = Counter({name: 0 for name in READERS})  # reader cases that gave examples, not an error

    def settings_for(name):
        return settings(max_examples=BUDGET[name] * scale, deadline=None, database=None,
                        derandomize=not marked_run, suppress_health_check=list(HealthCheck))

    settings_for.counts = counts
    settings_for.accepted = accepted
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    yield settings_for
    growth_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) / 1024
    total = sum(counts.values())
    line = f"fuzz: {total:,} cases (scale {scale}): " + ", ".join(
        f"{k} {v:,}" + (f" ({accepted[k]:,} read)" if k in accepted else "") for k, v in sorted(counts.items()))
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print("\n" + line)
    assert growth_mb < MAX_GROWTH_MB, f"peak memory grew by {growth_mb:.0f} MB over the fuzz cases"
    if set(counts) == set(BUDGET):  # every fuzz test ran (not a -k subset): check the totals
        assert total >= sum(BUDGET.values()) * scale * 0.95, line


def case(fuzz, name):
    """Count one case and bound its time."""
    fuzz.counts[name] += 1
    return within(CASE_SECONDS)


def one_line(message: str) -> str:
    assert "\n" not in message and message.strip() == message and message, repr(message)
    return message


def outcome(path, call):
    """call()'s result, or the SoftpromptError it raised; either way warnings and errors name path."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = call()
        except SoftpromptError as exc:
            assert one_line(str(exc)).startswith(str(path)), str(exc)
            result = exc
    for warning in caught:
        if issubclass(warning.category, DataWarning):
            assert one_line(str(warning.message)).startswith(f"{path}:"), str(warning.message)
    return result


# ------------------------------------------------------------------ data files

TRICKY = ["\ufeff", "\r", "\t", ",", '"', "'", "{", "}", "[", "]", ":", "\\", " ", "  ", "\x00", "\x0b", "\x0c",
          "\x1c", "\x85", "\u00a0", "\u2028", "\u00e9", "\U0001f600", "__label__", "0", "1", "-1", "NUM:date",
          "text", "label", "sentence", "sentence1", "sentence2", "index", "question", "B-PER", "O", "-DOCSTART-",
          "en:", "\\u", "\\ud800", "\\ufeff", "null", "true", "1e999", "9" * 30]
chunk = st.one_of(st.sampled_from(TRICKY), st.text(max_size=6))
text_line = st.lists(chunk, max_size=8).map("".join)
raw_bytes = st.binary(max_size=6)  # invalid UTF-8 among others
raw_line = st.one_of(text_line.map(lambda t: t.encode("utf-8", "surrogatepass")), raw_bytes)
# Words in any script of letters, digits, punctuation and symbols: nothing a reader strips or splits on.
# Well-formed rows built of them are mixed into the damaged ones, so some generated files are valid.
word = st.text(st.characters(categories=("L", "N", "P", "S")), min_size=1, max_size=8)
clean_text = st.lists(word, min_size=1, max_size=6).map(" ".join)


def file_of(lines):
    return st.lists(lines, max_size=12).map(lambda parts: b"\n".join(parts)) | st.just(b"")


json_scalar = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), text_line)
json_value = st.recursive(json_scalar, lambda inner: st.lists(inner, max_size=3)
                          | st.dictionaries(text_line, inner, max_size=3), max_leaves=6)
json_object = st.dictionaries(st.sampled_from(["text", "label", "text_b", "x"]) | text_line, json_value, max_size=5)
jsonl_line = st.one_of(st.tuples(clean_text, word).map(lambda r: json.dumps({"text": r[0], "label": r[1]}).encode()),
                       json_object.map(lambda o: json.dumps(o).encode()),
                       json_object.map(lambda o: json.dumps(o, ensure_ascii=False).encode("utf-8", "surrogatepass")),
                       raw_line)


def check_examples(path, result):
    """Examples read are well formed; True when there were any (False: the reader refused the file)."""
    if isinstance(result, SoftpromptError):
        return False
    assert result, "read_examples returned no examples without an error"
    for ex in result:
        assert ex.text and ex.text == ex.text.strip() and "\ufeff" not in ex.text, ex
        assert ex.label is None or (ex.label and ex.label == ex.label.strip() and "\ufeff" not in ex.label), ex
        assert ex.source.startswith(f"{path}:"), ex
    return True


def read_any(path, **options):
    return outcome(path, lambda: read_examples(path, **options))


def read_case(fuzz, name, path, content, **options):
    """One reader case: the file holds content; read_examples gives examples or a DataError naming it."""
    with case(fuzz, name):
        path.write_bytes(content)
        if check_examples(path, read_any(path, **options)):
            fuzz.accepted[name] += 1


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


def test_jsonl(fuzz, folder):
    @fuzz("jsonl")
    @given(file_of(jsonl_line), st.booleans(), st.sampled_from([None, "text_b"]), st.booleans())
    def run(content, require_label, text_b, skip_empty):
        read_case(fuzz, "jsonl", folder / "data.jsonl", content, require_label=require_label, text_b_field=text_b,
                  skip_empty=skip_empty)

    run()
    # each case asserts inside (examples well formed, or one error line naming the file); all of them ran:
    assert fuzz.counts["jsonl"] > 0
    assert fuzz.accepted["jsonl"] > 0, "the reader refused every generated file"


def delimited_line(delimiter):
    cell = st.one_of(text_line, text_line.map(lambda t: '"' + t.replace('"', '""') + '"'))
    return st.lists(cell, max_size=5).map(lambda cells: delimiter.join(cells).encode("utf-8", "surrogatepass"))


HEADERS = [b"text,label", b"text\tlabel", b"index\tsentence1\tsentence2\tlabel", b"index\tsentence\tlabel",
           b"\xef\xbb\xbftext,label", b"label\ttext\ttext"]


def test_delimited(fuzz, folder):
    @fuzz("delimited")
    @given(st.sampled_from([DataFormat.CSV, DataFormat.TSV, DataFormat.GLUE_TSV]), st.sampled_from(HEADERS),
           st.data(), st.booleans())
    def run(fmt, header, data, skip_empty):
        delimiter = "," if fmt is DataFormat.CSV else "\t"
        width = len(header.split(delimiter.encode()))
        valid_row = st.lists(word, min_size=width, max_size=width).map(
            lambda cells: delimiter.join(f'"{c.replace(chr(34), chr(34) * 2)}"' for c in cells).encode())
        # half the files wholly well formed: a file with one bad row is refused whole, so mixed files
        # alone would leave the accepted count to chance
        rows = data.draw(st.lists(valid_row, min_size=1, max_size=10)
                         | st.lists(st.one_of(valid_row, delimited_line(delimiter), raw_line), max_size=10))
        read_case(fuzz, "delimited", folder / f"data.{fmt.value}", b"\n".join([header, *rows]), format=fmt,
                  skip_empty=skip_empty)

    run()
    # each case asserts inside (examples well formed, or one error line naming the file); all of them ran:
    assert fuzz.counts["delimited"] > 0
    assert fuzz.accepted["delimited"] > 0, "the reader refused every generated file"


def test_line_formats(fuzz, folder):
    @fuzz("line formats")
    @given(file_of(raw_line), st.sampled_from([None, DataFormat.LABEL_FIRST, DataFormat.TEXT]),
           st.sampled_from(["utf-8", "cp1252", "latin-1", "ascii", "utf-8-sig"]))
    def run(content, fmt, encoding):
        read_case(fuzz, "line formats", folder / "data.txt", content, format=fmt, encoding=encoding,
                  require_label=fmt is not DataFormat.TEXT)

    run()
    # each case asserts inside (examples well formed, or one error line naming the file); all of them ran:
    assert fuzz.counts["line formats"] > 0
    assert fuzz.accepted["line formats"] > 0, "the reader refused every generated file"


def test_any_bytes_in_every_format(fuzz, folder):
    @fuzz("any bytes")
    @given(st.binary(max_size=300), st.sampled_from([*DataFormat, None]), st.integers(1, 5) | st.none())
    def run(content, fmt, limit):
        read_case(fuzz, "any bytes", folder / "blob.dat", content, format=fmt, limit=limit,
                  require_label=fmt is not DataFormat.TEXT)

    run()
    # each case asserts inside (examples well formed, or one error line naming the file); all of them ran:
    assert fuzz.counts["any bytes"] > 0
    assert fuzz.accepted["any bytes"] > 0, "the reader refused every generated file"


conll_line = st.one_of(
    st.tuples(text_line, st.sampled_from([" ", "\t", "  ", " x "]), text_line).map(lambda t: "".join(t).encode("utf-8", "surrogatepass")),
    st.sampled_from([b"", b"\xef\xbb\xbf", b"-DOCSTART- -X- O O", b"en:Paris\tB-LOC", b"word", b"\tO", b"a\t", b"\r"]),
    raw_line,
)


def test_conll(fuzz, folder):
    @fuzz("conll")
    @given(file_of(conll_line), st.booleans(), st.integers(1, 3) | st.none())
    def run(content, require_tags, limit):
        with case(fuzz, "conll"):
            path = folder / "ner.txt"
            path.write_bytes(content)
            result = outcome(path, lambda: read_token_examples(path, require_tags=require_tags, limit=limit))
            if isinstance(result, SoftpromptError):
                assert isinstance(result, DataError)
                return
            assert result and (limit is None or len(result) <= limit)
            for sentence in result:
                assert sentence.tokens and all(t.strip() and "\ufeff" not in t for t in sentence.tokens), sentence
                assert sentence.tags is None or len(sentence.tags) == len(sentence.tokens), sentence
                assert sentence.tags is not None or not require_tags
                assert sentence.source.startswith(f"{path}:")
            fuzz.accepted["conll"] += 1

    run()
    assert fuzz.accepted["conll"] > 0, "the reader refused every generated file"


# ------------------------------------------------------------------ valid files read back exactly

VALID_FORMATS = [DataFormat.JSONL, DataFormat.CSV, DataFormat.TSV, DataFormat.LABEL_FIRST, DataFormat.TEXT]


def valid_file(fmt, rows):
    """What a user writes for rows [(text, label)] in fmt: quoted where the format quotes."""
    if fmt in (DataFormat.CSV, DataFormat.TSV):
        out = io.StringIO()
        csv.writer(out, delimiter="," if fmt is DataFormat.CSV else "\t", lineterminator="\n").writerows(
            [("text", "label"), *rows])
        return out.getvalue()
    if fmt is DataFormat.JSONL:
        return "".join(json.dumps({"text": text, "label": label}, ensure_ascii=False) + "\n" for text, label in rows)
    if fmt is DataFormat.LABEL_FIRST:
        return "".join(f"{label} {text}\n" for text, label in rows)
    return "".join(text + "\n" for text, _ in rows)


def test_valid_files_are_read_back_exactly(fuzz, folder):
    # The cases above may all end in an error; these must all be read, row for row, in every format.
    @fuzz("valid files")
    @given(st.sampled_from(VALID_FORMATS), st.lists(st.tuples(clean_text, word), min_size=1, max_size=8),
           st.lists(st.lists(st.tuples(word, word), min_size=1, max_size=5), min_size=1, max_size=4))
    def run(fmt, rows, sentences):
        with case(fuzz, "valid files"):
            path = folder / f"valid.{fmt.value}"
            path.write_text(valid_file(fmt, rows), encoding="utf-8")
            labelled = fmt is not DataFormat.TEXT
            got = read_any(path, format=fmt, require_label=labelled)
            assert not isinstance(got, SoftpromptError), f"{fmt.value} refused a valid file: {got}"
            assert [(ex.text, ex.label) for ex in got] == [(text, label if labelled else None) for text, label in rows]
            assert [ex.source for ex in got] == [f"{path}:{i + 1 + (fmt in (DataFormat.CSV, DataFormat.TSV))}"
                                                 for i in range(len(rows))]
            conll = folder / "valid.conll"
            conll.write_text("\n\n".join("\n".join(f"{token} {tag}" for token, tag in sentence)
                                         for sentence in sentences) + "\n", encoding="utf-8")
            read = read_token_examples(conll)
            assert [(list(s.tokens), list(s.tags)) for s in read] == [
                ([token for token, _ in sentence], [tag for _, tag in sentence]) for sentence in sentences]
            fuzz.accepted["valid files"] += 1

    run()
    assert fuzz.accepted["valid files"] == fuzz.counts["valid files"] > 0


# ------------------------------------------------------------------ templates

template_text = st.lists(st.one_of(
    st.sampled_from(["{", "}", "{{", "}}", "[P]", "[P*", "[P*3]", "[P*0]", "[P*99999]", "[P*" + "7" * 5000 + "]", "[P*" + "0" * 5000 + "1]", "[P*" + "0" * 5000 + "]",
                     "[P*\u0663]", "[", "]", "{mask}", "{text}", "{ text }", "{text_b}", "{sep}", "{cls}", "{bos}",
                     "{eos}", "{1x}", "{}", "{a b}", "*", "P", "\n", " ", ":", "\ufeff"]),
    st.text(max_size=5)), max_size=12).map("".join)


def test_template_parse(fuzz):
    @fuzz("template parse")
    @given(template_text)
    def run(source):
        with case(fuzz, "template parse"):
            try:
                template = parse_template(source)
            except ConfigError as exc:
                assert one_line(str(exc)).startswith("template "), str(exc)
                return
            assert str(template) == source
            assert parse_template(source_of(template.parts)).parts == template.parts  # one meaning per template

    run()


@pytest.fixture(scope="module")
def tokenizers():
    return {ModelKind.CAUSAL: tiny_tokenizer("gpt2"), ModelKind.ENCODER: tiny_tokenizer("bert"),
            ModelKind.SEQ2SEQ: tiny_tokenizer("t5")}


def test_template_render(fuzz, tokenizers):
    @fuzz("template render")
    @given(template_text, st.sampled_from(list(ModelKind)), st.dictionaries(st.sampled_from(["text", "text_b", "x"]),
           text_line, max_size=3), st.integers(0, 8), st.integers(0, 40), st.integers(1, 64))
    def run(source, kind, values, n_prefix, reserve, max_length):
        with case(fuzz, "template render"):
            try:
                template = parse_template(source)
                row = TemplateRenderer(template, tokenizers[kind], kind, max_length).render(
                    values, n_prefix, reserve, where="data.jsonl:3")
            except ConfigError as exc:
                assert one_line(str(exc)).startswith("template "), str(exc)
                return
            except DataError as exc:
                assert one_line(str(exc)).startswith(("data.jsonl:3: ", "template ")), str(exc)
                return
            assert len(row.ids) <= max_length - reserve
            assert sum(1 for i in row.ids if i < 0) == n_prefix + template.num_virtual
            if row.mask_index is not None:
                assert row.ids[row.mask_index] == tokenizers[kind].mask_token_id

    run()


# ------------------------------------------------------------------ configs

KEYS = {"name": None, "output": None, "model": [f.name for f in dataclass_fields(ModelConfig)],
        "data": [f.name for f in dataclass_fields(DataConfig)], "training": [f.name for f in dataclass_fields(TrainingConfig)],
        "task": ["kind", "template", "labels", "verbalizer", "max_length"], "method": ["name", "num_virtual_tokens"]}
yaml_scalar = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**6), st.floats(allow_nan=True), text_line,
                        st.sampled_from(["float32", "cpu", "prompt_tuning", "classification", "left", "1e-3", "auto"]))
section = st.dictionaries(st.sampled_from(sum((v for v in KEYS.values() if v), [])) | text_line,
                          st.one_of(yaml_scalar, st.lists(yaml_scalar, max_size=3)), max_size=4)
config_dict = st.dictionaries(st.sampled_from(list(KEYS)) | text_line, st.one_of(section, yaml_scalar), max_size=5)
YAML_BITS = ["a: &x [1, 2]\nb: [*x, *x]\n", "[" * 500, "{" * 500, "? [a, b]\n: c\n", "!!python/object:os.system x",
             "training: {steps: .inf}\n", "model: !!binary aGVsbG8=\n", "%YAML 1.1\n---\n", "*undefined\n", "\t- x\n",
             "a: 1\na: 2\n", "training:\n  lr: 3e-2\n", "\ufeffname: x\n", "- 1\n- 2\n", "\x00", "...\n", "a: 'b\n"]
# Ten levels of ten aliases each: 10**10 values once spelled out, from twelve lines.
BOMB = "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 10)) + "task: {labels: *a9}\n"
config_text = st.one_of(config_dict.map(lambda d: yaml.safe_dump(d, allow_unicode=True)),
                        st.lists(st.sampled_from([*YAML_BITS, BOMB]) | text_line, max_size=4).map("".join))
config_bytes = st.one_of(config_text.map(lambda t: t.encode("utf-8", "surrogatepass")), file_of(raw_line))


def check_config(result, where):
    if isinstance(result, RunConfig):
        assert isinstance(result.training, TrainingConfig) and isinstance(result.data, DataConfig)
        return
    assert isinstance(result, ConfigError), repr(result)
    one_line(str(result))


def load_config(source, overrides=()):
    try:
        return load_run_config(source, list(overrides))
    except ConfigError as exc:
        return exc


def test_config_files(fuzz, folder):
    @fuzz("config file")
    @given(config_bytes)
    def run(content):
        with case(fuzz, "config file"):
            path = folder / "run.yaml"
            path.write_bytes(content)
            result = load_config(path)
            check_config(result, path)

    run()


def test_a_yaml_alias_bomb_is_refused_before_it_is_spelled_out(folder):
    path = folder / "bomb.yaml"
    path.write_text(BOMB)
    with within(CASE_SECONDS), pytest.raises(ConfigError, match=r"bomb\.yaml: the config spells out to over 100,000"):
        load_run_config(path)
    levels = ["&a0 [" + ", ".join(["x"] * 10) + "]"] + [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]"
                                                        for i in range(1, 10)]
    with within(CASE_SECONDS), pytest.raises(ConfigError, match=r"override 'task.labels': the config spells out"):
        load_run_config({"name": "x"}, ["task.labels=[" + ", ".join(levels) + "]"])
    path.write_text("task: " + "[" * 5000)
    with pytest.raises(ConfigError, match=r"bomb\.yaml: not valid YAML \(nested too deeply\)"):
        load_run_config(path)
    with pytest.raises(ConfigError, match=r"override 'task.x': the value is nested too deeply"):
        load_run_config({"name": "x"}, ["task.x=" + "[" * 5000])


override = st.one_of(
    st.tuples(st.sampled_from(["training.lr", "training.steps", "model.name", "data.train", "task.labels", "name",
                               "training", "method.name", "a.b.c", "training.lr.x", "", ".", "data..train"]) | text_line,
              st.sampled_from(["=", "==", ": "]), st.sampled_from(YAML_BITS) | text_line).map("".join),
    text_line)


def test_overrides(fuzz):
    @fuzz("overrides")
    @given(st.lists(override, max_size=4))
    def run(overrides):
        with case(fuzz, "overrides"):
            check_config(load_config({"name": "x", "training": {"steps": 3}}, overrides), "overrides")

    run()


CONFIG_CLASSES = [RunConfig, ModelConfig, DataConfig, TrainingConfig,
                  *(cls.Config for cls in METHODS.values()), *(cls.Config for cls in TASK_KINDS.values())]


def test_config_classes(fuzz):
    @fuzz("config classes")
    @given(st.sampled_from(CONFIG_CLASSES), st.data())
    def run(cls, data):
        names = [f.name for f in dataclass_fields(cls)]
        values = data.draw(st.dictionaries(st.sampled_from(names) | text_line, json_value | yaml_scalar, max_size=4))
        with case(fuzz, "config classes"):
            try:
                from_dict(cls, values, "section.")
            except ConfigError as exc:
                one_line(str(exc))

    run()
    # each case asserts inside (examples well formed, or one error line naming the file); all of them ran:
    assert fuzz.counts["config classes"] > 0


# ------------------------------------------------------------------ artifact files

GOOD_META = {"format_version": 1, "method": "prompt_tuning", "name": "p",
             "task": {"kind": "classification", "labels": ["a", "b"], "template": "{text} {mask}"},
             "base_model": {"name": "tiny", "fingerprint": "0123456789abcdef", "fingerprint_version": 2,
                            "hidden_size": 32}}
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.uint8, torch.bool]
tensors = st.dictionaries(st.sampled_from(["prompt.input", "prompt.deep", "head.weight"]) | text_line.filter(bool),
                          st.tuples(st.lists(st.integers(0, 4), max_size=3), st.sampled_from(DTYPES),
                                    st.sampled_from([0.0, 1.5, float("nan"), float("inf")])),
                          max_size=3)


def meta_of(data):
    kind = data.draw(st.sampled_from(["json", "near", "text"]))
    if kind == "json":
        return json.dumps(data.draw(json_value))
    if kind == "text":
        return data.draw(text_line)
    meta = json.loads(json.dumps(GOOD_META))
    section = data.draw(st.sampled_from([meta, meta["task"], meta["base_model"]]))
    section[data.draw(st.sampled_from([*section, "shapes", "labels", "weights"]))] = data.draw(json_value)
    return json.dumps(meta)


@pytest.fixture(scope="module")
def tiny():
    return tiny_base("gpt2")


def check_artifact(path, tiny):
    result = outcome(path, lambda: PromptArtifact.load(path))
    if isinstance(result, SoftpromptError):
        assert isinstance(result, ArtifactError)
        return
    assert all(t.is_floating_point() and bool(torch.isfinite(t).all()) for t in result.tensors.values())
    fits = outcome(path, lambda: result.check_fits(tiny))
    assert fits is None or isinstance(fits, ArtifactError)


def test_artifact_metadata(fuzz, folder, tiny):
    @fuzz("artifact metadata")
    @given(st.data(), tensors)
    def run(data, specs):
        built = {name: torch.full(shape, fill).to(dtype) for name, (shape, dtype, fill) in specs.items()}
        metadata = {"softprompt": meta_of(data)} if data.draw(st.booleans()) or not built else {}
        with case(fuzz, "artifact metadata"):
            path = folder / "p.safetensors"
            save_file(built, str(path), metadata=metadata or None)
            check_artifact(path, tiny)

    run()


@pytest.fixture(scope="module")
def good_artifact_bytes(folder):
    return PromptArtifact({"prompt.input": torch.ones(3, 32)}, GOOD_META).save(folder / "good.safetensors").read_bytes()


def test_artifact_bytes(fuzz, folder, tiny, good_artifact_bytes):
    @fuzz("artifact bytes")
    @given(st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=4), st.integers(0, 10_000) | st.none(),
           st.integers(0, 2**64 - 1) | st.none())
    def run(flips, cut, length):
        content = bytearray(good_artifact_bytes)
        for at, value in flips:
            content[at % len(content)] = value
        if length is not None:
            content[:8] = struct.pack("<Q", length)
        with case(fuzz, "artifact bytes"):
            path = folder / "mutated.safetensors"
            path.write_bytes(bytes(content[:cut] if cut is not None else content))
            check_artifact(path, tiny)

    run()


# ------------------------------------------------------------------ library names

name_text = st.lists(st.one_of(st.sampled_from([".", "..", "/", "\\", "~", "-", "_", "a", "Z", "9", "\n", "\x00",
                                                "\udcff", ":", "%2e", " ", "é", "\u00b2", "9" * 30]), st.text(max_size=3)),
                     min_size=1, max_size=8).map("".join)


def test_library_names(fuzz, tmp_path_factory):
    root = tmp_path_factory.mktemp("library")
    lib = Library(root / "lib")
    source = PromptArtifact({"prompt.input": torch.ones(2, 4)}, {"method": "prompt_tuning", "name": "p"})

    @fuzz("library names")
    @given(name_text, name_text, name_text)
    def run(name, ref, text):
        with case(fuzz, "library names"):
            try:
                entry = lib.add(source, name, task=text, description=text)
            except ConfigError as exc:
                assert one_line(str(exc)).startswith("library "), str(exc)
            else:
                assert entry.path.parent == lib.prompts_dir / (name or "p") and entry.path.is_file()
                assert lib.get(entry.ref).sha256 == entry.sha256
            for call in (lambda: parse_ref(ref), lambda: lib.get(ref), lambda: lib.search(text=text)):
                try:
                    call()
                except (ConfigError, ArtifactError) as exc:
                    one_line(str(exc))

    run()
    assert sorted(p.name for p in root.iterdir()) == ["lib"]  # nothing written beside the library
    assert lib.check().ok
