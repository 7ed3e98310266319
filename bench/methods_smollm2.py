"""Soft-prompt methods on SST-2 or RTE with smollm2-135m: softprompt against PEFT, same budget, one run.

Both sides: the same converted SmolLM2-135M-Instruct, the task's template (SST-2:
"Review: {text}\\nSentiment:", label words " negative"/" positive"; RTE: "Premise: {text}\\n
Hypothesis: {text_b}\\nEntailed:", " yes"/" no"), prompts initialised from the same text where the
method has an initialisation, AdamW at the same learning rate, linear decay without warmup, the
same batch size, steps and max length (inputs that do not fit lose tokens from their longest text
field, on both sides), scored on the full dev set (SST-2 872 sentences, RTE 277 pairs) by comparing
the label words' next-token scores. PEFT follows its own prompt-learning recipe (causal-LM loss on the label
tokens, inputs padded to max_length). Each side runs in its own process, alternating (ours, peft,
peft, ours, ...), and the table reports medians and ratios.

Methods (--method): prompt_tuning, ptuning (MLP encoder), prefix_tuning (MLP reparameterisation),
ptuning_v2 (direct deep prompts; PEFT's prefix tuning without projection), and two references on
the PEFT/transformers side only: lora (r=8 on q/v) and full (full fine-tuning, same loss).

    python bench/methods_smollm2.py --method prompt_tuning --repeats 2 --out bench/results/prompt_tuning_sst2.json
    python bench/methods_smollm2.py --method prefix_tuning --lr 3e-3 --out bench/results/prefix_tuning_sst2.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, machine, medians, peak_rss_mb, ratio, run_side  # noqa: E402

TASKS = {
    "sst2": {"template": "Review: {text}\nSentiment:", "words": {"0": "negative", "1": "positive"},
             "init_text": "Classify the sentiment of the review as positive or negative.", "format": "label-first",
             "train": SHARED / "sentence-classification/stsa.binary.train",
             "dev": SHARED / "sentence-classification/stsa.binary.dev"},
    "rte": {"template": "Premise: {text}\nHypothesis: {text_b}\nEntailed:",
            "words": {"entailment": "yes", "not_entailment": "no"},
            "init_text": "Does the premise entail the hypothesis? Answer yes or no.", "format": "glue-tsv",
            "train": SHARED / "rte/train.tsv", "dev": SHARED / "rte/dev.tsv"},
}

# Our method section per benchmark method; --tokens is the virtual-token / prefix length on both sides.
OURS = {
    "prompt_tuning": lambda a: {"num_virtual_tokens": a.tokens, "init": "text"},
    "ptuning": lambda a: {"encoder": "mlp", "num_virtual_tokens": a.tokens, "init": "text"},
    "prefix_tuning": lambda a: {"prefix_length": a.tokens, "hidden": 512, "init": "words"},
    "ptuning_v2": lambda a: {"prefix_length": a.tokens, "init": "words"},
}
REFERENCE_ONLY = ("lora", "full")  # no softprompt side: PEFT LoRA, and full fine-tuning with transformers


def peft_wrap(a, model, path):
    """The PEFT (or plain transformers) model for --method: what PEFT offers closest to ours."""
    import peft

    task = peft.TaskType.CAUSAL_LM
    if a.method == "full":
        return model
    if a.method == "prompt_tuning":
        config = peft.PromptTuningConfig(task_type=task, prompt_tuning_init=peft.PromptTuningInit.TEXT,
                                         num_virtual_tokens=a.tokens, prompt_tuning_init_text=TASKS[a.task]["init_text"],
                                         tokenizer_name_or_path=path)
    elif a.method == "ptuning":
        config = peft.PromptEncoderConfig(task_type=task, num_virtual_tokens=a.tokens,
                                          encoder_reparameterization_type="MLP")
    elif a.method == "prefix_tuning":
        config = peft.PrefixTuningConfig(task_type=task, num_virtual_tokens=a.tokens, prefix_projection=True,
                                         encoder_hidden_size=512)
    elif a.method == "ptuning_v2":
        config = peft.PrefixTuningConfig(task_type=task, num_virtual_tokens=a.tokens, prefix_projection=False)
    else:  # lora
        config = peft.LoraConfig(task_type=task, r=8, lora_alpha=16, lora_dropout=0.0,
                                 target_modules=["q_proj", "v_proj"])
    return peft.get_peft_model(model, config)


def load_split(task: str, split: str):
    from softprompt.tasks.readers import read_examples

    return read_examples(TASKS[task][split], format=TASKS[task]["format"])


def prompt_ids(tokenizer, template: str, example, budget: int) -> list[int]:
    """The template filled with the example's tokens, cutting the longest text field until it fits budget."""
    pieces, fields = [], {"text": example.text, "text_b": example.text_b}
    for i, part in enumerate(template.replace("{text_b}", "\0text_b\0").replace("{text}", "\0text\0").split("\0")):
        kind = part if i % 2 else None  # odd pieces are field names
        pieces.append([kind, tokenizer(fields[kind] if kind else part, add_special_tokens=False).input_ids])
    while sum(len(ids) for _, ids in pieces) > budget:
        longest = max((p for p in pieces if p[0]), key=lambda p: len(p[1]))
        longest[1] = longest[1][:-1]
    return [t for _, ids in pieces for t in ids]


