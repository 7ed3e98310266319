"""One training run and one attached prompt, below the API: what `api.train` and `api.load_prompt` do.

The transfer and sweep modules build on these directly; the API re-exports them with the
friendly entry points around them, so no module below the API has to import it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from .. import __version__
from ..configs import (
    DataConfig,
    ModelConfig,
    Precision,
    RunConfig,
    TrainingConfig,
    from_dict,
    load_run_config,
    to_dict,
)
from ..core import PromptArtifact, PromptedModel
from ..errors import ArtifactError, ConfigError
from ..methods import get_method
from ..methods.base import default_lr
from ..methods.deep_common import check_deep_tensors
from ..models import BaseModel, load_base
from ..tasks.kinds import DEFAULT_KIND, TASK_KINDS, build_task, get_task_kind, kind_of  # noqa: F401  (TASK_KINDS: the API's name)
from ..tasks.metrics import format_report
from ..tasks.readers import Example
from ..tasks.runner import Prepared, TaskPrompt, export_unit, predict_logits
from .distributed import processes


def resolve_device(device: str) -> str:
    """'auto' becomes cuda when a GPU is present, else cpu; anything else is checked and kept."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"model.device={device!r} but no CUDA device is available; use device=cpu")
    return device


def load_model(config: ModelConfig | Mapping | str) -> BaseModel:
    """The frozen base model a ModelConfig (or a bare name) describes (under a data-parallel launcher,
    on the GPU the launcher gave this process)."""
    if isinstance(config, str):
        config = ModelConfig(name=config)
    config = from_dict(ModelConfig, config) if not isinstance(config, ModelConfig) else config
    device = resolve_device(config.device)
    procs = processes()
    if procs.active and device.startswith("cuda") and procs.device is not None and procs.device.type == "cuda":
        device = str(procs.device)
    if procs.active and procs.sharding is not None:
        if config.device_map is not None:
            raise ConfigError(f"model.device_map={config.device_map!r} places the whole base in one process; under "
                              f"{procs.sharding.source} its blocks are sharded over the processes instead: drop one")
        key = (config.name, str(config.dtype))
        if key not in _SHARDED:
            _SHARDED[key] = _load_sharded(config, procs)
        return _SHARDED[key]
    return load_base(config.name, dtype=config.dtype, device=device, device_map=config.device_map,
                     quantize=config.quantize)


_SHARDED: dict[tuple, BaseModel] = {}


def _load_sharded(config: ModelConfig, procs) -> BaseModel:
    """The base sharded over the processes: the main process reads the weights into CPU memory, the
    others build the structure alone (meta tensors) and receive their shards from it, one block at a
    time, so no other process ever holds the whole model."""
    from ..models.loading import skeleton_base
    from .distributed import shard_base

    base = load_base(config.name, dtype=config.dtype, device="cpu", reuse=False) if procs.main else None
    facts = procs.broadcast_texts([type(base.model).__name__, base.fingerprint, base.weights, base.info.kind.value]
                                  if procs.main else None)
    if not procs.main:
        model_class, fingerprint, weights, kind = facts
        base = skeleton_base(config.name, model_class=model_class, fingerprint=fingerprint, weights=weights,
                             kind=kind, dtype=config.dtype)
    sharded = shard_base(base.model, procs)
    base.sharding = f"{procs.sharding.describe(procs.world)} ({sharded.describe()})"
    return base


def split_kind(section: Mapping[str, Any], key: str, default: str) -> tuple[str, dict]:
    rest = dict(section or {})
    name = rest.pop(key, default)
    return str(name), rest


def method_config(method_section: Mapping[str, Any]):
    """(method class, its validated config) from a config's method section."""
    name, rest = split_kind(method_section, "name", "prompt_tuning")
    cls = get_method(name)
    return cls, from_dict(cls.Config, rest, "method.")


def labels_of(task_section: Mapping[str, Any], examples: Sequence) -> list[str]:
    """The task's labels (tags for token labelling, none for generation): named in the section, else
    those of the training examples."""
    return kind_of(task_section).labels_from(task_section, examples)


