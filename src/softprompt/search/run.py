"""`softprompt search` as a function: a YAML config of model, data and candidates in; the
sensitivity report, optional APE and AutoPrompt results and the selected prompt out, as JSON."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ..configs import (
    DataConfig,
    ModelConfig,
    apply_overrides,
    from_dict,
    read_yaml,
    resolve_data_paths,
    to_dict,
)
from ..core import PromptArtifact
from ..errors import ConfigError
from ..models import BaseModel
from ..tasks.readers import read_examples
from .ape import APEConfig, search_ape
from .autoprompt import AutoPromptConfig, search_autoprompt
from .candidates import (
    METRICS,
    SensitivityReport,
    evaluate_candidates,
    expand_candidates,
)


@dataclass
class CandidatesConfig:
    """Candidate prompts: every template with every verbalizer, plus explicit pairs."""

    templates: list[Any] = field(default_factory=list)  # strings, or {template, chat, name[, verbalizer]}
    verbalizers: list[dict[str, Any]] = field(default_factory=list)  # label -> word or list of words

    def __post_init__(self):
        if not self.templates:
            raise ConfigError("candidates.templates is empty: give at least one template with {mask}")


@dataclass
class SearchConfig:
    """A hard-prompt search: candidates scored on dev data, optionally APE and AutoPrompt."""

    name: str = "search"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    candidates: CandidatesConfig | None = None
    calibration: bool = True  # also score with contextual calibration (content-free inputs)
    metric: str = "auto"  # what selects the best: auto (calibrated accuracy with calibration) or one of METRICS
    k_shot: int = 0  # in-context demonstrations per class, drawn from data.train
    seed: int = 0
    max_length: int = 256
    word_score: str = "sum"  # sum | mean over a word's tokens
    batch_size: int = 32
    ape: APEConfig | None = None  # set (even to {}) to run APE
    autoprompt: AutoPromptConfig | None = None  # set (even to {}) to run AutoPrompt
    save: bool = True  # write the best prompt as a hard_prompt artifact (output/best/prompt.safetensors)
    output: str = "runs/search/{name}"

    def __post_init__(self):
        if self.metric != "auto" and self.metric not in METRICS:
            raise ConfigError(f"metric={self.metric!r} is not one of: auto, {', '.join(METRICS)}")
        if self.candidates is None:
            raise ConfigError("the search config has no candidates: give candidates.templates and candidates.verbalizers")
        if not isinstance(self.k_shot, int) or self.k_shot < 0:
            raise ConfigError(f"k_shot={self.k_shot!r} must be a whole number >= 0")

    @property
    def output_dir(self) -> Path:
        return Path(self.output.replace("{name}", self.name))


def load_search_config(source: str | Path | Mapping | SearchConfig, overrides: Sequence[str] = ()) -> SearchConfig:
    """A validated SearchConfig from YAML (data paths relative to the file), a mapping or a config."""
    if isinstance(source, SearchConfig) and not overrides:
        return source
    base_dir = None
    if isinstance(source, (str, Path)):
        base_dir = Path(source).parent
        data = read_yaml(source)
    else:
        data = to_dict(source) if isinstance(source, SearchConfig) else json.loads(json.dumps(source))
    # `ape: {}` / `autoprompt: {}` in YAML means "run it with defaults"; None leaves it off.
    data = apply_overrides(data, overrides)
    config = from_dict(SearchConfig, data)
    if base_dir is not None:
        resolve_data_paths(config.data, base_dir)
    return config


@dataclass
class SearchResult:
    """Everything a search found, and where it was written."""

    report: SensitivityReport
    output_dir: Path
    ape: dict | None = None
    autoprompt: dict | None = None
    artifact: Path | None = None  # the best prompt as a hard_prompt artifact (config.save)

    @property
    def best(self):
        return self.report.best


def _read(path: str | None, data: DataConfig, limit: int | None):
    if not path:
        return []
    return read_examples(path, format=None if data.format == "auto" else data.format, text_field=data.text_field,
                         text_b_field=data.text_b_field, label_field=data.label_field, limit=limit,
                         skip_empty=data.skip_empty)


def search(config: SearchConfig | Mapping | str | Path, overrides: Sequence[str] = (), *,
           base: BaseModel | None = None, progress: bool = True,
           log: Callable[[str], None] = print) -> SearchResult:
    """Run a search config: score the candidates, run APE/AutoPrompt when configured, write
    report.{json,md,png} and search.json (the config, the selected prompt and every score)."""
    config = load_search_config(config, overrides)
    if not config.data.dev:
        raise ConfigError("data.dev is not set: candidates are scored on labelled dev data")
    prompts = expand_candidates(config.candidates.templates, config.candidates.verbalizers)
    dev = _read(config.data.dev, config.data, config.data.max_dev)
    train = _read(config.data.train, config.data, config.data.max_train)
    if (config.k_shot or config.ape is not None or config.autoprompt is not None) and not train:
        raise ConfigError("k_shot, ape and autoprompt need data.train (demonstrations and search examples)")
    if base is None:
        from ..training.run import load_model

        base = load_model(config.model)
    started = time.perf_counter()
    common = dict(max_length=config.max_length, batch_size=config.batch_size, progress=progress)
    report = evaluate_candidates(base, prompts, dev, train=train, k_shot=config.k_shot, seed=config.seed,
                                 calibration=config.calibration, metric=config.metric, word_score=config.word_score,
                                 log=log, **common)
    verbalizer = report.best.prompt.verbalizer
    result = SearchResult(report, config.output_dir)
    if config.ape is not None:
        ape = search_ape(base, train, verbalizer, dev=dev, config=config.ape, calibration=config.calibration, log=log,
                         **common)
        report.results.extend(ape.final)
        result.ape = {"proposals": ape.proposals, "held_out": [r.to_dict() for r in ape.scored]}
    if config.autoprompt is not None:
        found = search_autoprompt(base, train, verbalizer, dev=dev, config=config.autoprompt,
                                  calibration=config.calibration, log=log, **common)
        report.results.append(found.score)
        result.autoprompt = {"trigger_tokens": found.trigger_tokens, "trigger_ids": found.trigger_ids,
                             "losses": [round(v, 4) for v in found.losses]}
    report.info.update(name=config.name, seconds=round(time.perf_counter() - started, 1))
    out = config.output_dir
    out.mkdir(parents=True, exist_ok=True)
    report.save(out / "report")
    if config.save:
        result.artifact = save_best(config, report.best, dev, base, out / "best")
    summary = {"config": to_dict(config), "best": report.best.to_dict(), "report": report.to_dict(),
               "ape": result.ape, "autoprompt": result.autoprompt,
               "artifact": str(result.artifact) if result.artifact else None}
    (out / "search.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n")
    log(report.to_markdown())
    log(f"best: {report.best.prompt.describe()}; wrote {out / 'search.json'} and report.{{json,md,png}}"
        + (f"; the prompt as an artifact: {result.artifact}" if result.artifact else ""))
    return result


def save_best(config: SearchConfig, best, dev, base: BaseModel, out: Path) -> Path:
    """The selected hard prompt as a `hard_prompt` artifact that `softprompt predict` and the serving
    API use like any other (template, label words, base-model fingerprint, its uncalibrated dev score).

    In-context demonstrations (k_shot) and calibration are part of the search's scoring, not of the
    artifact: the artifact is the zero-shot prompt, and its metadata says what the search used."""
    from ..training.run import train as train_run

    prompt = best.prompt
    fields = {k: getattr(config.data, k) for k in ("format", "text_field", "text_b_field", "label_field")}
    run = {
        "name": config.name,
        "model": to_dict(config.model),
        "task": {"kind": "classification", "template": prompt.template, "verbalizer": prompt.verbalizer,
                 "labels": list(prompt.verbalizer), "chat": prompt.chat, "max_length": config.max_length,
                 "word_score": config.word_score, "pair": any(e.text_b for e in dev)},
        "method": {"name": "hard_prompt"},
        "data": {"train": config.data.dev, "dev": config.data.dev, "max_dev": config.data.max_dev, **fields},
        "training": {"batch_size": config.batch_size, "eval_batch_size": config.batch_size},
        "output": str(out),
    }
    saved = train_run(run, base=base, progress=False, log=lambda _: None)
    artifact = PromptArtifact.load(saved.artifact)
    artifact.meta["search"] = {"source": best.source, "name": prompt.name, "k_shot": config.k_shot,
                               "calibration": config.calibration, "metric": config.metric,
                               "search_scores": {k: v for k, v in best.to_dict().items()
                                                 if k in ("accuracy", "macro_f1", "calibrated_accuracy",
                                                          "calibrated_macro_f1")}}
    return artifact.save(saved.artifact)
