"""Prefix tuning on E2E (data-to-text) with smollm2-135m: softprompt against PEFT prefix tuning and
full fine-tuning, same budget, one run.

Every side trains on ../shared/data/e2e/devset.csv (the E2E training set is not mirrored) with the
template "Data: {mr}\\nDescription: {ref}", the loss on the description tokens and an end-of-text
token, --steps steps of --batch pairs, AdamW, linear decay without warmup, and is scored by greedy
decoding (at most --max-new-tokens tokens) of the first --test-rows rows of testset_w_refs.csv:
each distinct meaning representation once, against all of its references (sacrebleu BLEU, and
ROUGE-L F1 from rouge-score). Sides run in their own processes, one after another.

    python bench/e2e_smollm2.py --sides ours,peft,full --lr ours=3e-3,peft=3e-3,full=3e-5 \\
        --out bench/results/e2e_smollm2.json
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, machine, peak_rss_mb, run_side, side_or_lrs  # noqa: E402

E2E = SHARED / "e2e"
INIT_TEXT = "Describe the restaurant in one fluent sentence using every attribute."


def read(name: str, limit: int | None = None) -> list[tuple[str, str]]:
    with (E2E / name).open(newline="", encoding="utf-8") as f:
        rows = [(r["mr"], r["ref"]) for r in csv.DictReader(f)]
    return rows[:limit] if limit else rows


def grouped(rows):
    """Distinct inputs in file order, each with all its references."""
    refs: dict[str, list[str]] = {}
    for mr, ref in rows:
        refs.setdefault(mr, []).append(ref)
    return list(refs), list(refs.values())


def scores(outputs: list[str], refs: list[list[str]]) -> dict:
    import sacrebleu
    from rouge_score import rouge_scorer

    most = max(len(r) for r in refs)
    streams = [[r[j % len(r)] for r in refs] for j in range(most)]
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    rouge = statistics.mean(scorer.score_multi(r, o)["rougeL"].fmeasure for r, o in zip(refs, outputs))
    return {"bleu": sacrebleu.corpus_bleu(outputs, streams).score, "rougeL": 100 * rouge}


def ours(a) -> dict:
    import torch

    from softprompt import api

    config = {
        "name": "e2e-ours",
        "model": {"name": "smollm2-135m"},
        "task": {"kind": "generation", "template": "Data: {text}\nDescription: {mask}", "max_length": 96,
                 "max_target_length": 64, "max_new_tokens": a.max_new_tokens},
        "method": {"name": "prefix_tuning", "prefix_length": a.tokens, "hidden": 512, "init": "words",
                   "init_text": INIT_TEXT},
        "data": {"train": str(E2E / "devset.csv"), "dev": str(E2E / "testset_w_refs.csv"), "format": "csv",
                 "text_field": "mr", "label_field": "ref", "max_dev": a.test_rows},
        "training": {"steps": a.steps, "batch_size": a.batch, "lr": a.lr, "warmup": 0, "eval_every": a.steps,
                     "seed": a.seed, "eval_batch_size": 32},
        "output": str(Path(a.workdir) / "ours"),
    }
    torch.manual_seed(a.seed)
    result = api.train(config, progress=False, log=lambda s: None)
    dev = result.metrics["dev"]
    return {"bleu": dev["bleu"], "rougeL": dev["rougeL"], "inputs": dev["n"], "train_seconds": result.train_seconds,
            "samples_per_s": result.samples_per_second, "peak_rss_mb": peak_rss_mb(),
            "artifact_bytes": result.artifact.stat().st_size, "trainable_params": result.trainable_parameters}


def transformers_side(a) -> dict:
    """peft: PEFT prefix tuning (MLP projection, PEFT's own random init); full: every weight trained."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, get_linear_schedule_with_warmup

    from softprompt.models.loading import resolve_path

    path, _ = resolve_path("smollm2-135m")
    torch.manual_seed(a.seed)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    if a.side == "peft":
        import peft

        config = peft.PrefixTuningConfig(task_type=peft.TaskType.CAUSAL_LM, num_virtual_tokens=a.tokens,
                                         prefix_projection=True, encoder_hidden_size=512)
        model = peft.get_peft_model(model, config)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = tokenizer.eos_token_id

    def prompt_ids(mr: str) -> list[int]:
        return tokenizer(f"Data: {mr}\nDescription:", add_special_tokens=False).input_ids

    train = []
    for mr, ref in read("devset.csv"):
        prompt = prompt_ids(mr)
        target = tokenizer(" " + ref, add_special_tokens=False).input_ids[:64] + [eos]
        train.append((prompt + target, [-100] * len(prompt) + target))
    generator = torch.Generator().manual_seed(a.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=a.lr)
    scheduler = get_linear_schedule_with_warmup(optimizer, 0, a.steps)
    model.train()
    order = torch.randperm(len(train), generator=generator).tolist()
    started, seen = time.perf_counter(), 0
    for step in range(a.steps):
        start = (step * a.batch) % len(train)
        if start + a.batch > len(train):
            order = torch.randperm(len(train), generator=generator).tolist()
        batch = [train[i] for i in order[start : start + a.batch]]
        width = max(len(ids) for ids, _ in batch)  # right padding to the batch's longest row
        ids = torch.tensor([x + [pad] * (width - len(x)) for x, _ in batch])
        labels = torch.tensor([y + [-100] * (width - len(y)) for _, y in batch])
        mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x, _ in batch])
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        seen += len(batch)
    train_seconds = time.perf_counter() - started

    model.eval()
    inputs, refs = grouped(read("testset_w_refs.csv", a.test_rows))
    outputs = []
    tokenizer.padding_side = "left"
    with torch.no_grad():
        for start in range(0, len(inputs), 32):
            enc = [prompt_ids(mr) for mr in inputs[start : start + 32]]
            width = max(map(len, enc))
            ids = torch.tensor([[pad] * (width - len(x)) + x for x in enc])
            mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in enc])
            new = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=a.max_new_tokens,
                                 do_sample=False, eos_token_id=eos, pad_token_id=pad)[:, width:]
            outputs += [tokenizer.decode(row, skip_special_tokens=True).strip() for row in new.tolist()]
    out = Path(a.workdir) / a.side
    if a.side == "peft":
        model.save_pretrained(out)
        artifact_bytes = (out / "adapter_model.safetensors").stat().st_size
    else:
        artifact_bytes = 4 * sum(p.numel() for p in params)  # the fine-tuned copy, float32
    return {**scores(outputs, refs), "inputs": len(inputs), "train_seconds": train_seconds,
            "samples_per_s": seen / train_seconds, "peak_rss_mb": peak_rss_mb(), "artifact_bytes": artifact_bytes,
            "trainable_params": sum(p.numel() for p in params), "sample_output": outputs[0]}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", default=None, help="run one side (ours, peft, full) here and print its JSON")
    parser.add_argument("--sides", default="ours,peft,full")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=10, help="prefix length")
    parser.add_argument("--lr", default="ours=3e-3,peft=3e-3,full=3e-5")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--test-rows", type=int, default=1400, help="first rows of the test file (1400: 161 inputs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default="runs/bench-e2e")
    parser.add_argument("--out", default=None)
    a = parser.parse_args()
    lrs = side_or_lrs(a, ours, transformers_side)
    if lrs is None:
        return
    keep = [f"--steps={a.steps}", f"--batch={a.batch}", f"--tokens={a.tokens}", f"--seed={a.seed}",
            f"--max-new-tokens={a.max_new_tokens}", f"--test-rows={a.test_rows}", f"--workdir={a.workdir}"]
    runs = {}
    for side in a.sides.split(","):
        runs[side] = run_side(__file__, side, keep + [f"--lr={lrs[side]}"])
        print(f"{side}: {json.dumps(runs[side])}", file=sys.stderr, flush=True)
    names = {"ours": "softprompt prefix tuning", "peft": "PEFT prefix tuning", "full": "full fine-tuning"}
    print(f"E2E, smollm2-135m: {a.steps} steps of {a.batch}, prefix length {a.tokens}, "
          f"{next(iter(runs.values()))['inputs']} test inputs; machine: {machine()}")
    print("| side | lr | BLEU | ROUGE-L | samples/s | trainable params | artifact bytes |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for side, r in runs.items():
        print(f"| {names.get(side, side)} | {lrs[side]} | {r['bleu']:.1f} | {r['rougeL']:.1f} | {r['samples_per_s']:.2f} "
              f"| {r['trainable_params']} | {r['artifact_bytes']} |")
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps({"settings": vars(a), "machine": machine(), "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
