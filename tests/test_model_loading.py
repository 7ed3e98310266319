"""Models a user already has: Hub ids (downloaded when the Hub is reachable, else from the cache with
a one-line error naming the id), transformers device maps, and weights read straight into bf16/fp16."""

import pytest
import torch

from softprompt.errors import ModelError
from softprompt.models import loading
from tiny import save_tiny


def test_an_uncached_hub_id_offline_names_the_id_and_hf_hub_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError) as caught:
        loading.load_base("softprompt-tests/no-such-model", reuse=False)
    message = str(caught.value)
    assert "'softprompt-tests/no-such-model'" in message and "HF_HUB_OFFLINE" in message
    assert "\n" not in message


def test_an_unreachable_hub_fails_at_once_without_retrying(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(loading, "hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(ModelError, match="'softprompt-tests/no-such-model'.*Hub is unreachable from here"):
        loading.load_base("softprompt-tests/no-such-model", reuse=False)


def test_the_cli_forces_no_offline_mode(monkeypatch):
    import softprompt.cli as cli

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(cli, "app", lambda: None)
    cli.main()
    import os

    assert "HF_HUB_OFFLINE" not in os.environ


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_weights_load_straight_into_half_precision(tmp_path, dtype):
    path = save_tiny("llama", tmp_path / "tiny")
    base = loading.load_base(path, dtype=dtype, reuse=False)
    assert {p.dtype for p in base.model.parameters()} == {getattr(torch, dtype)}


def test_a_device_map_places_the_model(tmp_path):
    path = save_tiny("llama", tmp_path / "tiny")
    base = loading.load_base(path, device_map="cpu", reuse=False)
    assert base.device.type == "cpu"
    assert getattr(base.model, "hf_device_map", None) in ({"": "cpu"}, {"": torch.device("cpu")}, None)


@pytest.mark.parametrize("family", ["llama", "t5", "bert"])
def test_a_skeleton_has_the_loaded_models_structure_and_no_weights(tmp_path, family):
    """What the other processes of a sharded run build while the main one reads the weights."""
    save_tiny(family, tmp_path / family)
    whole = loading.load_base(str(tmp_path / family), dtype="bfloat16", reuse=False)
    skeleton = loading.skeleton_base(str(tmp_path / family), model_class=type(whole.model).__name__,
                                     fingerprint=whole.fingerprint, weights=whole.weights,
                                     kind=whole.info.kind.value, dtype="bfloat16")
    shapes = lambda base: {n: (tuple(p.shape), p.dtype) for n, p in base.model.named_parameters()}  # noqa: E731
    assert shapes(skeleton) == shapes(whole) and skeleton.info == whole.info
    assert all(p.is_meta and not p.requires_grad for p in skeleton.model.parameters())
    assert skeleton.fingerprint_meta() == whole.fingerprint_meta()
    assert skeleton.tokenizer("a warm film")["input_ids"] == whole.tokenizer("a warm film")["input_ids"]
