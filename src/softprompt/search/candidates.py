"""Candidate evaluation: N templates x M verbalizers on dev data, and the sensitivity report
(every score, mean, standard deviation, range; table, JSON and a bar chart) with the best selected."""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

from ..errors import ConfigError
from ..models import BaseModel
from ..tasks.readers import Example
from .demos import sample_demonstrations
from .scoring import CONTENT_FREE, HardPrompt, PromptScore, check_labels, score_prompt

METRICS = ("accuracy", "macro_f1", "calibrated_accuracy", "calibrated_macro_f1")


def as_prompt(value: HardPrompt | Mapping | str, verbalizer: Mapping | None = None) -> HardPrompt:
    """A HardPrompt from a HardPrompt, a mapping {template, verbalizer, chat, name} or a template string."""
    if isinstance(value, HardPrompt):
        return value
    if isinstance(value, str):
        if verbalizer is None:
            raise ConfigError(f"template {value!r} has no verbalizer")
        return HardPrompt(value, dict(verbalizer))
    if isinstance(value, Mapping):
        unknown = set(value) - {"template", "verbalizer", "chat", "name"}
        if unknown:
            raise ConfigError(f"candidate {dict(value)!r}: unknown key(s) {sorted(unknown)} "
                              "(known: template, verbalizer, chat, name)")
        if "template" not in value:
            raise ConfigError(f"candidate {dict(value)!r} has no template")
        words = value.get("verbalizer", verbalizer)
        if words is None:
            raise ConfigError(f"candidate {value['template']!r} has no verbalizer")
        return HardPrompt(str(value["template"]), dict(words), bool(value.get("chat", False)), str(value.get("name", "")))
    raise ConfigError(f"a candidate must be a template string or a mapping, got {value!r}")


def expand_candidates(templates: Sequence[HardPrompt | Mapping | str],
                      verbalizers: Sequence[Mapping] = ()) -> list[HardPrompt]:
    """Every template with every verbalizer (a template that names its own verbalizer keeps it)."""
    if not templates:
        raise ConfigError("no candidate templates: give at least one")
    out: list[HardPrompt] = []
    for template in templates:
        own = isinstance(template, HardPrompt) or (isinstance(template, Mapping) and "verbalizer" in template)
        if own or not verbalizers:
            out.append(as_prompt(template))
            continue
        for words in verbalizers:
            prompt = as_prompt(template, words)
            if len(verbalizers) > 1 and prompt.name:
                prompt.name = f"{prompt.name} [{'/'.join(w[0] for w in prompt.verbalizer.values())}]"
            out.append(prompt)
    return out


