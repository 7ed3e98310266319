"""Run items of one or many tasks through one frozen model in shared batches."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
from torch import nn

from ..core import PromptedModel


class TaskPrompt(nn.Module):
    """One task's trainable parts on a base model: its prompt method module and its task (head)."""

    def __init__(self, key: str, method: nn.Module, task: nn.Module):
        super().__init__()
        self.key = key
        self.method = method
        self.task = task

    def input_prompts(self, key: str | None = None) -> dict:
        """This task's prompt tensors (input and/or deep) under key (default: its own key)."""
        if self.method is None:
            return {}
        return {key or self.key: self.method.prompt_tensors()}


@dataclass
class Prepared:
    """An item of a given task, ready to batch."""

    key: str
    item: object


def class_logits(pm: PromptedModel, units: Mapping[str, TaskPrompt], prepared: Sequence[Prepared],
                 padding_side: str = "left") -> list[torch.Tensor]:
    """Per-item class logits for items that may belong to different tasks, in one encoder pass."""
    rows, keys, owners = [], [], []
    for p in prepared:
        start = len(rows)
        rows.extend(p.item.rows)
        keys.extend([p.key if units[p.key].method is not None else None] * len(p.item.rows))
        owners.append(list(range(start, len(rows))))
    prompts: dict[str, torch.Tensor] = {}
    for key in dict.fromkeys(p.key for p in prepared):
        prompts.update(units[key].input_prompts(key))
    keys = [k if k in prompts else None for k in keys]
    batch = pm.collate(rows, keys, padding_side=padding_side)
    hidden = pm.encode(batch, prompts)
    out: list[torch.Tensor | None] = [None] * len(prepared)
    for key in dict.fromkeys(p.key for p in prepared):
        idx = [i for i, p in enumerate(prepared) if p.key == key]
        logits = units[key].task.class_logits(
            pm, hidden, batch, [prepared[i].item for i in idx], [owners[i] for i in idx]
        )
        for j, i in enumerate(idx):
            out[i] = logits[j]
    return out


def mixed_loss(pm: PromptedModel, units: Mapping[str, TaskPrompt], batch: Sequence[Prepared]) -> torch.Tensor:
    """Mean loss over a batch whose items may belong to different tasks, each scored by its own task."""
    outputs = class_logits(pm, units, batch)
    total = sum(units[key].task.loss_sum([o for o, p in zip(outputs, batch) if p.key == key],
                                         [p.item for p in batch if p.key == key])
                for key in dict.fromkeys(p.key for p in batch))
    return total / len(batch)


def train_mixed(pm: PromptedModel, units: Mapping[str, TaskPrompt], items: Sequence[Prepared], optimizer,
                params, steps: int, batch_size: int, seed: int, log=None, label: str = "training") -> None:
    """A plain loop for the small multi-task trainings of transfer (a SPoT mixture, a projector):
    seeded random batches over items of several tasks, their mean loss, clipping at 1.0."""
    import random

    rng = random.Random(seed)
    params = list(params)
    for step in range(1, steps + 1):
        batch = [items[rng.randrange(len(items))] for _ in range(batch_size)]
        loss = mixed_loss(pm, units, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if log is not None and (step % max(1, steps // 5) == 0 or step == steps):
            log(f"{label}: step {step}/{steps} loss {loss.item():.4f}")


def export_unit(unit: TaskPrompt) -> dict[str, torch.Tensor]:
    """The final tensors of a task prompt: 'prompt.*' from the method, 'head.*' from the task.

    Exported in eval mode whatever mode training left the unit in: a reparameterisation's dropout
    (prefix tuning's MLP, P-tuning's encoder) must not be folded into the saved prompt."""
    was_training = unit.training
    unit.eval()
    try:
        tensors = {f"prompt.{k}": v for k, v in unit.method.export().items()} if unit.method is not None else {}
        tensors.update(unit.task.export())
    finally:
        unit.train(was_training)
    return tensors


@torch.no_grad()
def predict_logits(pm: PromptedModel, units: Mapping[str, TaskPrompt], prepared: Sequence[Prepared],
                   batch_size: int = 32, padding_side: str = "left", progress=None) -> list[torch.Tensor]:
    """Class logits for many items, batched by length (padding only to each batch's longest row)."""
    order = sorted(range(len(prepared)), key=lambda i: max(len(r) for r in prepared[i].item.rows))
    out: list[torch.Tensor | None] = [None] * len(prepared)
    bar = None
    if progress is False:
        progress = None
    if progress is True:  # a bar in terminals only (disable=None): logs and pipes stay clean
        from tqdm.auto import tqdm

        bar = tqdm(total=len(prepared), desc="evaluate", unit="ex", leave=False, disable=None)
        progress = bar.update
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        logits = class_logits(pm, units, [prepared[i] for i in chunk], padding_side)
        for i, value in zip(chunk, logits):
            out[i] = value.float().cpu()
        if progress is not None:
            progress(len(chunk))
    if bar is not None:
        bar.close()
    return out


@torch.no_grad()
def generate_texts(pm: PromptedModel, units: Mapping[str, TaskPrompt], prepared: Sequence[Prepared],
                   batch_size: int = 16) -> list[str]:
    """Output text for generation items that may belong to different tasks (and methods), decoded
    together (greedy, or beam search for tasks that ask for it): each row keeps its own prompt,
    stop token and token budget."""
    from tqdm.auto import tqdm

    def decoding(i):  # rows decoded alike share batches: greedy rows together, each beam setting together
        config = units[prepared[i].key].task.config
        return (config.num_beams, config.length_penalty if config.num_beams > 1 else 0.0)

    order = sorted(range(len(prepared)), key=lambda i: (decoding(i), len(prepared[i].item.prefix)))
    chunks: list[list[int]] = []
    for i in order:
        if chunks and len(chunks[-1]) < batch_size and decoding(chunks[-1][0]) == decoding(i):
            chunks[-1].append(i)
        else:
            chunks.append([i])
    texts: list[str] = [""] * len(prepared)
    for indices in tqdm(chunks, desc="generate", unit="batch", leave=False, disable=None if len(chunks) > 1 else True):
        chunk = [prepared[i] for i in indices]
        tasks = [units[p.key].task for p in chunk]
        prompts: dict = {}
        for key in dict.fromkeys(p.key for p in chunk):
            prompts.update(units[key].input_prompts(key))
        batch = pm.collate([list(p.item.prefix) for p in chunk], [p.key if p.key in prompts else None for p in chunk],
                           padding_side="left")
        stops = {t.eos_id for t in tasks}
        longest = max(t.config.max_new_tokens for t in tasks)
        # One shared stop id ends the loop early once every row has produced it; otherwise run to the budget.
        stop_id = next(iter(stops)) if len(stops) == 1 else None
        if tasks[0].config.num_beams > 1:
            found = pm.beam_search(batch, prompts, longest, tasks[0].config.num_beams, stop_id,
                                   tasks[0].config.length_penalty)
            rows = [tokens for tokens, _ in found]
        else:
            rows = pm.generate(batch, prompts, longest, stop_id)[0].tolist()
        for i, task, row in zip(indices, tasks, rows):
            row = row[: task.config.max_new_tokens]
            if task.eos_id in row:
                row = row[: row.index(task.eos_id)]
            texts[i] = task.tokenizer.decode(row, skip_special_tokens=True).strip()
    return texts
