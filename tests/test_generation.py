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


def _sequence_logprob(pm, prompts, row, key, new):
    """Summed log-probability of new tokens after row, by one full forward."""
    with torch.no_grad():
        if pm.info.kind is ModelKind.CAUSAL:
            full = pm.collate([row + new], [key], padding_side="right")
            hidden = pm.encode(full, prompts)
            n = len(row)
            logits = pm.lm_logits(hidden[0, n - 1 : n - 1 + len(new)])
        else:
            single = pm.collate([row], [key], padding_side="right")
            hidden = pm.encode(single, prompts)
            dec = torch.tensor([[pm.decoder_start_id()] + new[:-1]])
            logits = pm.decoder_logits(hidden, single.attention_mask, dec, rows=torch.tensor([0]))[0]
    logp = torch.log_softmax(logits.float(), -1)
    return float(logp[torch.arange(len(new)), torch.tensor(new)].sum())


def _mixed_rows(pm):
    texts = ["a warm and funny film", "boring", "the plot is dull and the acting is terrible"]
    keys = ["input", "deep", "both"]
    counts = {"input": 3, "deep": 0, "both": 2}
    tok = pm.base.tokenizer
    return [[virtual(k) for k in range(counts[key])] + tok(t).input_ids for t, key in zip(texts, keys)], keys


@pytest.mark.parametrize("family", CAUSAL + SEQ2SEQ)
def test_beam_search_one_beam_is_greedy_and_scores_match_the_full_forward(family):
    pm = PromptedModel(tiny_base(family))
    prompts = _prompts(pm)
    rows, keys = _mixed_rows(pm)
    batch = pm.collate(rows, keys, padding_side="left")
    greedy, _ = pm.generate(batch, prompts, max_new_tokens=4)
    one = pm.beam_search(batch, prompts, max_new_tokens=4, num_beams=1)
    assert [tokens for tokens, _ in one] == greedy.tolist()
    # with several beams the cache, masks and prefixes are reordered between steps; the reported
    # score of each row's best sequence must still be its true log-probability
    for (tokens, score), row, key in zip(pm.beam_search(batch, prompts, max_new_tokens=4, num_beams=3), rows, keys):
        assert len(tokens) == 4
        assert abs(score - _sequence_logprob(pm, prompts, row, key, tokens)) < 1e-4


@pytest.mark.parametrize("family", ["llama", "t5"])
def test_beam_search_with_a_beam_per_word_finds_the_best_two_token_continuation(family):
    pm = PromptedModel(tiny_base(family))
    prompts = _prompts(pm)
    rows, keys = _mixed_rows(pm)
    batch = pm.collate(rows, keys, padding_side="left")
    vocab = pm.base.model.get_output_embeddings().weight.shape[0]
    found = pm.beam_search(batch, prompts, max_new_tokens=2, num_beams=vocab)
    for (tokens, score), row, key in zip(found, rows, keys):
        first = torch.log_softmax(pm.generate(pm.collate([row], [key]), prompts, 1)[1][0, 0], -1)
        best = max(
            (float(first[a]) + _sequence_logprob(pm, prompts, row + [a], key, [b]) if pm.info.kind is ModelKind.CAUSAL
             else _sequence_logprob(pm, prompts, row, key, [a, b]), (a, b))
            for a in first.topk(3).indices.tolist() for b in range(vocab)
        )
        assert score >= best[0] - 1e-4
