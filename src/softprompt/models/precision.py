"""Which floating-point type a base model's weights are read into: `auto` picks the fastest one the
hardware runs well, an explicit name is kept (with a warning where it will be slow).

bfloat16 is only fast on a CPU with bfloat16 matrix instructions: on an AVX2-only CPU a bfloat16
matmul ran 5.5x slower than float32 (PyTorch issue #146508 reports 44-499x). AVX-512 BF16 alone is
not enough: on a 2-core AMD EPYC with avx512_bf16 (no AMX) the smollm2 MLP matmul ran 4.5x faster in
bfloat16, but a whole smollm2-135m forward pass ran at 0.68x float32 (norms, softmax and the casts
between them cost more than the matmuls gain). So `auto` never picks a type slower than float32:
bfloat16 on a GPU that supports it and on a CPU with AMX, float32 otherwise.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from ..configs import DTYPES, check_dtype  # noqa: F401  (the checks live with the configs they check)

DTYPE_ENV = "SOFTPROMPT_DTYPE"  # what `auto` means here, e.g. float32 to pin it (the tests do)
BF16_CPU_FLAGS = ("amx_bf16",)  # CPU instructions that make a whole bfloat16 pass faster than float32

log = logging.getLogger("softprompt.models")


@dataclass(frozen=True)
class DtypeChoice:
    """A resolved precision: the dtype name the weights are read into and why it was chosen."""

    dtype: str
    reason: str

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    def describe(self) -> str:
        return f"{self.dtype} ({self.reason})"


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU's feature flags: torch's cpuinfo probe (every platform torch runs on), joined with the
    Linux kernel's list, so either one suffices when the other is missing or older than the flag."""
    flags: set[str] = set()
    capabilities = getattr(torch.cpu, "get_capabilities", None)
    if capabilities is not None:
        try:
            flags.update(name for name, value in capabilities().items() if value is True)
        except (RuntimeError, AttributeError):  # a torch built without cpuinfo
            pass
    try:
        for line in Path(cpuinfo).read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("flags"):  # the same line repeats for every core
                flags.update(line.partition(":")[2].split())
                break
    except OSError:  # not Linux
        pass
    return frozenset(flags)


def choose_auto(device_type: str, *, flags: frozenset[str] | None = None,
                cuda_bf16: bool | None = None) -> DtypeChoice:
    """What `auto` means on a device of this type (cpu, cuda, ...): never a type slower than float32."""
    override = os.environ.get(DTYPE_ENV, "").strip()
    if override and override != "auto":
        return DtypeChoice(check_dtype(override, DTYPE_ENV), f"{DTYPE_ENV}={override}")
    if device_type == "cuda":
        if cuda_bf16 is None:
            cuda_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
        if cuda_bf16:
            return DtypeChoice("bfloat16", "auto: a GPU with bfloat16")
        return DtypeChoice("float32", "auto: this GPU has no native bfloat16")
    if device_type != "cpu":
        return DtypeChoice("float32", f"auto: float32 on {device_type}")
    found = [f for f in BF16_CPU_FLAGS if f in (cpu_flags() if flags is None else flags)]
    if found:
        return DtypeChoice("bfloat16", f"auto: the CPU has {found[0]}")
    why = "avx512_bf16 without AMX" if "avx512_bf16" in (cpu_flags() if flags is None else flags) else "no AMX"
    return DtypeChoice("float32", f"auto: the CPU has {why}, where a bfloat16 pass is slower than float32")


def resolve(dtype: str | torch.dtype | None, device_type: str = "cpu", *,
            flags: frozenset[str] | None = None) -> DtypeChoice:
    """The precision a load of dtype (a name, a torch dtype, "auto", or None: auto) on device_type
    gets; logs what auto picked, and warns of an explicit bfloat16 on a CPU that runs it slowly."""
    if isinstance(dtype, torch.dtype):
        dtype = str(dtype).removeprefix("torch.")
    dtype = check_dtype(dtype or "auto")
    if dtype == "auto":
        chosen = choose_auto(device_type, flags=flags)
        log.info("model dtype %s", chosen.describe())
        return chosen
    if dtype == "bfloat16" and device_type == "cpu":
        if not any(f in (cpu_flags() if flags is None else flags) for f in BF16_CPU_FLAGS):
            warnings.warn("model.dtype=bfloat16 on a CPU without AMX: it runs slower than float32 here "
                          "(dtype auto picks the faster one)", stacklevel=3)
    return DtypeChoice(dtype, "as asked")
