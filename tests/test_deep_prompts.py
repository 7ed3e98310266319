"""Deep prompts (per-layer key/value prefixes) in the core, per row, on every listed family."""

import pytest
import torch

from softprompt.core import PromptedModel, PromptTensors, virtual
from softprompt.models import ModelKind
from tiny import FAMILIES, tiny_base

ATOL = 1e-5


def _deep(pm, n, seed, stacks=None):
    info = pm.info
    g = torch.Generator().manual_seed(seed)
    support = pm.deep_support()
    stacks = stacks or support.stacks
    return {s: torch.randn(info.num_layers, 2, info.num_kv_heads, n, info.head_dim, generator=g) for s in stacks}


def _rows(base, texts, n_virtual):
    rows = []
    for text, n in zip(texts, n_virtual):
        ids = base.tokenizer(text).input_ids
        rows.append([virtual(k) for k in range(n)] + ids)
    return rows


def _outputs(pm, rows, keys, prompts, side):
    batch = pm.collate(rows, keys, padding_side=side)
    hidden = pm.encode(batch, prompts)
    out = []
    for i in range(len(rows)):
        h = hidden[i][batch.attention_mask[i].bool()].flatten()
        if pm.info.kind is ModelKind.SEQ2SEQ:
            dec = torch.tensor([[pm.decoder_start_id(), 5, 7]])
            # re-encode alone-style: decoder for row i only, with row i's deep prompts
            logits = pm.decoder_logits(hidden[i:i + 1], batch.attention_mask[i:i + 1], dec, rows=torch.tensor([i]))
            h = torch.cat([h, logits.flatten()])
        out.append(h)
    return out


@pytest.fixture(params=sorted(FAMILIES))
def pm(request):
    return PromptedModel(tiny_base(request.param))


@pytest.mark.parametrize("side", ["left", "right"])
def test_mixed_deep_and_input_prompts_equal_each_task_alone(pm, side):
    d = pm.info.hidden_size
    g = torch.Generator().manual_seed(3)
    prompts = {
        "deep4": PromptTensors(deep=_deep(pm, 4, 1)),
        "deep2": PromptTensors(deep=_deep(pm, 2, 2)),
        "input3": PromptTensors(input=torch.randn(3, d, generator=g)),
        "both": PromptTensors(input=torch.randn(2, d, generator=g), deep=_deep(pm, 3, 4)),
    }
    texts = ["a warm and funny film", "boring", "the plot is dull and the acting is terrible", "great", "good"]
    keys = ["deep4", "input3", "deep2", "both", None]
    rows = _rows(pm.base, texts, [0, 3, 0, 2, 0])
    with torch.no_grad():
        mixed = _outputs(pm, rows, keys, prompts, side)
        for i in range(len(rows)):
            (alone,) = _outputs(pm, [rows[i]], [keys[i]], prompts, side)
            torch.testing.assert_close(mixed[i], alone, atol=ATOL, rtol=0)


def test_deep_prompt_changes_outputs_and_gets_gradients(pm):
    deep = {s: t.requires_grad_() for s, t in _deep(pm, 3, 5).items()}
    rows = _rows(pm.base, ["a warm film"], [0])
    batch = pm.collate(rows, ["p"])
    with_prefix = pm.encode(batch, {"p": PromptTensors(deep=deep)})
    without = pm.encode(pm.collate(rows, [None]), {})
    assert not torch.allclose(with_prefix, without, atol=1e-4)
    (with_prefix * torch.randn_like(with_prefix)).sum().backward()
    stack = "decoder" if pm.info.kind is ModelKind.CAUSAL else "encoder"
    assert deep[stack].grad is not None and deep[stack].grad.abs().sum() > 0


def test_encoder_prefix_changes_the_encoder_output_of_an_encoder_decoder():
    for family in ("t5", "bart"):
        pm = PromptedModel(tiny_base(family))
        rows = _rows(pm.base, ["a warm film"], [0])
        plain = pm.encode(pm.collate(rows, [None]), {})
        prefixed = pm.encode(pm.collate(rows, ["p"]), {"p": PromptTensors(deep=_deep(pm, 3, 6, ["encoder"]))})
        assert (plain - prefixed).abs().max() > 1e-3, family


