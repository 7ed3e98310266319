"""Classification tasks on every family: mixed-task batches, round trip through the artifact file."""

import pytest
import torch

from softprompt.api import LoadedPrompt, build_task, load_prompt, method_config
from softprompt.core import PromptArtifact, PromptedModel
from softprompt.errors import ArtifactError, DataError
from softprompt.tasks.readers import Example
from softprompt.tasks.runner import Prepared, TaskPrompt, class_logits, export_unit, predict_logits
from tiny import FAMILIES, tiny_base

EXAMPLES = [
    Example("a warm and funny film", label="pos"),
    Example("boring , slow and far too long", label="neg"),
    Example("the plot is dull", label="neg"),
    Example("what a wonderful surprise this movie was", label="pos"),
]


def _unit(base, key, *, n, template, verbalizer, labels, seed):
    method_cls, cfg = method_config({"name": "prompt_tuning", "num_virtual_tokens": n, "init": "random", "seed": seed})
    section = {"kind": "classification", "labels": labels}
    if base.info.kind.value != "encoder":
        section.update(template=template, verbalizer=verbalizer)
    task = build_task(section, base, labels, n)
    torch.manual_seed(seed)
    if task.head is not None:
        torch.nn.init.normal_(task.head.weight)
    unit = TaskPrompt(key, method_cls.initialise(cfg, base), task)
    unit.eval()
    return unit


def _two_units(base):
    a = _unit(base, "A", n=3, template="review : {text} sentiment : {mask}",
              verbalizer={"pos": "good", "neg": "bad"}, labels=["pos", "neg"], seed=1)
    # multi-token label words and three labels, different prompt length
    b = _unit(base, "B", n=5, template="{text} it was {mask}",
              verbalizer={"pos": ["great cast", "good"], "neg": "awful", "mid": "fine"}, labels=["pos", "neg", "mid"], seed=2)
    return {"A": a, "B": b}


@pytest.fixture(params=sorted(FAMILIES))
def base(request):
    return tiny_base(request.param)


@pytest.mark.parametrize("side", ["left", "right"])
def test_mixed_task_batch_equals_each_task_alone(base, side):
    pm = PromptedModel(base)
    units = _two_units(base)
    prepared = [Prepared(k, units[k].task.prepare(e)) for k, e in
                [("A", EXAMPLES[0]), ("B", EXAMPLES[1]), ("A", EXAMPLES[2]), ("B", EXAMPLES[3]), ("B", EXAMPLES[0])]]
    with torch.no_grad():
        mixed = class_logits(pm, units, prepared, side)
        for i, p in enumerate(prepared):
            alone = class_logits(pm, units, [p], side)[0]
            torch.testing.assert_close(mixed[i], alone, atol=1e-5, rtol=0)
    assert mixed[0].shape == (2,) and mixed[1].shape == (3,)


def test_multi_token_label_word_is_scored_over_all_its_tokens(base):
    if base.info.kind.value == "encoder":
        pytest.skip("encoders classify with a head")
    pm = PromptedModel(base)
    unit = _two_units(base)["B"]
    task = unit.task
    assert [len(ids) for ids in task.word_tokens[0]] == [2, 1]
    item = task.prepare(EXAMPLES[0])
    with torch.no_grad():
        (logits,) = class_logits(pm, {"B": unit}, [Prepared("B", item)])
        # Reference: score "great cast" by running the full sequence and summing the two tokens.
        row = item.rows[0] if base.info.kind.value == "seq2seq" else max(item.rows, key=len)
        prompts = unit.input_prompts()
        batch = pm.collate([row], ["B"], padding_side="right")
        hidden = pm.encode(batch, prompts)
        great, cast = task.word_tokens[0][0]
        if base.info.kind.value == "causal":
            last = int(batch.last_index[0])
            logp = torch.log_softmax(pm.lm_logits(hidden[0, last - 1 : last + 1]), -1)
            score_great_cast = logp[0, great] + logp[1, cast]
            good = task.word_tokens[0][1][0]
            score_good = logp[0, good]
        else:
            dec = torch.tensor([[pm.decoder_start_id(), great]])
            logp = torch.log_softmax(pm.decoder_logits(hidden, batch.attention_mask, dec), -1)[0]
            score_great_cast = logp[0, great] + logp[1, cast]
            score_good = logp[0, task.word_tokens[0][1][0]]
        expected = torch.logsumexp(torch.stack([score_great_cast, score_good]), 0) - torch.log(torch.tensor(2.0))
    torch.testing.assert_close(logits[0], expected, atol=1e-5, rtol=0)


def test_save_load_attach_reproduces_outputs_exactly(base, tmp_path):
    pm = PromptedModel(base)
    unit = _two_units(base)["B"]
    meta = {
        "method": "prompt_tuning",
        "method_config": {"num_virtual_tokens": 5, "init": "random", "seed": 2},
        "task": {"kind": "classification", "template": str(unit.task.template), "labels": unit.task.labels,
                 "verbalizer": unit.task.config.verbalizer},
        "base_model": {"name": base.name, "fingerprint": base.fingerprint, "hidden_size": base.info.hidden_size},
    }
    path = PromptArtifact(export_unit(unit), meta).save(tmp_path / "p.safetensors")
    loaded = load_prompt(path, base)
    items = [Prepared("x", unit.task.prepare(e)) for e in EXAMPLES]
    before = predict_logits(pm, {"x": unit}, items)
    after = predict_logits(pm, {"x": loaded.unit}, items)
    for a, b in zip(before, after):
        assert torch.equal(a, b)
    params = sum(t.numel() for t in export_unit(unit).values())
    assert path.stat().st_size <= params * 4 + 16 * 1024


def test_artifact_for_another_model_is_refused(tmp_path):
    gpt2, llama = tiny_base("gpt2"), tiny_base("llama", seed=3)
    unit = _two_units(gpt2)["A"]
    meta = {"method": "prompt_tuning", "method_config": {"num_virtual_tokens": 3, "init": "random"},
            "task": {"kind": "classification", "template": str(unit.task.template), "labels": ["pos", "neg"],
                     "verbalizer": unit.task.config.verbalizer},
            "base_model": {"name": gpt2.name, "fingerprint": gpt2.fingerprint, "hidden_size": 32}}
    path = PromptArtifact(export_unit(unit), meta).save(tmp_path / "p.safetensors")
    with pytest.raises(ArtifactError, match="made for base model 'tiny-gpt2'.*--allow-model-mismatch"):
        load_prompt(path, llama)
    assert isinstance(load_prompt(path, llama, allow_model_mismatch=True), LoadedPrompt)


def test_unknown_label_names_the_source(base):
    unit = _two_units(base)["A"]
    with pytest.raises(DataError, match=r"train.jsonl:7: unknown label 'maybe' \(labels: pos, neg\)"):
        unit.task.prepare(Example("good", label="maybe", source="train.jsonl:7"))


def test_prompt_parameters_stay_float32_on_a_bfloat16_model():
    base = tiny_base("llama")
    base.model.to(torch.bfloat16)
    unit = _two_units(base)["A"]
    assert unit.method.embedding.dtype == torch.float32
    pm = PromptedModel(base)
    item = unit.task.prepare(EXAMPLES[0])
    (logits,) = class_logits(pm, {"A": unit}, [Prepared("A", item)])
    logits.sum().backward()
    assert unit.method.embedding.grad is not None and unit.method.embedding.grad.dtype == torch.float32