@dataclass
class SensitivityReport:
    """Scores of every candidate on one dev set; the summary says how much the choice of prompt matters."""

    results: list[PromptScore]
    metric: str = "accuracy"  # the metric that selects the best candidate
    info: dict = field(default_factory=dict)  # model, data, k_shot, seed, timings

    def scores(self, metric: str | None = None, source: str | None = "hand") -> list[float]:
        return [r.score(metric or self.metric) for r in self.results if source is None or r.source == source]

    @property
    def best(self) -> PromptScore:
        """The candidate with the highest selection metric (any source)."""
        return max(self.results, key=lambda r: r.score(self.metric))

    def summary(self, metric: str | None = None, source: str | None = "hand") -> dict:
        """Mean, standard deviation (sample), min, max, range and median of the candidates' scores."""
        values = self.scores(metric, source)
        if not values:
            return {}
        return {
            "n": len(values),
            "mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values),
            "max": max(values),
            "range": max(values) - min(values),
            "median": statistics.median(values),
        }

    def to_dict(self) -> dict:
        metrics = [m for m in METRICS if all(getattr(r, m) is not None for r in self.results)]
        return {
            "metric": self.metric,
            "info": self.info,
            "summary": {m: {k: round(v, 4) if isinstance(v, float) else v for k, v in self.summary(m).items()}
                        for m in metrics},
            "best": self.best.to_dict(),
            "results": [r.to_dict() for r in self.results],
        }

    def to_markdown(self) -> str:
        """The table: one row per candidate (best first), then mean, std, range and median."""
        calibrated = all(r.calibrated_accuracy is not None for r in self.results)
        head = "| # | source | prompt | accuracy | macro-F1 |" + (" calibrated acc. | content-free p |" if calibrated else "")
        rule = "|---|---|---|---|---|" + ("---|---|" if calibrated else "")
        lines = [head, rule]
        ranked = sorted(self.results, key=lambda r: -r.score(self.metric))
        for i, r in enumerate(ranked, 1):
            name = r.prompt.describe().replace("|", "\\|").replace("\n", "\\n")
            row = f"| {i} | {r.source} | {name} | {100 * r.accuracy:.1f} | {100 * r.macro_f1:.1f} |"
            if calibrated:
                bias = "/".join(f"{p:.2f}" for p in r.content_free or [])
                row += f" {100 * r.calibrated_accuracy:.1f} | {bias} |"
            lines.append(row)
        lines.append("")
        for metric in ("accuracy", "calibrated_accuracy") if calibrated else ("accuracy",):
            s = self.summary(metric)
            if s:
                lines.append(f"- {metric} over {s['n']} hand-written candidates: mean {100 * s['mean']:.1f}, "
                             f"std {100 * s['std']:.1f}, range {100 * s['min']:.1f}-{100 * s['max']:.1f} "
                             f"({100 * s['range']:.1f} points), median {100 * s['median']:.1f}")
        best, s = self.best, self.summary()
        if s:
            lines.append(f"- selected by {self.metric}: {best.prompt.describe()} ({best.source}) at "
                         f"{100 * best.score(self.metric):.1f}, {100 * (best.score(self.metric) - s['median']):+.1f} "
                         "points over the hand-written median")
        return "\n".join(lines) + "\n"

    def plot(self, path: str | Path) -> Path:
        """A horizontal bar chart of every candidate's accuracy (and calibrated accuracy), PNG."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        ranked = sorted(self.results, key=lambda r: r.score(self.metric))
        names = [f"{_short(r.prompt)} ({r.source})" for r in ranked]
        fig, ax = plt.subplots(figsize=(10, 1.2 + 0.42 * len(ranked)))
        y = range(len(ranked))
        calibrated = all(r.calibrated_accuracy is not None for r in ranked)
        height = 0.4 if calibrated else 0.7
        ax.barh([i + (height / 2 if calibrated else 0) for i in y], [100 * r.accuracy for r in ranked], height,
                label="accuracy", color="#4878a8")
        if calibrated:
            ax.barh([i - height / 2 for i in y], [100 * r.calibrated_accuracy for r in ranked], height,
                    label="calibrated accuracy", color="#e0a040")
        s = self.summary("accuracy")
        if s:
            ax.axvline(100 * s["mean"], color="gray", linestyle="--", label=f"mean {100 * s['mean']:.1f}")
            ax.axvline(100 * s["median"], color="black", linestyle=":", label=f"median {100 * s['median']:.1f}")
        ax.set_yticks(list(y), names, fontsize=8)
        ax.set_xlabel("dev accuracy (%)")
        ax.set_xlim(0, 100)
        ax.set_title(self.info.get("title", "prompt sensitivity"))
        ax.legend(loc="lower right", fontsize=8)
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path

    def save(self, stem: str | Path) -> dict[str, Path]:
        """Write stem.json, stem.md and stem.png; returns the paths."""
        stem = Path(stem)
        stem.parent.mkdir(parents=True, exist_ok=True)
        paths = {"json": stem.with_suffix(".json"), "md": stem.with_suffix(".md"), "png": stem.with_suffix(".png")}
        paths["json"].write_text(json.dumps(self.to_dict(), indent=1, ensure_ascii=False) + "\n")
        paths["md"].write_text(self.to_markdown())
        self.plot(paths["png"])
        return paths


def _short(prompt: HardPrompt, width: int = 64) -> str:
    """A chart label: the prompt's name with a long template cut in the middle, words kept."""
    words = "/".join(w[0] for w in prompt.verbalizer.values())
    name = prompt.name or f"{'chat ' if prompt.chat else ''}{prompt.template!r}"
    name = name.replace("\n", "\\n")
    if len(name) > width:
        name = name[: width // 2 - 2] + " ... " + name[-(width // 2 - 3):]
    return name if prompt.name else f"{name} [{words}]"


def evaluate_candidates(base: BaseModel, candidates: Sequence[HardPrompt | Mapping | str], dev: Sequence[Example], *,
                        verbalizers: Sequence[Mapping] = (), train: Sequence[Example] = (), k_shot: int = 0,
                        seed: int = 0, calibration: bool = True, metric: str = "auto", max_length: int = 256,
                        word_score: str = "sum", batch_size: int = 32, progress: bool = True,
                        content_free: Sequence[str] = CONTENT_FREE,
                        log: Callable[[str], None] | None = None) -> SensitivityReport:
    """Score every candidate (templates x verbalizers) on dev data and select the best.

    With k_shot > 0, k training examples per class (seeded, shuffled) are shown before each input.
    metric 'auto' selects by calibrated accuracy when calibration is on, else by accuracy.
    """
    prompts = expand_candidates(candidates, verbalizers)
    if metric == "auto":
        metric = "calibrated_accuracy" if calibration else "accuracy"
    if metric not in METRICS:
        raise ConfigError(f"metric={metric!r} is not one of: auto, {', '.join(METRICS)}")
    if metric.startswith("calibrated") and not calibration:
        raise ConfigError(f"metric={metric!r} needs calibration=true")
    if not dev:
        raise ConfigError("no dev examples to evaluate the candidates on")
    seen = {e.label for e in [*dev, *train]}
    for prompt in prompts:
        unknown = [label for label in prompt.labels if label not in seen]
        if unknown:
            raise ConfigError(f"verbalizer of {prompt.describe()}: label(s) {unknown} do not occur in the data "
                              f"(labels there: {', '.join(sorted(str(s) for s in seen))})")
        check_labels(dev, prompt.labels, "dev")
    if k_shot and not train:
        raise ConfigError(f"k_shot={k_shot} needs training examples to draw demonstrations from")
    from tqdm.auto import tqdm

    results = []
    bar = tqdm(prompts, desc="candidates", unit="prompt", disable=None if progress else True, leave=False)
    for prompt in bar:
        demos = sample_demonstrations(train, k_shot, seed, prompt.labels) if k_shot else []
        result = score_prompt(base, prompt, dev, calibration=calibration, demonstrations=demos, max_length=max_length,
                              word_score=word_score, batch_size=batch_size, progress=progress,
                              content_free=content_free)
        results.append(result)
        if log is not None:
            extra = f", calibrated {100 * result.calibrated_accuracy:.1f}" if calibration else ""
            log(f"{prompt.describe()}: accuracy {100 * result.accuracy:.1f}{extra} ({result.seconds:.0f} s)")
    info = {"model": base.name, "n_dev": len(dev), "k_shot": k_shot, "seed": seed, "calibration": calibration,
            "word_score": word_score, "max_length": max_length}
    return SensitivityReport(results, metric, info)
