"""How good, and how input-sensitive, is each way of starting a prompt before any training? (issue 16)

For each task of bench/multiclass_defaults.py and each prompt-tuning initialisation (the method's
default `labels`, `vocab`, `random`, and the hard prompt: template and words alone), the dev scores
at step 0: accuracy, macro-F1, the largest share of one predicted class, and the input sensitivity
(mean total-variation distance between an input's class distribution and the mean over the dev set;
0 means the prompt answers the same whatever the input).

    OMP_NUM_THREADS=1 python bench/start_prompts.py --tasks trec,rating,food,sst2 --out bench/results/start_prompts.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))
import multiclass_defaults as mc  # noqa: E402
from common import machine  # noqa: E402


def spread(outputs) -> dict:
    """The largest predicted-class share and the input sensitivity of class scores (one row per input)."""
    import torch

    probs = torch.softmax(torch.stack(outputs).float(), dim=1)
    shares = torch.bincount(probs.argmax(1), minlength=probs.shape[1]).float() / len(probs)
    return {"pred_max_share": round(float(shares.max()), 4),
            "input_sensitivity": round(float(0.5 * (probs - probs.mean(0)).abs().sum(1).mean()), 4),
            "mean_probs": [round(float(x), 4) for x in probs.mean(0)]}


def gradient_split(pm, unit, items) -> dict:
    """How much of the first update is the label prior: the batch gradient of the cross-entropy
    split into the part from the batch-mean error (mean predicted distribution minus the label
    frequencies: a shift of every input's scores alike) and the rest (input-dependent).

    Adam's first step is lr * sign(gradient) per coordinate, so the share of coordinates whose
    sign the prior part decides is what matters for where the first steps go."""
    import torch

    from softprompt.tasks.runner import class_logits

    unit.train()
    logits = torch.stack(class_logits(pm, {unit.key: unit}, items)).float()
    target = torch.tensor([p.item.label for p in items])
    error = torch.softmax(logits, 1) - torch.nn.functional.one_hot(target, logits.shape[1]).float()
    prior = error.mean(0, keepdim=True).detach()
    params = [p for p in unit.parameters() if p.requires_grad]
    grads = []
    for weights in (error.detach(), prior.expand_as(error), (error - prior).detach()):
        (g,) = torch.autograd.grad((weights * logits).sum() / len(items), params, retain_graph=True)
        grads.append(g.flatten())
    full, from_prior, from_input = grads
    unit.eval()
    return {"grad_norm_prior": round(float(from_prior.norm()), 5), "grad_norm_input": round(float(from_input.norm()), 5),
            "sign_agreement_full_prior": round(float((full.sign() == from_prior.sign()).float().mean()), 4),
            "sign_agreement_full_input": round(float((full.sign() == from_input.sign()).float().mean()), 4),
            "prior_gap_tv": round(float(0.5 * prior.abs().sum()), 4)}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", default="trec,rating,food")
    p.add_argument("--inits", default="hard,labels,vocab,random")
    p.add_argument("--n-dev", type=int, default=400)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", type=Path, default=Path("runs/multiclass"))
    p.add_argument("--out", type=Path, default=Path("bench/results/start_prompts.json"))
    p.add_argument("--gradients", type=int, default=0,
                   help="also split the first gradient on this many training examples (see gradient_split)")
    a = p.parse_args()
    import torch

    from softprompt import api
    from softprompt.core import PromptedModel
    from softprompt.methods import get_method
    from softprompt.tasks.readers import read_examples, split_examples
    from softprompt.tasks.runner import Prepared, TaskPrompt, predict_logits
    from softprompt.training.run import build_task, method_config

    base = api.load_model({"name": "smollm2-135m", "device": "cpu"})
    pm = PromptedModel(base)
    rows = []
    for task_name in a.tasks.split(","):
        ns = SimpleNamespace(task=task_name, seed=a.seed, threads=1, tag="start", work=a.work, hard_prompt=False,
                             default_config=True)
        config = mc.run_config(ns)
        data = config["data"]
        dev = read_examples(data["dev"], format=mc.file_format(config))
        dev = dev[: a.n_dev] if len(dev) <= a.n_dev else split_examples(dev, a.n_dev / len(dev), a.seed)[1]
        for init in a.inits.split(","):
            started = time.time()
            section = {"name": "hard_prompt"} if init == "hard" else {"name": "prompt_tuning", "init": init,
                                                                       "seed": a.seed}
            cls, m_config = method_config(section)
            task = build_task(config["task"], base, config["task"]["labels"], getattr(m_config, "num_virtual_tokens", 0))
            method = get_method(cls.name).initialise(m_config, base, label_words=task.label_words)
            unit = TaskPrompt("start", method, task)
            unit.eval()
            items = [Prepared(unit.key, task.prepare(e)) for e in dev]
            with torch.no_grad():
                outputs = predict_logits(pm, {unit.key: unit}, items, 32)
            metrics = task.metrics(outputs, [p.item for p in items], dev)
            row = {"task": task_name, "init": init, "n": len(dev), "accuracy": round(metrics["accuracy"], 4),
                   "macro_f1": round(metrics["macro_f1"], 4), **spread(outputs)}
            if a.gradients and init != "hard":
                train = read_examples(data["train"], format=mc.file_format(config))
                batch = split_examples(train, a.gradients / len(train), a.seed)[1]
                row.update(gradient_split(pm, unit, [Prepared(unit.key, task.prepare(e)) for e in batch]))
            row["seconds"] = round(time.time() - started, 1)
            rows.append(row)
            print(json.dumps(row), flush=True)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"machine": machine(), "seed": a.seed, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
