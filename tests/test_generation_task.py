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
    from softprompt.tasks.generation import GenerationTask

    task = GenerationTask.__new__(GenerationTask)
    import sacrebleu

    # A perfect match against the second reference scores 100 only if both references are used.
    streams = [["x y z w"], ["great cast and a fine film"]]
    assert sacrebleu.corpus_bleu(["great cast and a fine film"], streams).score == pytest.approx(100.0)
    assert sacrebleu.corpus_bleu(["great cast and a fine film"], streams[:1]).score < 10


def test_generation_on_an_encoder_fails_at_configuration(tmp_path):
    config = _config(tmp_path, "bert", "prompt_tuning")
    with pytest.raises(ConfigError, match="needs a causal LM or an encoder-decoder"):
        api.train(config, progress=False, log=lambda s: None)
