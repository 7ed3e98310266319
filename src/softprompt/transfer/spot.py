"""Initialising a target prompt from source prompts (SPoT, Vu et al. 2022).

Three strategies over the top-k sources a retrieval picked:
- best of top-k: a short run from each source prompt; the one with the best dev score wins
- weighted average: the sources' prompts averaged with weights from their similarity scores
- multitask mixture: one prompt trained on the mixed data of the sources (each keeps its own labels
  and words), then used to start the target

Each gives method overrides (`init: artifact`, `init_from`, `init_weights`) for the target's run.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..core import PromptArtifact, PromptedModel
from ..errors import ConfigError


def init_overrides(paths: Sequence[str | Path], weights: Sequence[float] | None = None) -> list[str]:
    """key=value overrides that start prompt tuning from these prompt files (weighted average)."""
    out = ["method.init=artifact", f"method.init_from=[{', '.join(_quoted(p) for p in paths)}]"]
    if weights is not None:
        out.append(f"method.init_weights=[{', '.join(f'{w:.6g}' for w in weights)}]")
    return out


def _quoted(path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def similarity_weights(scores: Sequence[float], temperature: float | None = None) -> list[float]:
    """Weights from similarity scores: proportional to the positive scores, or a softmax at a temperature.

    All scores <= 0 fall back to equal weights.
    """
    if not scores:
        raise ConfigError("no source scores to weight")
    if temperature is not None:
        if not temperature > 0:
            raise ConfigError(f"temperature={temperature!r} must be > 0")
        top = max(scores)
        raw = [math.exp((s - top) / temperature) for s in scores]
    else:
        raw = [max(float(s), 0.0) for s in scores]
        if not sum(raw) > 0:
            raw = [1.0] * len(scores)
    total = sum(raw)
    return [r / total for r in raw]


def weighted_average_init(sources: Sequence[tuple[str | Path, float]], temperature: float | None = None) -> list[str]:
    """Overrides that start from the similarity-weighted average of the source prompts."""
    paths = [p for p, _ in sources]
    return init_overrides(paths, similarity_weights([s for _, s in sources], temperature))


@dataclass
class BestOfTopK:
    """Which source won the short runs, and every candidate's dev score."""

    best: Path
    scores: dict[str, float]
    runs: dict[str, Path] = field(default_factory=dict)

    @property
    def overrides(self) -> list[str]:
        return init_overrides([self.best])


def best_of_top_k(config, candidates: Sequence[str | Path], *, steps: int, overrides: Sequence[str] = (),
                  base=None, output: str | Path | None = None, log: Callable[[str], None] = print) -> BestOfTopK:
    """A short run of the target from each candidate prompt; the best dev score picks the source."""
    from ..training.run import train
    from ..configs import load_run_config

    if not candidates:
        raise ConfigError("best of top-k needs at least one candidate prompt")
    config = load_run_config(config, overrides)
    root = Path(output) if output is not None else config.run_dir / "spot-best-of-k"
    scores, runs = {}, {}
    for i, path in enumerate(candidates):
        run = train(config, [*init_overrides([path]), f"training.steps={steps}",
                                 f"training.eval_every={steps}", f"output={root / f'candidate-{i}'}"],
                        base=base, progress=False, log=lambda _: None)
        dev = run.metrics.get("dev")
        if not dev:
            raise ConfigError("best of top-k compares dev scores: give data.dev or keep data.dev_fraction > 0")
        metric = config.training.metric if config.training.metric != "auto" else "accuracy"
        scores[str(path)], runs[str(path)] = float(dev[metric]), run.artifact
        log(f"best-of-top-k: {path}: dev {metric} {dev[metric]:.4f} after {steps} steps")
    best = max(scores, key=scores.get)
    return BestOfTopK(Path(best), scores, runs)


def multitask_mixture(sources: Sequence, *, steps: int, base, output: str | Path, num_virtual_tokens: int = 20,
                      lr: float = 0.03, batch_size: int = 16, seed: int = 0, init: str = "vocab",
                      log: Callable[[str], None] = print) -> Path:
    """Train one prompt on the mixed training data of several source tasks; returns its artifact.

    sources: run configs (paths, mappings or RunConfigs) of the source tasks; each keeps its own
    template, labels and words (or head), all share the one prompt. Batches draw examples uniformly
    from the pooled data (mixing in proportion to the tasks' sizes, as SPoT does).
    """
    from ..training.run import build_task, labels_of, prepare, read_split
    from ..configs import load_run_config, to_dict
    from ..methods.prompt_tuning import PromptTuning, PromptTuningConfig
    from ..tasks.readers import sample_k_per_class
    from ..configs import TrainingConfig
    from ..tasks.runner import TaskPrompt
    from ..training.loop import fit

    if not sources:
        raise ConfigError("the multitask mixture needs at least one source task")
    method = PromptTuning.initialise(PromptTuningConfig(num_virtual_tokens, init=init, seed=seed), base)
    units, items, names = {}, [], []
    for i, source in enumerate(sources):
        c = load_run_config(source)
        examples = read_split(c.data.train, c.data, limit=c.data.max_train)
        if c.data.k_shot:
            examples = sample_k_per_class(examples, c.data.k_shot, c.training.seed)
        labels = labels_of(c.task, examples)
        task = build_task(c.task, base, labels, num_virtual_tokens)
        key = f"source{i}"
        units[key] = TaskPrompt(key, method, task).to(base.device)
        items.extend(prepare(task, key, examples))
        names.append(c.name)
    pm = PromptedModel(base)
    # The one training loop, with the prompt shared by every source task (so it is trained once) and a
    # constant learning rate; batches are drawn from the pooled data, as SPoT mixes in proportion to size.
    config = TrainingConfig(steps=steps, batch_size=batch_size, lr=lr, head_lr=2e-3, seed=seed, warmup=0,
                            schedule="constant", eval_start=False, eval_every=steps, log_every=max(1, steps // 5))
    started = time.perf_counter()
    fit(pm, units, items, config, Path(output), progress=False, log=log)
    first = next(iter(units.values())).task
    meta = {
        "method": "prompt_tuning", "name": "mixture-" + "+".join(names),
        "method_config": to_dict(method.config),
        "task": {**to_dict(first.config), "kind": first.kind, "labels": first.labels},
        "base_model": {"name": base.name, **base.fingerprint_meta(), "model_type": base.info.model_type,
                       "hidden_size": base.info.hidden_size, "num_layers": base.info.num_layers},
        "training": {"steps": steps, "lr": lr, "batch_size": batch_size, "seed": seed,
                     "train_seconds": round(time.perf_counter() - started, 1)},
        "transfer": {"strategy": "multitask_mixture", "sources": names},
    }
    return PromptArtifact({"prompt.input": method.embedding.detach().cpu().clone()}, meta).save(
        Path(output) / "prompt.safetensors")

