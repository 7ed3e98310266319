"""minilm-l6 on SST-2, RTE, CoNLL-2003 and WikiANN: P-tuning v2 against full fine-tuning, a head-only
probe and PEFT.

One budget for every side: --steps optimizer steps of --batch examples (sentences for CoNLL),
AdamW, linear decay without warmup, inputs cut to --max-length tokens, scored on the full dev set
(SST-2: 872 sentences and RTE: 277 pairs, accuracy; CoNLL-2003: 3250 sentences and WikiANN-en:
10000 sentences, seqeval span F1).

Sides (--side):
  ours          softprompt, --method ptuning_v2 (default), prefix_tuning or prompt_tuning, linear head on [CLS]
                (SST-2) or on each word's first sub-token (CoNLL); base frozen
  full          transformers AutoModelFor{Sequence,Token}Classification, every parameter trained
  probe         the same model with only the classification head trained
  peft_prefix   PEFT prefix tuning (deep prompts, SEQ_CLS / TOKEN_CLS) with its head trained
  peft_prompt   PEFT prompt tuning with its head trained
Each side runs in its own process; sides given together run one after another, repeated and
alternated with --repeats, and the table reports medians.

    python bench/encoder_tasks.py --task sst2 --sides ours,full,probe,peft_prefix,peft_prompt \\
        --lr ours=1e-2,full=5e-5,probe=1e-3,peft_prefix=1e-2,peft_prompt=3e-2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, machine, peak_rss_mb, run_side, side_or_lrs  # noqa: E402

SST2 = SHARED / "sentence-classification"
FILES = {  # task: (train, dev, reader format)
    "sst2": (SST2 / "stsa.binary.train", SST2 / "stsa.binary.dev", "label-first"),
    "rte": (SHARED / "rte/train.tsv", SHARED / "rte/dev.tsv", "glue-tsv"),
    "conll": (SHARED / "conll2003/train.txt", SHARED / "conll2003/dev.txt", None),
    "wikiann": (SHARED / "wikiann-en/train", SHARED / "wikiann-en/dev", None),
}
PAIRS = ("rte",)
TAGGING = ("conll", "wikiann")


def load(task: str, split: str):
    path = FILES[task][0 if split == "train" else 1]
    if task in TAGGING:
        from softprompt.tasks.conll import read_token_examples

        return read_token_examples(path)
    from softprompt.tasks.readers import read_examples

    return read_examples(path, format=FILES[task][2])


def ours(a) -> dict:
    import torch

    from softprompt import api

    train, dev, fmt = FILES[a.task]
    data = {"train": str(train), "dev": str(dev)}
    if a.task in TAGGING:
        task = {"kind": "token_labelling", "max_length": a.max_length + a.tokens}
    else:
        task = {"kind": "classification", "max_length": a.max_length + a.tokens, "pair": a.task in PAIRS,
                "pooling": a.pooling}
        data["format"] = fmt
    method = ({"name": a.method, "prefix_length": a.tokens} if a.method in ("ptuning_v2", "prefix_tuning")
              else {"name": "prompt_tuning", "num_virtual_tokens": a.tokens, "init": "vocab"})
    config = {
        "name": f"bench-{a.task}-ours", "model": {"name": "minilm-l6"}, "task": task, "method": method, "data": data,
        "training": {"steps": a.steps, "batch_size": a.batch, "lr": a.lr, "head_lr": a.head_lr, "warmup": 0,
                     "eval_every": max(1, a.steps // a.evals), "seed": a.seed, "eval_batch_size": 64},
        "output": str(Path(a.workdir) / f"{a.task}-ours"),
    }
    torch.manual_seed(a.seed)
    result = api.train(config, a.set or [], progress=False, log=lambda s: None)
    dev = result.metrics["dev"]
    key = "f1" if a.task in TAGGING else "accuracy"
    out = {"score": dev[key], "train_seconds": result.train_seconds,
           "samples_per_s": result.samples_per_second, "peak_rss_mb": peak_rss_mb(),
           "artifact_bytes": result.artifact.stat().st_size, "trainable_params": result.trainable_parameters,
           "curve": [[h["step"], h[key]] for h in result.history if key in h]}
    # The score above is the best evaluated checkpoint (what training keeps); the transformers sides
    # report their last step, so the last evaluation (training always evaluates its last step) is kept too.
    out["final_score"] = out["curve"][-1][1]
    if a.train_eval:  # how well the prompt fits (the start of) its own training data: capacity, not generalisation
        from softprompt.core import PromptedModel
        from softprompt.training.run import evaluate_items, load_prompt, prepare

        loaded = load_prompt(result.artifact, api.load_model({"name": "minilm-l6"}), key="task")
        examples = load(a.task, "train")[: a.train_eval]
        items = prepare(loaded.unit.task, "task", examples)
        out["train_score"] = evaluate_items(PromptedModel(loaded.base), loaded.unit, items, examples, 64, "right")[key]
    return out


def transformers_side(a) -> dict:
    """full, probe, peft_prefix, peft_prompt: a transformers classification model, one loop."""
    import torch
    from transformers import (AutoModelForSequenceClassification, AutoModelForTokenClassification, AutoTokenizer,
                              get_linear_schedule_with_warmup)

    from softprompt.models.loading import resolve_path

    path, _ = resolve_path("minilm-l6")
    torch.manual_seed(a.seed)
    tokenizer = AutoTokenizer.from_pretrained(path)
    train, dev = load(a.task, "train"), load(a.task, "dev")
    if a.task not in TAGGING:
        labels = sorted({e.label for e in train})
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=len(labels))
    else:
        labels = sorted({t for e in train for t in e.tags})
        model = AutoModelForTokenClassification.from_pretrained(path, num_labels=len(labels))
    index = {label: i for i, label in enumerate(labels)}
    head = "classifier"
    if a.side == "probe":
        for name, p in model.named_parameters():
            p.requires_grad = name.startswith(head)
    elif a.side.startswith("peft"):
        import peft

        task_type = peft.TaskType.TOKEN_CLS if a.task in TAGGING else peft.TaskType.SEQ_CLS
        if a.side == "peft_prefix":
            config = peft.PrefixTuningConfig(task_type=task_type, num_virtual_tokens=a.tokens)
        else:
            config = peft.PromptTuningConfig(task_type=task_type, num_virtual_tokens=a.tokens)
        model = peft.get_peft_model(model, config)  # keeps the classifier trainable (modules_to_save)

    def encode(batch):
        if a.task not in TAGGING:
            pair = [e.text_b for e in batch] if a.task in PAIRS else None
            enc = tokenizer([e.text for e in batch], pair, truncation=True, max_length=a.max_length, padding=True,
                            return_tensors="pt")
            return enc, torch.tensor([index[e.label] for e in batch]) if batch[0].label is not None else None
        enc = tokenizer([list(e.tokens) for e in batch], is_split_into_words=True, truncation=True,
                        max_length=a.max_length, padding=True, return_tensors="pt")
        target = torch.full(enc.input_ids.shape, -100)
        for row, e in enumerate(batch):
            seen = set()
            for col, word in enumerate(enc.word_ids(row)):
                if word is not None and word not in seen:  # first sub-token of each word
                    seen.add(word)
                    target[row, col] = index[e.tags[word]]
        return enc, target

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=a.lr)
    scheduler = get_linear_schedule_with_warmup(optimizer, 0, a.steps)
    generator = torch.Generator().manual_seed(a.seed)
    model.train()
    started, seen = time.perf_counter(), 0
    order = torch.randperm(len(train), generator=generator).tolist()
    for step in range(a.steps):
        start = (step * a.batch) % len(train)
        if start + a.batch > len(train):
            order = torch.randperm(len(train), generator=generator).tolist()
        batch = [train[i] for i in order[start : start + a.batch]]
        enc, target = encode(batch)
        loss = model(**enc, labels=target).loss
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        seen += len(batch)
    train_seconds = time.perf_counter() - started

    model.eval()
    trainable = sum(p.numel() for p in params)
    score = evaluate(a, model, encode, labels, dev)
    out = {"score": score, "final_score": score, "train_seconds": train_seconds,
           "samples_per_s": seen / train_seconds, "peak_rss_mb": peak_rss_mb(), "artifact_bytes": 4 * trainable,
           "trainable_params": trainable}
    if a.train_eval:
        out["train_score"] = evaluate(a, model, encode, labels, train[: a.train_eval])
    return out


def evaluate(a, model, encode, labels, dev) -> float:
    """Accuracy (classification) or seqeval span F1 (tagging) of a transformers model on examples."""
    import torch

    correct, gold, pred = 0, [], []
    with torch.no_grad():
        for start in range(0, len(dev), 64):
            chunk = dev[start : start + 64]
            enc, target = encode(chunk)
            logits = model(**enc).logits
            if a.task not in TAGGING:
                correct += int((logits.argmax(-1) == target).sum())
                continue
            best = logits.argmax(-1)
            for row, e in enumerate(chunk):
                words = {}
                for col, word in enumerate(enc.word_ids(row)):
                    if word is not None and word not in words:
                        words[word] = labels[int(best[row, col])]
                gold.append(list(e.tags))
                pred.append([words.get(i, "O") for i in range(len(e.tags))])  # cut words count as "O"
    if a.task not in TAGGING:
        return correct / len(dev)
    from seqeval.metrics import f1_score

    return f1_score(gold, pred)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=list(FILES), default="sst2")
    parser.add_argument("--side", default=None, help="run one side in this process and print its JSON")
    parser.add_argument("--sides", default="ours,full,probe,peft_prefix,peft_prompt")
    parser.add_argument("--method", choices=["ptuning_v2", "prefix_tuning", "prompt_tuning"], default="ptuning_v2")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=20)
    parser.add_argument("--lr", default="ours=1e-2,full=5e-5,probe=1e-3,peft_prefix=1e-2,peft_prompt=3e-2",
                        help="side=lr,... (or one number for --side)")
    parser.add_argument("--head-lr", type=float, default=2e-3, help="our head's learning rate")
    parser.add_argument("--pooling", default="auto", help="our classification head's pooling: auto (first) | mean")
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--evals", type=int, default=1, help="our side: dev evaluations during training (a curve; "
                        "the reported score is the best of them, as training keeps the best checkpoint)")
    parser.add_argument("--train-eval", type=int, default=0, help="also score the first N training examples (fit)")
    parser.add_argument("--set", action="append", default=None, metavar="KEY=VALUE",
                        help="our side: a config override, repeatable (e.g. training.model_dropout=true)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--workdir", default="runs/bench-encoder")
    parser.add_argument("--out", default=None)
    a = parser.parse_args()
    lrs = side_or_lrs(a, ours, transformers_side)
    if lrs is None:
        return
    sides = a.sides.split(",")
    runs = {side: [] for side in sides}
    keep = [f"--task={a.task}", f"--method={a.method}", f"--steps={a.steps}", f"--batch={a.batch}",
            f"--tokens={a.tokens}", f"--head-lr={a.head_lr}", f"--pooling={a.pooling}", f"--max-length={a.max_length}", f"--workdir={a.workdir}",
            f"--evals={a.evals}", f"--train-eval={a.train_eval}", *(f"--set={s}" for s in a.set or [])]
    for r in range(a.repeats):
        for side in sides if r % 2 == 0 else sides[::-1]:
            runs[side].append(run_side(__file__, side, keep + [f"--lr={lrs[side]}", f"--seed={a.seed + r}"],
                                       keep_going=side != "ours"))
            print(f"repeat {r + 1} {side}: {json.dumps(runs[side][-1])}", file=sys.stderr, flush=True)
    metric = "dev span F1" if a.task in TAGGING else "dev accuracy"
    print(f"minilm-l6 {a.task}: {a.steps} steps of {a.batch}, {a.tokens} prompt tokens, max length {a.max_length}, "
          f"medians of {a.repeats} run(s) per side; machine: {machine()}")
    fit = f" train {metric.split()[-1] if a.task in TAGGING else 'accuracy'} (first {a.train_eval}) |" if a.train_eval else ""
    print(f"| side | lr | {metric} (best eval) | at the last step |{fit} samples/s | trainable params | artifact bytes |")
    print("| --- | ---: | ---: | ---: |" + (" ---: |" if a.train_eval else "") + " ---: | ---: | ---: |")
    table = {}
    for side in sides:
        name = f"softprompt {a.method}" if side == "ours" else side
        ok = [r for r in runs[side] if "error" not in r]
        if not ok:  # e.g. PEFT prompt tuning on token classification
            table[side] = {"error": runs[side][0]["error"]}
            print(f"| {name} | {lrs[side]} | crashed: {runs[side][0]['error'][:120]} |")
            continue
        m = {k: statistics.median(r[k] for r in ok) for k, v in ok[0].items() if isinstance(v, (int, float))}
        table[side] = m
        fit = f" {m['train_score']:.4f} |" if a.train_eval else ""
        final = f"{m['final_score']:.4f}" if "final_score" in m else "-"
        print(f"| {name} | {lrs[side]} | {m['score']:.4f} | {final} |{fit} {m['samples_per_s']:.1f} | {m['trainable_params']:.0f} "
              f"| {m['artifact_bytes']:.0f} |")
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps({"settings": vars(a), "machine": machine(), "runs": runs,
                                           "medians": table}, indent=1))


if __name__ == "__main__":
    main()
