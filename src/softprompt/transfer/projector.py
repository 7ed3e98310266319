"""Cross-model prompt transfer (TPT, Su et al. 2022): a small projector from one base model's prompt
space to another's.

A projector maps each virtual token of a prompt for model A (n x d_A) to one for model B (n x d_B).
Three ways to get one:
- regression on paired prompts: prompts for the same tasks trained on both models, token by token
  (linear by closed-form ridge, or a 2-layer MLP by Adam)
- vocabulary anchors: the linear map between the two models' input embeddings of words both
  tokenizers spell as one token (no prompts needed; a cheap baseline)
- task-loss fine-tuning: projected prompts of source tasks run through B, and B's task loss trains
  the projector (TPT's projector training)

A projector is one .safetensors file with JSON metadata naming both models' fingerprints;
:func:`project` turns a prompt of A into a PromptArtifact that fits B.
"""

from __future__ import annotations

import json
import random
import tempfile
import time
from collections.abc import Callable, Sequence
from enum import Enum
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from ..core import PromptArtifact, PromptedModel, PromptTensors
from ..errors import ArtifactError, ConfigError
from ..models.fingerprint import fingerprint_mismatch, same_base

_META_KEY = "softprompt_projector"


class ProjectorKind(str, Enum):
    LINEAR = "linear"
    MLP = "mlp"


def _model_facts(base) -> dict:
    return {"name": base.name, **base.fingerprint_meta(), "hidden_size": base.info.hidden_size,
            "model_type": base.info.model_type, "num_layers": base.info.num_layers}


