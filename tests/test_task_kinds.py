"""Task kinds: nothing outside tasks/ branches on a kind's name, and a new kind is one class in one
file (here: a toy regression kind, registered only in this file) that trains and predicts through
the API like the built-in ones."""

import ast
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

import softprompt
from softprompt import api
from softprompt.core.batch import virtual
from softprompt.errors import ConfigError
from softprompt.tasks.kinds import TASK_KINDS, Prediction, TaskDefaults, get_task_kind, register_task_kind
from tiny import save_tiny

ROOT = Path(softprompt.__file__).parent
KIND_NAMES = {"classification", "generation", "token_labelling"}


def _kind_string(node) -> bool:
    return isinstance(node, ast.Constant) and node.value in KIND_NAMES


def _kind_branches(tree) -> list[tuple[int, str]]:
    """(line, what) for each comparison with a kind name (==, !=, is, in a literal), each lookup keyed
    by one (x["generation"], x.get("generation")) and each mapping literal keyed by kind names."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            for side in [node.left, *node.comparators]:
                literal = side.elts if isinstance(side, (ast.Tuple, ast.List, ast.Set)) else [side]
                if any(_kind_string(e) for e in literal):
                    found.append((node.lineno, "compares a kind name"))
                    break
        elif isinstance(node, ast.Subscript) and _kind_string(node.slice):
            found.append((node.lineno, "looks up by a kind name"))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
              and node.args and _kind_string(node.args[0])):
            found.append((node.lineno, "looks up by a kind name"))
        elif isinstance(node, ast.Dict) and any(_kind_string(k) for k in node.keys if k is not None):
            found.append((node.lineno, "keys a mapping by kind names"))
        elif isinstance(node, ast.MatchValue) and _kind_string(node.value):
            found.append((node.lineno, "matches a kind name"))
    return found


def test_no_code_outside_tasks_branches_on_a_kind_name():
    offenders = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        if rel.parts[0] == "tasks":
            continue
        for line, what in _kind_branches(ast.parse(path.read_text(encoding="utf-8"))):
            offenders.append(f"src/softprompt/{rel}:{line}: {what}")
    assert not offenders, "kind names compared outside tasks/ (ask the task kind instead):\n" + "\n".join(offenders)


@pytest.mark.parametrize("source", [
    'if task.kind == "generation": pass',
    'ok = kind != "classification"',
    'ok = kind in ("token_labelling", "generation")',
    'x = TABLE["classification"]',
    'x = section.get("generation")',
    'TABLE = {"generation": 1}',
])
def test_the_scan_finds_each_form_of_kind_branching(source):
    assert _kind_branches(ast.parse(source))


def test_the_scan_leaves_kind_names_as_data_alone():
    assert not _kind_branches(ast.parse('task = {"kind": "classification", "labels": ["a", "b"]}\n'
                                        'f(kind="generation")\nraise E("applies to classification")'))


def test_unknown_kind_lists_the_known_ones():
    with pytest.raises(ConfigError, match=r"task.kind='regresion' is not one of: .*classification"):
        get_task_kind("regresion")


# ---- a toy kind: a number per text, read with a linear head on the last token ---------------------
@dataclass
class ScoreConfig:
    max_length: int = 32


@dataclass
class ScoreItem:
    rows: list
    target: float | None


class ScoreTask(nn.Module, TaskDefaults):
    kind = "score"
    Config = ScoreConfig
    routes = ()
    view = "label"
    labelled = False  # its targets are numbers, not classes
    metric_names = ("neg_mae",)

    def __init__(self, config, base, labels=(), n_prefix=0):
        super().__init__()
        self.config, self.info, self.tokenizer, self.n_prefix = config, base.info, base.tokenizer, n_prefix
        self.labels = []
        self.head = nn.Linear(base.info.hidden_size, 1)

    @property
    def label_words(self):
        return []

    def prepare(self, example, where=""):
        ids = self.tokenizer(example.text, add_special_tokens=False).input_ids[: self.config.max_length - self.n_prefix]
        row = tuple(virtual(k) for k in range(self.n_prefix)) + tuple(ids)
        return ScoreItem([row], None if example.label is None else float(example.label))

    def class_logits(self, pm, hidden, batch, items, row_index):
        rows = torch.tensor([r[0] for r in row_index], device=hidden.device)
        return list(self.head(hidden[rows, batch.last_index[rows]].float()).squeeze(-1))

    def loss_count(self, items):
        return len(items)

    def loss_sum(self, outputs, items):
        target = torch.tensor([i.target for i in items], device=outputs[0].device)
        return ((torch.stack(list(outputs)) - target) ** 2).sum()

    def metrics(self, outputs, items, examples):
        errors = [abs(float(o) - i.target) for o, i in zip(outputs, items)]
        return {"neg_mae": -sum(errors) / len(errors), "n": len(errors)}

    def prediction(self, output, item, example):
        return Prediction(f"{float(output):.6f}", {}, example.text, example.source)

    def export(self):
        return {f"head.{k}": v.detach().to("cpu", torch.float32).clone() for k, v in self.head.state_dict().items()}

    def load_export(self, tensors):
        self.head.load_state_dict({k[len("head."):]: v for k, v in tensors.items() if k.startswith("head.")})


@pytest.fixture
def score_kind():
    register_task_kind(ScoreTask)
    yield ScoreTask
    TASK_KINDS.pop("score")


TEXTS = {"good good good": "1.0", "bad": "-1.0", "good and fine": "1.0", "bad and slow": "-1.0"}


def test_a_kind_registered_in_one_file_trains_and_predicts(tmp_path, score_kind):
    save_tiny("gpt2", tmp_path / "tiny")
    with (tmp_path / "train.jsonl").open("w") as f:
        for text, value in list(TEXTS.items()) * 5:
            f.write(json.dumps({"text": text, "label": value}) + "\n")
    config = {"name": "score", "model": {"name": str(tmp_path / "tiny")}, "task": {"kind": "score"},
              "method": {"name": "prompt_tuning", "num_virtual_tokens": 2, "init": "random"},
              "data": {"train": str(tmp_path / "train.jsonl"), "dev": str(tmp_path / "train.jsonl")},
              "training": {"steps": 40, "batch_size": 4, "lr": 0.05, "eval_every": 10},
              "output": str(tmp_path / "run")}
    result = api.train(config, progress=False, log=lambda s: None)
    loaded = api.load_prompt(result.artifact)
    assert loaded.artifact.meta["task"] == {"max_length": 32, "kind": "score", "labels": []}
    assert isinstance(loaded.unit.task, ScoreTask)
    start = result.history[0] if result.history else None
    assert result.metrics["dev"]["n"] == 20 and result.metrics["dev"]["neg_mae"] > -0.5, (start, result.metrics)
    predictions = api.predict(loaded, list(TEXTS))
    values = [float(p.label) for p in predictions]
    for value, want in zip(values, TEXTS.values()):
        assert abs(value - float(want)) < 0.5, (values, list(TEXTS.values()))
    assert [p.text for p in predictions] == list(TEXTS) and all(p.probabilities == {} for p in predictions)
    with pytest.raises(ConfigError, match="calibration applies to classification prompts; this one is task.kind='score'"):
        api.load_prompt(result.artifact, calibrate=True)
