"""Prompt transfer: similarity, retrieval of source prompts, initialisation strategies, zero-shot transfer,
PPT pre-trained prompts and cross-model projection."""

from .ppt import pair_task, pretrain_prompt, read_corpus, single_task, unified_task
from .projector import (
    Projector,
    finetune_projector,
    fit_from_artifacts,
    project,
    vocab_projector,
)
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
    "BestOfTopK", "Measure", "Projector", "RankBy", "RankedSource", "SimilarityMatrix", "activated_neurons", "best_of_top_k",
    "cosine_flat", "cosine_mean", "euclidean", "finetune_projector", "fit_from_artifacts", "heatmap", "init_overrides", "multitask_mixture", "neuron_overlap",
    "pair_task", "pretrain_prompt", "project", "prompt_similarity", "rank_by_similarity", "rank_by_zero_shot", "rank_sources", "read_corpus", "similarity_matrix",
    "similarity_weights", "single_task", "task_embedding", "transferred_artifact", "unified_task", "vocab_projector",
    "weighted_average_init", "zero_shot",
]
