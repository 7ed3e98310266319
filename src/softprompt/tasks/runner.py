"""Run items of one or many tasks through one frozen model in shared batches (inference through the engine)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
from torch import nn

from ..core import PromptedModel
from ..engine import Engine, EnginePrompt


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


_PROBES = ("x", "Z 9", "\n. ?")  # different first characters: the rows agree only on the template's start


def fixed_start(task) -> tuple[int, ...] | None:
    """The tokens every row of a task begins with (specials, virtual tokens, the template up to its
    first field), for compiling; None when the task cannot use it. Rows are checked one by one
    against it, so a template whose text merges with the input's first characters only loses speed."""
    renderer = getattr(task, "renderer", None)
    if renderer is None or not task.reads_row_end():
        return None
    fields = task.template.fields
    rendered = [renderer.render({name: probe for name in fields}, task.n_prefix).ids for probe in _PROBES]
    common = 0
    while all(len(r) > common for r in rendered) and len({r[common] for r in rendered}) == 1:
        common += 1
    return tuple(rendered[0][:common])


def register_units(engine: Engine, units: Mapping[str, TaskPrompt]) -> dict[str, EnginePrompt]:
    """Load task prompts into an engine under their keys (their current tensors, computed without gradients)."""
    entries = {}
    with torch.no_grad():
        for key, unit in units.items():
            tensors = unit.method.prompt_tensors() if unit.method is not None else None
            entries[key] = engine.add_prompt(key, tensors, unit.task, fixed_start=fixed_start(unit.task),
                                             eos_id=getattr(unit.task, "eos_id", None))
    return entries


def predict_logits(pm: PromptedModel, units: Mapping[str, TaskPrompt], prepared: Sequence[Prepared],
                   batch_size: int = 32, padding_side: str = "left", progress=None) -> list[torch.Tensor]:
    """Class logits for many items through the engine, in passes of items of similar length.

    padding_side is kept for callers; the engine pads as the model family needs (outputs do not
    depend on it)."""
    order = sorted(range(len(prepared)), key=lambda i: max(len(r) for r in prepared[i].item.rows))
    per_item = max((len(p.item.rows) for p in prepared), default=1)
    out: list[torch.Tensor | None] = [None] * len(prepared)
    bar = None
    if progress is False:
        progress = None
    if progress is True:  # a bar in terminals only (disable=None): logs and pipes stay clean
        from tqdm.auto import tqdm

        bar = tqdm(total=len(prepared), desc="evaluate", unit="ex", leave=False, disable=None)
        progress = bar.update
    try:
        if pm.base.sharding is not None:
            return _logits_in_fixed_batches(pm, units, prepared, order, batch_size, padding_side, progress)
        with Engine(pm, max_batch_rows=batch_size * per_item) as engine:
            entries = register_units(engine, units)
            futures = list(zip(order, engine.submit_scores([(entries[prepared[i].key], prepared[i].item)
                                                            for i in order])))
            try:
                for i, future in futures:
                    out[i] = future.result()
                    if progress is not None:
                        progress(1)
            except BaseException:  # an error or Ctrl-C: the rest is not computed
                for _, future in futures:
                    future.cancel()
                raise
    finally:
        if bar is not None:
            bar.close()
    return out


@torch.no_grad()
def _logits_in_fixed_batches(pm: PromptedModel, units: Mapping[str, TaskPrompt], prepared: Sequence[Prepared],
                             order: Sequence[int], batch_size: int, padding_side: str, progress) -> list[torch.Tensor]:
    """predict_logits for a base sharded over processes: every block's pass is a collective, so the
    passes are batches of batch_size items in length order (as many on every process that scores as
    many items), not the engine's scheduling."""
    out: list[torch.Tensor | None] = [None] * len(prepared)
    size = max(1, batch_size)
    for start in range(0, len(order), size):
        chunk = order[start : start + size]
        for i, logits in zip(chunk, class_logits(pm, units, [prepared[i] for i in chunk], padding_side)):
            out[i] = logits
        if progress is not None:
            progress(len(chunk))
    return out


def generate_texts(pm: PromptedModel, units: Mapping[str, TaskPrompt], prepared: Sequence[Prepared],
                   batch_size: int = 16) -> list[str]:
    """Output text for generation items that may belong to different tasks (and methods), decoded
    together through the engine (greedy, or beam search for tasks that ask for it): each row keeps
    its own prompt, stop token and token budget."""
    from tqdm.auto import tqdm

    beams = max((units[p.key].task.config.num_beams for p in prepared), default=1)
    order = sorted(range(len(prepared)), key=lambda i: len(prepared[i].item.prefix))
    texts: list[str] = [""] * len(prepared)
    with Engine(pm, max_batch_rows=batch_size * beams, max_running=batch_size * beams) as engine:
        entries = register_units(engine, units)
        handles = list(zip(order, engine.submit_generates(
            [(entries[prepared[i].key], prepared[i].item.prefix, units[prepared[i].key].task.sampling())
             for i in order])))
        try:
            for i, handle in tqdm(handles, desc="generate", unit="ex", leave=False,
                                  disable=None if len(handles) > batch_size else True):
                texts[i] = handle.result().text.strip()
        except BaseException:  # an error or Ctrl-C: the rest is not decoded
            for _, handle in handles:
                handle.cancel()
            raise
    return texts
