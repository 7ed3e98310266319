"""How alike two prompts are (TPT, Su et al. 2022): four measures and a matrix over many prompts.

- cosine: cosine of the flattened prompts (same shape needed; position by position)
- cosine_mean: cosine of the token-averaged prompts (any lengths)
- euclidean: Euclidean distance of the flattened prompts (same shape; lower is closer)
- neurons (ON): overlap of the feed-forward neurons each prompt activates on a probe input

All measures compare prompts of one base model: prompts of different fingerprints live in
different spaces, and comparing them raises ArtifactError.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..core import PromptArtifact, PromptedModel, virtual
from ..errors import ArtifactError, ConfigError
from ..library.vectors import prompt_tokens
from ..models.fingerprint import same_base

DEFAULT_PROBE = "the quick brown fox jumps over the lazy dog"


class Measure(str, Enum):
    COSINE = "cosine"
    COSINE_MEAN = "cosine_mean"
    EUCLIDEAN = "euclidean"
    NEURONS = "neurons"


def _same_shape(a: torch.Tensor, b: torch.Tensor, measure: str) -> None:
    if a.shape != b.shape:
        raise ArtifactError(f"{measure} compares prompts position by position, but their shapes differ "
                            f"({tuple(a.shape)} vs {tuple(b.shape)}); use cosine_mean or neurons")


def cosine_flat(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine of the flattened prompts."""
    _same_shape(a, b, "cosine")
    return float(torch.nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0))


