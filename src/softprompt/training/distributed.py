"""Data-parallel training under `accelerate launch` (or torchrun): who this process is, and the few
collectives training needs.

The base model is frozen and never wrapped: every process holds its own copy, computes its share of
each batch, and only the gradients of the trainable parameters (prompts and heads, kilobytes to
megabytes) are summed across processes, in one flat buffer. Accelerate's PartialState sets up the
process group from the launcher's environment (NCCL on GPUs, gloo on CPUs); a plain `python` run is
one process and touches none of it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
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
class Processes:
    """This process's place among the processes of a data-parallel run."""

    rank: int = 0
    world: int = 1
    device: torch.device | None = None  # the device the launcher gave this process (None: one process)

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
        ndim = self._max_int(ndim)
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

    def _max_int(self, value: int) -> int:
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
    for engine, variable in (("FSDP", "ACCELERATE_USE_FSDP"), ("DeepSpeed", "ACCELERATE_USE_DEEPSPEED")):
        if os.environ.get(variable, "").lower() in ("1", "true"):
            raise ConfigError(f"accelerate launch with {engine}: softprompt trains data-parallel, each process holding "
                              f"the whole frozen base model; sharding it with {engine} is not supported yet. Launch "
                              "without it, or spread a base model too large for one device over the GPUs of one "
                              "process with model.device_map=auto")
    if launched_world_size() <= 1:
        return _SINGLE
    from accelerate import PartialState

    cpu = not torch.cuda.is_available() or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true")
    state = PartialState(cpu=cpu)
    _current = Processes(rank=state.process_index, world=state.num_processes, device=torch.device(state.device))
    return _current