def test_rows_without_a_prompt_are_unchanged_by_deep_support(pm):
    rows = _rows(pm.base, ["a warm film", "boring"], [0, 0])
    before = pm.encode(pm.collate(rows, [None, None]), {})
    pm.deep_support()  # switches the attention implementation
    after = pm.encode(pm.collate(rows, [None, None]), {})
    torch.testing.assert_close(before, after, atol=ATOL, rtol=0)


@pytest.mark.parametrize("family", ["llama", "gpt2", "bert", "bart", "t5"])
def test_gradient_checkpointing_gives_the_same_prefix_gradients(family):
    pm = PromptedModel(tiny_base(family))
    for module in pm.model.modules():  # no dropout: checkpointing replays the RNG differently
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        for name in ("dropout", "activation_dropout", "attention_dropout"):
            if isinstance(getattr(module, name, None), float):
                setattr(module, name, 0.0)
    pm.model.train()  # checkpointing only runs in training mode
    rows = _rows(pm.base, ["a warm film", "the plot is dull"], [0, 0])
    stack = "decoder" if pm.info.kind is ModelKind.CAUSAL else "encoder"
    grads = []
    for checkpointing in (False, True):
        if checkpointing:
            pm.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        deep = {s: t.requires_grad_() for s, t in _deep(pm, 3, 7).items()}
        hidden = pm.encode(pm.collate(rows, ["p", "p"]), {"p": PromptTensors(deep=deep)})
        weights = torch.randn(hidden.shape, generator=torch.Generator().manual_seed(0))
        (hidden * weights).sum().backward()
        grads.append(deep[stack].grad.clone())
    assert pm.model.is_gradient_checkpointing
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family", ["llama", "bert", "t5"])
def test_a_new_wrapper_without_prefixes_is_not_touched_by_an_earlier_prefixed_batch(family):
    """Prefix state lives on the shared base model; a later batch without prefixes, through another
    PromptedModel over the same model, must see none of the earlier batch's prefixes."""
    base = tiny_base(family)
    first, second = PromptedModel(base), PromptedModel(base)
    rows = _rows(base, ["a warm and funny film", "boring", "great"], [0, 0, 0])
    clean = _outputs(second, rows, [None] * 3, {}, "right")
    _outputs(first, rows[:2], ["deep", "deep"], {"deep": PromptTensors(deep=_deep(first, 3, 0))}, "right")
    again = _outputs(second, rows, [None] * 3, {}, "right")
    for a, b in zip(clean, again):
        assert torch.allclose(a, b, atol=ATOL)


def test_a_family_without_attention_interface_fails_when_the_deep_method_is_set_up():
    """XLNet's relative attention does not go through transformers' AttentionInterface, so prefixes
    cannot be injected: the deep method must say so when it is initialised, before any training step.
    Input prompts still work on it."""
    import transformers

    from softprompt.api import method_config
    from softprompt.errors import ConfigError
    from softprompt.models import wrap_model
    from tiny import tiny_tokenizer

    tokenizer = tiny_tokenizer("gpt2")
    config = transformers.XLNetConfig(vocab_size=len(tokenizer), d_model=32, n_layer=2, n_head=4, d_inner=64)
    base = wrap_model(transformers.XLNetLMHeadModel(config).eval(), tokenizer, "tiny-xlnet", kind=ModelKind.CAUSAL)
    for method in ({"name": "ptuning_v2", "prefix_length": 4, "init": "random"},
                   {"name": "prefix_tuning", "prefix_length": 4, "init_text": "good bad"}):
        cls, cfg = method_config(method)
        with pytest.raises(ConfigError, match="model family 'xlnet': deep prompts need attention modules"):
            cls.initialise(cfg, base)
    cls, cfg = method_config({"name": "prompt_tuning", "num_virtual_tokens": 4, "init": "vocab"})
    assert cls.initialise(cfg, base).prompt_tensors().input.shape == (4, 32)
