"""The training loop: AdamW, warmup, clipping, periodic evaluation keeping the best prompt, early
stopping, exact resume from checkpoints, TensorBoard logs and a PNG of the curves."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from ..configs import Sampling, TrainingConfig
from ..core import PromptArtifact, PromptedModel
from ..errors import ConfigError
from ..tasks.runner import Prepared, TaskPrompt, class_logits, export_unit
from .state import checkpoint_dir, latest_checkpoint, load_training_state, prune_checkpoints, save_training_state


@dataclass
class FitResult:
    """What a training run produced."""

    best_tensors: dict[str, torch.Tensor]
    best_metric: float | None
    best_step: int
    steps_done: int
    history: list[dict] = field(default_factory=list)
    train_seconds: float = 0.0
    samples_per_second: float = 0.0
    stopped_early: bool = False
    kept_start: bool = False  # no evaluation after step 0 beat the starting prompt, so it was kept


def batch_order(n_items: int, batch_size: int, step: int, seed: int, lengths: Sequence[int] | None = None,
                group: int = 50) -> list[int]:
    """The item indices of a step's batch, a function of (seed, step) alone, so a resumed run sees
    exactly the batches the uninterrupted run would have.

    Each epoch is a seeded permutation. With lengths, every window of `group` batches is sorted by
    length before it is cut into batches and the batches are shuffled again: rows of similar length
    share a batch, so padding (and its compute and memory) mostly disappears.
    """
    per_epoch = max(1, n_items // batch_size)
    epoch, index = divmod(step, per_epoch)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n_items, generator=generator).tolist()
    if n_items < batch_size:
        return perm
    perm = perm[: per_epoch * batch_size]
    if lengths is not None and group > 1:
        window = batch_size * group
        grouped = []
        for start in range(0, len(perm), window):
            grouped.extend(sorted(perm[start : start + window], key=lambda i: lengths[i]))
        batches = [grouped[b * batch_size : (b + 1) * batch_size] for b in range(per_epoch)]
        shuffle = torch.randperm(per_epoch, generator=generator).tolist()
        return batches[shuffle[index]]
    return perm[index * batch_size : (index + 1) * batch_size]


def balanced_batch_order(labels: Sequence[int], batch_size: int, step: int, seed: int) -> list[int]:
    """The item indices of a step's batch when every class is drawn equally often; like batch_order a
    function of (seed, step) alone, so a resumed run sees the same batches.

    Laid end to end, the batches of all steps cycle through the classes, each cycle in a seeded
    order; a class's k-th turn takes the next item of its own seeded permutations (a fresh one each
    time its items run out), so items of small classes repeat and those of large ones are sub-sampled.
    """
    by_class: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    classes = sorted(by_class)
    permutations: dict[tuple[int, int], list[int]] = {}

    def permutation(key: tuple[int, int], n: int) -> list[int]:  # key: (kind, number) seeds one permutation
        if key not in permutations:
            generator = torch.Generator().manual_seed((seed * 1_000_003 + key[1]) * 1_009 + key[0])
            permutations[key] = torch.randperm(n, generator=generator).tolist()
        return permutations[key]

    batch = []
    for position in range(step * batch_size, (step + 1) * batch_size):
        cycle, slot = divmod(position, len(classes))
        c = classes[permutation((0, cycle), len(classes))[slot]]
        members = by_class[c]
        epoch, k = divmod(cycle, len(members))
        batch.append(members[permutation((1 + c, epoch), len(members))[k]])
    return batch


def micro_batches(idx: Sequence[int], lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Split a batch into chunks of at most max_tokens padded tokens (rows sorted by length), so
    activation memory is bounded; the summed gradients equal the whole batch's."""
    order = sorted(idx, key=lambda i: lengths[i])
    chunks: list[list[int]] = [[]]
    for i in order:
        width = lengths[i]  # the longest so far, since rows are sorted
        if chunks[-1] and (len(chunks[-1]) + 1) * width > max_tokens:
            chunks.append([])
        chunks[-1].append(i)
    return chunks


def _optimizer(unit: TaskPrompt, config: TrainingConfig) -> torch.optim.Optimizer:
    prompt_params = [p for p in unit.method.parameters() if p.requires_grad] if unit.method is not None else []
    head_params = [p for p in unit.task.parameters() if p.requires_grad]
    groups = []
    if prompt_params:
        groups.append({"params": prompt_params, "lr": config.lr, "weight_decay": config.weight_decay})
    if head_params:
        groups.append({"params": head_params, "lr": config.head_lr, "weight_decay": config.weight_decay})
    if not groups:
        raise ValueError("nothing to train: the prompt and the task have no trainable parameters")
    return torch.optim.AdamW(groups)


