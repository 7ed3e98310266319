"""Cross-model prompt transfer (TPT, issue 5 item 7): minilm-l6 prompts projected onto smollm2-135m.

1. prompt-tuning prompts for the projector's tasks (default SST-2, SUBJ, TREC) on both models, and
   for the held-out task (default MR) on minilm-l6 (the prompt to project) and on smollm2-135m (the
   reference: the target's own prompt)
2. three projectors minilm-l6 -> smollm2-135m: vocabulary anchors (no prompts), linear regression on
   the paired prompts, and that regression fine-tuned with smollm2's task loss on the projector's tasks
3. the held-out task's minilm prompt through each projector, on smollm2: zero-shot dev accuracy
   (smollm2's template and words) and k-shot training started from it, against vocab init

minilm-l6 is an encoder without a masked-LM head, so its prompts are trained with a linear head;
the head does not carry over (it read minilm's states) and smollm2 reads labels with words.

    OMP_NUM_THREADS=1 taskset -c 1 python bench/transfer_projector.py --out bench/results/transfer_projector.json
    python bench/transfer_projector.py --smoke   # tiny budgets: checks the pipeline end to end
    python bench/transfer_projector.py --anchors # seconds: how well the vocabulary map translates held-out words
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine
from transfer_experiment import TASKS, config, prepare_data


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source-model", default="minilm-l6")
    p.add_argument("--target-model", default="smollm2-135m")
    p.add_argument("--work", type=Path, default=Path("runs/transfer_projector"))
    p.add_argument("--out", type=Path, default=Path("bench/results/transfer_projector.json"))
    p.add_argument("--tasks", default="sst2,subj,trec", help="tasks the projector is fitted on")
    p.add_argument("--held-out", default="mr", help="task the projector never sees")
    p.add_argument("--shots", default="16,32")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--tokens", type=int, default=10)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=0.03)
    p.add_argument("--source-lr", type=float, default=0.01, help="minilm prompt lr (its head: 2e-3)")
    p.add_argument("--prompt-steps", type=int, default=150)
    p.add_argument("--target-steps", type=int, default=60)
    p.add_argument("--finetune-steps", type=int, default=100)
    p.add_argument("--finetune-lr", type=float, default=1e-4)
    p.add_argument("--n-dev", type=int, default=200)
    p.add_argument("--evals", type=int, default=2, help="dev evaluations per training run")
    p.add_argument("--max-train", type=int, default=None)
    p.add_argument("--target-prompts", type=Path, default=None,
                   help="folder with <task>/prompt.safetensors target-model prompts to reuse (e.g. "
                        "runs/transfer_experiment/sources) instead of training them here")
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--anchors", action="store_true", help="only check the vocabulary-anchored map on held-out words")
    a = p.parse_args()
    if a.anchors:
        return anchors(a)
    if a.smoke:
        a.prompt_steps, a.target_steps, a.finetune_steps, a.n_dev, a.seeds, a.shots = 3, 3, 2, 16, "0", "16"
        a.max_train, a.tokens, a.tasks = 100, 4, "sst2,trec"
    from softprompt import api
    from softprompt.core import PromptArtifact
    from softprompt.transfer import (
        finetune_projector,
        fit_from_artifacts,
        project,
        vocab_projector,
        zero_shot,
    )

    started = time.time()
    quiet = {"progress": False, "log": lambda _: None}
    src = api.load_model({"name": a.source_model, "device": "cpu"})
    tgt = api.load_model({"name": a.target_model, "device": "cpu"})
    files = prepare_data(a.work, a.n_dev)
    a.model = a.target_model  # config() reads a.model

    def target_config(name, out, steps, **kw):
        return config(name, files, a, out=out, steps=steps, **kw)

    def source_config(name, out, steps):
        c = config(name, files, a, out=out, steps=steps)
        c["model"] = {"name": a.source_model, "device": "cpu"}
        c["task"] = {"kind": "classification", "labels": list(TASKS[name]["words"]), "max_length": 160}
        c["training"]["lr"] = a.source_lr
        return c

    result = {"machine": machine(), "args": {k: str(v) for k, v in vars(a).items()}, "prompts": {}}
    prompts = {}
    for name in [*a.tasks.split(","), a.held_out]:  # 1. prompts on both models
        for side, base, make in (("source", src, source_config), ("target", tgt, target_config)):
            reused = a.target_prompts / name / "prompt.safetensors" if a.target_prompts and side == "target" else None
            if reused is not None and reused.exists():
                prompts[(side, name)] = reused
                # the held-out reference is scored on this script's dev rows; the others are only regressed on
                score = (zero_shot(reused, files[name]["dev"], base=tgt)["accuracy"] if name == a.held_out
                         else PromptArtifact.load(reused).meta["metrics"]["dev"]["accuracy"])
                result["prompts"][f"{side}:{name}"] = score
                print(f"{side} prompt {name}: reused {reused}, dev accuracy {score:.4f}", flush=True)
                continue
            run = api.train(make(name, a.work / side / name, a.prompt_steps), base=base, **quiet)
            prompts[(side, name)] = run.artifact
            result["prompts"][f"{side}:{name}"] = run.metrics["dev"]["accuracy"]
            print(f"{side} prompt {name}: dev accuracy {run.metrics['dev']['accuracy']:.4f} "
                  f"({run.train_seconds:.0f} s)", flush=True)
    fitted = a.tasks.split(",")
    projectors = {"vocab": vocab_projector(src, tgt)}  # 2. projectors
    projectors["regression"] = fit_from_artifacts([(prompts[("source", t)], prompts[("target", t)]) for t in fitted])
    tuned = fit_from_artifacts([(prompts[("source", t)], prompts[("target", t)]) for t in fitted])
    projectors["regression_finetuned"] = finetune_projector(
        tuned, [(prompts[("source", t)], target_config(t, a.work / "unused", 1)) for t in fitted], base=tgt,
        steps=a.finetune_steps, lr=a.finetune_lr, batch_size=a.batch, log=lambda s: print(s, flush=True))
    held = a.held_out
    held_config = target_config(held, a.work / "unused", 1)
    held_dev = files[held]["dev"]
    result["zero_shot"] = {"target_own_prompt": result["prompts"][f"target:{held}"]}
    moved_paths = {}
    for kind, projector in projectors.items():  # 3. zero-shot and as initialisation
        projector.save(a.work / "projectors" / f"{kind}.safetensors")
        moved = project(prompts[("source", held)], projector, tgt, task={**held_config["task"]})
        moved_paths[kind] = moved.save(a.work / "projected" / f"{held}-{kind}.safetensors")
        score = zero_shot(moved_paths[kind], held_dev, base=tgt)["accuracy"]
        result["zero_shot"][kind] = score
        print(f"zero-shot {held} on {a.target_model}, {kind} projection: {score:.4f}", flush=True)
    from softprompt.transfer import init_overrides

    result["few_shot"] = {}
    for shots in map(int, a.shots.split(",")):
        rows = {}
        for seed in map(int, a.seeds.split(",")):
            inits = {"vocab": [], **{f"projected_{k}": init_overrides([p]) for k, p in moved_paths.items()}}
            for kind, overrides in inits.items():
                c = target_config(held, a.work / "few" / f"{held}-{shots}-{seed}-{kind}", a.target_steps,
                                  k_shot=shots, seed=seed)
                r = api.train(c, overrides, base=tgt, **quiet)
                rows.setdefault(kind, []).append({"seed": seed, "accuracy": r.metrics["dev"]["accuracy"],
                                                  "history": r.history})
                print(f"{held} {shots}-shot seed {seed} {kind}: {r.metrics['dev']['accuracy']:.4f}", flush=True)
        result["few_shot"][f"{held}-{shots}"] = {
            kind: {"mean": statistics.mean(x["accuracy"] for x in v), "std": statistics.pstdev(x["accuracy"] for x in v),
                   "runs": v} for kind, v in rows.items()}
    result["wall_seconds"] = round(time.time() - started)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1))
    print("zero-shot: " + ", ".join(f"{k} {v:.4f}" for k, v in result["zero_shot"].items()))
    for key, kinds in result["few_shot"].items():
        print(key + ": " + ", ".join(f"{k} {v['mean']:.4f}+-{v['std']:.4f}" for k, v in kinds.items()))
    print(f"wrote {a.out} in {result['wall_seconds']} s")


def anchors(a):
    """Fit the vocabulary map on 90% of the shared words; on the other 10%, is the projected embedding's
    nearest target-word embedding (cosine, among all shared words) the same word?"""
    import random

    import torch

    from softprompt import api
    from softprompt.transfer.projector import ridge_solve, shared_words

    src = api.load_model({"name": a.source_model, "device": "cpu"})
    tgt = api.load_model({"name": a.target_model, "device": "cpu"})
    started = time.time()
    words, ids_a, ids_b = shared_words(src, tgt, max_words=None)
    order = list(range(len(words)))
    random.Random(0).shuffle(order)
    held, fit = order[: len(order) // 10], order[len(order) // 10:]
    with torch.no_grad():
        x = src.input_embeddings().weight[ids_a].float()
        y = tgt.input_embeddings().weight[ids_b].float()
    out = {"machine": machine(), "shared_words": len(words), "held_out": len(held)}
    for ridge in (1e-3, 1e-2, 1e-1):
        w, b = ridge_solve(x[fit], y[fit], ridge)
        guess = torch.nn.functional.normalize(x[held] @ w + b, dim=-1) @ torch.nn.functional.normalize(y, dim=-1).T
        top1 = (guess.argmax(-1) == torch.tensor(held)).float().mean().item()
        top10 = (guess.topk(10, -1).indices == torch.tensor(held)[:, None]).any(-1).float().mean().item()
        out[f"ridge={ridge}"] = {"top1": round(top1, 4), "top10": round(top10, 4)}
        print(f"ridge {ridge}: held-out word translation top-1 {top1:.4f}, top-10 {top10:.4f} "
              f"(chance {1 / len(words):.5f})", flush=True)
    out["seconds"] = round(time.time() - started, 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
