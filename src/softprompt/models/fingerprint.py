"""Short hashes that identify a base model: its architecture facts and samples of every weight tensor.

Version 2 (current) samples every parameter tensor and keeps two digests:

- ``fingerprint``: the sign bits of the samples. Rounding to nearest keeps a sign in every float
  format (a value too small for float16 becomes a signed zero), so a model loaded in float32,
  bfloat16 or float16 has one fingerprint. No rounding of the values themselves can promise that:
  on smollm2-135m (float32 weights) loaded in float16, 2.8% of sampled values round to another
  bfloat16, and coarser roundings still differ somewhere, since a float16 value can sit on any
  coarser grid's rounding boundary. Any retraining or merged update flips signs of small weights.
- ``weights``: the samples rounded to bfloat16, which float32 and bfloat16 loads share. It catches
  what signs cannot (a rescaled tensor, changed norm weights, which are mostly positive) and is
  compared unless exactly one side of the comparison was loaded in float16.

Version 1 (artifacts made before version 2 record no version) hashed the config facts and a sample
of the input embedding matrix only; it is kept so those artifacts are checked as they were made.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Mapping

import numpy as np
import torch

VERSION = 2
SIGN_SAMPLES = 16384  # per tensor; signs are one bit each, so they can be many
VALUE_SAMPLES = 4096  # per tensor, two bytes each

_CONFIG_KEYS = (
    "model_type",
    "vocab_size",
    "hidden_size",
    "d_model",
    "n_embd",
    "num_hidden_layers",
    "num_layers",
    "n_layer",
    "num_attention_heads",
    "num_heads",
    "n_head",
    "num_key_value_heads",
    "intermediate_size",
    "d_ff",
)


def _facts_digest(model: torch.nn.Module):
    config = model.config
    facts = {key: getattr(config, key) for key in _CONFIG_KEYS if getattr(config, key, None) is not None}
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode())


def fingerprint_v1(model: torch.nn.Module, sample_rows: int = 64, sample_cols: int = 32) -> str:
    """Hex digest over the architecture facts and strided rows of the input embedding matrix (version 1)."""
    digest = _facts_digest(model)
    weight = model.get_input_embeddings().weight.detach()
    step = max(1, weight.shape[0] // sample_rows)
    sample = weight[::step][:sample_rows, :sample_cols].to("cpu", torch.float32).to(torch.bfloat16)
    digest.update(sample.view(torch.int16).numpy().tobytes())
    return digest.hexdigest()[:16]


def _strided(flat: torch.Tensor, count: int, row: int) -> torch.Tensor:
    """About count elements of flat at an even stride; the stride shares no factor with the row
    length, so the sample visits every column of a matrix (an edit to one column is not skipped)."""
    if flat.numel() <= count:
        return flat
    step = flat.numel() // count
    while row > 1 and math.gcd(step, row) != 1:
        step += 1
    return flat[::step][:count]


def fingerprints(model: torch.nn.Module) -> tuple[str, str]:
    """Return (fingerprint, weights) of version 2: hex digests over the architecture facts, every
    parameter's name and shape, and strided samples of its sign bits and of its bfloat16 values."""
    signs, values = _facts_digest(model), _facts_digest(model)
    for name, parameter in model.named_parameters():  # tied weights once, under their first name
        head = f"{name}:{tuple(parameter.shape)}:".encode()
        signs.update(head)
        values.update(head)
        if parameter.is_meta:  # offloaded: only its shape is known here
            continue
        flat = parameter.detach().reshape(-1)
        row = parameter.shape[-1] if parameter.dim() > 1 else 1
        sign_sample = torch.signbit(_strided(flat, SIGN_SAMPLES, row)).to("cpu")
        signs.update(np.packbits(sign_sample.numpy()).tobytes())
        value_sample = _strided(flat, VALUE_SAMPLES, row).to("cpu").to(torch.bfloat16)
        values.update(value_sample.view(torch.int16).numpy().tobytes())
    return signs.hexdigest()[:16], values.hexdigest()[:16]


def fingerprint(model: torch.nn.Module) -> str:
    """The current (version 2) fingerprint of a model: the same in float32, bfloat16 and float16."""
    return fingerprints(model)[0]


def _values_comparable(recorded_dtype: object, dtype: str) -> bool:
    # float32 and bfloat16 round to the same bfloat16 values; a float16 load does not (see above).
    return recorded_dtype is None or (recorded_dtype == "float16") == (dtype == "float16")


def fingerprint_mismatch(recorded: Mapping, base) -> tuple[str, str] | None:
    """None when a base_model record (from artifact metadata) describes base, else how the record
    and base differ, as two phrases: (the record's side, base's side).

    The record's ``fingerprint_version`` picks the algorithm; a record without one was made before
    versions existed and is checked against version 1 (or version 2, should a writer have left the
    version out: a version-2 match is the stronger one).
    """
    version = recorded.get("fingerprint_version")
    want = recorded.get("fingerprint")
    if version is None:
        if want is not None and want in (base.fingerprint, base.fingerprint_v1):
            return None
        return f"fingerprint {want}", f"fingerprint {base.fingerprint_v1}"
    if version != VERSION:
        return f"fingerprint version {version!r}", f"this softprompt computes version {VERSION}; upgrade softprompt"
    if want != base.fingerprint:
        return f"fingerprint {want}", f"fingerprint {base.fingerprint}"
    weights = recorded.get("weights")
    if weights is not None and weights != base.weights and _values_comparable(recorded.get("dtype"), base.dtype_name):
        return f"weights {weights}", f"weights {base.weights}: the same signs, other values, a rescaled or retrained copy"
    return None


_SHAPE_FACTS = ("name", "model_type", "hidden_size", "num_layers")


def same_base(a: Mapping, b: Mapping) -> bool:
    """Whether two base_model records (artifact or projector metadata) describe one base model.

    Records of one fingerprint version compare their fingerprints. A record of version 1 (or of no
    version: made before versions were recorded) against one of version 2 cannot be compared by
    hash, since no model is at hand to compute both: they compare by what both record, the model's
    name and shape, with a warning that the check is the weaker one."""
    if a.get("fingerprint") == b.get("fingerprint"):
        return True
    version_a, version_b = a.get("fingerprint_version") or 1, b.get("fingerprint_version") or 1
    if version_a == version_b:
        return False  # one algorithm: the hashes decide
    shared = [k for k in _SHAPE_FACTS if a.get(k) is not None and b.get(k) is not None]
    same = bool(shared) and all(a[k] == b[k] for k in shared) and "name" in shared
    if same:
        import warnings

        warnings.warn(f"base model {a.get('name')!r}: one record has fingerprint version {version_a} and the other "
                      f"{version_b} (made by an older softprompt), so they are matched by name and shape only; "
                      "retrain or re-save the older prompt to check it by weights", stacklevel=3)
    return same
