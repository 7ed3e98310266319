"""Contextual calibration of classification prompts at inference (task.calibrate): the engine divides
each label's probability by what the prompt gives content-free inputs, for predict, eval, serving
and the dev evaluations of training."""

import json

import pytest
import torch
from helpers import run_config
from typer.testing import CliRunner

from softprompt import api
from softprompt.cli import app
from softprompt.core import PromptArtifact, PromptedModel
from softprompt.errors import ConfigError
from softprompt.tasks.classification import calibrate
from softprompt.tasks.readers import Example
from softprompt.tasks.runner import Prepared, predict_logits

TEXTS = ["good good fine", "bad awful bad", "fine", "so so"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("calibration")
    run = api.train(run_config(tmp, steps=2, eval_every=2), progress=False, log=lambda s: None)
    return run.artifact


def scores(loaded, examples):
    unit = loaded.unit
    items = [Prepared(unit.key, unit.task.prepare(e)) for e in examples]
    return torch.stack(predict_logits(PromptedModel(loaded.base), {unit.key: unit}, items))


def test_calibrated_scores_divide_by_the_prompts_content_free_probabilities(trained):
    raw = api.load_prompt(trained, calibrate=False)
    examples = [Example(text=t) for t in TEXTS]
    cf = torch.stack(predict_logits(PromptedModel(raw.base), {raw.unit.key: raw.unit},
                                    [Prepared(raw.unit.key, i) for i in raw.unit.task.content_free_items()]))
    assert len(cf) == 3  # "N/A", "" and the mask token (or its name)
    bias = torch.softmax(cf.float(), -1).mean(0)
    expected = calibrate(scores(raw, examples), bias)
    on = api.load_prompt(trained, calibrate=True, base=raw.base)
    assert torch.allclose(scores(on, examples), expected, atol=1e-5)
    # calibration changes what a content-free input itself gets
    mean_cf = torch.softmax(scores(on, [Example(text="N/A")]).float(), -1)
    assert not torch.allclose(torch.softmax(cf[0].float(), -1), mean_cf[0], atol=1e-3)
    predictions = api.predict(on, TEXTS)
    probs = torch.tensor([[p.probabilities[label] for label in on.unit.task.labels] for p in predictions])
    assert torch.allclose(probs, expected.exp(), atol=1e-5)


def test_calibrate_is_on_when_the_task_says_and_the_cli_can_turn_it_on_or_off(tmp_path, trained):
    config = run_config(tmp_path, steps=2, eval_every=2)
    config["task"]["calibrate"] = True
    run = api.train(config, progress=False, log=lambda s: None)
    assert PromptArtifact.load(run.artifact).meta["task"]["calibrate"] is True
    by_meta = api.predict(run.artifact, TEXTS)
    told = api.predict(run.artifact, TEXTS, calibrate=True)
    off = api.predict(run.artifact, TEXTS, calibrate=False)
    assert [p.probabilities for p in by_meta] == [p.probabilities for p in told]
    assert [p.probabilities for p in by_meta] != [p.probabilities for p in off]
    runner = CliRunner()
    lines = {}
    for flag in ("--calibrate", "--no-calibrate"):
        result = runner.invoke(app, ["predict", str(trained), TEXTS[0], flag])
        assert result.exit_code == 0, result.output
        lines[flag] = result.output.strip()
    assert lines["--calibrate"] != lines["--no-calibrate"]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": "positive"}) + "\n" for t in TEXTS))
    result = runner.invoke(app, ["eval", str(trained), str(data), "--calibrate", "--json"])
    assert result.exit_code == 0 and "accuracy" in json.loads(result.output)


def test_calibration_is_refused_for_other_task_kinds(trained):
    artifact = PromptArtifact.load(trained)
    artifact.meta["task"] = {**artifact.meta["task"], "kind": "generation"}
    with pytest.raises(ConfigError, match="calibration applies to classification prompts"):
        api.load_prompt(artifact, calibrate=True)
