"""Prompt-tuning training speed and memory on a GPU: softprompt against PEFT, same model, same batches.

The Llama-3.2-1B shape with random weights in bfloat16 (no tokenizer needed), batches of --batch rows
of --length random tokens, a 20-token prompt kept in float32, AdamW at 3e-2, two label tokens read at
each row's last position (a 2-class verbalizer task). Each side: --warmup untimed steps, then
--steps timed steps; tokens/s counts input tokens (rows x length), peak memory is
torch.cuda.max_memory_allocated over the side's timed steps (reset between sides).

  ours   the training step softprompt's loop runs (tasks.runner.class_logits: the prompt injected
         per row, logits only where the label words are read, summed cross-entropy, backward,
         clipping, AdamW on the prompt)
  peft   PEFT prompt tuning (PromptTuningConfig, 20 tokens) on the same model, its causal-LM loss with
         labels on the last token only (-100 elsewhere), backward, clipping, AdamW

    python bench/train_gpu.py --out bench/results/train_gpu.json
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import llama_1b_config, machine, write_result  # noqa: E402

TOKENS = 20


def llama_1b(seed: int):
    import transformers

    config = llama_1b_config()
    torch.manual_seed(seed)
    with torch.device("cuda"):
        torch.set_default_dtype(torch.bfloat16)
        model = transformers.LlamaForCausalLM(config).eval()
        torch.set_default_dtype(torch.float32)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class LastTokenTask(torch.nn.Module):
    """A 2-class verbalizer read at each row's last position (what a classification task does)."""

    kind = "classification"

    def __init__(self, words):
        super().__init__()
        self.words = words

    def class_logits(self, pm, hidden, batch, items, row_index):
        rows = torch.tensor([r[0] for r in row_index], device=hidden.device)
        logits = pm.lm_logits(hidden[rows, batch.last_index[rows]]).float()
        return list(torch.log_softmax(logits, -1)[:, self.words])

    def loss_sum(self, outputs, items):
        target = torch.tensor([item.label for item in items], device=outputs[0].device)
        return torch.nn.functional.cross_entropy(torch.stack(outputs), target, reduction="sum")

    def export(self):
        return {}


def measure(step, steps: int, warmup: int, tokens: int) -> dict:
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"tokens_per_s": tokens * steps / seconds, "step_s": seconds / steps,
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30}


def ours(a, ids, labels) -> dict:
    from softprompt.core import PromptedModel, PromptTensors
    from softprompt.models import wrap_model
    from softprompt.tasks.classification import Item
    from softprompt.tasks.runner import Prepared, class_logits

    base = wrap_model(llama_1b(0), None, "llama-3.2-1b-shape")
    pm = PromptedModel(base)
    prompt = torch.nn.Parameter(torch.randn(TOKENS, base.info.hidden_size, device="cuda") * 0.02)

    class Method(torch.nn.Module):
        def prompt_tensors(self):
            return PromptTensors(input=prompt)

    from softprompt.tasks.runner import TaskPrompt

    unit = TaskPrompt("t", Method(), LastTokenTask([1000, 2000]))
    optimizer = torch.optim.AdamW([prompt], lr=3e-2)
    virtual = [-(k + 1) for k in range(TOKENS)]
    items = [Prepared("t", Item([tuple(virtual + row)], label)) for row, label in zip(ids.tolist(), labels.tolist())]

    def step():
        optimizer.zero_grad(set_to_none=True)
        outputs = class_logits(pm, {"t": unit}, items)
        loss = unit.task.loss_sum(outputs, [p.item for p in items]) / len(items)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([prompt], 1.0)
        optimizer.step()

    return measure(step, a.steps, a.warmup, ids.numel())


def peft_side(a, ids, labels) -> dict:
    import peft

    model = llama_1b(0)
    config = peft.PromptTuningConfig(task_type=peft.TaskType.CAUSAL_LM, num_virtual_tokens=TOKENS,
                                     prompt_tuning_init=peft.PromptTuningInit.RANDOM)
    wrapped = peft.get_peft_model(model, config)
    params = [p for p in wrapped.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=3e-2)
    input_ids = ids.cuda()
    target = torch.full_like(input_ids, -100)
    target[:, -1] = torch.where(labels.cuda() == 1, 2000, 1000)
    mask = torch.ones_like(input_ids)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = wrapped(input_ids=input_ids, attention_mask=mask, labels=target).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()

    return measure(step, a.steps, a.warmup, ids.numel())


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--sides", default="ours,peft")
    parser.add_argument("--out", type=Path)
    a = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 120000, (a.batch, a.length), generator=g)
    labels = torch.randint(0, 2, (a.batch,), generator=g)
    result = {"machine": machine(), "args": vars(a) | {"out": str(a.out)}}
    for side in a.sides.split(","):
        gc.collect()  # the previous side's model is gone before this side's peak is measured
        torch.cuda.empty_cache()
        result[side] = (ours if side == "ours" else peft_side)(a, ids, labels)
        print(side, json.dumps(result[side]), flush=True)
    if "ours" in result and "peft" in result:
        result["ratios"] = {"tokens_per_s ours/peft": result["ours"]["tokens_per_s"] / result["peft"]["tokens_per_s"],
                            "peak ours/peft": result["ours"]["peak_gib"] / result["peft"]["peak_gib"]}
    write_result(result, a.out)


if __name__ == "__main__":
    main()
