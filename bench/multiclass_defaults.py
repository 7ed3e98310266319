"""Does the default config train a many-class verbalizer task? (issue 16, item 2)

One run per call: a task, a seed, a thread count and optional key=value overrides on top of the
task's default config (prompt tuning with every training and method setting left at the library's
default, 64 steps of 16, as a new user runs it). Each run appends one JSON line to --out: dev and
test accuracy of the kept prompt, the majority-class rate, what the kept prompt predicts (a
collapsed prompt predicts one or two classes for everything), and the whole history.

Tasks (data from ../shared/data, written as JSONL under --work):
- trec: TREC question type, 6 classes (the transfer experiment's template and words); dev: 300
  training questions (stratified, seed 0; the rest train), test: TREC.test.all (500)
- food: E2E references, the restaurant's food (7 classes: chinese, english, fast, french, ...),
  from testset_w_refs.csv split by meaning representation (no MR in two splits)
- rating: E2E references, customer rating folded to low / average / high (ordinal, similar words;
  "1 out of 5" is low, "3 out of 5" average, "5 out of 5" high); train from devset.csv, dev (15% of
  the meaning representations) and test (another 30%) from testset_w_refs.csv
- sst2: SST-2 at the README budget (`bench/methods_smollm2.py --method prompt_tuning`'s config:
  20 tokens from the text init, lr 3e-2, no warmup, max length 84, one evaluation at step 64,
  the full 872-sentence dev set); `--default-config` drops those settings for the library's defaults
- sst5: SST-5 (stsa.fine.*, 5 ordinal classes, terrible / bad / okay / good / great) with issue 24's
  config: 20 tokens from the text init "Rate the sentiment of the review from terrible to great.",
  max length 84, 64 steps of 16, eval every 32 (steps 0, 32, 64) on the 1101-sentence dev set, the
  kept prompt scored on test (2210); the row's gain is the kept dev accuracy minus step 0's

    OMP_NUM_THREADS=1 python bench/multiclass_defaults.py --task trec --seed 0 --out bench/results/multiclass_after.jsonl
    OMP_NUM_THREADS=1 python bench/multiclass_defaults.py --task trec --seed 0 --hard-prompt --out ...   # zero-shot
    python bench/multiclass_defaults.py --report bench/results/multiclass_after.jsonl
"""

from __future__ import annotations

import argparse
import collections
import csv
import json
import os
import random
import re
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, machine  # noqa: E402

SC = SHARED / "sentence-classification"
TREC_WORDS = {"0": "description", "1": "entity", "2": "abbreviation", "3": "person", "4": "location", "5": "number"}
FOOD = {"Chinese": "chinese", "English": "english", "Fast food": "fast", "French": "french", "Italian": "italian",
        "Japanese": "japanese", "Indian": "indian"}
RATING = {"low": "low", "1 out of 5": "low", "average": "average", "3 out of 5": "average", "high": "high",
          "5 out of 5": "high"}
TASKS = {
    "trec": {"template": "Question: {text}\nAnswer type: {mask}", "words": TREC_WORDS},
    "food": {"template": "Description: {text}\nFood: {mask}", "words": {v: v for v in FOOD.values()}},
    "rating": {"template": "Description: {text}\nCustomer rating: {mask}",
               "words": {v: v for v in ("low", "average", "high")}},
    "sst2": {"template": "Review: {text}\nSentiment: {mask}", "words": {"0": "negative", "1": "positive"}},
    "sst5": {"template": "Review: {text}\nSentiment: {mask}",
             "words": {"0": "terrible", "1": "bad", "2": "okay", "3": "good", "4": "great"}},
}