class Projector(nn.Module):
    """Maps (n, d_in) prompt tokens to (n, d_out); meta names the source and target models."""

    def __init__(self, d_in: int, d_out: int, kind: ProjectorKind | str = ProjectorKind.LINEAR, hidden: int = 256,
                 meta: dict | None = None):
        super().__init__()
        try:
            self.kind = ProjectorKind(kind)
        except ValueError:
            raise ConfigError(f"projector kind={kind!r} is not one of: linear, mlp") from None
        if self.kind is ProjectorKind.LINEAR:
            self.net = nn.Linear(d_in, d_out)
        else:
            self.net = nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, d_out))
        self.d_in, self.d_out, self.hidden = d_in, d_out, hidden
        self.meta = dict(meta or {})

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.net(tokens.to(torch.float32))

    def save(self, path: str | Path) -> Path:
        """Tensors and metadata (kind, widths, source/target models, how it was fitted) in one file."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {**self.meta, "kind": self.kind.value, "d_in": self.d_in, "d_out": self.d_out, "hidden": self.hidden,
                "format_version": 1, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(tensors, str(path), metadata={_META_KEY: json.dumps(meta, sort_keys=True)})
        self.meta = meta
        return path

    @classmethod
    def load(cls, path: str | Path) -> Projector:
        path = Path(path)
        if not path.is_file():
            raise ArtifactError(f"{path}: projector file not found")
        try:
            with safe_open(str(path), framework="pt") as handle:
                header = handle.metadata() or {}
                tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118 (safe_open is not iterable)
        except Exception as exc:  # noqa: BLE001 (safetensors raises several types for a corrupt file)
            raise ArtifactError(f"{path}: not a readable safetensors file ({exc})") from None
        if _META_KEY not in header:
            raise ArtifactError(f"{path}: not a projector file (no {_META_KEY} metadata); prompts are projected "
                                "with a file from `softprompt transfer fit-projector`")
        meta = json.loads(header[_META_KEY])
        projector = cls(meta["d_in"], meta["d_out"], meta["kind"], meta.get("hidden", 256), meta)
        try:
            projector.load_state_dict(tensors)
        except RuntimeError as exc:
            raise ArtifactError(f"{path}: projector tensors do not match its metadata ({exc})") from None
        return projector


def _as_artifact(item) -> PromptArtifact:
    return item if isinstance(item, PromptArtifact) else PromptArtifact.load(item)


def _input_prompt(art: PromptArtifact) -> torch.Tensor:
    if "prompt.input" not in art.tensors:
        raise ArtifactError(f"{art.path or 'artifact'}: projection needs an input prompt ({art.meta.get('method')} "
                            "has none); deep prompts are not projected")
    return art.tensors["prompt.input"].detach().to(torch.float32)


def _one_model(arts: Sequence[PromptArtifact], side: str) -> dict:
    first = dict(arts[0].meta.get("base_model", {}))
    others = [a for a in arts[1:] if not same_base(first, a.meta.get("base_model", {}))]
    if others:
        prints = sorted({str(a.meta.get("base_model", {}).get("fingerprint")) for a in [arts[0], *others]})
        raise ArtifactError(f"the {side} prompts come from {len(prints)} base models (fingerprints {prints}); "
                            "a projector maps one model to one model")
    return first


def ridge_solve(x: torch.Tensor, y: torch.Tensor, ridge: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor]:
    """(W, b) minimising |x W + b - y|^2 + lam |W|^2, lam = ridge x the mean feature variance x rows."""
    x, y = x.double(), y.double()
    mx, my = x.mean(0), y.mean(0)
    xc, yc = x - mx, y - my
    gram = xc.T @ xc
    lam = ridge * float(gram.diagonal().mean()) + 1e-12
    w = torch.linalg.solve(gram + lam * torch.eye(x.shape[1], dtype=x.dtype), xc.T @ yc)
    return w.float(), (my - mx @ w).float()


def _linear_from(w: torch.Tensor, b: torch.Tensor, meta: dict) -> Projector:
    projector = Projector(w.shape[0], w.shape[1], ProjectorKind.LINEAR, meta=meta)
    with torch.no_grad():
        projector.net.weight.copy_(w.T)
        projector.net.bias.copy_(b)
    return projector


def fit_projector(sources: Sequence[torch.Tensor], targets: Sequence[torch.Tensor], *,
                  kind: ProjectorKind | str = ProjectorKind.LINEAR, hidden: int = 256, ridge: float = 1e-3,
                  steps: int = 500, lr: float = 1e-3, seed: int = 0, meta: dict | None = None) -> Projector:
    """A projector fitted token by token on paired prompts (source i and target i solve one task).

    linear: closed-form ridge regression; mlp: Adam on the mean squared error (inputs standardised
    into the first layer)."""
    if not sources or len(sources) != len(targets):
        raise ConfigError(f"need paired prompts: got {len(sources)} source and {len(targets)} target prompts")
    for i, (a, b) in enumerate(zip(sources, targets)):
        if a.shape[0] != b.shape[0]:
            raise ConfigError(f"pair {i}: {a.shape[0]} source tokens but {b.shape[0]} target tokens; "
                              "paired prompts need one number of virtual tokens")
    x = torch.cat([a.float() for a in sources])
    y = torch.cat([b.float() for b in targets])
    meta = {**(meta or {}), "fit": {"method": "regression", "pairs": len(sources), "tokens": x.shape[0], "ridge": ridge}}
    w, b = ridge_solve(x, y, ridge)
    if ProjectorKind(kind) is ProjectorKind.LINEAR:
        return _linear_from(w, b, meta)
    torch.manual_seed(seed)
    projector = Projector(x.shape[1], y.shape[1], ProjectorKind.MLP, hidden, meta)
    optimizer = torch.optim.Adam(projector.parameters(), lr=lr)
    for _ in range(steps):
        loss = nn.functional.mse_loss(projector(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    projector.meta["fit"].update(steps=steps, lr=lr, final_mse=float(loss.detach()))
    return projector


def fit_from_artifacts(pairs: Sequence[tuple], **kwargs) -> Projector:
    """A projector from pairs (prompt of model A, prompt of model B) for the same tasks (files or artifacts)."""
    if not pairs:
        raise ConfigError("no prompt pairs to fit a projector on")
    a_arts = [_as_artifact(a) for a, _ in pairs]
    b_arts = [_as_artifact(b) for _, b in pairs]
    meta = {"source": _one_model(a_arts, "source"), "target": _one_model(b_arts, "target"),
            "tasks": [str(a.meta.get("name") or a.path) for a in a_arts]}
    return fit_projector([_input_prompt(a) for a in a_arts], [_input_prompt(b) for b in b_arts], meta=meta, **kwargs)


def shared_words(base_a, base_b, max_words: int | None = 20000) -> tuple[list[str], list[int], list[int]]:
    """Words both tokenizers spell as a single token after a space: (words, ids in A, ids in B)."""
    tok_a, tok_b = base_a.tokenizer, base_b.tokenizer
    special = set(getattr(tok_a, "all_special_ids", []) or [])
    words = sorted({w for w in (tok_a.decode([i]).strip() for i in range(len(tok_a)) if i not in special)
                    if w.isalpha()})
    found_w, ids_a, ids_b = [], [], []
    enc_a = tok_a([" " + w for w in words], add_special_tokens=False).input_ids
    enc_b = tok_b([" " + w for w in words], add_special_tokens=False).input_ids
    unk_b = getattr(tok_b, "unk_token_id", None)
    for w, a, b in zip(words, enc_a, enc_b):
        if len(a) == 1 and len(b) == 1 and b[0] != unk_b and a[0] not in special:
            found_w.append(w)
            ids_a.append(a[0])
            ids_b.append(b[0])
    if max_words and len(found_w) > max_words:
        keep = sorted(random.Random(0).sample(range(len(found_w)), max_words))
        found_w, ids_a, ids_b = [found_w[i] for i in keep], [ids_a[i] for i in keep], [ids_b[i] for i in keep]
    return found_w, ids_a, ids_b


def vocab_projector(base_a, base_b, *, ridge: float = 1e-2, max_words: int | None = 20000) -> Projector:
    """The linear map between two models' input embeddings, fitted on words both spell as one token."""
    words, ids_a, ids_b = shared_words(base_a, base_b, max_words)
    if len(words) < 2:
        raise ConfigError(f"{base_a.name} and {base_b.name} share {len(words)} single-token words; "
                          "a vocabulary-anchored projector needs many")
    with torch.no_grad():
        x = base_a.input_embeddings().weight[ids_a].detach().float().cpu()
        y = base_b.input_embeddings().weight[ids_b].detach().float().cpu()
    w, b = ridge_solve(x, y, ridge)
    meta = {"source": _model_facts(base_a), "target": _model_facts(base_b),
            "fit": {"method": "vocabulary", "anchors": len(words), "ridge": ridge}}
    return _linear_from(w, b, meta)


