"""Prompt transfer: similarity, retrieval of source prompts, initialisation strategies, zero-shot transfer."""

from .retrieval import (
    RankBy,
    RankedSource,
    rank_by_similarity,
    rank_by_zero_shot,
    rank_sources,
    task_embedding,
)
from .similarity import (
    Measure,
    SimilarityMatrix,
    activated_neurons,
    cosine_flat,
    cosine_mean,
    euclidean,
    heatmap,
    neuron_overlap,
    prompt_similarity,
    similarity_matrix,
)
from .spot import (
    BestOfTopK,
    best_of_top_k,
    init_overrides,
    multitask_mixture,
    similarity_weights,
    weighted_average_init,
)
from .zero_shot import transferred_artifact, zero_shot

__all__ = [
    "BestOfTopK", "Measure", "RankBy", "RankedSource", "SimilarityMatrix", "activated_neurons", "best_of_top_k",
    "cosine_flat", "cosine_mean", "euclidean", "heatmap", "init_overrides", "multitask_mixture", "neuron_overlap",
    "prompt_similarity", "rank_by_similarity", "rank_by_zero_shot", "rank_sources", "similarity_matrix",
    "similarity_weights", "task_embedding", "transferred_artifact", "weighted_average_init", "zero_shot",
]
