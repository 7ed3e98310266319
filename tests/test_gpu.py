"""CUDA paths: bf16 base with float32 prompts, mixed batches on the GPU. Run with `pytest -m gpu`."""

import pytest
import torch

from softprompt import api
from softprompt.core import PromptArtifact, PromptedModel, virtual
from helpers import run_config
from tiny import FAMILIES, tiny_base

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_bf16_base_trains_a_float32_prompt_on_cuda(tmp_path):
    from softprompt.methods import PromptTuning, PromptTuningConfig

    config = run_config(tmp_path, "llama", steps=20, eval_every=10, lr=0.01)
    config["model"].update(dtype="bfloat16", device="cuda")
    result = api.train(config, progress=False, log=lambda s: None)
    base = api.load_model({"name": config["model"]["name"], "dtype": "bfloat16", "device": "cuda"})
    assert base.dtype == torch.bfloat16 and base.device.type == "cuda"
    tensors = PromptArtifact.load(result.artifact).tensors
    assert all(t.dtype == torch.float32 for t in tensors.values())
    initial = PromptTuning.initialise(PromptTuningConfig(num_virtual_tokens=4, init="vocab"), base).embedding
    moved = (tensors["prompt.input"] - initial.detach().cpu()).abs()
    assert moved.max() > 0
    losses = [h["loss"] for h in result.history if "loss" in h]
    assert all(torch.isfinite(torch.tensor(losses)))
    preds = api.predict(result.artifact, ["a warm and funny film"], base=base)
    assert abs(sum(preds[0].probabilities.values()) - 1) < 1e-4


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_mixed_batch_on_cuda_matches_single_rows(family):
    torch.backends.cuda.matmul.allow_tf32 = False
    base = tiny_base(family)
    base.model.to("cuda")
    pm = PromptedModel(base)
    g = torch.Generator().manual_seed(0)
    prompts = {"A": torch.randn(3, base.info.hidden_size, generator=g).cuda(),
               "B": torch.randn(5, base.info.hidden_size, generator=g).cuda()}
    texts, keys, n = ["a warm and funny film", "boring", "the plot is dull and the acting is terrible"], ["A", "B", "A"], [3, 5, 3]
    rows = [[virtual(k) for k in range(m)] + base.tokenizer(t).input_ids for t, m in zip(texts, n)]
    with torch.no_grad():
        batch = pm.collate(rows, keys, "left")
        mixed = pm.encode(batch, prompts)
        for i in range(3):
            alone_batch = pm.collate([rows[i]], [keys[i]], "left")
            alone = pm.encode(alone_batch, prompts)[0]
            got = mixed[i][batch.attention_mask[i].bool()]
            torch.testing.assert_close(got, alone[alone_batch.attention_mask[0].bool()], atol=1e-4, rtol=1e-4)
