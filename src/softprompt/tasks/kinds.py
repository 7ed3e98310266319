"""Task kinds: one protocol and one registry, as transformers keeps one table of pipelines.

A task kind (classification, token labelling, generation, and whatever comes next) is a task class
registered under its `kind` name. Everything that differs by kind is asked of that class: how its
data is read and split, what an unlabelled input is, its labels, whether its rows are decoded or
scored, how an output becomes a Prediction, what its artifact records, its sampling defaults, the
HTTP routes that serve it and how the page shows a result. Code outside `tasks/` looks a kind up
here by name and never compares kind strings; a new kind is one class and one `register_task_kind`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Protocol, Sequence

import torch

from ..configs import DataConfig, from_dict, to_dict
from ..errors import ConfigError, DataError
from .readers import DataWarning, Example, read_examples

DEFAULT_KIND = "classification"  # what a task section without `kind` means


@dataclass
class Prediction:
    """A predicted label with the probability of every label (token labelling: a tag per word;
    generation: the generated text as the label)."""

    label: str
    probabilities: dict[str, float]
    text: str = ""
    source: str = ""
    tags: list[str] | None = None


class TaskKind(Protocol):
    """What callers ask of a task kind (the class) and of a task (its instance)."""

    kind: ClassVar[str]  # the name task.kind gives in configs and artifacts
    Config: ClassVar[type]  # the dataclass a config's task section is read into
    routes: ClassVar[tuple[str, ...]]  # the HTTP routes that serve it
    view: ClassVar[str]  # how the server's page shows a result
    decodes: ClassVar[bool]  # rows are generated (decoded) rather than scored
    labelled: ClassVar[bool]  # its examples carry labels (or tags) that name its outputs
    zero_shot: ClassVar[bool]  # a prompt of it can move to another task of it with no training
    metric_names: ClassVar[tuple[str, ...]]  # what evaluation reports, higher is better; the first picks the best step

    def __init__(self, config: Any, base: Any, labels: Sequence[str], n_prefix: int) -> None: ...

    @classmethod
    def read(cls, path: str, data: DataConfig, *, require_label: bool = True, limit: int | None = None) -> list: ...

    @classmethod
    def unlabelled(cls, value: Any, source: str) -> Any: ...

    @classmethod
    def section_labels(cls, section: Mapping[str, Any]) -> list[str]: ...

    @classmethod
    def labels_from(cls, section: Mapping[str, Any], examples: Sequence) -> list[str]: ...

    @classmethod
    def training_split(cls, train: list, dev: list, data: DataConfig, seed: int, where: str) -> tuple[list, list]: ...

    @classmethod
    def with_calibration(cls, section: dict, calibrate: bool, where: str) -> dict: ...

    @property
    def label_words(self) -> list[str]: ...

    def prepare(self, example: Any, where: str = "") -> Any: ...

    def class_logits(self, pm, hidden, batch, items, row_index) -> Sequence[torch.Tensor]: ...

    def loss_count(self, items) -> int: ...

    def loss_sum(self, outputs, items) -> torch.Tensor: ...

    def metrics(self, outputs, items, examples) -> dict:
        """Scored kinds: metric_names (and n) from the outputs of labelled items; a kind that decodes
        has evaluate(pm, unit, items, examples, batch_size, padding_side, spread) instead."""
        ...

    def prediction(self, output: Any, item: Any, example: Any) -> Prediction: ...

    def set_class_weights(self, mode: Any, items: Sequence, where: str) -> None: ...

    def reads_row_end(self) -> bool: ...

    def sampling(self, **overrides) -> Any: ...

    def artifact_section(self) -> dict: ...

    def export(self) -> dict[str, torch.Tensor]: ...

    def load_export(self, tensors: Mapping[str, torch.Tensor]) -> None: ...


TASK_KINDS: dict[str, type] = {}


def register_task_kind(cls: type) -> type:
    """Class decorator: make a task kind available by its `kind` name."""
    TASK_KINDS[cls.kind] = cls
    return cls


def get_task_kind(name: str) -> type:
    """The task class registered under name; ConfigError listing the known kinds otherwise."""
    try:
        return TASK_KINDS[name]
    except KeyError:
        raise ConfigError(f"task.kind={name!r} is not one of: {', '.join(TASK_KINDS)}") from None


def kind_of(section: Mapping[str, Any] | None) -> type:
    """The task class a config's (or an artifact's) task section names."""
    return get_task_kind(str((section or {}).get("kind", DEFAULT_KIND)))


def build_task(section: Mapping[str, Any] | None, base, labels: Sequence[str], n_prefix: int):
    """The task module that a config's task section describes."""
    rest = dict(section or {})
    cls = get_task_kind(str(rest.pop("kind", DEFAULT_KIND)))
    return cls(from_dict(cls.Config, rest, "task."), base, labels, n_prefix)


def read_text_examples(path: str, data: DataConfig, *, require_label: bool = True, limit: int | None = None) -> list:
    """Examples of a text file (JSONL, CSV, TSV), read with the config's format and field names."""
    return read_examples(
        path,
        format=None if data.format == "auto" else data.format,
        text_field=data.text_field,
        text_b_field=data.text_b_field,
        label_field=data.label_field if require_label else None,
        require_label=require_label,
        limit=limit,
        skip_empty=data.skip_empty,
    )


