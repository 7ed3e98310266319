"""PEFT prompt adapters in and out: prompt tuning, P-tuning and prefix tuning.

A PEFT prompt adapter is a directory with ``adapter_config.json`` and ``adapter_model.safetensors``,
whose one tensor ``prompt_embeddings`` holds the final prompt (PEFT runs its P-tuning encoder or
prefix MLP before saving). Only JSON and safetensors are read; an ``adapter_model.bin`` (a pickle)
is refused. PEFT itself is not needed for either direction.

Where PEFT and softprompt differ, and what the conversion does about it:

- Prefix layout. PEFT stores (P, layers * 2 * kv_heads * head_dim) in (layer, key/value, head,
  dim) order, with kv_heads = num_key_value_heads on grouped-query models; ours is (layers, 2,
  kv_heads, P, head_dim). Both directions only reshape.
- Prefix positions. PEFT's prefixes enter through the key/value cache, so its real tokens start at
  position P; ours start at 0. An import records ``position_shift = P``, which the core honours, so
  the scores are PEFT's. Exporting a prompt trained here (shift 0) moves its keys to PEFT's positions
  on rotary-position models (exact, and checked on the model); absolute-position models (GPT-2,
  OPT) cannot express it and are refused.
- Virtual tokens. PEFT puts them before the whole input, before a BOS token too; our templates put
  them after the tokenizer's leading special tokens (the same for tokenizers without one, e.g. GPT-2).
- The task. A PEFT adapter has no template or classes: import takes a task section, default a
  generation task whose template is the bare text (``{text}{mask}`` for causal LMs, ``{text}`` for
  encoder-decoders), which is how PEFT feeds a prompt-learned LM. Trained heads do not travel.
- Encoder-decoders: input prompts both ways (PEFT reads the encoder's copy at inference); PEFT's
  prefix tuning there feeds only the decoder's cache, and is refused.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .. import __version__
from ..core import PromptArtifact, PromptedModel, PromptTensors
from ..errors import ArtifactError, ConfigError
from ..models import BaseModel, ModelKind

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
_PICKLES = ("adapter_model.bin", "adapter_model.pt", "adapter_model.pth", "pytorch_model.bin")
_IMPORTED = {"PROMPT_TUNING": "prompt_tuning", "P_TUNING": "ptuning", "PREFIX_TUNING": "ptuning_v2"}
_EXPORTED = {"prompt_tuning": "PROMPT_TUNING", "ptuning": "P_TUNING", "ptuning_v2": "PREFIX_TUNING",
             "prefix_tuning": "PREFIX_TUNING"}
_TASK_TYPES = {"CAUSAL_LM": ModelKind.CAUSAL, "SEQ_2_SEQ_LM": ModelKind.SEQ2SEQ}
DEFAULT_TASKS = {ModelKind.CAUSAL: {"kind": "generation", "template": "{text}{mask}"},
                 ModelKind.SEQ2SEQ: {"kind": "generation", "template": "{text}"}}
_INITS = {"RANDOM": "random", "SAMPLE_VOCAB": "vocab", "TEXT": "text"}  # PEFT prompt_tuning_init -> ours


def import_peft(adapter_dir: str | Path, base: BaseModel | str | None = None, *, task: Mapping[str, Any] | None = None,
                name: str | None = None, out: str | Path | None = None,
                allow_model_mismatch: bool = False) -> PromptArtifact:
    """A softprompt artifact made from a PEFT prompt adapter directory (saved to out when given).

    base: the loaded base model, or a model name; default the adapter's base_model_name_or_path.
    task: the task section to record (default: generation on the bare text, see the module notes).
    A base whose name differs from the adapter's is refused unless allow_model_mismatch; one whose
    shapes differ always is. The artifact records this base's fingerprint.
    """
    directory = Path(adapter_dir)
    config, tensors = read_adapter(directory)
    where = str(directory)
    peft_type = config.get("peft_type")
    if peft_type not in _IMPORTED:
        raise ArtifactError(f"{where}: peft_type {peft_type!r} is not a prompt method; softprompt imports "
                            f"{', '.join(_IMPORTED)}")
    recorded = config.get("base_model_name_or_path")
    base = _resolve_base(base, recorded, where)
    _check_kind(config, base, where)
    if recorded and not allow_model_mismatch and not _same_model(recorded, base):
        raise ArtifactError(f"{where}: made for base model {recorded!r}, not {base.name!r}; "
                            "pass --allow-model-mismatch (allow_model_mismatch=True) if it is the same model")
    n = _whole(config, "num_virtual_tokens", where)
    info = base.info
    if peft_type == "PREFIX_TUNING":
        projection = bool(config.get("prefix_projection"))
        method = "prefix_tuning" if projection else _IMPORTED[peft_type]
        width = info.num_kv_heads * info.head_dim
        _check_shapes(config, base, where, token_dim=width, num_attention_heads=info.num_kv_heads)
        table = _prompt_table(config, tensors, n, (n, info.num_layers * 2 * width), where)
        deep = table.reshape(n, info.num_layers, 2, info.num_kv_heads, info.head_dim).permute(1, 2, 3, 0, 4)
        prompt = {"deep.decoder": deep.contiguous()}
        method_section = {"prefix_length": n, "position_shift": n}
        if projection:
            method_section["hidden"] = int(config.get("encoder_hidden_size") or width)
        n_virtual = 0
    else:
        method = _IMPORTED[peft_type]
        _check_shapes(config, base, where, token_dim=info.hidden_size, num_attention_heads=info.num_heads)
        rows = n * _submodules(config, base)
        prompt = {"input": _prompt_table(config, tensors, rows, (rows, info.hidden_size), where)[:n].contiguous()}
        method_section = {"num_virtual_tokens": n}
        if peft_type == "P_TUNING":
            method_section["encoder"] = "lstm" if config.get("encoder_reparameterization_type") == "LSTM" else "mlp"
        else:
            method_section.update(_prompt_init(config))
        n_virtual = n
    meta = {
        "method": method,
        "method_config": _method_config(method, method_section),
        "task": _task_section(task, base, n_virtual),
        "base_model": {"name": base.name, "fingerprint": base.fingerprint, "model_type": info.model_type,
                       "hidden_size": info.hidden_size, "num_layers": info.num_layers},
        "softprompt_version": __version__,
        "name": name or directory.resolve().name,
        "peft": {"source": str(directory), "peft_type": peft_type, "task_type": config.get("task_type"),
                 "base_model_name_or_path": recorded, "peft_version": config.get("peft_version"), "config": config},
    }
    artifact = PromptArtifact({f"prompt.{k}": v.float() for k, v in prompt.items()}, meta)
    if out is not None:
        artifact.save(out)
    return artifact


def export_peft(artifact_or_path: PromptArtifact | str | Path, out_dir: str | Path, base: BaseModel | str | None = None,
                *, allow_model_mismatch: bool = False) -> Path:
    """Write a PEFT adapter directory (adapter_config.json, adapter_model.safetensors) for an artifact;
    ``peft.PeftModel.from_pretrained(model, out_dir)`` then scores as softprompt does. Returns out_dir.

    base: the loaded base model, or a name; default the artifact's recorded base model."""
    artifact = artifact_or_path if isinstance(artifact_or_path, PromptArtifact) else PromptArtifact.load(artifact_or_path)
    where = str(artifact.path or "artifact")
    peft_type = _EXPORTED.get(artifact.method)
    if peft_type is None:
        raise ArtifactError(f"{where}: method {artifact.method!r} has no PEFT counterpart; PEFT export takes "
                            f"{', '.join(_EXPORTED)}")
    others = sorted(k for k in artifact.tensors if not k.startswith("prompt."))
    if others:
        raise ArtifactError(f"{where}: holds a trained task head ({others[0]}), which a PEFT prompt adapter cannot carry")
    base = _resolve_base(base, artifact.meta.get("base_model", {}).get("name"), where)
    artifact.check_fits(base, allow_mismatch=allow_model_mismatch)
    info = base.info
    task_type = next((t for t, kind in _TASK_TYPES.items() if kind is info.kind), None)
    if task_type is None:
        raise ArtifactError(f"{where}: {base.name!r} is an {info.kind.value} model; PEFT export covers causal LMs "
                            "and encoder-decoders")
    prompt = {k[len("prompt."):]: v.detach().float().cpu() for k, v in artifact.tensors.items()}
    config: dict[str, Any] = {"peft_type": peft_type, "task_type": task_type, "base_model_name_or_path": base.name,
                              "revision": None, "inference_mode": True, "num_layers": info.num_layers}
    if peft_type == "PREFIX_TUNING":
        table = _prefix_table(artifact, prompt, base, where)
        width = info.num_kv_heads * info.head_dim
        config.update(num_virtual_tokens=table.shape[0], token_dim=width, num_attention_heads=info.num_kv_heads,
                      num_transformer_submodules=1, encoder_hidden_size=width, prefix_projection=False)
    else:
        template = artifact.meta.get("task", {}).get("template")
        if template and _parse(template).num_virtual:
            raise ArtifactError(f"{where}: its template {template!r} places virtual tokens inside the text; PEFT puts "
                                "them before the input, so it cannot hold this prompt")
        if "input" not in prompt:
            raise ArtifactError(f"{where}: no input prompt (prompt.input) to export")
        copies = 2 if info.kind is ModelKind.SEQ2SEQ else 1  # PEFT keeps one per stack, reads the encoder's
        table = prompt["input"].repeat(copies, 1)
        config.update(num_virtual_tokens=prompt["input"].shape[0], token_dim=info.hidden_size,
                      num_attention_heads=info.num_heads, num_transformer_submodules=copies)
        if peft_type == "P_TUNING":  # loaded for inference, PEFT uses the saved tokens as they are
            config.update(encoder_reparameterization_type="MLP", encoder_hidden_size=info.hidden_size,
                          encoder_num_layers=2, encoder_dropout=0.0)
        else:
            config.update(prompt_tuning_init="RANDOM", prompt_tuning_init_text=None, tokenizer_name_or_path=None)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ArtifactError(f"{out}: exists and is not a directory; PEFT adapters are directories")
    out.mkdir(parents=True, exist_ok=True)
    save_file({"prompt_embeddings": table.contiguous()}, str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    return out


def read_adapter(directory: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(adapter_config.json as a dict, the tensors of adapter_model.safetensors); ArtifactError naming
    the file otherwise. Never unpickles: a .bin adapter is refused."""
    if not directory.exists():
        raise ArtifactError(f"{directory}: no such directory (expected a PEFT adapter directory)")
    if not directory.is_dir():
        raise ArtifactError(f"{directory}: not a directory; give the PEFT adapter directory ({CONFIG_FILE} + {WEIGHTS_FILE})")
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        raise ArtifactError(f"{directory}: no {CONFIG_FILE}, so not a PEFT adapter directory")
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{config_path}: not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise ArtifactError(f"{config_path}: expected a JSON object")
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        pickled = next((directory / p for p in _PICKLES if (directory / p).exists()), None)
        if pickled is not None:
            raise ArtifactError(f"{pickled}: a pickle file, which softprompt never loads; re-save the adapter as "
                                f"safetensors (PeftModel.save_pretrained(dir, safe_serialization=True))")
        raise ArtifactError(f"{directory}: no {WEIGHTS_FILE}")
    try:
        tensors = load_file(str(weights))
    except Exception as exc:  # safetensors raises several types for a corrupt file
        raise ArtifactError(f"{weights}: not a readable safetensors file ({exc})") from None
    return config, tensors


# ---- checks ------------------------------------------------------------------------------------

def _resolve_base(base, recorded: str | None, where: str) -> BaseModel:
    if isinstance(base, BaseModel):
        return base
    if not (base or recorded):
        raise ConfigError(f"{where}: names no base model; give one (--model NAME)")
    from ..training.run import load_model

    return load_model(base or recorded)


def _same_model(recorded: str, base: BaseModel) -> bool:
    """Whether the adapter's base name is this model's: full name or last path part, any case."""
    def last(name: str) -> str:
        return str(name).rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1].lower()

    config = base.model.config
    names = {base.name, getattr(config, "_name_or_path", None), getattr(base.model, "name_or_path", None)}
    return last(recorded) in {last(n) for n in names if n}


def _check_kind(config: dict, base: BaseModel, where: str) -> None:
    task_type = config.get("task_type")
    if task_type not in _TASK_TYPES:
        raise ArtifactError(f"{where}: task_type {task_type!r}; softprompt imports PEFT prompts of "
                            f"{' and '.join(_TASK_TYPES)}")
    if _TASK_TYPES[task_type] is not base.info.kind:
        raise ArtifactError(f"{where}: a {task_type} adapter, but {base.name!r} is a {base.info.kind.value} model")
    if config.get("peft_type") == "PREFIX_TUNING" and base.info.kind is not ModelKind.CAUSAL:
        raise ArtifactError(f"{where}: PEFT's prefix tuning of an encoder-decoder prefixes only the decoder's cache; "
                            "softprompt imports prefix tuning for causal LMs")


def _whole(config: dict, key: str, where: str) -> int:
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ArtifactError(f"{where}: {CONFIG_FILE} has {key}={value!r}; expected a whole number >= 1")
    return value


def _check_shapes(config: dict, base: BaseModel, where: str, **expected: int) -> None:
    """The adapter's recorded sizes against the base model's (a recorded None is not checked)."""
    for key, want in {"num_layers": base.info.num_layers, **expected}.items():
        got = config.get(key)
        if got is not None and got != want:
            raise ArtifactError(f"{where}: made for a model with {key}={got}, but {base.name!r} needs {want}")


def _submodules(config: dict, base: BaseModel) -> int:
    default = 2 if base.info.kind is ModelKind.SEQ2SEQ else 1
    return int(config.get("num_transformer_submodules") or default)


# ---- tensors -----------------------------------------------------------------------------------

def _prompt_table(config: dict, tensors: dict[str, torch.Tensor], rows: int, shape: tuple[int, int],
                  where: str) -> torch.Tensor:
    """PEFT's final prompt table: the saved prompt_embeddings, or its encoder's output when the file
    holds the encoder (a P-tuning LSTM/MLP or a prefix MLP) instead, computed as PEFT does."""
    if "prompt_embeddings" in tensors:
        table = tensors["prompt_embeddings"]
    else:
        table = _encoded(config, tensors, rows, shape[1], where)
    if tuple(table.shape) != shape:
        raise ArtifactError(f"{where}: prompt table of shape {tuple(table.shape)}, but the config and the base "
                            f"model need {shape}")
    return table.float()


def _encoded(config: dict, tensors: dict[str, torch.Tensor], rows: int, out_width: int, where: str) -> torch.Tensor:
    # Keys may carry PeftModel's "prompt_encoder.<adapter>." prefix.
    state = {k.split("prompt_encoder.", 1)[1].split(".", 1)[1] if "prompt_encoder." in k else k: v
             for k, v in tensors.items()}
    if "embedding.weight" not in state:
        raise ArtifactError(f"{where}: {WEIGHTS_FILE} has neither prompt_embeddings nor a prompt encoder "
                            f"(keys: {', '.join(sorted(tensors)[:4]) or 'none'})")
    width = state["embedding.weight"].shape[1]
    hidden = int(config.get("encoder_hidden_size") or width)
    encoder = nn.ModuleDict({"embedding": nn.Embedding(state["embedding.weight"].shape[0], width)})
    if config["peft_type"] == "PREFIX_TUNING":
        if not config.get("prefix_projection"):  # the embedding is the prefix table itself
            return state["embedding.weight"][:rows]
        encoder["transform"] = nn.Sequential(nn.Linear(width, hidden), nn.Tanh(), nn.Linear(hidden, out_width))
    elif config.get("encoder_reparameterization_type") == "LSTM":
        encoder["lstm_head"] = nn.LSTM(width, hidden, num_layers=int(config.get("encoder_num_layers") or 2),
                                       bidirectional=True, batch_first=True)
        encoder["mlp_head"] = nn.Sequential(nn.Linear(2 * hidden, 2 * hidden), nn.ReLU(), nn.Linear(2 * hidden, out_width))
    else:
        encoder["mlp_head"] = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                            nn.Linear(hidden, out_width))
    try:
        encoder.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ArtifactError(f"{where}: prompt encoder weights do not fit its config ({str(exc).splitlines()[0]})") from None
    encoder.eval()
    with torch.no_grad():
        x = encoder["embedding"].weight[:rows].unsqueeze(0)
        if "transform" in encoder:
            return encoder["transform"](x)[0]
        if "lstm_head" in encoder:
            x = encoder["lstm_head"](x)[0]
        return encoder["mlp_head"](x)[0]


def _prefix_table(artifact: PromptArtifact, prompt: dict[str, torch.Tensor], base: BaseModel, where: str) -> torch.Tensor:
    """Our decoder prefixes as PEFT's (P, layers * 2 * kv_heads * head_dim), at PEFT's positions."""
    from ..methods.deep_common import check_deep_tensors

    stacks = sorted(k for k in prompt if k.startswith("deep."))
    if base.info.kind is not ModelKind.CAUSAL or stacks != ["deep.decoder"]:
        raise ArtifactError(f"{where}: PEFT's prefix tuning takes decoder prefixes of a causal LM; this prompt has "
                            f"{', '.join(stacks) or 'none'} on a {base.info.kind.value} model")
    check_deep_tensors(prompt, base, where)
    deep = prompt["deep.decoder"]
    length = deep.shape[3]
    shift = int(artifact.meta.get("method_config", {}).get("position_shift", 0))
    if shift != length:
        deep = _move_keys(base, deep, shift, length, where)
    return deep.permute(3, 0, 1, 2, 4).reshape(length, -1)


def _move_keys(base: BaseModel, deep: torch.Tensor, start: int, to: int, where: str) -> torch.Tensor:
    """Prefixes for real tokens that start at position `to` that act as `deep` does for tokens starting
    at `start`. Rotary models score query q at position p against a prefix key k as R(p)q . k, and
    R(p)q . k = R(p - d)q . R(-d)k, so moving every query by d = to - start is undone by rotating
    the keys by d. The result is checked on the model itself, so a family whose positions work
    otherwise is refused rather than exported wrong."""
    rotary = [m for m in base.model.modules() if type(m).__name__.endswith("RotaryEmbedding")]
    apply = getattr(sys.modules[type(rotary[0]).__module__], "apply_rotary_pos_emb", None) if len(rotary) == 1 else None
    refuse = (f"{where}: PEFT's prefix tuning starts real tokens at position {to} (its prefix length), this prompt "
              f"starts them at {start}")
    fix = f"train it with method.position_shift={to} for an exact PEFT export"
    if apply is None:
        raise ArtifactError(f"{refuse}, and {base.info.model_type} has no rotary positions to carry that in its keys; {fix}")
    keys = deep[:, 0].to(base.device, torch.float32)  # (layers, kv_heads, P, head_dim)
    with torch.no_grad():
        cos, sin = rotary[0](keys, torch.full((1, keys.shape[2]), to - start, device=base.device))
        moved = apply(keys, keys, cos, sin)[1] / getattr(rotary[0], "attention_scaling", 1.0)
    result = deep.clone()
    result[:, 0] = moved.to("cpu", deep.dtype)
    gap = _position_check(base, {"before": PromptTensors(deep={"decoder": deep}, position_shift=start),
                                 "after": PromptTensors(deep={"decoder": result}, position_shift=to)})
    if gap > (1e-3 if base.dtype == torch.float32 else 5e-2):
        raise ArtifactError(f"{refuse}; moving its keys there changes {base.info.model_type}'s outputs by {gap:.2g}; {fix}")
    return result


@torch.no_grad()
def _position_check(base: BaseModel, prompts: dict[str, PromptTensors]) -> float:
    """The largest difference, relative to their size, between the hidden states two prompts give one probe row."""
    pm = PromptedModel(base)
    probe = [i % base.info.vocab_size for i in range(3, 19)]
    batch = pm.collate([probe] * len(prompts), list(prompts), padding_side="right")
    hidden = pm.encode(batch, prompts).float()
    return float((hidden[0] - hidden[1]).abs().max() / hidden.abs().max().clamp(min=1e-6))


# ---- metadata ----------------------------------------------------------------------------------

def _prompt_init(config: dict) -> dict:
    init = _INITS.get(config.get("prompt_tuning_init"), "random")
    text = config.get("prompt_tuning_init_text")
    if init == "text" and not (text and text.strip()):
        init = "random"
    return {"init": init, **({"init_text": text} if init == "text" else {})}


def _method_config(method: str, section: dict) -> dict:
    """The method section, validated as training would read it back."""
    from ..configs import to_dict
    from ..training.run import method_config

    return to_dict(method_config({"name": method, **section})[1])


def _parse(template: str):
    from ..templates import parse_template

    return parse_template(template)


def _task_section(task: Mapping[str, Any] | None, base: BaseModel, n_virtual: int) -> dict:
    """The task as an artifact records it, built once so a bad section fails here, not at load."""
    from ..tasks.kinds import build_task, kind_of

    section = dict(task) if task is not None else dict(DEFAULT_TASKS[base.info.kind])
    kind = kind_of(section)
    labels = kind.section_labels(section) if kind.labelled else []
    if kind.labelled and not labels:
        raise ConfigError("task.labels or task.verbalizer is needed: a PEFT adapter does not record its classes")
    built = build_task(section, base, labels, n_virtual)
    if built.export():
        raise ConfigError("the task has a trained head, which a PEFT adapter does not hold; score the classes "
                          "with words (task.verbalizer, task.head=verbalizer)")
    placed = getattr(getattr(built, "template", None), "num_virtual", 0)
    if placed not in (0, n_virtual):
        raise ConfigError(f"task.template places {placed} virtual tokens, but the adapter has {n_virtual}")
    return built.artifact_section()
