"""DESIGN.md invariants of the core, on a tiny random model of every listed family."""

import pytest
import torch

from softprompt.core import PromptedModel, virtual
from softprompt.models import ModelKind
from tiny import FAMILIES, tiny_base

ATOL = 1e-5


def _rows(base, texts, n_virtual):
    """Token rows with n virtual tokens after the tokenizer's leading special tokens."""
    rows = []
    for text, n in zip(texts, n_virtual):
        ids = base.tokenizer(text).input_ids
        lead = 1 if ids and ids[0] in (base.tokenizer.cls_token_id, base.tokenizer.bos_token_id) and ids[0] is not None else 0
        rows.append(ids[:lead] + [virtual(k) for k in range(n)] + ids[lead:])
    return rows


def _outputs(pm, rows, keys, prompts, side):
    batch = pm.collate(rows, keys, padding_side=side)
    hidden = pm.encode(batch, prompts)
    result = []
    for i, row in enumerate(rows):
        real = batch.attention_mask[i].bool()
        h = hidden[i][real]
        if pm.info.kind is ModelKind.SEQ2SEQ:
            dec = torch.tensor([[pm.decoder_start_id(), 5, 7]])
            h = torch.cat([h.flatten(), pm.decoder_logits(hidden[i:i + 1], batch.attention_mask[i:i + 1], dec).flatten()])
        elif pm.info.kind is ModelKind.CAUSAL:
            h = torch.cat([h.flatten(), pm.lm_logits(hidden[i, batch.last_index[i]]).flatten()])
        result.append(h.flatten())
    return result


@pytest.fixture(params=sorted(FAMILIES))
def prompted(request):
    return PromptedModel(tiny_base(request.param))


def _prompts(d):
    g = torch.Generator().manual_seed(1)
    return {"A": torch.randn(3, d, generator=g), "B": torch.randn(5, d, generator=g)}


@pytest.mark.parametrize("side", ["left", "right"])
def test_mixed_batch_equals_single_task_batches(prompted, side):
    prompts = _prompts(prompted.info.hidden_size)
    texts = ["a warm and funny film", "boring", "the plot is dull and the acting is terrible", "great"]
    keys = ["A", "B", "B", None]
    rows = _rows(prompted.base, texts, [3, 5, 5, 0])
    mixed = _outputs(prompted, rows, keys, prompts, side)
    for task in ("A", "B", None):
        idx = [i for i, k in enumerate(keys) if k == task]
        alone = _outputs(prompted, [rows[i] for i in idx], [task] * len(idx), prompts, side)
        for j, i in enumerate(idx):
            torch.testing.assert_close(mixed[i], alone[j], atol=ATOL, rtol=0)


def test_padding_side_and_batch_composition_do_not_change_a_row(prompted):
    prompts = _prompts(prompted.info.hidden_size)
    texts = ["a warm and funny film", "boring", "what a wonderful surprise this movie was"]
    rows = _rows(prompted.base, texts, [3, 3, 3])
    single = [_outputs(prompted, [r], ["A"], prompts, "right")[0] for r in rows]
    for side in ("left", "right"):
        batched = _outputs(prompted, rows, ["A"] * 3, prompts, side)
        for a, b in zip(batched, single):
            torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


def test_prompt_changes_output_and_gets_gradient(prompted):
    d = prompted.info.hidden_size
    prompt = torch.randn(3, d, requires_grad=True)
    rows = _rows(prompted.base, ["a warm film"], [3])
    batch = prompted.collate(rows, ["A"])
    hidden = prompted.encode(batch, {"A": prompt})
    other = prompted.encode(batch, {"A": torch.randn(3, d)})
    assert not torch.allclose(hidden, other)
    (hidden * torch.randn_like(hidden)).sum().backward()  # a plain sum is constant after a LayerNorm
    assert prompt.grad is not None and prompt.grad.abs().sum() > 0


def test_base_stays_frozen(prompted):
    before = {k: v.clone() for k, v in prompted.base.model.state_dict().items()}
    prompt = torch.randn(3, prompted.info.hidden_size, requires_grad=True)
    optim = torch.optim.SGD([prompt], lr=1.0)
    batch = prompted.collate(_rows(prompted.base, ["a warm film"], [3]), ["A"])
    prompted.encode(batch, {"A": prompt}).pow(2).mean().backward()
    optim.step()
    assert all(p.grad is None and not p.requires_grad for p in prompted.base.model.parameters())
    for k, v in prompted.base.model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_row_asking_for_more_virtual_tokens_than_its_prompt_has_is_refused(prompted):
    batch = prompted.collate(_rows(prompted.base, ["a warm film"], [4]), ["A"])
    with pytest.raises(ValueError, match="more virtual tokens"):
        prompted.encode(batch, _prompts(prompted.info.hidden_size))