def _write(rows, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as h:
        for text, label in rows:
            h.write(json.dumps({"text": text, "label": label}) + "\n")
    return str(path)


def _e2e(path: Path, attribute: str, fold: dict) -> dict[str, list[tuple[str, str]]]:
    """MR -> [(reference, label)] for references whose MR has the attribute."""
    by_mr: dict[str, list] = collections.defaultdict(list)
    with path.open(encoding="utf-8") as h:
        for row in csv.DictReader(h):
            found = re.search(re.escape(attribute) + r"\[([^\]]*)\]", row["mr"])
            if found and found.group(1) in fold:
                by_mr[row["mr"]].append((row["ref"], fold[found.group(1)]))
    return by_mr


def _split_mrs(by_mr: dict, fractions: tuple[float, ...], seed: int = 0) -> list[list[tuple[str, str]]]:
    mrs = sorted(by_mr)
    random.Random(seed).shuffle(mrs)
    out, start = [], 0
    for f in fractions:
        end = start + round(f * len(mrs))
        out.append([r for mr in mrs[start:end] for r in by_mr[mr]])
        start = end
    return out


def data_files(task: str, work: Path) -> dict[str, str | None]:
    """train / dev / test files of a task (dev None: carved from train by the run)."""
    d = work / "data"
    if task == "trec":  # dev: 300 training questions (stratified, seed 0), the same for every run
        if not (d / "trec.dev.jsonl").exists():
            from softprompt.tasks.readers import read_examples, split_examples

            train, dev = split_examples(read_examples(SC / "TREC.train.all", format="label-first"), 300 / 5452, 0)
            for split, rows in (("train", train), ("dev", dev)):
                _write([(e.text, e.label) for e in rows], d / f"trec.{split}.jsonl")
        return {"train": str(d / "trec.train.jsonl"), "dev": str(d / "trec.dev.jsonl"),
                "test": str(SC / "TREC.test.all"), "format": None}
    if task == "sst2":
        return {"train": str(SC / "stsa.binary.train"), "dev": str(SC / "stsa.binary.dev"), "test": None,
                "format": "label-first"}
    if task == "sst5":
        return {split: str(SC / f"stsa.fine.{split}") for split in ("train", "dev", "test")} | {"format": "label-first"}
    if not (d / f"{task}.test.jsonl").exists():
        if task == "food":
            train, dev, test = _split_mrs(_e2e(SHARED / "e2e" / "testset_w_refs.csv", "food", FOOD), (0.6, 0.15, 0.25))
        else:
            train = [r for rows in _e2e(SHARED / "e2e" / "devset.csv", "customer rating", RATING).values() for r in rows]
            dev, test = _split_mrs(_e2e(SHARED / "e2e" / "testset_w_refs.csv", "customer rating", RATING), (0.15, 0.3))
        for split, rows in (("train", train), ("dev", dev), ("test", test)):
            _write(rows, d / f"{task}.{split}.jsonl")
    return {split: str(d / f"{task}.{split}.jsonl") for split in ("train", "dev", "test")} | {"format": "jsonl"}


def run_config(a) -> dict:
    spec, files = TASKS[a.task], data_files(a.task, a.work)
    config = {
        "name": f"{a.task}-{a.seed}",
        "model": {"name": "smollm2-135m", "device": "cpu"},
        "task": {"kind": "classification", "template": spec["template"], "verbalizer": spec["words"],
                 "labels": list(spec["words"]), "max_length": 128},
        "method": {"name": "prompt_tuning"},
        "data": {"train": files["train"], "dev": files["dev"], "test": files["test"], "format": files["format"] or "auto"},
        "training": {"steps": 64, "batch_size": 16, "seed": a.seed},
        "output": str(a.work / "runs" / f"{a.task}-{a.seed}-{a.threads}t-{a.tag}"),
    }
    if a.task == "sst2" and not a.default_config:  # the README budget (BENCHMARKS.md, first table)
        config["task"]["max_length"] = 84
        config["method"] = {"name": "prompt_tuning", "num_virtual_tokens": 20, "init": "text",
                            "init_text": "Classify the sentiment of the review as positive or negative."}
        config["training"].update(lr=0.03, warmup=0, eval_every=64)
    if a.task == "sst5":  # issue 24's config
        config["task"]["max_length"] = 84
        config["method"] = {"name": "prompt_tuning", "num_virtual_tokens": 20, "init": "text",
                            "init_text": "Rate the sentiment of the review from terrible to great."}
        config["training"].update(eval_every=32)
    if a.hard_prompt:
        config["method"] = {"name": "hard_prompt"}
    return config


def predicted_share(artifact: Path, split: str, config: dict, base) -> dict[str, float]:
    """The share of each label among the kept prompt's predictions on a data file."""
    from softprompt import api
    from softprompt.tasks.readers import read_examples

    examples = read_examples(split, format=file_format(config))
    predictions = api.predict(api.load_prompt(artifact, base), [e.text for e in examples])
    counts = collections.Counter(p.label for p in predictions)
    return {label: round(counts[label] / len(predictions), 4) for label in config["task"]["labels"]}


def file_format(config: dict) -> str | None:
    """The data section's format as read_examples takes it (None: detect it per file)."""
    return None if config["data"]["format"] == "auto" else config["data"]["format"]


def majority(path: str, fmt: str | None) -> float:
    from softprompt.tasks.readers import read_examples

    labels = [e.label for e in read_examples(path, format=fmt)]
    return collections.Counter(labels).most_common(1)[0][1] / len(labels)


def prober(a, config, base):
    """(on_step callback, probe rows): every --probe-every steps (and at step 0) the prompt being trained
    is scored on --probe-n dev rows, outside the run's own evaluations, so neither the training
    trajectory (no random numbers are drawn) nor the prompt the run keeps changes."""
    import torch

    from softprompt.core import PromptedModel
    from softprompt.tasks.readers import read_examples
    from softprompt.tasks.runner import Prepared, predict_logits
    from softprompt.training import loop

    rows, held = [], {}
    if not a.probe_every:
        return None, rows
    dev = read_examples(config["data"]["dev"], format=file_format(config))[: a.probe_n]
    plain = loop.export_unit

    def capture(unit):  # fit exports the starting prompt first: that is where the unit is found
        if "unit" not in held:
            held["unit"] = unit
            probe(0)
        return plain(unit)

    loop.export_unit = capture

    def probe(step):
        unit = held["unit"]
        was = unit.training
        unit.eval()
        items = [Prepared(unit.key, unit.task.prepare(e)) for e in dev]
        with torch.no_grad():
            outputs = predict_logits(PromptedModel(base), {unit.key: unit}, items, 32)
        unit.train(was)
        metrics = unit.task.metrics(outputs, [p.item for p in items], dev)
        probs = torch.softmax(torch.stack(outputs).float(), dim=1)
        shares = torch.bincount(probs.argmax(1), minlength=probs.shape[1]).float() / len(probs)
        prompt = unit.method.export().get("input")
        rows.append({"step": step, "accuracy": round(metrics["accuracy"], 4), "macro_f1": round(metrics["macro_f1"], 4),
                     "pred_max_share": round(float(shares.max()), 4),
                     "input_sensitivity": round(float(0.5 * (probs - probs.mean(0)).abs().sum(1).mean()), 4),
                     "mean_probs": [round(float(x), 3) for x in probs.mean(0)],
                     "prompt_norm": None if prompt is None else round(float(prompt.norm(dim=1).mean()), 3)})

    def on_step(step):
        if step % a.probe_every == 0:
            probe(step)

    return on_step, rows


def run(a) -> dict:
    import torch

    torch.set_num_threads(a.threads)
    from softprompt import api

    config = run_config(a)
    started = time.time()
    base = api.load_model(config["model"])
    on_step, probes = prober(a, config, base)
    result = api.train(config, a.set, base=base, progress=False, log=lambda s: None, on_step=on_step)
    split = "test" if "test" in result.metrics else "dev"
    path = config["data"][split]
    row = {
        "task": a.task, "seed": a.seed, "threads": a.threads, "tag": a.tag, "overrides": a.set,
        "method": config["method"]["name"], "default_config": a.default_config,
        "dev_accuracy": result.metrics["dev"]["accuracy"], "dev_macro_f1": result.metrics["dev"]["macro_f1"],
        "test_accuracy": result.metrics.get("test", {}).get("accuracy"),
        "scored_on": split, f"{split}_majority": round(majority(path, file_format(config)), 4),
        "predicted_share": predicted_share(result.artifact, path, config, base) if a.shares else None,
        "start_dev_accuracy": next((h["accuracy"] for h in result.history if h["step"] == 0 and "accuracy" in h), None),
        "best_step": result.best_step, "kept_start": result.metrics.get("kept_start"),
        "train_seconds": round(result.train_seconds, 1), "wall_seconds": round(time.time() - started),
        "history": result.history, "probes": probes, "machine": machine(),
    }
    return row


def report(paths: list[Path]) -> None:
    """Mean ± std (population) per task, tag, threads and method over seeds, from the JSONL files."""
    cells: dict[tuple, list[dict]] = collections.defaultdict(list)
    for path in paths:
        for line in path.read_text().splitlines():
            r = json.loads(line)
            cells[(r["task"], r["tag"], r["threads"], r["method"])].append(r)
    print("| task | tag | threads | method | seeds | dev acc. | test acc. | majority | per seed (scored) |")
    print("| --- | --- | ---: | --- | --- | ---: | ---: | ---: | --- |")
    for (task, tag, threads, method), rows in sorted(cells.items()):
        def ms(key):
            values = [r[key] for r in rows if r.get(key) is not None]
            if not values:
                return ""
            return f"{100 * statistics.mean(values):.1f} ± {100 * statistics.pstdev(values):.1f}"
        scored = [r["test_accuracy"] if r["test_accuracy"] is not None else r["dev_accuracy"] for r in rows]
        maj = rows[0].get("test_majority", rows[0].get("dev_majority"))
        print(f"| {task} | {tag} | {threads} | {method} | {','.join(str(r['seed']) for r in rows)} | {ms('dev_accuracy')} "
              f"| {ms('test_accuracy')} | {100 * maj:.1f} | {', '.join(f'{100 * s:.1f}' for s in scored)} |")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", choices=sorted(TASKS), default="trec")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    p.add_argument("--tag", default="default", help="a name for the code/config state (before, after, ...)")
    p.add_argument("--set", action="append", default=[], help="key=value override on the task's config")
    p.add_argument("--hard-prompt", action="store_true", help="the template and words as a zero-shot hard prompt")
    p.add_argument("--default-config", action="store_true", help="sst2: the library's defaults, not the README budget")
    p.add_argument("--shares", action="store_true", help="also record what the kept prompt predicts on the scored split")
    p.add_argument("--probe-every", type=int, default=0, help="score the prompt in training every N steps (see prober)")
    p.add_argument("--probe-n", type=int, default=200, help="dev rows per probe")
    p.add_argument("--work", type=Path, default=Path("runs/multiclass"))
    p.add_argument("--out", type=Path, default=Path("bench/results/multiclass_defaults.jsonl"))
    p.add_argument("--report", type=Path, nargs="*", help="print the table of these JSONL files and exit")
    a = p.parse_args()
    if a.report:
        return report(a.report)
    row = run(a)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    with a.out.open("a") as h:
        h.write(json.dumps(row) + "\n")
    scored = row["test_accuracy"] if row["test_accuracy"] is not None else row["dev_accuracy"]
    print(f"{a.task} seed {a.seed} {a.threads}t {a.tag} {row['method']}: dev {row['dev_accuracy']:.4f} "
          f"scored {scored:.4f} (majority {row.get('test_majority', row.get('dev_majority'))}) best step "
          f"{row['best_step']} shares {row['predicted_share']} ({row['wall_seconds']} s)")


if __name__ == "__main__":
    main()
