"""The generation task: training on targets, BLEU/ROUGE-L evaluation with several references,
prediction, round trip, on causal LMs and encoder-decoders."""

import json

import pytest
import torch

from softprompt import api
from softprompt.core import PromptedModel
from softprompt.errors import ConfigError
from softprompt.tasks.readers import Example
from softprompt.tasks.runner import Prepared, class_logits
from tiny import save_tiny

PAIRS = [("good film", "great cast"), ("bad film", "awful and bad"), ("good film", "a great film"),
         ("dull plot", "boring and slow")]


def _config(tmp_path, family, method):
    model = tmp_path / f"tiny-{family}"
    if not model.exists():
        save_tiny(family, model)
    with (tmp_path / "train.jsonl").open("w") as f:
        for source, target in PAIRS * 5:
            f.write(json.dumps({"mr": source, "ref": target}) + "\n")
    methods = {"prompt_tuning": {"name": "prompt_tuning", "num_virtual_tokens": 3, "init": "vocab"},
               "prefix_tuning": {"name": "prefix_tuning", "prefix_length": 2, "hidden": 16, "init_text": "review"}}
    task = {"kind": "generation", "max_new_tokens": 6, "max_length": 32}
    if family in ("gpt2", "llama"):
        task["template"] = "review : {text} sentiment : {mask}"
    return {"name": "gen", "model": {"name": str(model)}, "task": task, "method": methods[method],
            "data": {"train": str(tmp_path / "train.jsonl"), "dev": str(tmp_path / "train.jsonl"),
                     "text_field": "mr", "label_field": "ref", "max_dev": 4},
            "training": {"steps": 30, "batch_size": 4, "lr": 0.1, "eval_every": 15},
            "output": str(tmp_path / "runs" / f"{family}-{method}")}


@pytest.mark.parametrize("family", ["gpt2", "llama", "t5", "bart"])
@pytest.mark.parametrize("method", ["prompt_tuning", "prefix_tuning"])
def test_train_evaluate_predict_round_trip(tmp_path, family, method):
    result = api.train(_config(tmp_path, family, method), progress=False, log=lambda s: None)
    dev = result.metrics["dev"]
    assert {"bleu", "rougeL"} <= set(dev) and dev["n"] == 3  # 4 dev rows, 3 distinct inputs
    losses = [h["loss"] for h in result.history if "loss" in h]
    assert losses[-1] < losses[0]
    (pred,) = api.predict(result.artifact, ["good film"])
    assert isinstance(pred.label, str)
    # the saved prompt scores targets exactly as the trained one did
    loaded = api.load_prompt(result.artifact)
    pm = PromptedModel(loaded.base)
    item = loaded.unit.task.prepare(Example("good film", label="great cast"))
    with torch.no_grad():
        (logp,) = class_logits(pm, {loaded.unit.key: loaded.unit}, [Prepared(loaded.unit.key, item)])
    assert logp.shape == (len(item.targets),) and torch.all(logp <= 0)


def test_bleu_uses_every_reference_of_a_repeated_input(tmp_path):
    """Rows that repeat an input are decoded once and scored against all of their references."""
    from softprompt.tasks.generation import GenerationTask, GenItem

    task = GenerationTask.__new__(GenerationTask)
    decoded = []

    def generate(pm, unit, prefixes, batch_size=16):
        decoded.append(list(prefixes))
        return ["great cast and a fine film"] * len(prefixes)

    task.generate = generate
    prepared = [Prepared("x", GenItem([], (1, 2), [])), Prepared("x", GenItem([], (1, 2), []))]
    examples = [Example("mr", label="x y z w"), Example("mr", label="great cast and a fine film")]
    scores = task.evaluate(None, None, prepared, examples)
    assert decoded == [[(1, 2)]] and scores["n"] == 1
    assert scores["bleu"] == pytest.approx(100.0)  # only true if the second reference was used
    alone = task.evaluate(None, None, prepared[:1], examples[:1])
    assert alone["bleu"] < 10


def test_generation_on_an_encoder_fails_at_configuration(tmp_path):
    config = _config(tmp_path, "bert", "prompt_tuning")
    with pytest.raises(ConfigError, match="needs a causal LM or an encoder-decoder"):
        api.train(config, progress=False, log=lambda s: None)


@pytest.mark.parametrize("family", ["llama", "t5"])
def test_mixed_method_generation_and_classification_rows_match_each_alone(tmp_path, family):
    """One predict_mixed call serving a prompt-tuning and a prefix-tuning generation prompt and a
    classification prompt gives every row what that prompt gives alone."""
    import softprompt

    artifacts = {}
    for method in ("prompt_tuning", "prefix_tuning"):
        config = _config(tmp_path, family, method)
        config["training"]["steps"] = 4
        artifacts[method] = api.train(config, progress=False, log=lambda s: None).artifact
    classify = _config(tmp_path, family, "prompt_tuning")
    classify["task"] = {"kind": "classification", "verbalizer": {"great cast": "great", "awful and bad": "awful",
                                                                  "a great film": "film", "boring and slow": "slow"}}
    if family == "llama":
        classify["task"]["template"] = "review : {text} sentiment : {mask}"
    classify["training"]["steps"] = 2
    classify["output"] += "-classify"
    artifacts["classify"] = api.train(classify, progress=False, log=lambda s: None).artifact
    base = api.load_model(str(tmp_path / f"tiny-{family}"))
    prompts = {name: api.load_prompt(path, base) for name, path in artifacts.items()}
    texts = ["good film", "dull plot", "bad film", "good film dull plot"]
    requests = [("prompt_tuning", texts[0]), ("prefix_tuning", texts[1]), ("classify", texts[2]),
                ("prefix_tuning", texts[3]), ("prompt_tuning", texts[1]), ("classify", texts[0])]
    mixed = softprompt.predict_mixed(prompts, requests)
    for (name, text), got in zip(requests, mixed):
        (alone,) = softprompt.predict(prompts[name], [text])
        assert got.label == alone.label, (name, text)
        for label, p in got.probabilities.items():
            assert abs(p - alone.probabilities[label]) < 1e-5
    assert any(m.probabilities == {} and m.label for m in mixed)  # generation rows carry text


def test_beam_search_and_greedy_rows_in_one_call_match_each_decoded_alone(tmp_path):
    config = _config(tmp_path, "llama", "prompt_tuning")
    config["training"]["steps"] = 4
    artifact = api.train(config, progress=False, log=lambda s: None).artifact
    greedy = api.load_prompt(artifact)
    beam = api.load_prompt(artifact)
    beam.unit.task.config.num_beams = 4
    texts = ["good film", "dull plot", "bad film"]
    import softprompt

    both = softprompt.predict_mixed({"greedy": greedy, "beam": beam},
                                    [(name, t) for t in texts for name in ("greedy", "beam")])
    assert [p.label for p in both[0::2]] == [p.label for p in api.predict(greedy, texts)]
    assert [p.label for p in both[1::2]] == [p.label for p in api.predict(beam, texts)]


@pytest.mark.parametrize("family", ["llama", "t5"])
def test_zero_shot_generation_with_a_hard_prompt(tmp_path, family):
    config = _config(tmp_path, family, "prompt_tuning")
    config["method"] = {"name": "hard_prompt"}
    result = api.train(config, progress=False, log=lambda s: None)
    assert result.steps == 0 and {"bleu", "rougeL"} <= set(result.metrics["dev"])
    (pred,) = api.predict(result.artifact, ["good film"])
    assert isinstance(pred.label, str)
