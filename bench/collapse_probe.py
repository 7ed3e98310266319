"""Which quantity goes wrong first when prompt tuning collapses on SST-5? (issue 24, item 1)

Trains the issue's config (smollm2-135m, SST-5, prompt tuning from the text init, 64 steps of 16,
the library's default lr and warmup) and records, after every optimizer step:

- the training batch's loss and the gradient norm before clipping (training.max_grad_norm),
- the prompt's mean token norm against the vocabulary's mean embedding norm, and the relative update
  ||p_t - p_(t-1)|| / ||p_(t-1)|| of the step,
- every --probe-every steps (and at step 0), on the first --probe-n dev sentences: accuracy, the
  mean logit of each label word, the mean class probabilities and the histogram of predicted classes.

The probes score under no_grad with the base in eval mode and draw no random numbers, so the
trajectory (and the prompt the run keeps) is the one `softprompt train` gives with the same config
and thread count.

    OMP_NUM_THREADS=1 python bench/collapse_probe.py --seed 0 --threads 1 --out bench/results/collapse_sst5_seed0.json
    python bench/collapse_probe.py --seed 0 --set training.lr=0.01 --out ...   # any override
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, machine  # noqa: E402

SC = SHARED / "sentence-classification"
WORDS = {"0": "terrible", "1": "bad", "2": "okay", "3": "good", "4": "great"}


def run_config(a) -> dict:
    """The issue's config, at this seed; --set overrides it like `softprompt train` key=value."""
    return {
        "name": f"sst5-{a.seed}",
        "model": {"name": "smollm2-135m", "device": "cpu"},
        "task": {"kind": "classification", "template": "Review: {text}\nSentiment: {mask}", "verbalizer": WORDS,
                 "max_length": 84},
        "method": {"name": "prompt_tuning", "num_virtual_tokens": 20, "init": "text",
                   "init_text": "Rate the sentiment of the review from terrible to great."},
        "data": {"train": str(SC / "stsa.fine.train"), "dev": str(SC / "stsa.fine.dev"),
                 "test": str(SC / "stsa.fine.test") if a.test else None, "format": "label-first"},
        "training": {"steps": 64, "batch_size": 16, "eval_every": 32, "seed": a.seed, "log_every": 1},
        "output": str(a.work / f"sst5-{a.seed}-{a.threads}t-{a.tag}"),
    }


class Probe:
    """Per-step measurements of one prompt in training (see the module docstring)."""

    def __init__(self, pm, unit, dev_items, labels, every: int):
        import torch

        self.pm, self.unit, self.dev_items, self.labels, self.every = pm, unit, dev_items, labels, every
        vocab = pm.base.model.get_input_embeddings().weight.detach().float()
        self.vocab_norm = float(vocab.norm(dim=1).mean())
        self.vocab_rms = float(vocab.pow(2).mean().sqrt())  # per coordinate: what one Adam step of size lr meets
        self.prompt = unit.method.embedding
        self.previous = self.prompt.detach().clone()
        self.grad_norms: list[float] = []
        self.rows: list[dict] = []
        self.torch = torch

    def clip(self, clip_fn):
        """clip_grad_norm_ that also records the norm it was given (the loop calls it once a step)."""
        def recording(params, max_norm, *args, **kwargs):
            norm = clip_fn(params, max_norm, *args, **kwargs)
            self.grad_norms.append(float(norm))
            return norm
        return recording

    def dev(self) -> dict:
        from softprompt.tasks.runner import predict_logits

        torch = self.torch
        was = self.unit.training
        self.unit.eval()
        with torch.no_grad():
            logits = torch.stack(predict_logits(self.pm, {self.unit.key: self.unit}, self.dev_items, 32)).float()
        self.unit.train(was)
        gold = torch.tensor([self.labels.index(p.item.label) if isinstance(p.item.label, str) else p.item.label
                             for p in self.dev_items])
        predicted = logits.argmax(1)
        return {"dev_accuracy": round(float((predicted == gold).float().mean()), 4),
                "word_logit_mean": [round(float(x), 3) for x in logits.mean(0)],
                "word_logit_centred": [round(float(x), 3) for x in logits.mean(0) - logits.mean()],
                "mean_probs": [round(float(x), 3) for x in torch.softmax(logits, 1).mean(0)],
                "predicted_histogram": torch.bincount(predicted, minlength=len(self.labels)).tolist()}

    def at(self, step: int, loss: float | None) -> None:
        torch = self.torch
        now = self.prompt.detach()
        row = {"step": step, "loss": loss,
               "grad_norm_before_clip": self.grad_norms[-1] if step and self.grad_norms else None,
               "prompt_token_norm": round(float(now.norm(dim=1).mean()), 4),
               "prompt_over_vocab_norm": round(float(now.norm(dim=1).mean()) / self.vocab_norm, 3),
               "relative_update": round(float((now - self.previous).norm() / self.previous.norm()), 4) if step else None,
               "relative_to_start": round(float((now - self.rows[0]["_start"]).norm() / self.rows[0]["_start"].norm()), 4)
               if step else 0.0}
        if step == 0:
            row["_start"] = now.clone()
        self.previous = now.clone()
        if step % self.every == 0:
            row.update(self.dev())
        self.rows.append(row)


