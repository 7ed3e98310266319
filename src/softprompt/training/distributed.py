"""Data-parallel training under `accelerate launch` (or torchrun): who this process is, the few
collectives training needs, and the sharding of a frozen base model too large for one device.

Every process computes its share of each batch, and only the gradients of the trainable parameters
(prompts and heads, kilobytes to megabytes) are summed across processes, in one flat buffer.
Accelerate's PartialState sets up the process group from the launcher's environment (NCCL on GPUs,
gloo on CPUs); a plain `python` run is one process and touches none of it.

By default every process holds the whole frozen base. Launched with Accelerate's FSDP settings (or a
DeepSpeed ZeRO stage-3 config), the base's transformer blocks are sharded over the processes with
PyTorch's FSDP2 (`fully_shard`): each process keeps 1/N of every block and gathers a block's weights
only while that block runs, forward and backward. The frozen base has no gradients and no optimizer
state, so parameters are all there is to shard; the trainable prompt stays whole on every process,
with its gradients summed as above. The input embeddings and output head stay whole too: prompts
read and initialise from them outside any block's forward.
"""

from __future__ import annotations

import os
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, TypeVar

import torch

from ..errors import ConfigError

T = TypeVar("T")


def launched_world_size() -> int:
    """How many processes the launcher started (1 outside a launcher)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


@dataclass(frozen=True)
class Sharding:
    """How the frozen base's blocks are sharded over the processes, read from the launcher's settings."""

    source: str  # what asked for it, for messages: "FSDP" or "DeepSpeed ZeRO-3"
    reshard_after_forward: bool = True  # free a block's gathered weights after its forward (gather again for backward)
    offload: bool = False  # keep the shards in CPU memory, copied to the GPU for each block's pass
    block_names: tuple[str, ...] = ()  # class names of the blocks to shard (empty: the model's _no_split_modules)
    min_params: int | None = None  # size-based: shard every module holding at least this many parameters
    hybrid: bool = False  # shard within a machine, replicate across machines
    checkpointing: bool = False  # recompute each block's activations in the backward pass

    def describe(self, world: int) -> str:
        how = "hybrid (sharded within each machine)" if self.hybrid else f"sharded over {world} processes"
        return (f"{self.source}: the frozen base's blocks are {how} with PyTorch FSDP2"
                f"{', shards offloaded to CPU memory' if self.offload else ''}"
                f"{'' if self.reshard_after_forward else ', kept gathered from forward to backward'}; "
                "the trainable prompt is whole on every process")


@dataclass(frozen=True)
class Processes:
    """This process's place among the processes of a data-parallel run."""

    rank: int = 0
    world: int = 1
    device: torch.device | None = None  # the device the launcher gave this process (None: one process)
    sharding: Sharding | None = None  # the frozen base is sharded over the processes (FSDP, ZeRO-3)
    mixed_precision: str | None = None  # accelerate launch --mixed_precision: "bf16" or "fp16" (None: not asked)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def shard(self, items: Sequence[T]) -> list[T]:
        """This process's part of a batch or split: every world-th item from its rank."""
        return list(items[self.rank :: self.world]) if self.active else list(items)

    def sum_gradients(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Sum the trainable parameters' gradients over the processes, in place (one flat all-reduce).

        Each process divides its loss by the whole batch's count, so the sum is the gradient of the
        whole batch, as one process would compute it."""
        if not self.active or not params:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1).float() for g in grads])
        torch.distributed.all_reduce(flat)
        offset = 0
        for p, g in zip(params, grads):
            n = g.numel()
            p.grad = flat[offset : offset + n].view_as(g).to(g.dtype)
            offset += n

    def sum_float(self, value: float) -> float:
        if not self.active:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self._comm_device())
        torch.distributed.all_reduce(t)
        return float(t.item())

    def gather_tensors(self, mine: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The tensors of every process's shard, back in the order the unsharded list had.

        Process r computed items r, r + world, ...; tensors may differ in shape from item to item
        (token labelling), so shapes travel beside one flat float buffer per process."""
        if not self.active:
            return list(mine)
        device = self._comm_device()
        ndim = max((t.dim() for t in mine), default=0)
        ndim = self.max_int(ndim)
        shapes = torch.tensor([list(t.shape) + [1] * (ndim - t.dim()) for t in mine] or [[0] * ndim],
                              dtype=torch.long, device=device).reshape(-1, max(ndim, 1))
        count = torch.tensor([len(mine)], dtype=torch.long, device=device)
        counts = self._all_gather_sized(count, [1] * self.world)
        counts = [int(c) for c in torch.cat(counts)]
        all_shapes = self._all_gather_sized(shapes, [max(c, 1) for c in counts])
        flat = torch.cat([t.detach().reshape(-1).float() for t in mine]).to(device) if mine else \
            torch.zeros(0, device=device)
        sizes = [int(s.prod(dim=1).sum()) if c else 0 for s, c in zip(all_shapes, counts)]
        flats = self._all_gather_sized(flat, sizes)
        out: list[torch.Tensor | None] = [None] * sum(counts)
        for rank, (c, s, f) in enumerate(zip(counts, all_shapes, flats)):
            offset = 0
            for j in range(c):
                shape = [int(x) for x in s[j]]
                n = int(torch.tensor(shape).prod())
                out[rank + j * self.world] = f[offset : offset + n].reshape(shape).cpu()
                offset += n
        return out  # type: ignore[return-value]

    def gather_texts(self, mine: Sequence[str]) -> list[str]:
        """The strings of every process's shard, back in the order the unsharded list had (UTF-8
        bytes through gather_tensors, no pickling)."""
        if not self.active:
            return list(mine)
        encoded = [torch.tensor(list(text.encode("utf-8")), dtype=torch.uint8) for text in mine]
        return [bytes(t.to(torch.uint8).tolist()).decode("utf-8") for t in self.gather_tensors(encoded)]

    def broadcast_texts(self, texts: list[str] | None) -> list[str]:
        """The main process's strings on every process (UTF-8 bytes in a tensor, no pickling)."""
        if not self.active:
            return list(texts or [])
        device = self._comm_device()
        data = "\x00".join(texts or []).encode("utf-8") if self.main else b""
        size = torch.tensor([len(data), len(texts or [])], dtype=torch.long, device=device)
        torch.distributed.broadcast(size, 0)
        buffer = torch.zeros(int(size[0]), dtype=torch.uint8, device=device)
        if self.main and data:
            buffer.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
        torch.distributed.broadcast(buffer, 0)
        if int(size[1]) == 0:
            return []
        return bytes(buffer.cpu().tolist()).decode("utf-8").split("\x00")

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()

    def max_int(self, value: int) -> int:
        """The largest of every process's value."""
        if not self.active:
            return value
        t = torch.tensor([value], dtype=torch.long, device=self._comm_device())
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return int(t.item())

    def _all_gather_sized(self, tensor: torch.Tensor, first_dims: list[int]) -> list[torch.Tensor]:
        """all_gather of tensors whose first dimensions differ by process (padded to the largest)."""
        longest = max(first_dims)
        padded = torch.zeros((longest, *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
        padded[: tensor.shape[0]] = tensor[:longest]
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        torch.distributed.all_gather(parts, padded)
        return [p[:n] for p, n in zip(parts, first_dims)]

    def _comm_device(self) -> torch.device:
        # NCCL moves CUDA tensors only; gloo moves CPU tensors.
        if torch.distributed.get_backend() == "nccl":
            return self.device or torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")


_SINGLE = Processes()
_current: Processes | None = None


def processes() -> Processes:
    """This process's place in the run: set up on first use from the launcher's environment."""
    global _current
    if _current is not None:
        return _current
    if launched_world_size() <= 1:
        return _SINGLE  # one process holds the whole base, whatever the launcher's sharding settings
    sharding = sharding_from_launcher()
    from accelerate import PartialState

    cpu = not torch.cuda.is_available() or _flag("ACCELERATE_USE_CPU")
    state = PartialState(cpu=cpu)
    asked = os.environ.get("ACCELERATE_MIXED_PRECISION", "").strip().lower()
    _current = Processes(rank=state.process_index, world=state.num_processes, device=torch.device(state.device),
                         sharding=sharding, mixed_precision=asked if asked in ("bf16", "fp16") else None)
    return _current


def _flag(variable: str) -> bool:
    return os.environ.get(variable, "").strip().lower() in ("1", "true", "yes")


def sharding_from_launcher() -> Sharding | None:
    """The base-model sharding that `accelerate launch` asks for (its FSDP or DeepSpeed settings, as
    the environment it hands each process), or None: every process holds the whole base.

    DeepSpeed's ZeRO stages 1 and 2 partition optimizer states and gradients, which here are only the
    prompt's (kilobytes): the run stays plainly data-parallel. Stage 3 partitions the parameters; the
    frozen base is sharded the same way FSDP shards it (DeepSpeed's engine is not used)."""
    if _flag("ACCELERATE_USE_FSDP"):
        return _fsdp_sharding()
    if _flag("ACCELERATE_USE_DEEPSPEED"):
        return _deepspeed_sharding()
    return None


def _fsdp_sharding() -> Sharding | None:
    from accelerate.utils import FullyShardedDataParallelPlugin

    try:
        # softprompt always does what FSDP1's sync_module_states and CPU-RAM-efficient loading ask (the
        # main process reads the weights, the others receive them: run._load_sharded), so they are not
        # parsed (parsing them looks for an accelerator, which a CPU run has none of).
        version1 = os.environ.get("FSDP_VERSION", "1").strip() == "1"
        plugin = FullyShardedDataParallelPlugin(**({"sync_module_states": False, "cpu_ram_efficient_loading": False}
                                                   if version1 else {}))
    except (ValueError, KeyError, ImportError, RuntimeError) as exc:
        raise ConfigError(f"accelerate launch with FSDP: its settings do not parse: {exc}") from None
    hybrid = False
    if plugin.fsdp_version == 1:
        strategy = plugin.sharding_strategy.name if plugin.sharding_strategy is not None else "FULL_SHARD"
        if strategy == "NO_SHARD":
            return None
        reshard = strategy in ("FULL_SHARD", "HYBRID_SHARD")
        hybrid = strategy.startswith(("HYBRID", "_HYBRID"))
        offload = bool(getattr(plugin.cpu_offload, "offload_params", False))
    else:
        from torch.distributed.fsdp import CPUOffloadPolicy

        reshard = bool(plugin.reshard_after_forward)
        offload = isinstance(plugin.cpu_offload, CPUOffloadPolicy)
    if os.environ.get("FSDP_AUTO_WRAP_POLICY", "").upper() == "SIZE_BASED_WRAP":
        blocks = {"min_params": int(plugin.min_num_params or 0) or None}
    else:  # TRANSFORMER_BASED_WRAP, and NO_WRAP too: the root alone cannot be sharded here
        blocks = {"block_names": tuple(n.strip() for n in plugin.transformer_cls_names_to_wrap or [] if n.strip())}
    return Sharding(source="FSDP", reshard_after_forward=reshard, offload=offload, hybrid=hybrid,
                    checkpointing=bool(plugin.activation_checkpointing), **blocks)


def _deepspeed_sharding() -> Sharding | None:
    stage, offload = os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE"), \
        os.environ.get("ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE")
    config_file = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "").strip()
    if config_file and config_file.lower() != "none":
        try:
            zero = json.loads(Path(config_file).read_text()).get("zero_optimization") or {}
        except (OSError, ValueError, AttributeError) as exc:
            raise ConfigError(f"{config_file}: cannot read this DeepSpeed config ({exc})") from None
        stage = zero.get("stage", stage)
        offload = (zero.get("offload_param") or {}).get("device", offload)
    try:
        stage = int(stage if stage not in (None, "", "auto") else 0)
    except (TypeError, ValueError):
        raise ConfigError(f"DeepSpeed zero_optimization.stage={stage!r} is not a number (0, 1, 2 or 3)") from None
    if stage < 3:
        return None
    offload = str(offload or "none").lower()
    if offload not in ("none", "cpu"):
        raise ConfigError(f"DeepSpeed offload_param.device={offload!r}: softprompt offloads the base's shards to "
                          "'cpu' or keeps them on the GPU ('none')")
    return Sharding(source="DeepSpeed ZeRO-3", offload=offload == "cpu")


@dataclass(frozen=True)
class Sharded:
    """What shard_base did: how many modules it sharded, and the base's bytes here and in all."""

    modules: int
    local_bytes: int
    total_bytes: int

    def describe(self) -> str:
        return (f"{self.modules} modules sharded; this process holds {_size(self.local_bytes)} of the base's "
                f"{_size(self.total_bytes)}")


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n} bytes"


def _parameter_bytes(model: torch.nn.Module) -> int:
    total = 0
    for p in {id(p): p for p in model.parameters()}.values():  # tied weights once
        local = p.to_local() if hasattr(p, "to_local") else p
        total += local.numel() * local.element_size()
    return total


def shard_base(model: torch.nn.Module, procs: Processes) -> Sharded:
    """Shard the frozen model's blocks over the processes (FSDP2 fully_shard), in place; the rest of
    the model (embeddings, final norm, output head) moves whole to this process's device."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy, fully_shard

    plan = procs.sharding
    device = procs.device or torch.device("cpu")
    if plan.offload and device.type != "cuda":
        raise ConfigError(f"{plan.source}: offloading the base's shards to CPU memory needs GPUs; on CPUs the shards "
                          "are in CPU memory already (turn the offload off)")
    groups = _blocks_to_shard(model, plan)
    if not groups:
        names = ", ".join(plan.block_names or getattr(model, "_no_split_modules", None) or ["(none)"])
        raise ConfigError(f"{plan.source}: {type(model).__name__} has no blocks of class {names} to shard; set "
                          "fsdp_transformer_layer_cls_to_wrap to the class of its layers")
    local = int(os.environ.get("LOCAL_WORLD_SIZE", procs.world))
    if plan.hybrid and 1 < local < procs.world and procs.world % local == 0:
        mesh = init_device_mesh(device.type, (procs.world // local, local), mesh_dim_names=("replicate", "shard"))
    else:
        mesh = init_device_mesh(device.type, (procs.world,))
    total = _parameter_bytes(model)
    inside = {id(t) for block, _ in groups for t in (*block.parameters(), *block.buffers())}
    _materialise(model, device, procs, skip=inside)
    offload = CPUOffloadPolicy() if plan.offload else OffloadPolicy()
    for block, parts in groups:  # one block whole at a time: the main process's values, then shards
        _materialise(block, device, procs)
        for module in parts:
            fully_shard(module, mesh=mesh, reshard_after_forward=plan.reshard_after_forward, offload_policy=offload)
    return Sharded(sum(len(parts) for _, parts in groups), _parameter_bytes(model), total)


def _blocks_to_shard(model: torch.nn.Module, plan: Sharding) -> list[tuple[torch.nn.Module, list[torch.nn.Module]]]:
    """The outermost blocks of the named classes (default: the model's own _no_split_modules), each
    with the modules to shard in it, inner ones first: the block; with min_params, every module in it
    holding that many parameters not yet taken, then the block itself for the rest. Only blocks and their parts:
    they run once per pass on every process (heads run once per task, which differs by process), and
    never a module holding the input embeddings or output head, which prompts read outside blocks."""
    kept_whole = {id(m.weight) for m in (model.get_input_embeddings(), getattr(model, "get_output_embeddings",
                                                                                lambda: None)())
                  if m is not None and getattr(m, "weight", None) is not None}
    names = set(plan.block_names or getattr(model, "_no_split_modules", None) or ())
    blocks, seen = [], set()
    for module in model.modules():
        if (type(module).__name__ in names and module is not model and id(module) not in seen
                and not any(id(p) in kept_whole for p in module.parameters())):
            blocks.append(module)
            seen.update(id(m) for m in module.modules())
    if not plan.min_params:
        return [(block, [block]) for block in blocks]
    taken: set[int] = set()

    def visit(module: torch.nn.Module, block: bool, chosen: list) -> list:  # children first, as torch's policy
        for child in module.children():
            visit(child, False, chosen)
        free = sum(p.numel() for p in module.parameters() if id(p) not in taken)
        if free and (block or free >= plan.min_params):
            chosen.append(module)
            taken.update(id(p) for p in module.parameters())
        return chosen

    return [(block, visit(block, True, [])) for block in blocks]


def _materialise(root: torch.nn.Module, device: torch.device, procs: Processes, skip: set[int] = frozenset()) -> None:
    """Every parameter and buffer under root (but those in skip) on device, with the main process's
    values: the main process moves its own, the others (structure only, meta tensors) receive them
    in a broadcast. Tied weights stay tied."""
    done: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # id -> (the original, kept alive: ids stay unique; its copy)

    def placed(t: torch.Tensor, make) -> torch.Tensor:
        if id(t) not in done:
            out = t.detach().to(device) if procs.main else torch.empty(t.shape, dtype=t.dtype, device=device)
            if procs.active:
                torch.distributed.broadcast(out, 0)
            done[id(t)] = (t, make(out))
        return done[id(t)][1]

    for module in root.modules():
        for name, param in list(module._parameters.items()):
            if param is not None and id(param) not in skip:
                module._parameters[name] = placed(
                    param, lambda out, p=param: torch.nn.Parameter(out, requires_grad=p.requires_grad))
        for name, buffer in list(module._buffers.items()):
            if buffer is not None and id(buffer) not in skip:
                module._buffers[name] = placed(buffer, lambda out: out)
