"""Masked-LM verbalizers: encoders loaded with their MLM head read label words at {mask}."""

import json
import warnings

import pytest
import torch
import transformers

from softprompt.api import build_task, method_config
from softprompt.core import PromptedModel
from softprompt.errors import ConfigError
from softprompt.models import load_base, wrap_model
from softprompt.tasks.readers import Example
from softprompt.tasks.runner import Prepared, TaskPrompt, class_logits
from tiny import FAMILIES, tiny_tokenizer

MLM_FAMILIES = ("bert", "roberta", "distilbert")
EXAMPLES = [
    Example("a warm and funny film", label="pos"),
    Example("boring , slow and far too long", label="neg"),
    Example("the plot is dull", label="neg"),
    Example("what a wonderful surprise this movie was", label="pos"),
]


def tiny_mlm(family, seed=0):
    """A tiny random encoder with its masked-LM head."""
    config_name, _, extra = FAMILIES[family]
    tokenizer = tiny_tokenizer(family)
    config = getattr(transformers, config_name)(**extra, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    config._attn_implementation = "sdpa"
    # Larger random weights than the 0.02 default, so the mask position depends on its context
    # (and on a prompt) by more than rounding.
    config.initializer_range = 0.2
    torch.manual_seed(seed)
    model = transformers.AutoModelForMaskedLM.from_config(config)
    return model.eval(), tokenizer


@pytest.fixture(params=MLM_FAMILIES, scope="module")
def mlm(request):
    model, tokenizer = tiny_mlm(request.param)
    return wrap_model(model, tokenizer, f"tiny-mlm-{request.param}")


def _unit(base, key, n, template, verbalizer, labels, seed):
    method_cls, cfg = method_config({"name": "prompt_tuning", "num_virtual_tokens": n, "init": "random", "seed": seed})
    task = build_task({"kind": "classification", "template": template, "verbalizer": verbalizer, "labels": labels},
                      base, labels, n)
    unit = TaskPrompt(key, method_cls.initialise(cfg, base), task)
    return unit.eval()


def test_auto_head_is_the_verbalizer_when_the_encoder_has_an_mlm_head(mlm):
    assert mlm.info.has_mlm_head
    unit = _unit(mlm, "A", 2, "{text} it was {mask} .", {"pos": "great", "neg": "bad"}, ["pos", "neg"], 0)
    assert unit.task.head is None and unit.task.head_kind.value == "verbalizer"


def test_word_scores_are_the_mlm_log_probabilities_at_the_mask(mlm):
    unit = _unit(mlm, "A", 2, "{text} it was {mask} .", {"pos": "great", "neg": "bad"}, ["pos", "neg"], 0)
    pm = PromptedModel(mlm)
    item = unit.task.prepare(EXAMPLES[0])
    (row,) = item.rows
    at = row.index(mlm.tokenizer.mask_token_id)
    with torch.no_grad():
        (scores,) = class_logits(pm, {"A": unit}, [Prepared("A", item)])
        batch = pm.collate([row], ["A"], padding_side="right")
        embeds = pm.embed(batch, unit.input_prompts())
        kwargs = {"inputs_embeds": embeds, "attention_mask": batch.attention_mask}
        if mlm.info.position_ids == "absolute":
            kwargs["position_ids"] = batch.position_ids + mlm.info.position_offset
        full = torch.log_softmax(mlm.model(**kwargs).logits[0, at], -1)
    ids = [unit.task.word_tokens[c][0][0] for c in range(2)]
    torch.testing.assert_close(scores, full[ids], atol=1e-5, rtol=0)


@pytest.mark.parametrize("side", ["left", "right"])
def test_mixed_batch_and_padding_do_not_change_a_row(mlm, side):
    pm = PromptedModel(mlm)
    units = {
        "A": _unit(mlm, "A", 3, "{text} it was {mask} .", {"pos": "great", "neg": "bad"}, ["pos", "neg"], 1),
        # a two-token word gets two mask tokens; three labels, another prompt length
        "B": _unit(mlm, "B", 5, "review : {text} sentiment : {mask}",
                   {"pos": ["great cast", "good"], "neg": "awful", "mid": "fine"}, ["pos", "neg", "mid"], 2),
    }
    assert [len(ids) for ids in units["B"].task.word_tokens[0]] == [2, 1]
    prepared = [Prepared(k, units[k].task.prepare(e)) for k, e in
                [("A", EXAMPLES[0]), ("B", EXAMPLES[1]), ("A", EXAMPLES[2]), ("B", EXAMPLES[3])]]
    with torch.no_grad():
        mixed = class_logits(pm, units, prepared, side)
        for i, p in enumerate(prepared):
            for other_side in ("left", "right"):
                alone = class_logits(pm, units, [p], other_side)[0]
                torch.testing.assert_close(mixed[i], alone, atol=1e-5, rtol=0)
    assert mixed[1].shape == (3,)


def test_training_a_prompt_through_the_mlm_verbalizer_lowers_the_loss(mlm):
    unit = _unit(mlm, "A", 4, "{text} it was {mask} .", {"pos": "great", "neg": "bad"}, ["pos", "neg"], 0)
    pm = PromptedModel(mlm)
    items = [Prepared("A", unit.task.prepare(e)) for e in EXAMPLES]
    target = torch.tensor([p.item.label for p in items])
    params = [p for p in unit.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=0.1)

    def loss():
        return torch.nn.functional.cross_entropy(torch.stack(class_logits(pm, {"A": unit}, items)), target)

    first = float(loss().detach())
    for _ in range(15):
        optimizer.zero_grad()
        value = loss()
        value.backward()
        optimizer.step()
    assert float(loss().detach()) < first - 0.05
    assert all(p.grad is None for p in mlm.model.parameters())


def test_verbalizer_on_an_encoder_without_mlm_head_is_a_clear_error():
    from tiny import tiny_base

    base = tiny_base("bert")
    assert not base.info.has_mlm_head
    with pytest.raises(ConfigError, match="needs a masked-LM head.*head='linear'"):
        build_task({"kind": "classification", "head": "verbalizer", "template": "{text} {mask}",
                    "verbalizer": {"a": "good", "b": "bad"}}, base, ["a", "b"], 0)


def test_verbalizer_on_an_mlm_needs_a_mask_slot(mlm):
    with pytest.raises(ConfigError, match="needs an answer slot"):
        build_task({"kind": "classification", "head": "verbalizer", "template": "{text}",
                    "verbalizer": {"a": "good", "b": "bad"}}, mlm, ["a", "b"], 0)


def test_load_base_reads_the_mlm_head_from_a_masked_lm_checkpoint(tmp_path):
    model, tokenizer = tiny_mlm("bert")
    model.save_pretrained(tmp_path / "mlm")
    tokenizer.save_pretrained(tmp_path / "mlm")
    base = load_base(str(tmp_path / "mlm"), reuse=False)
    assert base.info.has_mlm_head
    torch.testing.assert_close(base.model.cls.predictions.transform.dense.weight,
                               model.cls.predictions.transform.dense.weight)
    # A checkpoint that names an MLM architecture but lacks the head's weights: a warning, bare encoder.
    transformers.BertModel(model.config).save_pretrained(tmp_path / "bare")
    tokenizer.save_pretrained(tmp_path / "bare")
    config_file = tmp_path / "bare" / "config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "architectures": ["BertForMaskedLM"]}))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = load_base(str(tmp_path / "bare"), reuse=False)
    assert not loaded.info.has_mlm_head
    assert any("no weights for the masked-LM head" in str(w.message) for w in caught)