def ours(a) -> dict:
    import torch

    from softprompt import api

    spec = TASKS[a.task]
    config = {
        "name": "bench-ours",
        "model": {"name": "smollm2-135m"},
        "task": {"kind": "classification", "template": spec["template"] + " {mask}", "verbalizer": spec["words"],
                 "max_length": a.max_length + a.tokens},  # PEFT's max_length excludes the virtual tokens
        "method": {"name": a.method, **OURS[a.method](a), "init_text": spec["init_text"]},
        "data": {"train": str(spec["train"]), "dev": str(spec["dev"]), "format": spec["format"]},
        "training": {"steps": a.steps, "batch_size": a.batch, "lr": a.lr, "warmup": 0, "eval_every": a.steps,
                     "seed": a.seed, "eval_batch_size": 32},
        "output": str(Path(a.workdir) / "ours"),
    }
    torch.manual_seed(a.seed)
    result = api.train(config, progress=False, log=lambda s: None)
    return {
        "dev_accuracy": result.metrics["dev"]["accuracy"],
        "train_seconds": result.train_seconds,
        "samples_per_s": result.samples_per_second,
        "peak_rss_mb": peak_rss_mb(),
        "artifact_bytes": result.artifact.stat().st_size,
        "trainable_params": result.trainable_parameters,
    }