class _ProjectedPrompt(nn.Module):
    """A source prompt seen through the projector: what the target model gets while the projector trains."""

    def __init__(self, projector: Projector, source: torch.Tensor):
        super().__init__()
        self.projector = projector
        self.register_buffer("source", source)

    def prompt_tensors(self) -> PromptTensors:
        return PromptTensors(input=self.projector(self.source))


def finetune_projector(projector: Projector, sources: Sequence[tuple], *, base, steps: int = 100, lr: float = 1e-4,
                       batch_size: int = 8, seed: int = 0, log: Callable[[str], None] = print) -> Projector:
    """Train the projector with the target model's task loss (TPT): each source prompt, projected, must
    solve its task on the target. sources: (prompt of model A, run config of the task on model B)."""
    from ..training.run import build_task, labels_of, prepare, read_split
    from ..configs import load_run_config
    from ..tasks.readers import sample_k_per_class
    from ..configs import TrainingConfig
    from ..tasks.runner import TaskPrompt
    from ..training.loop import fit

    if not sources:
        raise ConfigError("task-loss fine-tuning needs at least one (source prompt, target task config) pair")
    _check_target(projector, base)
    units, items = {}, []
    for i, (art, config) in enumerate(sources):
        art = _as_artifact(art)
        _check_source(projector, art)
        c = load_run_config(config)
        examples = read_split(c.data.train, c.data, limit=c.data.max_train)
        if c.data.k_shot:
            examples = sample_k_per_class(examples, c.data.k_shot, c.training.seed)
        prompt = _input_prompt(art)
        task = build_task(c.task, base, labels_of(c.task, examples), prompt.shape[0])
        if any(p.requires_grad for p in task.parameters()):
            raise ConfigError(f"{c.name}: the target task reads labels with a trained head; task-loss fine-tuning "
                              "needs a verbalizer task on the target model")
        key = f"source{i}"
        units[key] = TaskPrompt(key, _ProjectedPrompt(projector, prompt.to(base.device)), task).to(base.device)
        items.extend(prepare(task, key, examples))
    pm = PromptedModel(base)
    # The one training loop: the projector is the only trainable part (every unit's prompt is made by
    # it), at a constant learning rate; its checkpoints go to a scratch folder.
    config = TrainingConfig(steps=steps, batch_size=batch_size, lr=lr, seed=seed, warmup=0, schedule="constant",
                            eval_start=False, eval_every=steps, log_every=max(1, steps // 5))
    with tempfile.TemporaryDirectory(prefix="softprompt-projector-") as scratch:
        fit(pm, units, items, config, Path(scratch), progress=False, log=log, export=False)
    projector.meta.setdefault("finetune", []).append({"steps": steps, "lr": lr, "tasks": len(sources)})
    return projector


def _check_source(projector: Projector, art: PromptArtifact) -> None:
    want = projector.meta.get("source", {}).get("fingerprint")
    got = art.meta.get("base_model", {}).get("fingerprint")
    if want and not same_base(projector.meta["source"], art.meta.get("base_model", {})):
        raise ArtifactError(f"{art.path or 'artifact'}: made for {art.meta.get('base_model', {}).get('name')!r} "
                            f"(fingerprint {got}), but the projector maps from "
                            f"{projector.meta['source'].get('name')!r} (fingerprint {want})")


def _check_target(projector: Projector, base) -> None:
    target = projector.meta.get("target", {})
    # As artifacts are checked: a projector written before fingerprint versions records version 1.
    differs = fingerprint_mismatch(target, base) if target.get("fingerprint") else None
    if differs:
        raise ArtifactError(f"the projector maps to {target.get('name')!r} ({differs[0]}), "
                            f"not {base.name!r} ({differs[1]})")
    if projector.d_out != base.info.hidden_size:
        raise ArtifactError(f"the projector gives width {projector.d_out}, but {base.name!r} has hidden size "
                            f"{base.info.hidden_size}")


@torch.no_grad()
def project(artifact, projector: Projector | str | Path, target_base, *, task: dict | None = None,
            name: str | None = None) -> PromptArtifact:
    """A prompt of the projector's source model as a prompt of target_base (fits its fingerprint).

    A trained head of the source does not carry over (it read the source model's states); task: the
    task section to record (default: the source's, its head setting reset to auto)."""
    art = _as_artifact(artifact)
    projector = projector if isinstance(projector, Projector) else Projector.load(projector)
    _check_source(projector, art)
    _check_target(projector, target_base)
    prompt = _input_prompt(art)
    if prompt.shape[1] != projector.d_in:
        raise ArtifactError(f"{art.path or 'artifact'}: prompt width {prompt.shape[1]}, but the projector takes "
                            f"width {projector.d_in}")
    moved = projector(prompt).detach().cpu()
    source_task = dict(art.meta.get("task", {}))
    if task is None:
        task = {**source_task, "head": "auto"} if source_task.get("head") else source_task
    # A fresh prompt-tuning config: the source may be another input-prompt method, or started from files
    method_config = {"num_virtual_tokens": int(moved.shape[0]), "init": "vocab"}
    meta = {k: v for k, v in art.meta.items() if k not in ("library", "metrics", "shapes", "created")}
    meta.update({"method": "prompt_tuning", "method_config": method_config, "task": task,
                 "base_model": _model_facts(target_base), "name": name or meta.get("name"),
                 "transfer": {"strategy": "projection", "source": str(art.path or art.meta.get("name")),
                              "source_model": art.meta.get("base_model", {}),
                              "projector": {k: projector.meta.get(k) for k in ("kind", "fit", "finetune") if k in projector.meta}}})
    return PromptArtifact({"prompt.input": moved}, meta)