def run(a) -> dict:
    import torch

    torch.set_num_threads(a.threads)
    from softprompt.configs import load_run_config
    from softprompt.core import PromptedModel
    from softprompt.training import loop
    from softprompt.training.run import _set_up_task, evaluate_items, load_model, prepare, read_split

    config = load_run_config(run_config(a), a.set)
    t = config.training
    base = load_model(config.model)
    task_run = _set_up_task(config.name, "task", config.task, config.method, config.data, t, base)
    t.lr = task_run.lr
    pm = PromptedModel(base)
    labels = task_run.unit.task.labels
    probe = Probe(pm, task_run.unit, task_run.dev_items[: a.probe_n], labels, a.probe_every)
    losses: dict[int, float] = {}
    fit_history: list = []

    def on_step(step: int) -> None:
        history = fit_history[0] if fit_history else []
        losses.update({h["step"]: h["loss"] for h in history if "loss" in h})
        probe.at(step, losses.get(step))

    clip = torch.nn.utils.clip_grad_norm_
    torch.nn.utils.clip_grad_norm_ = probe.clip(clip)
    plain_fit_init = loop._Fit.__init__

    def keep_history(self, *args, **kwargs):  # the loop's own history list, read as it grows
        plain_fit_init(self, *args, **kwargs)
        fit_history.append(self.history)

    loop._Fit.__init__ = keep_history
    started = time.time()
    probe.at(0, None)
    try:
        result = loop.fit(pm, task_run.unit, task_run.train_items, t, Path(config.output),
                          evaluate=lambda: evaluate_items(pm, task_run.unit, task_run.dev_items, task_run.dev_examples,
                                                          t.eval_batch_size, t.padding_side),
                          progress=False, on_step=on_step, log=print)
    finally:
        torch.nn.utils.clip_grad_norm_ = clip
        loop._Fit.__init__ = plain_fit_init
    for row in probe.rows:
        row.pop("_start", None)
    evaluations = [h for h in result.history if "accuracy" in h]
    out = {
        "command": "OMP_NUM_THREADS={} python {}".format(os.environ.get("OMP_NUM_THREADS", ""), " ".join(sys.argv)),
        "config": run_config(a), "overrides": a.set, "lr": t.lr, "warmup_steps": t.warmup_steps,
        "threads": a.threads, "seed": a.seed, "tag": a.tag,
        "vocab_mean_token_norm": round(probe.vocab_norm, 4), "vocab_rms_per_coordinate": round(probe.vocab_rms, 5),
        "evaluations": [{"step": h["step"], "accuracy": h["accuracy"], "macro_f1": h.get("macro_f1")}
                        for h in evaluations],
        "best_step": result.best_step, "kept_start": result.kept_start,
        "probe_dev_rows": len(probe.dev_items), "steps": probe.rows,
        "wall_seconds": round(time.time() - started), "machine": machine(),
    }
    if config.data.test:
        from softprompt.tasks.runner import TaskPrompt

        unit = task_run.unit
        unit.method.embedding.data.copy_(result.best_tensors["prompt.input"])
        test_examples = read_split(config.data.test, config.data, kind="classification")
        test = evaluate_items(pm, TaskPrompt(unit.key, unit.method, unit.task), prepare(unit.task, unit.key, test_examples),
                              test_examples, t.eval_batch_size, t.padding_side)
        out["test_accuracy"] = test["accuracy"]
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    p.add_argument("--tag", default="default")
    p.add_argument("--set", action="append", default=[], help="key=value override on the config")
    p.add_argument("--probe-every", type=int, default=2, help="score the probe dev rows every N steps")
    p.add_argument("--probe-n", type=int, default=300, help="dev sentences per probe")
    p.add_argument("--test", action="store_true", help="also score the kept prompt on stsa.fine.test")
    p.add_argument("--work", type=Path, default=Path("runs/collapse"))
    p.add_argument("--out", type=Path, default=Path("bench/results/collapse_sst5_seed0.json"))
    a = p.parse_args()
    out = run(a)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=1))
    for row in out["steps"]:
        if "dev_accuracy" in row:
            print(f"step {row['step']:3d} loss {row['loss'] or 0:.3f} |g| {row['grad_norm_before_clip'] or 0:.2f} "
                  f"|p|/|v| {row['prompt_over_vocab_norm']:.2f} du {row['relative_update'] or 0:.3f} "
                  f"acc {row['dev_accuracy']:.3f} hist {row['predicted_histogram']} logits {row['word_logit_centred']}")
    print(f"evaluations {out['evaluations']} kept_start {out['kept_start']} ({out['wall_seconds']} s)")


if __name__ == "__main__":
    main()
