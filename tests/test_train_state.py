"""Training checkpoints: exact resume, optimizer round trips, atomic overwrite, discovery, errors."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from transformers import get_linear_schedule_with_warmup

import softprompt.training.state as state_mod
from softprompt.errors import ArtifactError
from softprompt.training.state import (
    checkpoint_dir,
    latest_checkpoint,
    load_training_state,
    prune_checkpoints,
    save_training_state,
)


def assert_same(a, b, where="root"):
    """Deep equality that also checks container types, tensor dtypes and exact tensor bits."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for key in a:
            assert_same(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}/{i}")
    else:
        assert a == b, where


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(6, 3)
        self.prompt = nn.Parameter(torch.randn(6))
        self.drop = nn.Dropout(0.3)
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))

    def forward(self, x):
        self.seen += 1
        return self.linear(self.drop(x + self.prompt))


def build(seed):
    """Return (model, optimizer, scheduler, data generator) for a run seeded with ``seed``."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    model = Tiny()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.1)
    scheduler = get_linear_schedule_with_warmup(optimizer, num_warmup_steps=3, num_training_steps=20)
    return model, optimizer, scheduler, torch.Generator().manual_seed(seed + 1)


def train(model, optimizer, scheduler, data, steps):
    for _ in range(steps):
        x = torch.randn(4, 6, generator=data)
        # python and numpy RNG feed the loss too, so their restore is tested as well
        noise = float(np.random.rand()) + random.random()
        loss = (model(x) - noise).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), max_norm=0.5)
        optimizer.step()
        scheduler.step()


def test_resume_is_bit_identical(tmp_path):
    model, optimizer, scheduler, data = build(0)
    train(model, optimizer, scheduler, data, 20)

    model_b, optimizer_b, scheduler_b, data_b = build(0)
    train(model_b, optimizer_b, scheduler_b, data_b, 8)
    lr_at_save = scheduler_b.get_last_lr()
    ckpt = checkpoint_dir(tmp_path, 8)
    save_training_state(ckpt, modules={"model": model_b}, optimizer=optimizer_b, scheduler=scheduler_b,
                        step=8, extra={"best": 0.5, "history": [1.0, 2]}, generator_states={"data": data_b})

    model_c, optimizer_c, scheduler_c, data_c = build(123)  # different init, RNG and data stream
    step, extra = load_training_state(ckpt, modules={"model": model_c}, optimizer=optimizer_c,
                                      scheduler=scheduler_c, generator_states={"data": data_c})
    assert (step, extra) == (8, {"best": 0.5, "history": [1.0, 2]})
    assert scheduler_c.get_last_lr() == lr_at_save
    assert optimizer_c.param_groups[0]["lr"] == lr_at_save[0]
    step_c = optimizer_c.state_dict()["state"][0]["step"]
    assert isinstance(step_c, torch.Tensor) and step_c.dtype == torch.float32
    train(model_c, optimizer_c, scheduler_c, data_c, 12)

    assert_same(model.state_dict(), model_c.state_dict())
    assert_same(optimizer.state_dict(), optimizer_c.state_dict())
    assert scheduler.get_last_lr() == scheduler_c.get_last_lr()


def stepped(make_optimizer, steps=3):
    params = [nn.Parameter(torch.randn(4, 3)), nn.Parameter(torch.randn(3))]
    optimizer = make_optimizer(params)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn_like(p)
        optimizer.step()
    return optimizer


@pytest.mark.parametrize("make_optimizer", [
    lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True),
    lambda ps: torch.optim.Adam(ps, lr=0.01, amsgrad=True, betas=(0.8, 0.99)),
], ids=["sgd-momentum", "adam-amsgrad"])
def test_optimizer_state_round_trip(tmp_path, make_optimizer):
    original = stepped(make_optimizer)
    fresh = stepped(make_optimizer, steps=0)
    save_training_state(tmp_path / "c", modules={}, optimizer=original, scheduler=None, step=3)
    load_training_state(tmp_path / "c", modules={}, optimizer=fresh, scheduler=None)
    assert_same(original.state_dict(), fresh.state_dict())


def test_nested_state_and_extra_keep_types(tmp_path):
    optimizer = stepped(lambda ps: torch.optim.Adam(ps))
    # Adafactor-style nested state (torch itself casts state tensors to the param dtype on load)
    optimizer.state[optimizer.param_groups[0]["params"][0]]["factored"] = {
        "row": [torch.ones(4), (torch.zeros(3), 2)], 7: None}
    extra = {"pair": (1, 2.0), "by_epoch": {1: "a"}, "__tuple__": "not a tag", "inf": float("inf"),
             "ema": torch.arange(3, dtype=torch.int16)}
    save_training_state(tmp_path / "c", modules={}, optimizer=optimizer, scheduler=None, step=1, extra=extra)
    fresh = stepped(lambda ps: torch.optim.Adam(ps), steps=0)
    _, loaded = load_training_state(tmp_path / "c", modules={}, optimizer=fresh, scheduler=None)
    assert_same(optimizer.state_dict(), fresh.state_dict())
    assert_same(extra, loaded)


def save_small(path, step, weight=1.0):
    module = nn.Linear(2, 2)
    nn.init.constant_(module.weight, weight)
    return save_training_state(path, modules={"m": module}, optimizer=torch.optim.SGD(module.parameters()),
                               scheduler=None, step=step)


def load_small(path):
    module = nn.Linear(2, 2)
    step, _ = load_training_state(path, modules={"m": module}, optimizer=torch.optim.SGD(module.parameters()),
                                  scheduler=None)
    return step, module.weight.detach()


@pytest.mark.parametrize("target", ["tensors_file", "json_file", "rename_new_in"])
def test_crash_during_overwrite_keeps_old_checkpoint(tmp_path, monkeypatch, target):
    ckpt = checkpoint_dir(tmp_path, 5)
    save_small(ckpt, 5, weight=1.0)
    real_replace, real_write = state_mod.os.replace, state_mod.write_durably

    def boom(*args, **kwargs):
        name = Path(args[0]).name if target == "rename_new_in" else ""
        if target == "rename_new_in" and (not name.startswith(".step-") or name.endswith("-old")):
            return real_replace(*args)  # moving the old checkpoint aside and back works; moving the new in fails
        raise OSError(28, "No space left on device")

    def write(path, data):
        if path.name == state_mod.JSON_FILE:
            path.write_bytes(data[:20])  # leave a half-written file behind
            boom()
        elif target == "tensors_file":
            boom()
        real_write(path, data)

    if target == "rename_new_in":
        monkeypatch.setattr(state_mod.os, "replace", boom)
    else:
        monkeypatch.setattr(state_mod, "write_durably", write)
    with pytest.raises(ArtifactError, match=r"cannot write training checkpoint .*step-000005 \(No space left on device\); "
                                            "the previous checkpoint is kept$"):
        save_small(ckpt, 5, weight=2.0)
    monkeypatch.undo()

    assert [p.name for p in ckpt.parent.iterdir()] == ["step-000005"]
    assert latest_checkpoint(tmp_path) == ckpt
    step, weight = load_small(ckpt)
    assert step == 5 and torch.equal(weight, torch.ones(2, 2))


def test_overwrite_replaces_checkpoint(tmp_path):
    ckpt = tmp_path / "c"
    save_small(ckpt, 1, weight=1.0)
    save_small(ckpt, 2, weight=3.0)
    assert [p.name for p in tmp_path.iterdir()] == ["c"]
    step, weight = load_small(ckpt)
    assert step == 2 and torch.equal(weight, torch.full((2, 2), 3.0))


def test_latest_and_prune(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    for step in (3, 12, 1000000, 40):
        save_small(checkpoint_dir(tmp_path, step), step)
    root = tmp_path / "checkpoints"
    assert checkpoint_dir(tmp_path, 12) == root / "step-000012"
    assert latest_checkpoint(tmp_path) == root / "step-1000000"
    (root / "step-1000000" / "state.json").write_text("{truncated")  # a corrupt newest one is skipped
    (root / "step-2000000").mkdir()  # so is one without any files
    (root / ".step-000050.tmp-abc").mkdir()  # leftover of a killed save
    (root / "notes").mkdir()
    assert latest_checkpoint(tmp_path) == root / "step-000040"

    removed = prune_checkpoints(tmp_path, keep=2)
    assert sorted(p.name for p in removed) == [".step-000050.tmp-abc", "step-000003", "step-000012", "step-000040"]
    assert sorted(p.name for p in root.iterdir()) == ["notes", "step-1000000", "step-2000000"]
    assert prune_checkpoints(tmp_path, keep=0) and latest_checkpoint(tmp_path) is None
    with pytest.raises(ValueError):
        prune_checkpoints(tmp_path, keep=-1)


def corrupt_json(path):
    (path / "state.json").write_text("not json")


def wrong_version(path):
    document = json.loads((path / "state.json").read_text())
    document["version"] = 99
    (path / "state.json").write_text(json.dumps(document))


def truncate_tensors(path):
    data = (path / "state.safetensors").read_bytes()
    (path / "state.safetensors").write_bytes(data[: len(data) // 2])


def drop_tensors(path):
    (path / "state.safetensors").unlink()


@pytest.mark.parametrize("damage, reason", [
    (None, "No such file"), (corrupt_json, "Expecting value"), (wrong_version, "format version 99"),
    (truncate_tensors, ""), (drop_tensors, "state.safetensors"),
])
def test_bad_checkpoint_raises_artifact_error(tmp_path, damage, reason):
    ckpt = tmp_path / "c"
    if damage is not None:
        save_small(ckpt, 1)
        damage(ckpt)
    with pytest.raises(ArtifactError, match=f"cannot load training checkpoint {ckpt}: .*{reason}") as info:
        load_small(ckpt)
    assert "\n" not in str(info.value)


def test_module_mismatch_raises_artifact_error(tmp_path):
    save_small(tmp_path / "c", 1)
    module = nn.Linear(3, 2)
    with pytest.raises(ArtifactError, match="size mismatch"):
        load_training_state(tmp_path / "c", modules={"m": module}, optimizer=torch.optim.SGD(module.parameters()),
                            scheduler=None)
    with pytest.raises(ArtifactError, match=r"holds modules \['m'\], expected \['other'\]"):
        load_training_state(tmp_path / "c", modules={"other": module},
                            optimizer=torch.optim.SGD(module.parameters()), scheduler=None)
    with pytest.raises(ArtifactError, match="no saved state for generator"):
        load_training_state(tmp_path / "c", modules={"m": nn.Linear(2, 2)},
                            optimizer=torch.optim.SGD(nn.Linear(2, 2).parameters()), scheduler=None,
                            generator_states={"data": torch.Generator()})


def test_module_never_unpickles():
    source = Path(state_mod.__file__).read_text(encoding="utf-8")
    assert "pickle" not in source
    assert "torch.load" not in source
