"""Prompt transfer on smollm2-135m (issue 5, item 9, reduced): one command from data to tables.

1. seeded splits (MR, CR, SUBJ have no split; TREC and RTE dev come from their train files when
   asked), written as JSONL under --work
2. a source prompt per task (SST-2, MR, CR, SUBJ, TREC, RTE), stored in a prompt library
3. the transfer matrix: each source applied zero-shot to each target (target's template and words),
   relative to the target's own prompt; CSV and heatmap
4. retrieval rankings per target: TPT zero-shot score and SPoT task embedding (short target run)
5. few-shot targets (default MR and CR) at 16 and 32 shots, seeds 0..2: random init, vocab init,
   SPoT best-of-top-k, weighted average and multitask mixture (sources: the other tasks); mean, std
   and the convergence history of every run

With --ppt (issue 5, item 6; issue 16, item 4) it runs PPT instead: one prompt pre-trained on
self-supervised tasks in one format (--ppt-format): `unified` (3-class sentence pair and
next-sentence multiple choice from CoNLL-2003 articles, lettered options), `pair` (the sentence
pairs answered yes / maybe / no) or `single` (single sentences pseudo-labelled terrible ... great
by the frozen model: CoNLL, E2E references and the targets' training texts, their labels dropped,
their dev rows never used); then 16/32-shot SST-2, MR, CR, SUBJ and TREC from vocab init (vanilla)
and from the PPT prompt, with the task's own template (vanilla, ppt), the unified template
(vanilla_unified, ppt_unified) or the single-sentence template with the task's words
(vanilla_single, ppt_single); averages over tasks.

    OMP_NUM_THREADS=1 taskset -c 1 python bench/transfer_experiment.py --out bench/results/transfer_experiment.json
    python bench/transfer_experiment.py --smoke   # minutes: tiny budgets, checks the pipeline end to end
    OMP_NUM_THREADS=1 taskset -c 1 python bench/transfer_experiment.py --ppt --out bench/results/ppt_experiment.json
    OMP_NUM_THREADS=1 python bench/transfer_experiment.py --ppt --ppt-format single --ppt-kinds vanilla,vanilla_single,ppt_single ...
    python bench/transfer_experiment.py --ppt --smoke
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, machine

SC = SHARED / "sentence-classification"
SENTIMENT = {"0": "negative", "1": "positive"}
TASKS = {
    "sst2": {"train": (SC / "stsa.binary.train", "label-first"), "dev": (SC / "stsa.binary.dev", "label-first"),
                 "template": "Review: {text}\nSentiment: {mask}", "words": SENTIMENT},
    "mr": {"train": (SC / "rt-polarity.all", "label-first"), "template": "Review: {text}\nSentiment: {mask}",
               "words": SENTIMENT},
    "cr": {"train": (SC / "custrev.all", "label-first"), "template": "Review: {text}\nSentiment: {mask}",
               "words": SENTIMENT},
    "subj": {"train": (SC / "subj.all", "label-first"), "template": "Text: {text}\nKind: {mask}",
                 "words": {"0": "subjective", "1": "objective"}},
    "trec": {"train": (SC / "TREC.train.all", "label-first"), "template": "Question: {text}\nAnswer type: {mask}",
                 "words": {"0": "description", "1": "entity", "2": "abbreviation", "3": "person", "4": "location",
                        "5": "number"}},
    "rte": {"train": (SHARED / "rte" / "train.tsv", "glue-tsv"), "dev": (SHARED / "rte" / "dev.tsv", "glue-tsv"),
                "template": "Premise: {text}\nHypothesis: {text_b}\nEntailed: {mask}",
                "words": {"entailment": "yes", "not_entailment": "no"}, "pair": True},
}

# Questions of the unified multiple-choice format (PPT); the options are the task's label words.
QUESTIONS = {"sst2": "What is the sentiment of the review?", "mr": "What is the sentiment of the review?",
             "cr": "What is the sentiment of the review?", "subj": "Is the text subjective or objective?",
             "trec": "What type of answer does the question ask for?"}


def prepare_data(work: Path, n_dev: int, seed: int = 0) -> dict[str, dict[str, str]]:
    """train/dev JSONL per task: seeded stratified splits where a task has no dev file; dev capped at n_dev."""
    from softprompt.tasks.readers import read_examples, split_examples

    out = {}
    for name, spec in TASKS.items():
        path, fmt = spec["train"]
        kw = {"text_field": "sentence1", "text_b_field": "sentence2"} if fmt == "glue-tsv" else {}
        train = read_examples(path, format=fmt, skip_empty=True, **kw)
        if "dev" in spec:
            dev = read_examples(spec["dev"][0], format=spec["dev"][1], skip_empty=True, **kw)
        else:
            train, dev = split_examples(train, 0.1, seed)
        if len(dev) > n_dev:
            _, dev = split_examples(dev, n_dev / len(dev), seed)
        random.Random(seed).shuffle(dev)  # the source files are grouped by label: any prefix of dev must not be
        files = {}
        for split, rows in (("train", train), ("dev", dev)):
            f = work / "data" / f"{name}.{split}.jsonl"
            f.parent.mkdir(parents=True, exist_ok=True)
            with f.open("w") as h:
                for e in rows:
                    h.write(json.dumps({"text": e.text, "text_b": e.text_b, "label": e.label}) + "\n")
            files[split] = str(f)
        out[name] = files
    return out


def config(name: str, files: dict, a, *, out: Path, steps: int, method: dict | None = None, k_shot=None, seed=0):
    spec, files = TASKS[name], files[name]
    task = {"kind": "classification", "template": spec["template"], "verbalizer": spec["words"],
            "labels": list(spec["words"]), "pair": bool(spec.get("pair")), "max_length": 160}
    return {
        "name": name, "model": {"name": a.model, "device": "cpu"}, "task": task,
        "method": method or {"name": "prompt_tuning", "num_virtual_tokens": a.tokens, "init": "vocab", "seed": seed},
        "data": {"train": files["train"], "dev": files["dev"], "k_shot": k_shot,
                 "text_b_field": "text_b" if spec.get("pair") else None, "max_train": a.max_train},
        "training": {"steps": steps, "batch_size": a.batch, "lr": a.lr, "eval_every": max(1, steps // a.evals),
                     "log_every": max(1, steps // a.evals), "seed": seed, "warmup": 0.0},
        "output": str(out),
    }


def source_prompt(a, base, files, name, lib, quiet) -> dict:
    """Train (or with --reuse, find) one source prompt and put it in the library."""
    from softprompt import api
    from softprompt.core import PromptArtifact

    out = a.work / "sources" / name
    if a.reuse and (out / "metrics.json").exists():
        meta = PromptArtifact.load(out / "prompt.safetensors").meta
        found = {"artifact": str(out / "prompt.safetensors"), "dev_accuracy": meta["metrics"]["dev"]["accuracy"],
                 "train_seconds": meta["training"]["train_seconds"], "reused": True}
    else:
        run = api.train(config(name, files, a, out=out, steps=a.source_steps), base=base, **quiet)
        found = {"artifact": str(run.artifact), "dev_accuracy": run.metrics["dev"]["accuracy"],
                 "train_seconds": run.train_seconds}
    if not found.get("reused") or name not in {e.name for e in lib.entries()}:
        lib.add(found["artifact"], name, task=name, description="transfer experiment source")
    return found


def transfer_matrix(a, base, files, sources, paths) -> dict:
    """Zero-shot accuracy of each source prompt on each target (the target's template and words), on one
    seeded random subset of the target's dev rows; relative to the target's own prompt on the same rows."""
    import numpy as np

    from softprompt.transfer import heatmap, zero_shot

    raw = np.zeros((len(sources), len(sources)))
    for j, t in enumerate(sources):
        rows = Path(files[t]["dev"]).read_text().splitlines()
        random.Random(1).shuffle(rows)
        subset = a.work / "data" / f"{t}.matrix.jsonl"
        subset.write_text("\n".join(rows[: a.matrix_limit] if a.matrix_limit else rows) + "\n")
        c = config(t, files, a, out=a.work / "unused", steps=1)
        for i, s in enumerate(sources):
            raw[i, j] = zero_shot(paths[s], subset, base=base, target_task=c["task"],
                                  text_b_field=c["data"]["text_b_field"])["accuracy"]
        print(f"matrix column {t}: " + ", ".join(f"{s} {raw[i, j]:.3f}" for i, s in enumerate(sources)), flush=True)
    relative = raw / np.diag(raw)[None, :]
    png = heatmap(relative, sources, sources, a.out.with_name(a.out.stem + "_matrix.png"),
                  "zero-shot transfer, relative to the target's own prompt", xlabel="target", ylabel="source")
    print(f"transfer matrix -> {png}", flush=True)
    return {"rows_source": sources, "cols_target": sources, "dev_rows": a.matrix_limit or "all",
            "accuracy": raw.round(4).tolist(), "relative": relative.round(4).tolist()}


def few_shot_run(a, base, files, rows, folder, target, shots, seed, kind, overrides, task=None):
    """One k-shot target run from one initialisation; its dev accuracy and history go into rows[kind]."""
    from softprompt import api

    out = a.work / folder / f"{target}-{shots}-{seed}-{kind}"
    if a.reuse and (out / "metrics.json").exists() and (out / "history.json").exists():  # finished earlier
        accuracy = json.loads((out / "metrics.json").read_text())["dev"]["accuracy"]
        history = json.loads((out / "history.json").read_text())
        rows.setdefault(kind, []).append({"seed": seed, "accuracy": accuracy, "history": history, "reused": True})
        print(f"{target} {shots}-shot seed {seed} {kind}: {accuracy:.4f} (reused)", flush=True)
        return
    c = config(target, files, a, out=out, steps=a.target_steps, k_shot=shots, seed=seed)
    if task is not None:
        c["task"] = task
    r = api.train(c, overrides, base=base, progress=False, log=lambda _: None)
    rows.setdefault(kind, []).append({"seed": seed, "accuracy": r.metrics["dev"]["accuracy"], "history": r.history})
    print(f"{target} {shots}-shot seed {seed} {kind}: {r.metrics['dev']['accuracy']:.4f}", flush=True)


def summary(rows):
    """Mean and (population) std of accuracy per initialisation, with the runs."""
    return {kind: {"mean": statistics.mean(x["accuracy"] for x in v),
                   "std": statistics.pstdev(x["accuracy"] for x in v), "runs": v} for kind, v in rows.items()}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--work", type=Path, default=Path("runs/transfer_experiment"))
    p.add_argument("--out", type=Path, default=Path("bench/results/transfer_experiment.json"))
    p.add_argument("--sources", default="sst2,mr,cr,subj,trec,rte")
    p.add_argument("--targets", default="mr,cr")
    p.add_argument("--shots", default="16,32")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--tokens", type=int, default=10)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=0.03)
    p.add_argument("--source-steps", type=int, default=150)
    p.add_argument("--target-steps", type=int, default=60)
    p.add_argument("--probe-steps", type=int, default=10, help="SPoT task embedding and best-of-top-k runs")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--n-dev", type=int, default=200)
    p.add_argument("--matrix-limit", type=int, default=None, help="dev examples per cell of the transfer matrix")
    p.add_argument("--matrix-only", action="store_true",
                   help="with --reuse: recompute only the transfer matrix from the stored sources and update --out")
    p.add_argument("--skip-matrix", action="store_true", help="no transfer matrix (e.g. adding 16-shot cells)")
    p.add_argument("--rankings-only", action="store_true",
                   help="with --reuse: only rank the sources for --targets and add the rankings to --out")
    p.add_argument("--evals", type=int, default=4, help="dev evaluations per run (the convergence curve's points)")
    p.add_argument("--reuse", action="store_true",
                   help="keep source prompts, the PPT prompt and finished few-shot runs already under --work instead of retraining")
    p.add_argument("--max-train", type=int, default=None)
    p.add_argument("--smoke", action="store_true", help="tiny budgets: check the pipeline only")
    p.add_argument("--ppt", action="store_true", help="the PPT experiment (item 6) instead of SPoT/TPT")
    p.add_argument("--ppt-text", type=Path, nargs="+",
                   default=[SHARED / "conll2003" / f"{split}.txt" for split in ("train", "dev", "test")])
    p.add_argument("--ppt-format", choices=("unified", "pair", "single"), default="unified")
    p.add_argument("--ppt-steps", type=int, default=400)
    p.add_argument("--ppt-examples", type=int, default=4000)
    p.add_argument("--ppt-lr", type=float, default=None, help="pre-training learning rate (default: --lr)")
    p.add_argument("--ppt-batch", type=int, default=None, help="pre-training batch size (default: --batch)")
    p.add_argument("--ppt-evals", type=int, default=5, help="dev evaluations during pre-training")
    p.add_argument("--ppt-dev", type=int, default=300, help="dev examples of the pre-training task")
    p.add_argument("--ppt-probe", action="store_true",
                   help="no model: how far surface cues separate the pair task's classes (logistic regression); to --out")
    p.add_argument("--ppt-pool", choices=("targets", "general"), default="targets",
                   help="single format's sentences: running text + E2E references + the targets' training texts "
                        "(labels dropped), or general: running text + E2E references only (the control)")
    p.add_argument("--ppt-only", action="store_true", help="pre-train (or reuse) the PPT prompt and stop")
    p.add_argument("--ppt-targets", default="sst2,mr,cr,subj,trec")
    p.add_argument("--ppt-kinds", default="vanilla,ppt,vanilla_unified,ppt_unified",
                   help="initialisation x template combinations to run per target (also vanilla_single, ppt_single)")
    a = p.parse_args()
    if a.ppt and a.smoke:
        a.ppt_steps, a.ppt_examples, a.target_steps, a.n_dev, a.seeds, a.shots = 3, 60, 3, 16, "0", "16"
        a.tokens, a.ppt_targets = 4, "sst2,trec"
    elif a.smoke:
        a.source_steps, a.target_steps, a.probe_steps, a.n_dev, a.seeds, a.shots = 4, 4, 2, 24, "0", "16"
        a.max_train, a.tokens, a.top_k = 200, 4, 2
    from softprompt import api
    from softprompt.core import PromptArtifact
    from softprompt.library import Library
    from softprompt.transfer import (
        best_of_top_k,
        init_overrides,
        multitask_mixture,
        rank_by_zero_shot,
        rank_sources,
        weighted_average_init,
    )

    started = time.time()
    if a.ppt_probe:
        result = {"machine": machine(), "texts": [str(t) for t in a.ppt_text], "probe": lexical_probe(a.ppt_text)}
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(result, indent=1))
        print(json.dumps(result["probe"]))
        return
    base = api.load_model({"name": a.model, "device": "cpu"})
    files = prepare_data(a.work, a.n_dev) if not (a.reuse and (a.work / "data").exists()) else {
        name: {split: str(a.work / "data" / f"{name}.{split}.jsonl") for split in ("train", "dev")} for name in TASKS}
    if a.ppt:
        return run_ppt(a, base, files, started)
    sources = a.sources.split(",")
    lib = Library(a.work / "library")
    quiet = {"progress": False, "log": lambda _: None}
    result = {"machine": machine(), "args": {k: str(v) for k, v in vars(a).items()}, "sources": {}}
    paths = {}
    for name in sources:  # 2. source prompts
        result["sources"][name] = source_prompt(a, base, files, name, lib, quiet)
        paths[name] = Path(result["sources"][name]["artifact"])
        print(f"source {name}: dev accuracy {result['sources'][name]['dev_accuracy']:.4f} "
              f"({result['sources'][name]['train_seconds']:.0f} s)", flush=True)
    if not (a.rankings_only or a.skip_matrix):
        result["transfer_matrix"] = transfer_matrix(a, base, files, sources, paths)  # 3.
    if a.matrix_only:
        previous = json.loads(a.out.read_text()) if a.out.exists() else result
        previous["transfer_matrix"] = result["transfer_matrix"]
        a.out.write_text(json.dumps(previous, indent=1))
        print(f"updated the transfer matrix in {a.out}")
        return
    # 4. retrieval rankings and 5. few-shot targets
    result["rankings"], result["few_shot"] = {}, {}
    for target in a.targets.split(","):
        others = {s: paths[s] for s in sources if s != target}
        tc = config(target, files, a, out=a.work / "probe" / target, steps=a.probe_steps, k_shot=int(a.shots.split(",")[-1]))
        by_zero = rank_by_zero_shot(others, tc, base=base)
        by_spot = rank_sources(tc, others, by="spot", base=base, steps=a.probe_steps, output=a.work / "embed" / target)
        result["rankings"][target] = {"zero_shot": [(r.name, round(r.score, 4)) for r in by_zero],
                                      "spot": [(r.name, round(r.score, 4)) for r in by_spot]}
        print(f"{target}: zero-shot ranking {result['rankings'][target]['zero_shot']}", flush=True)
        print(f"{target}: spot ranking {result['rankings'][target]['spot']}", flush=True)
        if a.rankings_only:
            continue
        top = by_spot[: a.top_k]
        mix = a.work / "mixture" / target / "prompt.safetensors"
        if not (a.reuse and mix.exists() and PromptArtifact.load(mix).meta.get("transfer", {}).get("sources")
                == [r.name for r in top]):  # the same top-k sources were mixed before: keep that prompt
            mix = multitask_mixture([config(r.name, files, a, out=a.work / "unused", steps=1) for r in top],
                                    steps=a.source_steps, base=base, output=a.work / "mixture" / target,
                                    num_virtual_tokens=a.tokens, batch_size=a.batch, lr=a.lr, log=lambda _: None)
        for shots in map(int, a.shots.split(",")):
            rows = {}
            for seed in map(int, a.seeds.split(",")):
                tc_seed = config(target, files, a, out=a.work / "unused", steps=a.probe_steps, k_shot=shots, seed=seed)
                best = best_of_top_k(tc_seed, [r.path for r in top], steps=a.probe_steps, base=base,
                                     output=a.work / "best" / f"{target}-{shots}-{seed}", log=lambda _: None)
                inits = {"random": ["method.init=random"], "vocab": ["method.init=vocab"],
                         "spot_best_of_k": best.overrides,
                         "spot_average": weighted_average_init([(r.path, r.score) for r in top]),
                         "spot_mixture": init_overrides([mix])}
                for kind, overrides in inits.items():
                    few_shot_run(a, base, files, rows, "few", target, shots, seed, kind, overrides)
            result["few_shot"][f"{target}-{shots}"] = summary(rows)
    if a.rankings_only:
        previous = json.loads(a.out.read_text()) if a.out.exists() else {}
        previous.setdefault("rankings", {}).update(result["rankings"])
        a.out.write_text(json.dumps(previous, indent=1))
        print(f"updated the rankings in {a.out}")
        return
    result["wall_seconds"] = round(time.time() - started)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1))
    for key, kinds in result["few_shot"].items():
        print(key + ": " + ", ".join(f"{k} {v['mean']:.4f}+-{v['std']:.4f}" for k, v in kinds.items()))
    print(f"wrote {a.out} in {result['wall_seconds']} s")


def single_sentences(files, targets) -> list[str]:
    """Unlabelled single sentences for the single-sentence format: E2E references and the given
    targets' training texts (labels dropped; dev rows are in other files and never used)."""
    import csv

    texts = []
    for name in targets:
        texts += [json.loads(line)["text"] for line in Path(files[name]["train"]).read_text().splitlines()]
    with (SHARED / "e2e" / "devset.csv").open(encoding="utf-8") as h:
        texts += [row["ref"] for row in csv.DictReader(h)]
    return texts


def lexical_probe(texts, n: int = 12000, n_dev: int = 2000, seed: int = 0) -> dict:
    """How far surface cues separate the pair task's 3 classes: logistic regression on overlap features
    (tf-idf cosine, word and capitalised-word overlap, a pronoun/connective opening sentence 2, lengths),
    no language model. Accuracy on the 3 classes and on each pair of classes, on held-out pairs."""
    import re

    import numpy as np
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    from softprompt.transfer.ppt import read_corpus, sentence_pair_examples

    examples = sentence_pair_examples(read_corpus(texts), n, seed)
    train, dev = examples[n_dev:], examples[:n_dev]
    tfidf = TfidfVectorizer().fit([t for e in train for t in (e.text, e.text_b)])
    opener = {"he", "she", "it", "they", "the", "but", "this", "that", "his", "her", "their", "its", "however", "also"}

    def features(e):
        cos = float((tfidf.transform([e.text]) @ tfidf.transform([e.text_b]).T).toarray()[0, 0])
        wa, wb = (set(re.findall(r"\w+", t.lower())) for t in (e.text, e.text_b))
        ca, cb = (set(re.findall(r"\b[A-Z]\w+", t)) for t in (e.text, e.text_b))
        first = (e.text_b.split() or [""])[0].lower()
        return [cos, len(wa & wb) / max(1, len(wa | wb)), len(ca & cb), float(first in opener),
                float(e.text.rstrip().endswith(":")), np.log1p(len(e.text)), np.log1p(len(e.text_b))]

    x, xd = np.array([features(e) for e in train]), np.array([features(e) for e in dev])
    y, yd = np.array([e.label for e in train]), np.array([e.label for e in dev])
    out = {"pairs": len(examples), "dev": n_dev,
           "three_classes": round(float((LogisticRegression(max_iter=2000).fit(x, y).predict(xd) == yd).mean()), 4)}
    for one, other in (("next", "same_document"), ("next", "random"), ("same_document", "random")):
        m, md = np.isin(y, [one, other]), np.isin(yd, [one, other])
        fit = LogisticRegression(max_iter=2000).fit(x[m], y[m])
        out[f"{one}_vs_{other}"] = round(float((fit.predict(xd[md]) == yd[md]).mean()), 4)
    return out


def run_ppt(a, base, files, started):
    """PPT: pre-train once on running text, then few-shot targets from vocab init and from the PPT prompt."""
    from softprompt.transfer import init_overrides, pretrain_prompt, read_corpus, single_task, unified_task

    t0 = time.time()
    folder = a.work / ("ppt" if a.ppt_format == "unified" else f"ppt-{a.ppt_format}")
    ppt = folder / "prompt.safetensors"
    if not (a.reuse and (folder / "metrics.json").exists()):
        sentences = None
        if a.ppt_format == "single":
            corpus = read_corpus(a.ppt_text)
            targets = a.ppt_targets.split(",") if a.ppt_pool == "targets" else []
            sentences = [t for d in corpus.documents for t in d] + single_sentences(files, targets)
        ppt = pretrain_prompt({"name": a.model, "device": "cpu"}, a.ppt_text, folder, steps=a.ppt_steps,
                              n_examples=a.ppt_examples, num_virtual_tokens=a.tokens, lr=a.ppt_lr or a.lr,
                              batch_size=a.ppt_batch or a.batch, format=a.ppt_format, sentences=sentences,
                              max_length=160, base=base, log=lambda line: print(line, flush=True),
                              overrides=[f"data.max_dev={a.ppt_dev}",
                                         f"training.eval_every={max(1, a.ppt_steps // a.ppt_evals)}"])
    from softprompt.core import PromptArtifact

    meta = PromptArtifact.load(ppt).meta
    history = json.loads((folder / "history.json").read_text()) if (folder / "history.json").exists() else []
    result = {"machine": machine(), "args": {k: str(v) for k, v in vars(a).items()},
              "ppt": {"artifact": str(ppt), "format": a.ppt_format, "dev": meta.get("metrics", {}).get("dev"),
                      "history": history, "seconds": round(time.time() - t0)}, "few_shot": {}}
    print(f"ppt prompt ({a.ppt_format}): dev {meta.get('metrics', {}).get('dev')} ({result['ppt']['seconds']} s) -> {ppt}",
          flush=True)
    if a.ppt_only:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(result, indent=1))
        return
    for target in a.ppt_targets.split(","):
        unified = {**unified_task(TASKS[target]["words"], QUESTIONS[target], max_length=160)}
        single = single_task(TASKS[target]["words"], max_length=160)
        for shots in map(int, a.shots.split(",")):
            rows = {}
            for seed in map(int, a.seeds.split(",")):
                inits = {"vanilla": ([], None), "ppt": (init_overrides([ppt]), None),
                         "vanilla_unified": ([], unified), "ppt_unified": (init_overrides([ppt]), unified),
                         "vanilla_single": ([], single), "ppt_single": (init_overrides([ppt]), single)}
                for kind in a.ppt_kinds.split(","):
                    overrides, task = inits[kind]
                    few_shot_run(a, base, files, rows, "ppt-few", target, shots, seed, kind, overrides, task)
            result["few_shot"][f"{target}-{shots}"] = summary(rows)
    average = {}
    for shots in a.shots.split(","):
        cells = [v for k, v in result["few_shot"].items() if k.endswith(f"-{shots}")]
        average[shots] = {kind: round(statistics.mean(c[kind]["mean"] for c in cells), 4) for kind in cells[0]}
    result["average_over_targets"] = average
    result["wall_seconds"] = round(time.time() - started)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1))
    for shots, kinds in average.items():
        print(f"{shots}-shot average over {a.ppt_targets}: " + ", ".join(f"{k} {v:.4f}" for k, v in kinds.items()))
    print(f"wrote {a.out} in {result['wall_seconds']} s")


if __name__ == "__main__":
    main()
