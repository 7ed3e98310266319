"""SST-2 prompt sensitivity with the embedded SmolLM2-135M-Instruct: hand-written templates x label
words (plain and through the chat template), zero- and few-shot, raw and calibrated; then APE and
AutoPrompt proposals scored on the same dev set. Writes bench/results/sensitivity_sst2.{json,md,png}.

    OMP_NUM_THREADS=1 taskset -c 1 python bench/sensitivity_sst2.py --stages hand fewshot ape autoprompt

Stages add to (or replace in) the JSON they find, so they can run one at a time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import SHARED, machine  # noqa: E402

from softprompt.models import load_base  # noqa: E402
from softprompt.search import (APEConfig, AutoPromptConfig, HardPrompt, PromptScore, SensitivityReport,  # noqa: E402
                               evaluate_candidates, search_ape, search_autoprompt)
from softprompt.tasks.readers import read_examples  # noqa: E402

PN = {"0": "negative", "1": "positive"}
PN_CAP = {"0": "Negative", "1": "Positive"}
CHAT_ASK = "Is the sentiment of this movie review positive or negative?\n\n{text}\n\nAnswer with one word: {mask}"
HAND = [
    HardPrompt("Review: {text}\nSentiment: {mask}", PN),
    HardPrompt("Review: {text}\nSentiment: {mask}", PN_CAP),
    HardPrompt("{text}\nAnswer: {mask}", PN, name="library default '{text}\\nAnswer: {mask}' [negative/positive]"),
    HardPrompt("{text} It was {mask}.", {"0": "terrible", "1": "great"}),
    HardPrompt("{text}\nQuestion: Is this review positive or negative?\nAnswer: {mask}", PN),
    HardPrompt("Movie review: {text}\nDid the reviewer like the movie? {mask}", {"0": "No", "1": "Yes"}),
    HardPrompt("Text: {text}\nLabel: {mask}", {"0": "0", "1": "1"}),
    HardPrompt(CHAT_ASK, PN, chat=True, name="chat: 'Is the sentiment ... Answer with one word:' [negative/positive]"),
    HardPrompt(CHAT_ASK, PN_CAP, chat=True, name="chat: 'Is the sentiment ... Answer with one word:' [Negative/Positive]"),
    HardPrompt("Review: {text}\nIs this review positive or negative? {mask}", PN, chat=True),
]
FEWSHOT = [HAND[0], HAND[7]]
# APE: 6 proposals from 6 training pairs each, scored on 80 held-out training examples in two
# formats; the best two are scored on dev.
APE = APEConfig(n_proposals=6, n_pairs=6, score_examples=80, keep=2, seed=0, templates=[
    {"template": "{instruction}\n\nInput: {text}\nOutput: {mask}", "chat": False},
    {"template": "{instruction}\n\n{text} {mask}", "chat": True},
])
# AutoPrompt: four trigger tokens before the best-known format, searched on training batches.
AUTOPROMPT = AutoPromptConfig(template="[P*4]\nReview: {text}\nSentiment: {mask}", init="Classify the sentiment",
                              iterations=12, candidates=5, batch_size=16, seed=0)

OUT = Path(__file__).parent / "results" / "sensitivity_sst2"


def data(max_dev: int | None):
    folder = SHARED / "sentence-classification"
    train = read_examples(folder / "stsa.binary.train", format="label-first")
    dev = read_examples(folder / "stsa.binary.dev", format="label-first", limit=max_dev)
    return train, dev


def load_report() -> SensitivityReport:
    path = OUT.with_suffix(".json")
    if not path.exists():
        return SensitivityReport([], "accuracy", {})
    saved = json.loads(path.read_text())
    return SensitivityReport([PromptScore.from_dict(r) for r in saved["results"]], saved["metric"], saved["info"])


def merge(report: SensitivityReport, new: list[PromptScore]) -> None:
    keys = {(r.source, r.prompt.template, json.dumps(r.prompt.verbalizer), r.prompt.chat) for r in new}
    report.results = [r for r in report.results
                      if (r.source, r.prompt.template, json.dumps(r.prompt.verbalizer), r.prompt.chat) not in keys]
    report.results.extend(new)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--stages", nargs="+", default=["hand", "fewshot", "ape", "autoprompt"])
    parser.add_argument("--max-dev", type=int, default=None, help="first N dev examples (default: all 872)")
    parser.add_argument("--k", type=int, default=2, help="demonstrations per class in the few-shot stage")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    base = load_base("smollm2-135m")
    train, dev = data(args.max_dev)
    report = load_report()
    report.metric = "accuracy"
    report.info.update({"model": base.name, "n_dev": len(dev), "data": "SST-2 (stsa.binary) dev", "machine": machine(),
                        "title": f"SST-2 dev ({len(dev)}), SmolLM2-135M-Instruct: prompt sensitivity"})
    timings = report.info.setdefault("stage_seconds", {})
    for stage in args.stages:
        started = time.perf_counter()
        if stage == "hand":
            new = evaluate_candidates(base, HAND, dev, calibration=True, metric="accuracy", log=print).results
        elif stage == "fewshot":
            new = evaluate_candidates(base, FEWSHOT, dev, train=train, k_shot=args.k, seed=args.seed,
                                      calibration=True, metric="accuracy", log=print).results
            for r in new:
                r.source = f"{args.k}-shot"
        elif stage == "ape":
            result = search_ape(base, train, PN, dev=dev, config=APE, log=print)
            report.info["ape"] = {"proposals": result.proposals,
                                  "held_out": [{"name": r.prompt.describe(), "accuracy": round(r.accuracy, 4),
                                                "calibrated_accuracy": round(r.calibrated_accuracy, 4)}
                                               for r in result.scored]}
            new = result.final
        elif stage == "autoprompt":
            result = search_autoprompt(base, train, PN, dev=dev, config=AUTOPROMPT, log=print)
            report.info["autoprompt"] = {"trigger_tokens": result.trigger_tokens, "losses": result.losses,
                                         "config": vars(AUTOPROMPT)}
            new = [result.score]
        else:
            raise SystemExit(f"unknown stage {stage!r}")
        timings[stage] = round(time.perf_counter() - started, 1)
        merge(report, new)
        report.save(OUT)
        print(report.to_markdown())


if __name__ == "__main__":
    main()
