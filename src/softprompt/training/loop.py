"""The training loop, for one task or several in mixed batches: AdamW or Adafactor, warmup and a
linear, cosine or constant schedule, fp32/bf16/fp16 autocast, clipping, periodic evaluation keeping
each task's best prompt, early stopping, exact resume from checkpoints, data-parallel processes under
`accelerate launch`, TensorBoard logs and a PNG of the curves."""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch
from tqdm.auto import tqdm
from transformers import get_scheduler

from ..configs import Mixing, Optimizer, Precision, Sampling, Schedule, TrainingConfig
from ..core import PromptArtifact, PromptedModel
from ..errors import ConfigError
from ..tasks.runner import Prepared, TaskPrompt, class_logits, export_unit
from .distributed import processes
from .state import checkpoint_dir, latest_checkpoint, load_training_state, prune_checkpoints, save_training_state


@dataclass
class TaskBest:
    """One task's outcome in a run: its kept tensors, their dev score and step."""

    tensors: dict[str, torch.Tensor]
    metric: float | None
    step: int
    kept_start: bool = False


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
    per_task: dict[str, TaskBest] = field(default_factory=dict)  # every task's own (the fields above: the first's)


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


def step_chunks(procs, idx: Sequence[int], lengths: Sequence[int], max_tokens: int) -> list[tuple[list[int], float]]:
    """This process's micro-batches of a step's batch, each with its loss weight (1: counted).

    With a sharded base every block's pass is a collective, so every process must run as many passes
    as the busiest one: the others add passes over the batch's first item with weight 0 (their
    gradients are zeros, summed in exactly)."""
    chunks = [(c, 1.0) for c in micro_batches(procs.shard(idx), lengths, max_tokens) if c]
    if procs.sharding is not None:
        chunks += [([idx[0]], 0.0)] * (procs.max_int(len(chunks)) - len(chunks))
    return chunks


def mixture_batch_order(groups: Sequence[Sequence[int]], batch_size: int, step: int, seed: int,
                        temperature: float) -> list[int]:
    """The item indices of a step's batch drawn from several tasks: each slot picks task k with
    probability proportional to n_k ** (1 / temperature), then one of its items, both with a generator
    seeded by (seed, step) alone (draws with replacement), so a resumed run sees the same batches."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + step * 7_919 + 1)
    weights = torch.tensor([len(g) ** (1.0 / temperature) if len(g) else 0.0 for g in groups], dtype=torch.float64)
    which = torch.multinomial(weights, batch_size, replacement=True, generator=generator).tolist()
    picks = torch.rand(batch_size, generator=generator, dtype=torch.float64).tolist()
    return [groups[k][min(int(u * len(groups[k])), len(groups[k]) - 1)] for k, u in zip(which, picks)]


def build_optimizer(units: Mapping[str, TaskPrompt], config: TrainingConfig,
                    lrs: Mapping[str, float] | None = None) -> torch.optim.Optimizer:
    """AdamW or Adafactor over the trainable parameters of every unit, each once (units may share a
    prompt, as a SPoT mixture does): a unit's prompt at its own learning rate (lrs, default
    training.lr), heads at training.head_lr."""
    seen: set[int] = set()
    groups = []

    def fresh(params) -> list[torch.nn.Parameter]:
        out = [p for p in params if p.requires_grad and id(p) not in seen]
        seen.update(id(p) for p in out)
        return out

    for key, unit in units.items():
        prompt = fresh(unit.method.parameters()) if unit.method is not None else []
        if prompt:
            groups.append({"params": prompt, "lr": (lrs or {}).get(key, config.lr), "weight_decay": config.weight_decay,
                           "max_update": float(config.max_update)})
    for unit in units.values():
        head = fresh(unit.task.parameters())
        if head:
            groups.append({"params": head, "lr": config.head_lr, "weight_decay": config.weight_decay})
    if not groups:
        raise ValueError("nothing to train: the prompt and the task have no trainable parameters")
    if config.optimizer is Optimizer.ADAFACTOR:
        from transformers.optimization import Adafactor

        # A fixed learning rate with our schedule, as Lester et al. (relative_step would ignore lr).
        return Adafactor(groups, lr=config.lr, scale_parameter=False, relative_step=False, warmup_init=False)
    return torch.optim.AdamW(groups)


def capped_step(optimizer: torch.optim.Optimizer, step: Callable[[], None]) -> None:
    """step() the optimizer, then shrink each capped tensor's change to at most max_update x its norm
    before the step (a trust ratio, as LAMB's; tensors of norm 0 are left alone)."""
    before = [(group["max_update"], p, p.detach().clone()) for group in optimizer.param_groups
              if group.get("max_update") for p in group["params"]]
    step()
    with torch.no_grad():
        for cap, p, old in before:
            limit = cap * old.norm()
            change = p.detach() - old
            size = change.norm()
            if limit > 0 and size > limit:
                p.copy_(old + change * (limit / size))


_SCHEDULES = {Schedule.LINEAR: "linear", Schedule.COSINE: "cosine", Schedule.CONSTANT: "constant_with_warmup"}


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainingConfig):
    return get_scheduler(_SCHEDULES[config.schedule], optimizer, num_warmup_steps=config.warmup_steps,
                         num_training_steps=config.steps)


