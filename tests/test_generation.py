"""Generation invariant: decoding step by step with the engine's caches (slots for causal LMs,
transformers' cache for encoder-decoders) equals the full forward of the same sequence, with input
and deep prompts mixed per row, on every decoder family."""

import pytest
import torch

from softprompt.core import PromptedModel, PromptTensors, virtual
from softprompt.engine import SamplingParams, generate_rows
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


COUNTS = {"input": 3, "deep": 0, "both": 2, None: 0}


def _rows(pm, texts, keys):
    tok = pm.base.tokenizer
    return [[virtual(k) for k in range(COUNTS[key])] + tok(t).input_ids for t, key in zip(texts, keys)]


def _full_logits(pm, prompts, row, key, new):
    """Next-token logits after row + new[:j] for every j, by one full forward (no cache)."""
    with torch.no_grad():
        if pm.info.kind is ModelKind.CAUSAL:
            full = pm.collate([row + new], [key], padding_side="right")
            hidden = pm.encode(full, prompts)
            n = len(row)
            return pm.lm_logits(hidden[0, n - 1 : n - 1 + len(new)]).float()
        single = pm.collate([row], [key], padding_side="right")
        hidden = pm.encode(single, prompts)
        dec = torch.tensor([[pm.decoder_start_id()] + new[:-1]])
        return pm.decoder_logits(hidden, single.attention_mask, dec, rows=torch.tensor([0]))[0].float()


@pytest.mark.parametrize("family", CAUSAL + SEQ2SEQ)
def test_cached_greedy_decoding_equals_the_full_forward(family):
    pm = PromptedModel(tiny_base(family))
    prompts = _prompts(pm)
    keys = ["input", "deep", "both", None]
    rows = _rows(pm, ["a warm and funny film", "boring", "the plot is dull and the acting is terrible", "great"], keys)
    params = SamplingParams(max_new_tokens=5, ignore_eos=True, return_logits=True)
    results = generate_rows(pm, rows, keys, prompts, params)
    for row, key, result in zip(rows, keys, results):
        assert len(result.token_ids) == 5 and result.finish_reason == "length"
        full = _full_logits(pm, prompts, row, key, result.token_ids)
        torch.testing.assert_close(result.logits, full, atol=1e-5, rtol=0)
        assert full.argmax(-1).tolist() == result.token_ids


def _sequence_logprob(pm, prompts, row, key, new):
    logp = torch.log_softmax(_full_logits(pm, prompts, row, key, new), -1)
    return float(logp[torch.arange(len(new)), torch.tensor(new)].sum())


def _mixed_rows(pm):
    keys = ["input", "deep", "both"]
    return _rows(pm, ["a warm and funny film", "boring", "the plot is dull and the acting is terrible"], keys), keys


@pytest.mark.parametrize("family", CAUSAL + SEQ2SEQ)
def test_beam_search_one_beam_is_greedy_and_scores_match_the_full_forward(family):
    pm = PromptedModel(tiny_base(family))
    prompts = _prompts(pm)
    rows, keys = _mixed_rows(pm)
    greedy = generate_rows(pm, rows, keys, prompts, SamplingParams(max_new_tokens=4, ignore_eos=True))
    one = generate_rows(pm, rows, keys, prompts, SamplingParams(max_new_tokens=4, num_beams=1, ignore_eos=True))
    assert [r.token_ids for r in one] == [r.token_ids for r in greedy]
    # with several beams the slots (or cache), masks and prefixes are reordered between steps; the
    # reported score of each row's best sequence must still be its true log-probability
    beams = generate_rows(pm, rows, keys, prompts, SamplingParams(max_new_tokens=4, num_beams=3, ignore_eos=True))
    for result, row, key in zip(beams, rows, keys):
        assert len(result.token_ids) == 4
        assert abs(result.score - _sequence_logprob(pm, prompts, row, key, result.token_ids)) < 1e-4


@pytest.mark.parametrize("family", ["llama", "t5"])
def test_beam_search_with_a_beam_per_word_finds_the_best_two_token_continuation(family):
    pm = PromptedModel(tiny_base(family))
    prompts = _prompts(pm)
    rows, keys = _mixed_rows(pm)
    vocab = pm.base.model.get_output_embeddings().weight.shape[0]
    found = generate_rows(pm, rows, keys, prompts, SamplingParams(max_new_tokens=2, num_beams=vocab, ignore_eos=True),
                          max_running=3 * vocab, max_batch_rows=3 * vocab)
    for result, row, key in zip(found, rows, keys):
        first = torch.log_softmax(_full_logits(pm, prompts, row, key, [0])[0], -1)
        best = max(
            (float(first[a]) + _sequence_logprob(pm, prompts, row + [a], key, [b]) if pm.info.kind is ModelKind.CAUSAL
             else _sequence_logprob(pm, prompts, row, key, [a, b]), (a, b))
            for a in first.topk(3).indices.tolist() for b in range(vocab)
        )
        assert result.score >= best[0] - 1e-4