def peft_side(a) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, get_linear_schedule_with_warmup

    from softprompt.models.loading import resolve_path

    path, _ = resolve_path("smollm2-135m")  # the same converted copy our side loads
    torch.manual_seed(a.seed)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model = peft_wrap(a, model, path)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    template, words = TASKS[a.task]["template"], TASKS[a.task]["words"]

    def encode(example):
        # PEFT's prompt-tuning example: input + label tokens, left-padded to max_length, loss on the label.
        label = tokenizer(" " + words[example.label], add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        prompt = prompt_ids(tokenizer, template, example, a.max_length - len(label))
        ids, labels = prompt + label, [-100] * len(prompt) + label
        padding = a.max_length - len(ids)
        return [pad] * padding + ids, [0] * padding + [1] * len(ids), [-100] * padding + labels

    train = [encode(e) for e in load_split(a.task, "train")]
    generator = torch.Generator().manual_seed(a.seed)
    loader = torch.utils.data.DataLoader(train, batch_size=a.batch, shuffle=True, generator=generator,
                                         collate_fn=lambda rows: [torch.tensor(c) for c in zip(*rows)])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=a.lr)
    scheduler = get_linear_schedule_with_warmup(optimizer, 0, a.steps)
    model.train()
    step, seen, started = 0, 0, time.perf_counter()
    while step < a.steps:
        for ids, mask, labels in loader:
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            step += 1
            seen += len(ids)
            if step >= a.steps:
                break
    train_seconds = time.perf_counter() - started

    model.eval()
    labels = list(words)
    word_ids = [tokenizer(" " + words[k], add_special_tokens=False).input_ids[0] for k in labels]
    dev = load_split(a.task, "dev")
    correct = 0
    with torch.no_grad():
        for start in range(0, len(dev), 32):
            chunk = dev[start : start + 32]
            enc = [prompt_ids(tokenizer, template, e, a.max_length - 1) for e in chunk]
            width = max(map(len, enc))
            ids = torch.tensor([[pad] * (width - len(x)) + x for x in enc])
            mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in enc])
            logits = model(input_ids=ids, attention_mask=mask).logits[:, -1, word_ids]
            pred = logits.argmax(-1).tolist()
            correct += sum(int(labels[p] == e.label) for p, e in zip(pred, chunk))
    out = Path(a.workdir) / "peft"
    model.save_pretrained(out)
    artifact = out / ("model.safetensors" if a.method == "full" else "adapter_model.safetensors")
    return {
        "dev_accuracy": correct / len(dev),
        "train_seconds": train_seconds,
        "samples_per_s": seen / train_seconds,
        "peak_rss_mb": peak_rss_mb(),
        "artifact_bytes": artifact.stat().st_size,
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", choices=["ours", "peft", "both"], default="both")
    parser.add_argument("--task", choices=list(TASKS), default="sst2")
    parser.add_argument("--method", choices=[*OURS, *REFERENCE_ONLY], default="prompt_tuning")
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=20)
    parser.add_argument("--lr", type=float, default=3e-2)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1, help="runs per side, alternating")
    parser.add_argument("--workdir", default="runs/bench")
    parser.add_argument("--out", default=None, help="write the results JSON here")
    a = parser.parse_args()
    if a.side != "both":
        result = ours(a) if a.side == "ours" else peft_side(a)
        print(json.dumps(result))
        return
    passthrough = [f"--{k.replace('_', '-')}={v}" for k, v in vars(a).items() if k not in ("side", "repeats", "out")]
    runs = {"ours": [], "peft": []}
    for r in range(a.repeats):
        order = ("ours", "peft") if r % 2 == 0 else ("peft", "ours")
        if a.method in REFERENCE_ONLY:
            order = ("peft",)
        # Repeat r uses seed a.seed + r on both sides: accuracy medians cover seeds, not one draw.
        args = [x for x in passthrough if not x.startswith("--seed=")] + [f"--seed={a.seed + r}"]
        for side in order:
            runs[side].append(run_side(__file__, side, args))
            print(f"repeat {r + 1} {side}: {json.dumps(runs[side][-1])}", file=sys.stderr, flush=True)
    mp = medians(runs["peft"])
    mo = medians(runs["ours"]) if runs["ours"] else {k: float("nan") for k in mp}  # lora/full: PEFT side only
    rows = [
        (f"dev accuracy ({a.task})", f"{mo['dev_accuracy']:.4f}", f"{mp['dev_accuracy']:.4f}", f"{mo['dev_accuracy'] - mp['dev_accuracy']:+.4f} (diff)"),
        ("training samples/s", f"{mo['samples_per_s']:.2f}", f"{mp['samples_per_s']:.2f}", f"{ratio(mo['samples_per_s'], mp['samples_per_s']):.2f}x"),
        ("training seconds", f"{mo['train_seconds']:.0f}", f"{mp['train_seconds']:.0f}", f"{ratio(mo['train_seconds'], mp['train_seconds']):.2f}x"),
        ("peak RSS (MB)", f"{mo['peak_rss_mb']:.0f}", f"{mp['peak_rss_mb']:.0f}", f"{ratio(mo['peak_rss_mb'], mp['peak_rss_mb']):.2f}x"),
        ("artifact bytes", f"{mo['artifact_bytes']:.0f}", f"{mp['artifact_bytes']:.0f}", f"{ratio(mo['artifact_bytes'], mp['artifact_bytes']):.2f}x"),
        ("trainable parameters", f"{mo['trainable_params']:.0f}", f"{mp['trainable_params']:.0f}", ""),
    ]
    table = ["| metric | softprompt | PEFT | softprompt / PEFT |", "| --- | ---: | ---: | ---: |"]
    table += [f"| {a_} | {b} | {c} | {d} |" for a_, b, c, d in rows]
    header = (f"{a.method} on {a.task}: steps {a.steps}, batch {a.batch}, {a.tokens} virtual tokens, lr {a.lr}, max length {a.max_length}, "
              f"medians of {a.repeats} run(s) per side (seeds {a.seed}..{a.seed + a.repeats - 1}), alternating; "
              f"machine: {machine()}")
    print(header)
    print("\n".join(table))
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps({"settings": vars(a), "machine": machine(), "runs": runs,
                                           "medians": {"ours": mo, "peft": mp}}, indent=1))


if __name__ == "__main__":
    main()
