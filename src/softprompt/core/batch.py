"""Per-row prompt batches: each row names its own prompt, virtual-token slots and real tokens.

A row is a list of ints: token ids (>= 0) and virtual-token slots written as -(k + 1) for the k-th
virtual token of that row's prompt. Rows of different tasks, methods and prompt lengths share one
batch; padding goes left or right, and positions count only real (unpadded) entries, so a row's
output does not depend on its neighbours or on the padding side.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Sequence

import torch

from ..templates.render import virtual  # noqa: F401  (rows are built by templates; the core reads them)


@dataclass
class PromptBatch:
    """Padded tensors for one forward pass over rows that may belong to different prompts."""

    input_ids: torch.Tensor  # (B, L) real token ids; virtual slots and padding hold pad_id
    virtual_slot: torch.Tensor  # (B, L) k for the k-th virtual token of the row's prompt, else -1
    attention_mask: torch.Tensor  # (B, L) 1 for real tokens and virtual tokens, 0 for padding
    position_ids: torch.Tensor  # (B, L) 0-based positions of unpadded entries (0 on padding)
    row_prompt: torch.Tensor  # (B,) index into prompt_keys, -1 for a row without an input prompt
    last_index: torch.Tensor  # (B,) index of each row's last unpadded entry
    first_index: torch.Tensor  # (B,) index of each row's first unpadded entry
    prompt_keys: list[str]  # the distinct prompts of this batch, in first-seen order
    padding_side: str

    def to(self, device) -> "PromptBatch":
        moved = {
            f.name: getattr(self, f.name).to(device) if isinstance(getattr(self, f.name), torch.Tensor) else getattr(self, f.name)
            for f in fields(self)
        }
        return PromptBatch(**moved)

    def select(self, index: torch.Tensor) -> "PromptBatch":
        """The batch made of rows index (repeated rows allowed: the beams of beam search)."""
        picked = {
            f.name: getattr(self, f.name)[index] if isinstance(getattr(self, f.name), torch.Tensor) else getattr(self, f.name)
            for f in fields(self)
        }
        return PromptBatch(**picked)

    @property
    def has_virtual(self) -> bool:
        return bool((self.virtual_slot >= 0).any())

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def collate(
    rows: Sequence[Sequence[int]],
    row_keys: Sequence[str | None],
    pad_id: int,
    padding_side: str = "right",
    offsets: Sequence[int] | None = None,
) -> PromptBatch:
    """Pad rows to the longest one (not to a fixed length) and index their prompts; offsets[i] is
    where row i's positions start (a row continuing after compiled or cached entries)."""
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    if len(rows) != len(row_keys):
        raise ValueError(f"{len(rows)} rows but {len(row_keys)} prompt keys")
    if not rows:
        raise ValueError("cannot collate an empty batch")
    width = max(len(row) for row in rows)
    batch = len(rows)
    ids = torch.full((batch, width), pad_id, dtype=torch.long)
    slots = torch.full((batch, width), -1, dtype=torch.long)
    mask = torch.zeros((batch, width), dtype=torch.long)
    keys: list[str] = []
    row_prompt = torch.full((batch,), -1, dtype=torch.long)
    for i, (row, key) in enumerate(zip(rows, row_keys)):
        values = torch.tensor(list(row), dtype=torch.long)
        start = 0 if padding_side == "right" else width - len(row)
        span = slice(start, start + len(row))
        is_virtual = values < 0
        if bool(is_virtual.any()) and key is None:
            raise ValueError(f"row {i} has virtual-token slots but no prompt")
        ids[i, span] = torch.where(is_virtual, torch.full_like(values, pad_id), values)
        slots[i, span] = torch.where(is_virtual, -values - 1, torch.full_like(values, -1))
        mask[i, span] = 1
        if key is not None:
            if key not in keys:
                keys.append(key)
            row_prompt[i] = keys.index(key)
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0) * mask
    if offsets is not None:
        positions = positions + torch.tensor(list(offsets), dtype=torch.long)[:, None] * mask
    lengths = mask.sum(dim=1)
    if padding_side == "right":
        first = torch.zeros(batch, dtype=torch.long)
        last = lengths - 1
    else:
        first = width - lengths
        last = torch.full((batch,), width - 1, dtype=torch.long)
    return PromptBatch(ids, slots, mask, positions, row_prompt, last, first, keys, padding_side)
