"""Zero-shot transfer (TPT): a source task's prompt applied as is to a target task.

The prompt tensors come from the source; the task (template, labels, verbalizer) comes from the
target. With a label map (target label -> source label) the target's labels are read with the
source's label words, so a sentiment prompt trained on SST-2 scores MR with the words it learned.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..core import PromptArtifact
from ..errors import ArtifactError, ConfigError
from ..tasks.kinds import kind_of


def _source_words(task: Mapping[str, Any]) -> dict[str, list[str]]:
    verbalizer = task.get("verbalizer") or {}
    return {label: list(verbalizer.get(label) or [label]) for label in task.get("labels", [])}


def transferred_artifact(source: PromptArtifact, target_task: Mapping[str, Any] | None = None,
                         label_map: Mapping[str, str] | None = None) -> PromptArtifact:
    """An artifact with the source's prompt and the target's task.

    target_task: the target's task section (kind, template, labels, verbalizer, ...); default: the
    source's own. label_map: target label -> source label; the target labels then use the source's
    label words (and a linear head's rows, reordered). Without a map, a linear head transfers only
    when the label sets are equal.
    """
    src_task = dict(source.meta.get("task", {}))
    task = dict(target_task if target_task is not None else src_task)
    refused = next((kind for kind in (kind_of(task), kind_of(src_task)) if not kind.zero_shot), None)
    if refused is not None:
        raise ConfigError(f"zero-shot transfer applies to classification tasks, not task.kind={refused.kind!r}")
    if label_map:
        words = _source_words(src_task)
        unknown = sorted(set(label_map.values()) - set(words))
        if unknown:
            raise ConfigError(f"label map names source labels {unknown} that the source prompt does not have "
                              f"(its labels: {list(words)})")
        task["labels"] = [str(t) for t in label_map]
        task["verbalizer"] = {str(t): words[s] for t, s in label_map.items()}
    if not task.get("labels"):
        raise ConfigError("the target task names no labels: give target_task with 'labels' or a label map")
    tensors = {k: v for k, v in source.tensors.items() if k.startswith("prompt.")}
    heads = {k: v for k, v in source.tensors.items() if k.startswith("head.")}
    if heads:
        src_labels = list(src_task.get("labels", []))
        mapping = dict(label_map) if label_map else {label: label for label in task["labels"]}
        missing = [t for t in task["labels"] if mapping.get(t) not in src_labels]
        if missing:
            raise ConfigError(f"the source prompt reads labels with a trained head; target labels {missing} have no "
                              "source label to take its row from: give a label map (target=source)")
        rows = torch.tensor([src_labels.index(mapping[t]) for t in task["labels"]])
        for k, v in heads.items():
            tensors[k] = v.index_select(0, rows) if v.dim() >= 1 and v.shape[0] == len(src_labels) else v
    meta = {**source.meta, "task": task,
            "transfer": {"source": str(source.path) if source.path else source.meta.get("name"),
                         "label_map": dict(label_map or {})}}
    meta.pop("library", None)
    return PromptArtifact(tensors, meta, source.path)


def zero_shot(source: str | Path | PromptArtifact, data: str | Path, *, base=None,
              target_task: Mapping[str, Any] | None = None, label_map: Mapping[str, str] | None = None,
              format: str = "auto", text_field: str | None = None, text_b_field: str | None = None,
              label_field: str | None = None, batch_size: int = 32, limit: int | None = None) -> dict:
    """Metrics of a source prompt applied directly to a target task's labelled data."""
    from ..tasks.kinds import warn_if_cut_misses_labels
    from ..training.run import data_config_of, load_prompt, read_split

    source = source if isinstance(source, PromptArtifact) else PromptArtifact.load(source)
    artifact = transferred_artifact(source, target_task, label_map)
    loaded = load_prompt(artifact, base, key="transfer")
    fields = data_config_of(loaded, format=format, text_field=text_field, text_b_field=text_b_field,
                            label_field=label_field)
    if target_task is not None:  # the target's fields, not the source's: a pair source must not ask for text_b
        fields.text_b_field = text_b_field
    examples = read_split(str(data), fields, limit=limit)
    warn_if_cut_misses_labels(data, "limit", limit, examples, loaded.labels)
    return evaluate_examples(loaded, examples, batch_size)


def evaluate_examples(loaded, examples, batch_size: int = 32) -> dict:
    """Metrics of an attached prompt on examples already read."""
    from ..training.run import evaluate_items, prepare
    from ..core import PromptedModel

    missing = sorted({e.label for e in examples} - set(loaded.labels))
    if missing:
        raise ArtifactError(f"the data has labels {missing} that the transferred task does not know "
                            f"(its labels: {loaded.labels}); give a label map")
    items = prepare(loaded.unit.task, loaded.unit.key, examples)
    return evaluate_items(PromptedModel(loaded.base), loaded.unit, items, examples, batch_size, "left")