def read_split(path: str, data: DataConfig, *, require_label: bool = True, limit: int | None = None,
               kind: str = DEFAULT_KIND) -> list:
    """Examples of one data file, read as the task kind reads its data (the config's format and field
    names for text; sentences of token-tag lines for token labelling)."""
    return get_task_kind(kind).read(path, data, require_label=require_label, limit=limit)


def prepare(task, key: str, examples: Sequence[Example]) -> list[Prepared]:
    """Examples turned into rows of one task (errors name file and line)."""
    return [Prepared(key, task.prepare(e)) for e in examples]


@dataclass
class TrainResult:
    """Where a run's artifact went and how good it is."""

    artifact: Path
    run_dir: Path
    metrics: dict[str, Any]
    best_step: int
    steps: int
    train_seconds: float
    samples_per_second: float
    trainable_parameters: int
    history: list[dict] = field(default_factory=list)
    kept_start: bool = False  # no evaluation beat the starting prompt (step 0), so the artifact holds it
    tasks: dict[str, "TrainResult"] = field(default_factory=dict)  # a run of several tasks: each one's result


def evaluate_items(pm, unit, items, examples, batch_size, padding_side) -> dict:
    """A task's metrics on labelled items; data-parallel processes score a share each and gather."""
    procs = processes()
    if unit.task.decodes:  # generation: decode (a share each), then score the text
        # A sharded base decodes the whole split on every process: the engine's passes follow the
        # inputs' lengths, and each pass must be every process's.
        return unit.task.evaluate(pm, unit, items, examples, batch_size, padding_side,
                                  spread=procs if procs.sharding is None else None)
    mine = procs.shard(items)
    n_mine = len(mine)
    if procs.sharding is not None and items:  # as many passes on every process: pad with copies, dropped after
        mine += [items[0]] * (-(-len(items) // procs.world) - n_mine)
    outputs = predict_logits(pm, {unit.key: unit}, mine, batch_size, padding_side, progress=procs.main)
    outputs = procs.gather_tensors(outputs[:n_mine])
    return unit.task.metrics(outputs, [p.item for p in items], examples)


@dataclass
class _TaskRun:
    """One task of a run, set up: its examples, prompt and task module, and its items."""

    name: str
    key: str
    task_section: dict
    data: DataConfig
    method_cls: type
    m_config: Any
    labels: list[str]
    unit: TaskPrompt
    train_items: list[Prepared]
    dev_examples: list
    dev_items: list[Prepared]
    lr: float
    trainable: int


def _set_up_task(name: str, key: str, task_section: Mapping, method_section: Mapping, data: DataConfig,
                 training: TrainingConfig, base: BaseModel, lr: float | None = None) -> _TaskRun:
    """Read a task's data, build its prompt and task module, and prepare its items (config errors of
    one task of several name the task)."""
    try:
        return _set_up(name, key, task_section, method_section, data, training, base, lr)
    except ConfigError as exc:
        message = str(exc)
        if key == "task":  # the run's only task: its errors need no name
            raise
        raise ConfigError(message if message.startswith("tasks.") else f"tasks.{name}: {message}") from None


def _set_up(name, key, task_section, method_section, data, training, base, lr) -> _TaskRun:
    where = "" if key == "task" else f"tasks.{name}: "
    if not data.train:
        raise ConfigError(f"{where}data.train is not set: give the training file (data.train=path/to/train.jsonl)")
    kind = kind_of(task_section)
    train_examples = read_split(data.train, data, limit=data.max_train, kind=kind.kind)
    dev_examples = read_split(data.dev, data, limit=data.max_dev, kind=kind.kind) if data.dev else []
    train_examples, dev_examples = kind.training_split(train_examples, dev_examples, data, training.seed, where)
    method_cls, m_config = method_config(method_section)
    lr = lr or training.lr or default_lr(method_cls, base.info.kind)
    labels = labels_of(task_section, train_examples)
    torch.manual_seed(training.seed)  # the head's initial weights are part of the run's seed
    task = build_task(task_section, base, labels, method_cls.input_positions(m_config))
    method = method_cls.initialise(m_config, base, label_words=task.label_words)
    unit = TaskPrompt(key, method, task)
    train_items = prepare(task, key, train_examples)
    dev_items = prepare(task, key, dev_examples)
    if training.class_weights not in (None, "none"):
        task.set_class_weights(training.class_weights, [p.item for p in train_items], where)
    trainable = sum(p.numel() for p in unit.parameters() if p.requires_grad)
    return _TaskRun(name, key, dict(task_section), data, method_cls, m_config, labels, unit, train_items,
                    dev_examples, dev_items, lr, trainable)


def kept_start_advice(run: _TaskRun, steps: int, run_dir: Path) -> str:
    """Why the artifact holds the starting prompt, and what to run next: a learning rate past the edge
    of stability only makes a prompt worse, so a third of it, or a sweep over rates around it."""
    option = "training.lr" if run.key == "task" else f"tasks.{run.name}.lr"
    lower = f"{run.lr / 3:.2g}"
    advice = (f": the starting prompt, since no evaluation in {steps} steps beat it; at {option}={run.lr:g} "
              f"training made it worse. Try a lower rate, {option}={lower} (a third), ")
    if run.key != "task":  # a sweep trains one task: it cannot take a run of several
        return advice + "or sweep this task alone"
    rates = " ".join(f"--lr {rate:.2g}" for rate in (run.lr / 10, run.lr / 3, run.lr))
    return advice + f"or let a sweep choose: softprompt sweep {run_dir / 'config.yaml'} {rates}"


def _save_task(run: _TaskRun, best, run_dir: Path, base: BaseModel, pm: PromptedModel, training: TrainingConfig,
               result, log: Callable[[str], None]) -> TrainResult:
    """Write a task's artifact (its kept prompt) and metrics into run_dir, scored as a user would load it."""
    procs = processes()
    t, data, task = training, run.data, run.unit.task
    meta = {
        "method": run.method_cls.name,
        "method_config": to_dict(run.m_config),
        "task": task.artifact_section(),
        "data_fields": {"text_field": data.text_field, "text_b_field": data.text_b_field, "label_field": data.label_field},
        "base_model": {
            "name": base.name,
            **base.fingerprint_meta(),  # fingerprint, its version, weights digest, dtype
            "model_type": base.info.model_type,
            "hidden_size": base.info.hidden_size,
            "num_layers": base.info.num_layers,
        },
        "training": {**to_dict(t), "lr": run.lr, "best_step": best.step, "steps_done": result.steps_done,
                     "kept_start": best.kept_start,
                     "train_seconds": round(result.train_seconds, 1),
                     "samples_per_second": round(result.samples_per_second, 2)},
        "softprompt_version": __version__,
        "name": run.name,
    }
    path = run_dir / "prompt.safetensors"
    artifact = PromptArtifact(best.tensors, meta)
    if procs.main:
        artifact.save(path)
    procs.barrier()
    # Final metrics come from the saved file itself, attached as a user would attach it.
    loaded = load_prompt(path, base, key=run.key)
    metrics: dict[str, Any] = {}
    if run.dev_items:
        metrics["dev"] = evaluate_items(pm, loaded.unit, prepare(loaded.unit.task, run.key, run.dev_examples),
                                        run.dev_examples, t.eval_batch_size, t.padding_side)
        log(format_report(metrics["dev"]))
    if data.test:
        test_examples = read_split(data.test, data, kind=task.kind)
        test_items = prepare(loaded.unit.task, run.key, test_examples)
        metrics["test"] = evaluate_items(pm, loaded.unit, test_items, test_examples, t.eval_batch_size, t.padding_side)
    artifact.meta["metrics"] = {split: {k: v for k, v in m.items() if k != "per_class"} for split, m in metrics.items()}
    if procs.main:
        artifact.save(path)
        # Beside the splits: which evaluation the artifact comes from, and whether training improved on the start.
        (run_dir / "metrics.json").write_text(json.dumps(
            {**metrics, "best_step": best.step, "kept_start": best.kept_start}, indent=1))
    kept = kept_start_advice(run, result.steps_done, run_dir) if best.kept_start else ""
    log(f"saved {path} ({path.stat().st_size:,} bytes){kept}")
    return TrainResult(
        artifact=path,
        run_dir=run_dir,
        metrics=metrics,
        best_step=best.step,
        steps=result.steps_done,
        train_seconds=result.train_seconds,
        samples_per_second=result.samples_per_second,
        trainable_parameters=run.trainable,
        history=result.history,
        kept_start=best.kept_start,
    )


def train(
    config: RunConfig | Mapping | str | Path,
    overrides: Sequence[str] = (),
    *,
    base: BaseModel | None = None,
    resume: bool = False,
    progress: bool = True,
    on_step: Callable[[int], None] | None = None,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Train a prompt as the config says (or one per task when it lists several tasks, trained together
    in mixed batches); writes the artifacts, resolved config and logs to the run dir.

    Under `accelerate launch` (or torchrun) the processes split every batch and evaluation; the main
    process alone logs and writes files."""
    config = load_run_config(config, overrides)
    procs = processes()
    if not procs.main:
        log, progress = (lambda message: None), False
    base = base or load_model(config.model)
    if base.sharding:
        log(base.sharding)
    t = config.training
    if procs.mixed_precision and t.precision is Precision.FP32:
        # `accelerate launch --mixed_precision bf16` asks what training.precision says; the run config's
        # own bf16/fp16, when it sets one, wins.
        t.precision = Precision(procs.mixed_precision)
        log(f"training.precision={t.precision.value}, as accelerate launch --mixed_precision asks")
    if config.tasks:
        runs = [_set_up_task(e.name, e.name, e.task if e.task is not None else config.task,
                             e.method if e.method is not None else config.method, e.data, t, base, e.lr)
                for e in config.tasks]
    else:
        runs = [_set_up_task(config.name, "task", config.task, config.method, config.data, t, base)]
    if t.lr is None and len(runs) == 1:
        t.lr = runs[0].lr
    pm = PromptedModel(base)
    run_dir = config.run_dir
    for run in runs:
        log(f"{base.name}{'' if len(runs) == 1 else ' ' + run.name}: {len(run.train_items)} training and "
            f"{len(run.dev_items)} dev examples, {run.method_cls.name} with {run.trainable:,} trainable parameters"
            + ("" if len(runs) > 1 else f" -> {run_dir}"))
    if len(runs) > 1:
        log(f"{len(runs)} tasks trained together ({t.mixing.value} mixing) -> {run_dir}")
    if procs.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
    procs.barrier()

    result = _fit(pm, runs, t, run_dir, resume=resume, progress=progress, on_step=on_step, log=log)
    return _save_runs(runs, result, run_dir, base, pm, t, log)


def _fit(pm: PromptedModel, runs: Sequence[_TaskRun], t: TrainingConfig, run_dir: Path, *, resume: bool,
         progress: bool, on_step, log: Callable[[str], None]):
    """Train the runs' prompts together (one run: alone), evaluating on their dev items; a run with
    nothing trainable keeps its prompts as written."""
    from .loop import FitResult, TaskBest, fit

    def evaluate_all() -> dict:
        return {r.key: evaluate_items(pm, r.unit, r.dev_items, r.dev_examples, t.eval_batch_size, t.padding_side)
                for r in runs if r.dev_items}

    if not sum(r.trainable for r in runs):  # hard prompts on verbalizers: nothing to train
        log("nothing trainable (a hard prompt): saving it as written and evaluating it")
        return FitResult(best_tensors=export_unit(runs[0].unit), best_metric=None, best_step=0, steps_done=0,
                         history=[], train_seconds=0.0, samples_per_second=0.0, stopped_early=False,
                         per_task={r.key: TaskBest(export_unit(r.unit), None, 0) for r in runs})
    has_dev = any(r.dev_items for r in runs)
    if len(runs) == 1:
        run = runs[0]
        return fit(pm, run.unit, run.train_items, t, run_dir,
                   evaluate=(lambda: evaluate_all()[run.key]) if has_dev else None, resume=resume,
                   progress=progress, on_step=on_step, log=log)
    return fit(pm, {r.key: r.unit for r in runs}, [i for r in runs for i in r.train_items], t, run_dir,
               evaluate=evaluate_all if has_dev else None, resume=resume, progress=progress,
               on_step=on_step, log=log, lrs={r.key: r.lr for r in runs})


def _save_runs(runs: Sequence[_TaskRun], result, run_dir: Path, base: BaseModel, pm: PromptedModel,
               t: TrainingConfig, log: Callable[[str], None]) -> TrainResult:
    """Each run's artifact and metrics (several tasks: one folder each under run_dir)."""
    from .loop import TaskBest

    if len(runs) == 1:
        best = result.per_task.get(runs[0].key) or TaskBest(result.best_tensors, result.best_metric, result.best_step,
                                                            result.kept_start)
        return _save_task(runs[0], best, run_dir, base, pm, t, result, log)
    procs = processes()
    results = {}
    for run in runs:
        task_dir = run_dir / run.name
        if procs.main:
            task_dir.mkdir(parents=True, exist_ok=True)
        procs.barrier()
        results[run.name] = _save_task(run, result.per_task[run.key], task_dir, base, pm, t, result, log)
    first = next(iter(results.values()))
    return TrainResult(
        artifact=first.artifact, run_dir=run_dir, metrics={name: r.metrics for name, r in results.items()},
        best_step=first.best_step, steps=result.steps_done, train_seconds=result.train_seconds,
        samples_per_second=result.samples_per_second, trainable_parameters=sum(r.trainable for r in runs),
        history=result.history, kept_start=first.kept_start, tasks=results,
    )


@dataclass
class LoadedPrompt:
    """An artifact attached to a base model, ready to predict."""

    unit: TaskPrompt
    artifact: PromptArtifact
    base: BaseModel

    @property
    def labels(self) -> list[str]:
        return self.unit.task.labels


def load_prompt(path: str | Path | PromptArtifact, base: BaseModel | str | None = None, *, key: str | None = None,
                allow_model_mismatch: bool = False, device: str = "auto", calibrate: bool | None = None) -> LoadedPrompt:
    """Attach an artifact to a base model (its own recorded base model when none is given).

    calibrate: turn contextual calibration of a classification prompt on or off (None: as the
    artifact's task says)."""
    artifact = path if isinstance(path, PromptArtifact) else PromptArtifact.load(path)
    artifact.require("method", "task.labels", *([] if base else ["base_model.name"]))
    if base is None or isinstance(base, str):
        base = load_model(ModelConfig(name=base or artifact.meta["base_model"]["name"], device=device))
    artifact.check_fits(base, allow_mismatch=allow_model_mismatch)
    method_cls, m_config = method_config({"name": artifact.method, **artifact.meta.get("method_config", {})})
    task_section = {k: v for k, v in artifact.meta["task"].items()}
    labels = task_section.pop("labels")
    if calibrate is not None:
        task_section = kind_of(task_section).with_calibration(task_section, calibrate, str(artifact.path or "artifact"))
    task = build_task(task_section, base, labels, method_cls.input_positions(m_config))
    prompt_tensors = {k[len("prompt."):]: v for k, v in artifact.tensors.items() if k.startswith("prompt.")}
    check_deep_tensors(prompt_tensors, base, str(artifact.path or "artifact"))
    try:
        method = method_cls.from_export(m_config, prompt_tensors)
        task.load_export(artifact.tensors)
    except (KeyError, IndexError, ValueError, RuntimeError) as exc:  # tensors missing, or of other shapes
        raise ArtifactError(f"{artifact.path or 'artifact'}: its tensors do not fit method {artifact.method!r} "
                            f"({type(exc).__name__}: {' '.join(str(exc).split())[:120]})") from None
    unit = TaskPrompt(key or (artifact.path.stem if artifact.path else "task"), method, task).to(base.device)
    unit.eval()
    return LoadedPrompt(unit, artifact, base)


def data_config_of(loaded: LoadedPrompt, **overrides) -> DataConfig:
    fields = dict(loaded.artifact.meta.get("data_fields", {}))
    fields.update({k: v for k, v in overrides.items() if v is not None})
    return DataConfig(**fields)