def _plot(history: list[dict], path: Path, metric: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    losses = [(h["step"], h["loss"]) for h in history if "loss" in h]
    evals = [(h["step"], h[metric]) for h in history if metric in h]
    fig, ax = plt.subplots(figsize=(7, 4))
    if losses:
        ax.plot(*zip(*losses), color="tab:blue", label="train loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss", color="tab:blue")
    if evals:
        ax2 = ax.twinx()
        ax2.plot(*zip(*evals), color="tab:orange", marker="o", label=f"dev {metric}")
        ax2.set_ylabel(f"dev {metric}", color="tab:orange")
    ax.set_title(path.parent.name)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def set_checkpointing(model: torch.nn.Module, enable: bool) -> None:
    """Recompute each layer's activations in the backward pass instead of storing them.

    transformers checkpoints a layer only when that layer module is in training mode, and training
    mode on the whole model would switch its dropout on. So the model stays in eval mode and only
    the modules that carry the checkpointing flag (the layers, not their dropout or attention
    children) are marked as training: a frozen base computes exactly what it computes without it.
    """
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ConfigError(f"training.gradient_checkpointing: {type(model).__name__} does not support it")
    if enable:
        kwargs = {"use_reentrant": False}  # reentrant checkpoints would drop gradients of prefixes held outside
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    else:
        (getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable)()
    model.eval()
    for module in model.modules():
        if getattr(module, "gradient_checkpointing", False) is True:
            module.training = enable


def fit(
    pm: PromptedModel,
    unit: TaskPrompt,
    train_items: Sequence[Prepared],
    config: TrainingConfig,
    run_dir: Path,
    *,
    evaluate: Callable[[], dict] | None = None,
    resume: bool = False,
    progress: bool = True,
    on_step: Callable[[int], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> FitResult:
    """Train unit's prompt (and head) on train_items; evaluate() returns dev metrics for keeping the best."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    unit.to(pm.base.device)
    optimizer = _optimizer(unit, config)
    scheduler = get_linear_schedule_with_warmup(optimizer, config.warmup_steps, config.steps)
    metric = config.metric if config.metric != "auto" else unit.task.metric_names[0]
    if metric not in unit.task.metric_names:
        raise ConfigError(f"training.metric={metric!r} is not one of this task's: {', '.join(unit.task.metric_names)}")
    history: list[dict] = []
    best = {"metric": None, "step": 0, "bad_evals": 0}
    best_path = run_dir / "best.safetensors"
    step = 0
    running: list[float] = []  # losses since the last log line
    if resume:
        found = latest_checkpoint(run_dir)
        if found is not None:
            step, extra = load_training_state(found, modules={"unit": unit}, optimizer=optimizer, scheduler=scheduler)
            history, best = extra["history"], extra["best"]
            running = list(extra.get("running", []))
    if step == 0:
        torch.manual_seed(config.seed)  # dropout; a resumed run restores the RNG state instead
    checkpoint_every = config.checkpoint_every or config.eval_every
    best_tensors = PromptArtifact.load(best_path).tensors if (resume and best_path.exists()) else export_unit(unit)
    writer = _tensorboard(run_dir)
    task = unit.task
    lengths = [sum(len(r) for r in p.item.rows) for p in train_items]
    balanced = config.sampling is Sampling.BALANCED
    if balanced:
        labels = [getattr(p.item, "label", None) for p in train_items]
        if any(not isinstance(label, int) for label in labels):
            raise ConfigError("training.sampling='balanced' needs one class label per training example "
                              "(classification); use sampling='shuffle' for this task")
    started = time.perf_counter()
    seen = 0
    eval_seconds = 0.0  # excluded from training time and speed
    stopped_early = False
    bar = tqdm(total=config.steps, initial=step, disable=not progress, desc="train", unit="step", dynamic_ncols=True)
    say = bar.write if progress else (log or (lambda message: None))  # lines that must not break the bar
    unit.train()
    if config.gradient_checkpointing:
        set_checkpointing(pm.model, True)
    if config.model_dropout:
        pm.model.train()  # its dropout layers; evaluation switches them off again

    def run_evaluation() -> None:
        """Score the prompt as it is now on dev, log it, and keep it when it beats every earlier score."""
        nonlocal best_tensors, eval_seconds
        unit.eval()
        if config.model_dropout:
            pm.model.eval()  # no dropout, and no checkpointing either (no gradients here)
        eval_started = time.perf_counter()
        scores = evaluate()
        eval_seconds += time.perf_counter() - eval_started
        unit.train()
        if config.model_dropout:
            pm.model.train()
        history.append({"step": step, **{k: v for k, v in scores.items() if isinstance(v, (int, float))}})
        if writer:
            for k, v in scores.items():
                if isinstance(v, (int, float)):
                    writer.add_scalar(f"dev/{k}", v, step)
        value = scores[metric]
        # Strictly better only: on a tie the earlier prompt stays (the start, when nothing beat it).
        if best["metric"] is None or value > best["metric"]:
            best.update(metric=value, step=step, bad_evals=0)
            best_tensors = export_unit(unit)
            PromptArtifact(best_tensors, {"method": "checkpoint-best", "step": step}).save(best_path)
        else:
            best["bad_evals"] += 1
        say(f"step {step}: dev {metric} {value:.4f} (best {best['metric']:.4f} at step {best['step']})")

    try:
        if evaluate is not None and step == 0 and config.eval_start:
            # The starting prompt is a candidate like any other: a run that only makes it worse
            # (a learning rate past the edge of stability) gives it back instead of the damage.
            run_evaluation()
        while step < config.steps:
            if balanced:
                idx = balanced_batch_order(labels, config.batch_size, step, config.seed)
            else:
                idx = batch_order(len(train_items), config.batch_size, step, config.seed,
                                  lengths if config.group_by_length else None)
            optimizer.zero_grad(set_to_none=True)
            loss_value = 0.0
            total = max(1, task.loss_count([train_items[i].item for i in idx]))
            for chunk in micro_batches(idx, lengths, config.micro_batch_tokens):
                items = [train_items[i] for i in chunk]
                outputs = class_logits(pm, {unit.key: unit}, items, config.padding_side)
                # summed per micro-batch, divided by the whole batch's count: the gradients add up exactly
                loss = task.loss_sum(outputs, [p.item for p in items]) / total
                loss.backward()
                loss_value += loss.item()
            params = [p for g in optimizer.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            step += 1
            seen += len(idx)
            running.append(loss_value)
            if not math.isfinite(running[-1]):
                raise FloatingPointError(f"loss became {running[-1]} at step {step}; lower training.lr")
            elapsed = time.perf_counter() - started - eval_seconds
            bar.update(1)
            bar.set_postfix(loss=f"{sum(running[-20:]) / len(running[-20:]):.4f}", samples_s=f"{seen / elapsed:.1f}")
            if step % config.log_every == 0 or step == config.steps:
                mean_loss = sum(running) / len(running)
                history.append({"step": step, "loss": mean_loss, "lr": scheduler.get_last_lr()[0]})
                if writer:
                    writer.add_scalar("train/loss", mean_loss, step)
                    writer.add_scalar("train/lr", scheduler.get_last_lr()[0], step)
                running = []
            if evaluate is not None and (step % config.eval_every == 0 or step == config.steps):
                run_evaluation()
                if config.patience is not None and best["bad_evals"] >= config.patience:
                    stopped_early = True
            if step % checkpoint_every == 0 or step == config.steps or stopped_early:
                _checkpoint(run_dir, unit, optimizer, scheduler, step, history, best, running, config.keep_checkpoints)
            if on_step is not None:
                on_step(step)
            if stopped_early:
                say(f"early stop: no improvement in {config.patience} evaluations")
                break
    except KeyboardInterrupt:
        # The state after the last finished step is consistent: keep it so `--resume` continues.
        _checkpoint(run_dir, unit, optimizer, scheduler, step, history, best, running, config.keep_checkpoints)
        bar.close()
        raise
    finally:
        bar.close()
        if config.gradient_checkpointing:
            set_checkpointing(pm.model, False)
        pm.model.eval()  # as loaded: evaluation and serving never see the base's dropout
        if writer:
            writer.close()
    elapsed = time.perf_counter() - started - eval_seconds
    if evaluate is None:
        best_tensors = export_unit(unit)
    kept_start = evaluate is not None and step > 0 and best["step"] == 0
    if kept_start:
        say(f"no evaluation beat the starting prompt (dev {metric} {best['metric']:.4f} at step 0): keeping it")
    (run_dir / "history.json").write_text(json.dumps(history, indent=1))
    try:
        _plot(history, run_dir / "training.png", metric)
    except Exception as exc:  # a plot must never lose a trained prompt
        print(f"warning: could not draw training.png ({exc})")
    return FitResult(
        best_tensors=best_tensors,
        best_metric=best["metric"],
        best_step=best["step"] if evaluate is not None else step,
        steps_done=step,
        history=history,
        train_seconds=elapsed,
        samples_per_second=seen / elapsed if elapsed > 0 else 0.0,
        stopped_early=stopped_early,
        kept_start=kept_start,
    )


def _checkpoint(run_dir, unit, optimizer, scheduler, step, history, best, running, keep):
    save_training_state(
        checkpoint_dir(run_dir, step),
        modules={"unit": unit},
        optimizer=optimizer,
        scheduler=scheduler,
        step=step,
        extra={"history": history, "best": best, "running": running},
    )
    prune_checkpoints(run_dir, keep)


def _tensorboard(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard is optional at run time; logs go to history.json regardless
        return None
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"))