def autocast_for(config: TrainingConfig, device: torch.device):
    """The forward pass's autocast context and the gradient scaler (fp16 only) for training.precision.

    The trainable parameters stay float32 either way: autocast casts them on the fly, and their
    updates (lr x grad, often below bfloat16's resolution of their values) are not lost."""
    if config.precision is Precision.FP32:
        return contextlib.nullcontext, None
    if config.precision is Precision.FP16:
        if device.type != "cuda":
            raise ConfigError("training.precision=fp16 needs a GPU (float16 autocast with a gradient scaler); "
                              "on a CPU use precision=bf16 or fp32")
        return (lambda: torch.autocast("cuda", dtype=torch.float16)), torch.amp.GradScaler("cuda")
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("training.precision=bf16: this GPU has no bfloat16 support; use precision=fp16 or fp32")
    return (lambda: torch.autocast(device.type, dtype=torch.bfloat16)), None


def _plot(history: list[dict], path: Path, metrics: Sequence[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    losses = [(h["step"], h["loss"]) for h in history if "loss" in h]
    fig, ax = plt.subplots(figsize=(7, 4))
    if losses:
        ax.plot(*zip(*losses), color="tab:blue", label="train loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss", color="tab:blue")
    series = [(m, [(h["step"], h[m]) for h in history if m in h]) for m in metrics]
    series = [(m, points) for m, points in series if points]
    if series:
        ax2 = ax.twinx()
        for m, points in series:
            ax2.plot(*zip(*points), marker="o", label=f"dev {m}")
        ax2.set_ylabel("dev " + (series[0][0] if len(series) == 1 else "metrics"))
        if len(series) > 1:
            ax2.legend(loc="lower right", fontsize=8)
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
    units: TaskPrompt | Mapping[str, TaskPrompt],
    train_items: Sequence[Prepared],
    config: TrainingConfig,
    run_dir: Path,
    *,
    evaluate: Callable[[], dict] | None = None,
    resume: bool = False,
    progress: bool = True,
    on_step: Callable[[int], None] | None = None,
    log: Callable[[str], None] | None = None,
    lrs: Mapping[str, float] | None = None,
    export: bool = True,
) -> FitResult:
    """Train the prompts (and heads) of one task, or of several in mixed batches, on train_items.

    One task: units is its TaskPrompt and evaluate() returns its dev metrics. Several: units maps
    each item's key to its TaskPrompt, evaluate() returns {key: metrics}, and every task keeps its own
    best prompt by its own metric. lrs: a prompt learning rate per key (default training.lr).
    export=False: the units cannot export tensors (a projector feeding them); only train.

    Under `accelerate launch` every process takes its share of each batch, the trainable gradients
    are summed over the processes, and only the main process writes files.
    """
    single = isinstance(units, TaskPrompt)
    if single:
        only, evaluate_one = units, evaluate
        units = {only.key: only}
        evaluate = (lambda: {only.key: evaluate_one()}) if evaluate_one is not None else None
    run = _Fit(pm, dict(units), single, train_items, config, Path(run_dir), evaluate, lrs, export, progress, log)
    run.start(resume)
    return run.train(on_step)


class _Fit:
    """One training run's state: the units and their optimizer, each task's best evaluation, the
    history, and what a checkpoint holds. fit() drives it: start (or resume), steps, evaluations,
    checkpoints, the result."""

    def __init__(self, pm: PromptedModel, units: dict[str, TaskPrompt], single: bool, train_items: Sequence[Prepared],
                 config: TrainingConfig, run_dir: Path, evaluate: Callable[[], dict] | None,
                 lrs: Mapping[str, float] | None, export: bool, progress: bool, log: Callable[[str], None] | None):
        self.pm, self.units, self.single, self.train_items = pm, units, single, train_items
        self.config, self.run_dir, self.evaluate, self.export = config, run_dir, evaluate, export
        self.procs = procs = processes()
        if procs.main:
            run_dir.mkdir(parents=True, exist_ok=True)
        self.modules = {"unit": next(iter(units.values()))} if single else {f"unit:{k}": u for k, u in units.items()}
        for unit in units.values():
            unit.to(pm.base.device)
        self.optimizer = build_optimizer(units, config, lrs)
        self.scheduler = build_scheduler(self.optimizer, config)
        self.autocast, self.scaler = autocast_for(config, pm.base.device)
        self.metrics = {}
        for key, unit in units.items():
            self.metrics[key] = config.metric if config.metric != "auto" else unit.task.metric_names[0]
            if self.metrics[key] not in unit.task.metric_names:
                owner = "this task's" if single else f"task {key}'s"
                raise ConfigError(f"training.metric={self.metrics[key]!r} is not one of {owner}: "
                                  f"{', '.join(unit.task.metric_names)}")
        self.balanced = config.sampling is Sampling.BALANCED
        if self.balanced and not single:
            raise ConfigError("training.sampling='balanced' balances the classes of one task; a run of several "
                              "tasks mixes them with training.mixing (proportional | temperature)")
        self.history: list[dict] = []
        self.best = {key: {"metric": None, "step": 0, "bad_evals": 0} for key in units}
        self.best_paths = {key: run_dir / ("best.safetensors" if single else f"best-{key}.safetensors")
                           for key in units}
        self.best_tensors: dict[str, dict[str, torch.Tensor]] = {}
        self.step = 0
        self.running: list[float] = []  # losses since the last log line
        self.lengths = [sum(len(r) for r in p.item.rows) for p in train_items]
        self.labels = None
        if self.balanced:
            self.labels = [getattr(p.item, "label", None) for p in train_items]
            if any(not isinstance(label, int) for label in self.labels):
                raise ConfigError("training.sampling='balanced' needs one class label per training example "
                                  "(classification); use sampling='shuffle' for this task")
        self.groups = [[i for i, p in enumerate(train_items) if p.key == key] for key in units]
        self.mixture = not single and config.mixing is Mixing.TEMPERATURE
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]
        self.progress, self.log = progress, log
        self.eval_seconds = 0.0  # excluded from training time and speed
        self.writer = None
        self.say: Callable[[str], None] = lambda message: None
        self.plain_progress = False  # train() decides: progress wanted, but the output is no terminal
        self.started, self.seen = time.perf_counter(), 0

    def start(self, resume: bool) -> None:
        """Continue from the run dir's latest checkpoint (resume) or start at step 0."""
        config = self.config
        if resume:
            found = latest_checkpoint(self.run_dir)
            if found is not None:
                self.step, extra = load_training_state(found, modules=self.modules, optimizer=self.optimizer,
                                                       scheduler=self.scheduler)
                self.history, self.best = extra["history"], extra["best"]
                if "metric" in self.best:  # a one-task checkpoint of before several tasks
                    self.best = {next(iter(self.units)): self.best}
                self.running = list(extra.get("running", []))
                if self.scaler is not None and extra.get("scaler"):
                    self.scaler.load_state_dict(extra["scaler"])
        if self.step == 0:
            torch.manual_seed(config.seed)  # dropout; a resumed run restores the RNG state instead
        if self.export:
            for key, unit in self.units.items():
                path = self.best_paths[key]
                self.best_tensors[key] = (PromptArtifact.load(path).tensors if (resume and path.exists())
                                          else export_unit(unit))
        self.writer = _tensorboard(self.run_dir) if self.procs.main else None

    def train(self, on_step: Callable[[int], None] | None) -> FitResult:
        """Steps up to training.steps (or an early stop), evaluating and checkpointing on the way."""
        config, procs = self.config, self.procs
        started = time.perf_counter()
        seen = 0
        stopped_early = False
        # disable=None: a bar in a terminal only; a log file or CI gets plain lines, not redrawn frames
        bar = tqdm(total=config.steps, initial=self.step, disable=None if (self.progress and procs.main) else True,
                   desc="train", unit="step", dynamic_ncols=True)
        if procs.main:  # lines that must not break the bar
            self.say = bar.write if self.progress and not bar.disable else (self.log or self.say)
        # Wanted progress but no terminal: a plain line every log_every steps stands in for the bar.
        self.plain_progress = self.progress and procs.main and bool(bar.disable)
        self.started, self.seen = started, 0
        for unit in self.units.values():
            unit.train()
        # Accelerate's fsdp_activation_checkpointing asks for the same as training.gradient_checkpointing.
        checkpointing = config.gradient_checkpointing or bool(procs.sharding and procs.sharding.checkpointing)
        if checkpointing:
            set_checkpointing(self.pm.model, True)
        if config.model_dropout:
            self.pm.model.train()  # its dropout layers; evaluation switches them off again
        try:
            if self.evaluate is not None and self.step == 0 and config.eval_start:
                # The starting prompt is a candidate like any other: a run that only makes it worse
                # (a learning rate past the edge of stability) gives it back instead of the damage.
                self.run_evaluation()
            while self.step < config.steps:
                idx = self.batch()
                loss_value = self.train_step(idx)
                self.step += 1
                step = self.step
                seen += len(idx)
                self.seen = seen
                self.running.append(loss_value)
                if not math.isfinite(loss_value):
                    raise FloatingPointError(f"loss became {loss_value} at step {step}; lower training.lr")
                elapsed = time.perf_counter() - started - self.eval_seconds
                bar.update(1)
                recent = self.running[-20:]
                bar.set_postfix(loss=f"{sum(recent) / len(recent):.4f}", samples_s=f"{seen / elapsed:.1f}")
                if step % config.log_every == 0 or step == config.steps:
                    self.log_losses()
                if self.evaluate is not None and (step % config.eval_every == 0 or step == config.steps):
                    self.run_evaluation()
                    if config.patience is not None and all(b["bad_evals"] >= config.patience
                                                         for b in self.best.values() if b["metric"] is not None):
                        stopped_early = True
                if step % (config.checkpoint_every or config.eval_every) == 0 or step == config.steps or stopped_early:
                    self.save_state()
                if on_step is not None:
                    on_step(step)
                if stopped_early:
                    self.say(f"early stop: no improvement in {config.patience} evaluations")
                    break
        except KeyboardInterrupt:
            # The state after the last finished step is consistent: keep it so `--resume` continues.
            self.save_state(together=False)  # the other processes may be gone already: no barrier
            bar.close()
            raise
        finally:
            bar.close()
            if checkpointing:
                set_checkpointing(self.pm.model, False)
            self.pm.model.eval()  # as loaded: evaluation and serving never see the base's dropout
            if self.writer:
                self.writer.close()
        elapsed = time.perf_counter() - started - self.eval_seconds
        return self.result(elapsed, seen, stopped_early)

    def batch(self) -> list[int]:
        """The item indices of this step's whole batch (all processes), a function of (seed, step)."""
        config, step = self.config, self.step
        if self.balanced:
            return balanced_batch_order(self.labels, config.batch_size, step, config.seed)
        if self.mixture:
            return mixture_batch_order(self.groups, config.batch_size, step, config.seed, config.mixing_temperature)
        return batch_order(len(self.train_items), config.batch_size, step, config.seed,
                           self.lengths if config.group_by_length else None)

    def train_step(self, idx: Sequence[int]) -> float:
        """One optimizer step on the batch idx (this process's share of it); the whole batch's loss."""
        config, procs, units, scaler = self.config, self.procs, self.units, self.scaler
        if procs.active:  # dropout masks: a function of (seed, step, process), so resume needs no RNG state
            torch.manual_seed((config.seed * 1_000_003 + self.step) * 1_009 + procs.rank)
        self.optimizer.zero_grad(set_to_none=True)
        loss_value = 0.0
        by_key: dict[str, list] = {}
        for i in idx:
            by_key.setdefault(self.train_items[i].key, []).append(self.train_items[i].item)
        # Every process divides by the whole batch's count: the summed gradients are the batch's.
        total = max(1, sum(units[k].task.loss_count(items) for k, items in by_key.items()))
        for chunk, weight in step_chunks(procs, idx, self.lengths, config.micro_batch_tokens):
            items = [self.train_items[i] for i in chunk]
            with self.autocast():
                outputs = class_logits(self.pm, units, items, config.padding_side)
                # summed per micro-batch and task, divided by the whole batch's count: gradients add up exactly
                loss = sum(units[k].task.loss_sum([o for o, p in zip(outputs, items) if p.key == k],
                                                  [p.item for p in items if p.key == k])
                           for k in dict.fromkeys(p.key for p in items)) / total
                if weight != 1.0:
                    loss = loss * weight
            (scaler.scale(loss) if scaler is not None else loss).backward()
            loss_value += loss.item()
        procs.sum_gradients(self.params)
        loss_value = procs.sum_float(loss_value)
        if scaler is not None:
            scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.params, config.max_grad_norm)
        if scaler is not None:
            capped_step(self.optimizer, lambda: scaler.step(self.optimizer))
            scaler.update()
        else:
            capped_step(self.optimizer, self.optimizer.step)
        self.scheduler.step()
        return loss_value

    def log_losses(self) -> None:
        mean_loss = sum(self.running) / len(self.running)
        lr = self.scheduler.get_last_lr()[0]
        if self.plain_progress:
            elapsed = time.perf_counter() - self.started - self.eval_seconds
            self.say(f"step {self.step}/{self.config.steps} loss {mean_loss:.4f} lr {lr:.3g} "
                     f"{self.seen / max(elapsed, 1e-9):.1f} samples/s")
        self.history.append({"step": self.step, "loss": mean_loss, "lr": lr})
        if self.writer:
            self.writer.add_scalar("train/loss", mean_loss, self.step)
            self.writer.add_scalar("train/lr", lr, self.step)
        self.running = []

    def run_evaluation(self) -> None:
        """Score the prompts as they are now on dev, log them, and keep each that beats its earlier scores."""
        config, step, single = self.config, self.step, self.single
        for unit in self.units.values():
            unit.eval()
        if config.model_dropout:
            self.pm.model.eval()  # no dropout, and no checkpointing either (no gradients here)
        eval_started = time.perf_counter()
        scores_by_key = self.evaluate()
        self.eval_seconds += time.perf_counter() - eval_started
        for unit in self.units.values():
            unit.train()
        if config.model_dropout:
            self.pm.model.train()
        entry = {"step": step}
        for key, scores in scores_by_key.items():
            numbers = {k: v for k, v in scores.items() if isinstance(v, (int, float))}
            entry.update(numbers if single else {f"{key}/{k}": v for k, v in numbers.items()})
            if self.writer:
                for k, v in numbers.items():
                    self.writer.add_scalar(f"dev/{k}" if single else f"dev/{key}/{k}", v, step)
            value, mine = scores[self.metrics[key]], self.best[key]
            # Strictly better only: on a tie the earlier prompt stays (the start, when nothing beat it).
            if mine["metric"] is None or value > mine["metric"]:
                mine.update(metric=value, step=step, bad_evals=0)
                if self.export:
                    self.best_tensors[key] = export_unit(self.units[key])
                    if self.procs.main:
                        PromptArtifact(self.best_tensors[key],
                                       {"method": "checkpoint-best", "step": step}).save(self.best_paths[key])
            else:
                mine["bad_evals"] += 1
            self.say(f"step {step}: dev {self.metric_name(key)} {value:.4f} "
                     f"(best {mine['metric']:.4f} at step {mine['step']})")
        self.history.append(entry)

    def metric_name(self, key: str) -> str:
        return self.metrics[key] if self.single else f"{key} {self.metrics[key]}"

    def save_state(self, together: bool = True) -> None:
        """A checkpoint of the state after the last finished step, written by the main process."""
        if self.procs.main:
            extra = {"history": self.history, "best": self.best[next(iter(self.units))] if self.single else self.best,
                     "running": self.running,
                     **({"scaler": self.scaler.state_dict()} if self.scaler is not None else {})}
            save_training_state(checkpoint_dir(self.run_dir, self.step), modules=self.modules,
                                optimizer=self.optimizer, scheduler=self.scheduler, step=self.step, extra=extra)
            prune_checkpoints(self.run_dir, self.config.keep_checkpoints)
        if together:
            self.procs.barrier()  # no process reads on before the checkpoint is whole

    def result(self, elapsed: float, seen: int, stopped_early: bool) -> FitResult:
        """Every task's kept prompt (its best evaluation, else its last), the history file and plot."""
        step, best = self.step, self.best
        per_task = {}
        for key, unit in self.units.items():
            evaluated = best[key]["metric"] is not None  # a task of several may have no dev examples
            if self.export and not evaluated:
                self.best_tensors[key] = export_unit(unit)  # nothing to choose by: the last prompt
            kept_start = evaluated and step > 0 and best[key]["step"] == 0
            if kept_start:
                name = self.metrics[key] if self.single else f"{key}/{self.metrics[key]}"
                later = max(((h[name], -h["step"]) for h in self.history if h["step"] > 0 and name in h), default=None)
                since = "" if later is None else f", at best {later[0]:.4f} later, at step {-later[1]}"
                self.say(f"no evaluation beat the starting prompt (dev {self.metric_name(key)} "
                         f"{best[key]['metric']:.4f} at step 0{since}): keeping it")
            per_task[key] = TaskBest(tensors=self.best_tensors.get(key, {}), metric=best[key]["metric"],
                                     step=best[key]["step"] if evaluated else step, kept_start=kept_start)
        if self.procs.main:
            (self.run_dir / "history.json").write_text(json.dumps(self.history, indent=1))
            try:
                _plot(self.history, self.run_dir / "training.png",
                      [self.metrics[k] if self.single else f"{k}/{self.metrics[k]}" for k in self.units])
            except Exception as exc:  # a plot must never lose a trained prompt
                print(f"warning: could not draw training.png ({exc})")
        first = per_task[next(iter(self.units))]
        return FitResult(
            best_tensors=first.tensors,
            best_metric=first.metric,
            best_step=first.step,
            steps_done=step,
            history=self.history,
            train_seconds=elapsed,
            samples_per_second=seen / elapsed if elapsed > 0 else 0.0,
            stopped_early=stopped_early,
            kept_start=first.kept_start,
            per_task=per_task,
        )


def _tensorboard(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard is optional at run time; logs go to history.json regardless
        return None
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"))