def random_split(examples: Sequence, fraction: float, seed: int) -> tuple[list, list]:
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed)).tolist()
    n_dev = max(1, round(len(examples) * fraction))
    dev = sorted(order[:n_dev])
    keep = sorted(order[n_dev:])
    return [examples[i] for i in keep], [examples[i] for i in dev]


def wants_dev_split(train: Sequence, dev: Sequence, data: DataConfig) -> bool:
    """Whether a run without a dev file takes its dev examples out of the training ones."""
    return not dev and data.dev_fraction > 0 and len(train) >= 10


def warn_if_cut_misses_labels(path, option: str, limit: int | None, kept: Sequence, expected) -> None:
    """A DataWarning when a row limit (data.max_train/max_dev, zero_shot's limit) cut a file to its first
    rows and those rows lack expected labels: files sorted by label (MR, SUBJ, ...) otherwise give a
    one-class set silently."""
    if not limit or len(kept) < limit:
        return
    missing = sorted(set(expected) - {e.label for e in kept} - {None})
    if missing:
        warnings.warn(f"{path}: {option}={limit} keeps the first {limit} examples, and they have no "
                      f"example of label(s) {missing}; the file may be sorted by label: shuffle it or raise "
                      f"{option}", DataWarning, stacklevel=3)


class TaskDefaults:
    """What a task kind does unless it says otherwise: text examples, labels named in the section or
    found in the data, a random dev split, no calibration, class weights or sampling. A kind class
    lists it after nn.Module and overrides what differs."""

    decodes: ClassVar[bool] = False
    labelled: ClassVar[bool] = True
    zero_shot: ClassVar[bool] = False

    @classmethod
    def read(cls, path: str, data: DataConfig, *, require_label: bool = True, limit: int | None = None) -> list:
        return read_text_examples(path, data, require_label=require_label, limit=limit)

    @classmethod
    def unlabelled(cls, value, source: str) -> Example:
        """An input as an unlabelled Example; DataError when empty."""
        example = value if isinstance(value, Example) else Example(text=str(value), source=source)
        if not example.text.strip():
            raise DataError(f"{example.source or source}: empty text")
        return Example(example.text, example.text_b, None, example.source or source, example.fields)

    @classmethod
    def section_labels(cls, section: Mapping[str, Any]) -> list[str]:
        """The labels a task section names (its labels, else its verbalizer's), in order."""
        return [str(label) for label in (section.get("labels") or section.get("verbalizer") or [])]

    @classmethod
    def labels_from(cls, section: Mapping[str, Any], examples: Sequence) -> list[str]:
        """The task's labels: those the section names, else those of the training examples."""
        if not cls.labelled:
            return []
        return cls.section_labels(section) or cls.labels_in(examples)

    @classmethod
    def labels_in(cls, examples: Sequence) -> list[str]:
        found = sorted({e.label for e in examples if e.label is not None})
        if len(found) < 2:
            raise DataError(f"the training data has {len(found)} distinct label(s); {cls.kind} needs at least two")
        return found

    @classmethod
    def training_split(cls, train: list, dev: list, data: DataConfig, seed: int, where: str) -> tuple[list, list]:
        """(train, dev) of a run: without a dev file, a random share of the training examples."""
        if wants_dev_split(train, dev, data):
            train, dev = random_split(train, data.dev_fraction, seed)
        if data.k_shot:
            raise ConfigError(f"{where}data.k_shot samples k examples per class; it applies to classification only")
        return train, dev

    @classmethod
    def with_calibration(cls, section: dict, calibrate: bool, where: str) -> dict:
        raise ConfigError(f"{where}: calibration applies to classification prompts; this one is task.kind={cls.kind!r}")

    def set_class_weights(self, mode, items: Sequence, where: str) -> None:
        raise ConfigError(f"{where}training.class_weights weighs classes of a classification task; "
                          f"task.kind={self.kind!r} has none")

    def reads_row_end(self) -> bool:
        """Whether a causal row is read only at its end, so a compiled start of it loses nothing."""
        return False

    def sampling(self, **overrides):
        raise ConfigError(f"a task.kind={self.kind!r} prompt is scored, not generated from: use predict")

    def artifact_section(self) -> dict:
        """The task section an artifact records: enough to build the task again at load."""
        return {**to_dict(self.config), "kind": self.kind, "labels": list(self.labels)}

    def prediction(self, output: torch.Tensor, item, example) -> Prediction:
        """The most probable label with every label's probability, from an item's class logits."""
        probs = torch.softmax(output, -1).tolist()
        best = max(range(len(probs)), key=probs.__getitem__)
        return Prediction(self.labels[best], dict(zip(self.labels, probs)), example.text, example.source)


# The built-in kinds register themselves as their modules load; imported here, after everything they
# take from this module is defined, so the registry is complete whichever module is imported first.
from . import classification, generation, token_labelling  # noqa: E402, F401
