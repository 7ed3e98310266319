"""CUDA paths: bf16 base with float32 prompts, bf16/fp16 autocast training, mixed batches on the GPU.
Run with `pytest -m gpu`."""

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
    # no dev set: the artifact is the final prompt (with one, a tiny random model may keep its start)
    config["data"] = {"train": config["data"]["train"], "dev_fraction": 0.0}
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


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_autocast_training_on_cuda_keeps_float32_prompts_and_learns(tmp_path, precision):
    """training.precision on a float32 base: bf16 autocast, or fp16 autocast with a gradient scaler
    (whose state is checkpointed); the prompt stays float32 and the loss goes down."""
    config = run_config(tmp_path, "llama", steps=30, eval_every=10, lr=0.1, precision=precision)
    config["model"].update(device="cuda")
    config["data"] = {"train": config["data"]["train"], "dev_fraction": 0.0}
    result = api.train(config, progress=False, log=lambda s: None)
    tensors = PromptArtifact.load(result.artifact).tensors
    assert all(t.dtype == torch.float32 for t in tensors.values())
    losses = [h["loss"] for h in result.history if "loss" in h]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]


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


# ---- the engine on CUDA -----------------------------------------------------------------------------

def _engine_prompts(base):
    from softprompt.core import PromptTensors

    info = base.info
    g = torch.Generator().manual_seed(2)
    deep = {"decoder": torch.randn(info.num_layers, 2, info.num_kv_heads, 3, info.head_dim, generator=g) * 0.5}
    return {"input": PromptTensors(input=torch.randn(3, info.hidden_size, generator=g)),
            "deep": PromptTensors(deep=deep), "none": None}


@pytest.mark.parametrize("family,compiled", [("llama", True), ("llama", False), ("qwen2", False), ("gpt2", False),
                                             ("gpt_neox", False)])
def test_cuda_graph_decoding_equals_eager_decoding(family, compiled):
    """bf16 base, float32 prompts: decoding replayed from CUDA graphs (of the torch.compile'd step, or
    of the plain one) gives the tokens of the eager path."""
    from softprompt.engine import Engine, SamplingParams

    base = tiny_base(family)
    base.model.to("cuda", torch.bfloat16)
    prompts = _engine_prompts(base)
    tok = base.tokenizer
    texts = ["a warm and funny film", "boring", "the plot is dull and the acting is terrible", "great"]
    keys = ["input", "deep", "none", "input"]
    rows = [([virtual(k) for k in range(3)] if key == "input" else []) + tok(t).input_ids for t, key in zip(texts, keys)]
    outputs = {}
    for graphs in (False, True):
        with Engine(base, cuda_graphs=graphs, compile_decoding=compiled) as engine:
            entries = {k: engine.add_prompt(k, p, fixed_start=[virtual(0), virtual(1)] if k == "input" else None)
                       for k, p in prompts.items()}
            params = SamplingParams(max_new_tokens=12, ignore_eos=True, return_logits=True)
            handles = [engine.submit_generate(entries[k], r, params) for k, r in zip(keys, rows)]
            outputs[graphs] = [h.result() for h in handles]
            if graphs and family != "gpt2":  # GPT-2's forward copies a host tensor: it falls back to eager steps
                assert engine._slots.graphs_enabled, "CUDA graph capture failed"
                assert engine._slots.compile_enabled == compiled, "torch.compile of the step failed"
    for eager, graphed in zip(outputs[False], outputs[True]):
        assert eager.token_ids == graphed.token_ids
        torch.testing.assert_close(eager.logits, graphed.logits, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_cuda_engine_scores_and_compiled_prompts_equal_the_uncached_path(family):
    from softprompt.engine import Engine, SamplingParams

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    base = tiny_base(family)
    base.model.to("cuda")
    pm = PromptedModel(base)
    prompt = _engine_prompts(base)["input"]
    tok = base.tokenizer
    start = [virtual(0), virtual(1), virtual(2)] + tok("review :", add_special_tokens=False).input_ids
    rows = [start + tok(t, add_special_tokens=False).input_ids for t in ("a warm film", "the plot is dull and slow")]
    with Engine(pm) as engine:
        entry = engine.add_prompt("p", prompt, fixed_start=start)
        results = [engine.submit_generate(entry, r, SamplingParams(max_new_tokens=3, ignore_eos=True,
                                                                   return_logits=True)).result() for r in rows]
        assert engine._compiled(entry) is not None
    for row, result in zip(rows, results):
        with torch.no_grad():
            full = pm.collate([row + result.token_ids], ["p"], padding_side="right")
            hidden = pm.encode(full, {"p": prompt})
            logits = pm.lm_logits(hidden[0, len(row) - 1: len(row) + 2]).float().cpu()
        torch.testing.assert_close(result.logits, logits, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("offload", [False, True], ids=["on-gpu", "offloaded"])
def test_a_sharded_base_on_cuda_gives_the_whole_models_logits_and_gradients(tmp_path, offload):
    """shard_base's CUDA path in a one-process NCCL group: the blocks sharded (FSDP2) on the GPU or
    offloaded to CPU memory, the rest moved whole to the GPU; logits and the prompt's gradient equal
    those of the unsharded model. (Several processes are tests/test_distributed.py's, on gloo.)"""
    import os

    import torch.distributed as dist

    from softprompt.models import load_base
    from softprompt.training.distributed import Processes, Sharding, shard_base
    from tiny import save_tiny

    save_tiny("llama", tmp_path / "tiny-llama")
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29561")
    dist.init_process_group("nccl", rank=0, world_size=1)
    try:
        whole = load_base(str(tmp_path / "tiny-llama"), device="cuda", reuse=False)
        sharded = load_base(str(tmp_path / "tiny-llama"), device="cpu", reuse=False)
        shard_base(sharded.model, Processes(0, 1, torch.device("cuda", 0), Sharding("FSDP", offload=offload)))
        assert sharded.device.type == "cuda"

        def run(base):
            prompt = torch.nn.Parameter(torch.full((1, 3, base.info.hidden_size), 0.01, device="cuda"))
            embeds = torch.cat([prompt, base.model.get_input_embeddings()(torch.tensor([[5, 6, 7]], device="cuda"))], 1)
            logits = base.model(inputs_embeds=embeds).logits
            logits.float().logsumexp(-1).sum().backward()
            return logits.detach(), prompt.grad

        (a, grad_a), (b, grad_b) = run(whole), run(sharded)
        torch.testing.assert_close(b, a, atol=1e-5, rtol=0)
        torch.testing.assert_close(grad_b, grad_a, atol=1e-5, rtol=0)
    finally:
        dist.destroy_process_group()