def cosine_mean(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine of the token-averaged prompts (rows are tokens)."""
    if a.shape[-1] != b.shape[-1]:
        raise ArtifactError(f"cosine_mean needs prompts of one width, got {a.shape[-1]} and {b.shape[-1]}")
    return float(torch.nn.functional.cosine_similarity(a.double().mean(0), b.double().mean(0), dim=0))


def euclidean(a: torch.Tensor, b: torch.Tensor) -> float:
    """Euclidean distance of the flattened prompts."""
    _same_shape(a, b, "euclidean")
    return float(torch.linalg.vector_norm((a.double() - b.double()).flatten()))


def neuron_overlap(a: torch.Tensor, b: torch.Tensor) -> float:
    """Overlap of two sets of activated neurons (boolean masks): |A and B| / sqrt(|A| |B|), the cosine of the masks."""
    a, b = a.bool().flatten(), b.bool().flatten()
    if a.shape != b.shape:
        raise ArtifactError("activated-neuron masks of different sizes: the prompts come from different models")
    denom = float(a.sum()) * float(b.sum())
    return float((a & b).sum()) / denom**0.5 if denom else 0.0


def _ffn_activations(model: nn.Module) -> list[nn.Module]:
    """The activation-function modules inside the model's feed-forward blocks, in layer order.

    Found by type, not by family-specific attribute names: every listed family builds its FFN
    activation from transformers.activations or torch.nn (tanh poolers are left out).
    """
    kinds = (nn.GELU, nn.ReLU, nn.SiLU, nn.Mish)
    found = []
    for _, module in model.named_modules():
        is_activation = isinstance(module, kinds) or type(module).__module__ == "transformers.activations"
        if is_activation and type(module).__name__.lower() not in ("tanh", "linearactivation"):
            found.append(module)
    return found


@torch.no_grad()
def activated_neurons(base, prompt: torch.Tensor, probe: str = DEFAULT_PROBE) -> torch.Tensor:
    """Boolean mask over all FFN neurons of all layers: which ones the prompt activates on a probe input.

    The prompt is placed before the probe; a neuron counts as activated when its activation,
    averaged over the prompt's positions, is positive. Averaging over positions makes the mask
    independent of the prompt's length, so prompts of different lengths can be compared.
    """
    modules = _ffn_activations(base.model)
    if not modules:
        raise ConfigError(f"{base.name}: found no feed-forward activation modules to measure neuron overlap on")
    n = prompt.shape[0]
    ids = base.tokenizer(probe, add_special_tokens=False).input_ids
    pm = PromptedModel(base)
    batch = pm.collate([[virtual(k) for k in range(n)] + list(ids)], ["p"], padding_side="right")
    captured: list[torch.Tensor] = []

    def hook(module, inputs, output):
        captured.append((output[0, :n].float().mean(0) > 0).cpu())

    handles = [m.register_forward_hook(hook) for m in modules]
    try:
        pm.encode(batch, {"p": prompt.to(base.device, base.dtype)})
    finally:
        for h in handles:
            h.remove()
    return torch.cat(captured)


def _check_one_base(artifacts: Sequence[PromptArtifact], names: Sequence[str]) -> None:
    groups_of: list[tuple[dict, list[str]]] = []  # (a base_model record, the prompts on that base)
    for art, name in zip(artifacts, names):
        record = art.meta.get("base_model", {})
        group = next((g for g in groups_of if same_base(g[0], record)), None)
        if group is None:
            groups_of.append((record, [name]))
        else:
            group[1].append(name)
    if len(groups_of) > 1:
        groups = "; ".join(f"{r.get('fingerprint')}: {', '.join(n)}" for r, n in groups_of)
        raise ArtifactError(f"prompts of different base models cannot be compared (fingerprints {groups})")


def prompt_similarity(a: PromptArtifact, b: PromptArtifact, measure: Measure | str = Measure.COSINE_MEAN, *,
                      base=None, probe: str = DEFAULT_PROBE) -> float:
    """One similarity (or, for euclidean, distance) between two stored prompts of one base model."""
    return similarity_matrix([a, b], measure, base=base, probe=probe).values[0, 1]


@dataclass
class SimilarityMatrix:
    """A square table of prompt similarities (distances for euclidean)."""

    names: list[str]
    values: np.ndarray
    measure: Measure

    def to_csv(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow([self.measure.value, *self.names])
            for name, row in zip(self.names, self.values):
                writer.writerow([name, *(f"{v:.6f}" for v in row)])
        return path

    def heatmap(self, path: str | Path, title: str | None = None) -> Path:
        return heatmap(self.values, self.names, self.names, path, title or f"prompt similarity ({self.measure.value})",
                       cmap="viridis_r" if self.measure is Measure.EUCLIDEAN else "viridis")


def heatmap(values: np.ndarray, rows: Sequence[str], cols: Sequence[str], path: str | Path, title: str,
            cmap: str = "viridis", xlabel: str = "", ylabel: str = "") -> Path:
    """A PNG heatmap with each cell's value written in it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    size = max(3.5, 0.7 * len(cols) + 2)
    fig, ax = plt.subplots(figsize=(size, max(3.0, 0.6 * len(rows) + 1.5)))
    image = ax.imshow(values, cmap=cmap)
    ax.set_xticks(range(len(cols)), labels=list(cols), rotation=45, ha="right")
    ax.set_yticks(range(len(rows)), labels=list(rows))
    finite = values[np.isfinite(values)]
    middle = (finite.max() + finite.min()) / 2 if finite.size else 0
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            if np.isfinite(values[i, j]):
                ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if (values[i, j] < middle) != (cmap.endswith("_r")) else "black")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    fig.colorbar(image, ax=ax, shrink=0.8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def similarity_matrix(artifacts: Sequence[PromptArtifact], measure: Measure | str = Measure.COSINE_MEAN, *,
                      names: Sequence[str] | None = None, base=None, probe: str = DEFAULT_PROBE) -> SimilarityMatrix:
    """Every pair's similarity; `neurons` needs the base model the prompts were made for."""
    try:
        measure = Measure(measure)
    except ValueError:
        raise ConfigError(f"measure={measure!r} is not one of: {', '.join(m.value for m in Measure)}") from None
    names = list(names) if names is not None else [str(a.meta.get("name") or a.path or i) for i, a in enumerate(artifacts)]
    _check_one_base(artifacts, names)
    tokens = [prompt_tokens(a) for a in artifacts]
    if measure is Measure.NEURONS:
        if base is None:
            raise ConfigError("the neurons measure runs the prompts through their base model: pass base=")
        for art in artifacts:
            art.check_fits(base)
        if any("prompt.input" not in a.tensors for a in artifacts):
            raise ArtifactError("the neurons measure needs input prompts (deep-only prompts have none)")
        tokens = [activated_neurons(base, t, probe) for t in tokens]
    pair = {Measure.COSINE: cosine_flat, Measure.COSINE_MEAN: cosine_mean, Measure.EUCLIDEAN: euclidean,
            Measure.NEURONS: neuron_overlap}[measure]
    n = len(artifacts)
    values = np.zeros((n, n))
    for i in range(n):
        for j in range(i, n):
            values[i, j] = values[j, i] = pair(tokens[i], tokens[j])
    return SimilarityMatrix(names, values, measure)
