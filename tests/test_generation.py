"""Generation invariant: cached step-by-step decoding equals the full forward of the same sequence,
with input and deep prompts mixed per row, on every decoder family."""

import pytest
import torch

from softprompt.core import PromptedModel, PromptTensors, virtual
from softprompt.models import ModelKind
from tiny import CAUSAL, SEQ2SEQ, tiny_base


def _prompts(pm):
    info = pm.info
    g = torch.Generator().manual_seed(11)
    stacks = pm.deep_support().stacks

    def deep(n):
        return {s: torch.randn(info.num_layers, 2, info.num_kv_heads, n, info.head_dim, generator=g) * 0.5 for s in stacks}

    return {
        "input": PromptTensors(input=torch.randn(3, info.hidden_size, generator=g)),
        "deep": PromptTensors(deep=deep(4)),
        "both": PromptTensors(input=torch.randn(2, info.hidden_size, generator=g), deep=deep(2)),
    }


@pytest.mark.parametrize("family", CAUSAL + SEQ2SEQ)
def test_cached_greedy_decoding_equals_the_full_forward(family):
    pm = PromptedModel(tiny_base(family))
    prompts = _prompts(pm)
    texts = ["a warm and funny film", "boring", "the plot is dull and the acting is terrible", "great"]
    keys = ["input", "deep", "both", None]
    counts = {"input": 3, "deep": 0, "both": 2, None: 0}
    tok = pm.base.tokenizer
    rows = [[virtual(k) for k in range(counts[key])] + tok(t).input_ids for t, key in zip(texts, keys)]
    batch = pm.collate(rows, keys, padding_side="left")
    new, step_logits = pm.generate(batch, prompts, max_new_tokens=5)
    assert new.shape == (4, 5)
    with torch.no_grad():
        for i in range(len(rows)):
            if pm.info.kind is ModelKind.CAUSAL:
                full_row = rows[i] + new[i].tolist()
                full = pm.collate([full_row], [keys[i]], padding_side="right")
                hidden = pm.encode(full, prompts)
                n = len(rows[i])
                logits = pm.lm_logits(hidden[0, n - 1 : n + 4])
            else:
                single = pm.collate([rows[i]], [keys[i]], padding_side="right")
                hidden = pm.encode(single, prompts)
                dec = torch.tensor([[pm.decoder_start_id()] + new[i, :4].tolist()])
                logits = pm.decoder_logits(hidden, single.attention_mask, dec, rows=torch.tensor([0]))[0]
            torch.testing.assert_close(step_logits[i], logits.float(), atol=1e-5, rtol=0)
            assert torch.equal(logits.argmax(-1), new[i])
