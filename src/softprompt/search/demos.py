"""Few-shot demonstrations: k labelled training examples per class, seeded, in shuffled order."""

from __future__ import annotations

import random
from typing import Sequence

from ..errors import ConfigError, DataError
from ..tasks.readers import Example, sample_k_per_class


def sample_demonstrations(examples: Sequence[Example], k: int, seed: int = 0,
                          labels: Sequence[str] | None = None) -> list[Example]:
    """k examples of each label (only the given labels when named), drawn and ordered by seed.

    The order is shuffled so that classes interleave: a block of one class last would bias the
    prediction towards it (the recency bias Zhao et al. measure).
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ConfigError(f"k_shot={k!r} must be a whole number >= 0")
    if k == 0:
        return []
    pool = [e for e in examples if labels is None or e.label in labels]
    if labels is not None:
        missing = [label for label in labels if not any(e.label == label for e in pool)]
        if missing:
            raise DataError(f"no training example has label(s) {missing} to show as demonstrations")
    chosen = sample_k_per_class(pool, k, seed)
    random.Random(seed).shuffle(chosen)
    return chosen
