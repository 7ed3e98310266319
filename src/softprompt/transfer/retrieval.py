"""Which stored prompts to transfer from: rank sources for a new target task.

Two task embeddings:
- spot: the target's own prompt after a short training run on its data (SPoT); sources are ranked
  by cosine similarity of prompts (token-averaged by default) to it
- zero_shot: each source prompt applied directly to the target's dev data (TPT); sources are ranked
  by the score they get there
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from ..core import PromptArtifact
from ..errors import ConfigError
from .similarity import Measure, similarity_matrix
from .zero_shot import evaluate_examples, transferred_artifact


class RankBy(str, Enum):
    SPOT = "spot"
    ZERO_SHOT = "zero_shot"


@dataclass
class RankedSource:
    """A source prompt and its score for the target (higher is better)."""

    name: str
    score: float
    artifact: PromptArtifact = field(repr=False)

    @property
    def path(self) -> Path | None:
        return self.artifact.path


def resolve_sources(sources, library=None) -> dict[str, PromptArtifact]:
    """Source prompts by name, from a Library, a mapping name -> path/artifact, or a list of paths/refs."""
    from ..library import Library

    if isinstance(sources, Library):
        library, sources = sources, [e.ref for e in sources.entries()]
    if isinstance(sources, Mapping):
        items = list(sources.items())
    else:
        items = [(None, s) for s in sources]
    out = {}
    for name, item in items:
        if isinstance(item, PromptArtifact):
            art = item
        elif library is not None and not Path(str(item)).exists():
            art = library.load(str(item))
        else:
            art = PromptArtifact.load(item)
        key = name or (art.meta.get("library", {}).get("name")) or art.meta.get("name") or (art.path and art.path.stem)
        if key in out:
            key = str(art.path or key)
        out[str(key)] = art
    if not out:
        raise ConfigError("no source prompts to rank")
    return out


def rank_by_similarity(query: PromptArtifact, sources, *, measure: Measure | str = Measure.COSINE_MEAN,
                       base=None) -> list[RankedSource]:
    """Sources by similarity of their prompts to the query prompt (for euclidean: by negated distance)."""
    found = resolve_sources(sources)
    names = ["<query>", *found]
    matrix = similarity_matrix([query, *found.values()], measure, names=names, base=base)
    sign = -1.0 if matrix.measure is Measure.EUCLIDEAN else 1.0
    ranked = [RankedSource(n, sign * float(matrix.values[0, i + 1]), a) for i, (n, a) in enumerate(found.items())]
    return sorted(ranked, key=lambda r: -r.score)


def task_embedding(config, *, steps: int = 30, overrides: Sequence[str] = (), base=None,
                   output: str | Path | None = None) -> PromptArtifact:
    """SPoT's task embedding: the target's prompt after a short training run on its data."""
    from ..training.run import train
    from ..configs import load_run_config

    config = load_run_config(config, overrides)
    out = Path(output) if output is not None else config.run_dir / "task-embedding"
    run = train(config, [f"training.steps={steps}", f"training.eval_every={steps}", "training.eval_start=false",
                         f"output={out}"], base=base, progress=False, log=lambda _: None)  # the trained prompt, never the start
    return PromptArtifact.load(run.artifact)


def target_dev(config, overrides: Sequence[str] = ()):
    """(task section with labels, dev examples) of a target run config, split as training would split it."""
    from ..training.run import labels_of, read_split
    from ..configs import load_run_config
    from ..tasks.readers import split_examples

    config = load_run_config(config, overrides)
    data = config.data
    if not data.train:
        raise ConfigError("the target config has no data.train")
    train = read_split(data.train, data, limit=data.max_train)
    if data.dev:
        dev = read_split(data.dev, data, limit=data.max_dev)
    else:
        train, dev = split_examples(train, data.dev_fraction, config.training.seed)
        dev = dev[: data.max_dev] if data.max_dev else dev
    task = {**config.task, "labels": labels_of(config.task, train)}
    task.setdefault("kind", "classification")
    return task, dev


def rank_by_zero_shot(sources, config, *, base, overrides: Sequence[str] = (), limit: int | None = None,
                      label_maps: Mapping[str, Mapping[str, str]] | None = None, metric: str = "accuracy",
                      log: Callable[[str], None] = lambda _: None) -> list[RankedSource]:
    """Sources by the target dev score each gets when applied directly (the target's template and words)."""
    from ..training.run import load_prompt

    found = resolve_sources(sources)
    task, dev = target_dev(config, overrides)
    dev = dev[:limit] if limit else dev
    ranked = []
    for name, art in found.items():
        art.check_fits(base)
        moved = transferred_artifact(art, None if (label_maps or {}).get(name) else task, (label_maps or {}).get(name))
        loaded = load_prompt(moved, base, key="transfer")
        score = float(evaluate_examples(loaded, dev)[metric])
        log(f"zero-shot {name}: {metric} {score:.4f}")
        ranked.append(RankedSource(name, score, art))
    return sorted(ranked, key=lambda r: -r.score)


def rank_sources(config, sources, *, by: RankBy | str = RankBy.SPOT, k: int | None = None, base=None,
                 steps: int = 30, measure: Measure | str = Measure.COSINE_MEAN, overrides: Sequence[str] = (),
                 limit: int | None = None, output: str | Path | None = None,
                 log: Callable[[str], None] = lambda _: None) -> list[RankedSource]:
    """The top-k source prompts for a target task (its run config), by SPoT task embedding or TPT zero-shot score."""
    from ..training.run import load_model
    from ..configs import load_run_config

    try:
        by = RankBy(by)
    except ValueError:
        raise ConfigError(f"by={by!r} is not one of: {', '.join(r.value for r in RankBy)}") from None
    config = load_run_config(config, overrides)
    base = base or load_model(config.model)
    if by is RankBy.SPOT:
        query = task_embedding(config, steps=steps, base=base, output=output)
        ranked = rank_by_similarity(query, sources, measure=measure, base=base)
    else:
        ranked = rank_by_zero_shot(sources, config, base=base, limit=limit, log=log)
    return ranked[:k] if k else ranked
