"""`softprompt search` and `softprompt inspect` end to end on a tiny model."""

import json

import pytest
import yaml
from helpers import run_config, write_data
from tiny import save_tiny
from typer.testing import CliRunner

from softprompt.cli import app as main_app


@pytest.fixture(scope="module")
def app():
    return main_app


def _search_config(tmp_path, **extra):
    model_dir = tmp_path / "tiny-gpt2"
    if not model_dir.exists():
        save_tiny("gpt2", model_dir)
    config = {
        "name": "s",
        "model": {"name": str(model_dir)},
        "data": {"train": str(write_data(tmp_path, 20, 0, "train.jsonl")), "dev": str(write_data(tmp_path, 10, 1, "dev.jsonl"))},
        "candidates": {"templates": ["review : {text} sentiment : {mask}", "{text} it was {mask}"],
                       "verbalizers": [{"positive": "good", "negative": "bad"}, {"positive": "great", "negative": "awful"}]},
        "k_shot": 1,
        "autoprompt": {"template": "{text} [P*2] {mask}", "iterations": 2, "candidates": 2, "batch_size": 4},
        "output": str(tmp_path / "out" / "{name}"),
        **extra,
    }
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_search_writes_the_report_and_the_best_prompt(app, tmp_path):
    result = CliRunner().invoke(app, ["search", str(_search_config(tmp_path)), "--quiet"])
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "out" / "s" / "search.json").read_text())
    assert len(saved["report"]["results"]) == 5  # 2 x 2 hand-written, 1 AutoPrompt
    assert saved["best"]["accuracy"] == max(r["accuracy"] for r in saved["report"]["results"]) or \
        saved["report"]["metric"].startswith("calibrated")
    for suffix in ("json", "md", "png"):
        assert (tmp_path / "out" / "s" / f"report.{suffix}").exists()


@pytest.mark.parametrize("extra, message", [
    ({"candidates": {"templates": [], "verbalizers": []}}, "candidates.templates is empty"),
    ({"candidates": {"templates": ["{text} {mask}"], "verbalizers": [{"positive": "good", "neutral": "x"}]}},
     "do not occur in the data"),
    ({"candidates": {"templates": ["{text} sentiment"], "verbalizers": [{"positive": "good", "negative": "bad"}]}},
     "needs an answer slot"),
    ({"metric": "loss"}, "metric='loss' is not one of"),
    ({"k_shot": 50}, "fewer than 50"),
])
def test_bad_search_configs_exit_2_with_one_line(app, tmp_path, extra, message):
    result = CliRunner().invoke(app, ["search", str(_search_config(tmp_path, **extra)), "-q"])
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output


def test_inspect_prints_nearest_tokens_and_writes_json(app, tmp_path):
    from softprompt import api

    config = run_config(tmp_path, "gpt2", steps=2, eval_every=2)
    trained = api.train(config, progress=False, log=lambda *_: None)
    out = tmp_path / "reading.json"
    result = CliRunner().invoke(app, ["inspect", str(trained.artifact), "--data", str(tmp_path / "dev.jsonl"),
                                      "--top-k", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    reading = json.loads(out.read_text())
    assert len(reading["virtual_tokens"]) == 4 and len(reading["virtual_tokens"][0]["tokens"]) == 2
    assert 0 <= reading["projected"]["accuracy"] <= 1
    missing = CliRunner().invoke(app, ["inspect", str(tmp_path / "nope.safetensors")])
    assert missing.exit_code == 2


def test_search_saves_the_best_prompt_as_an_artifact_that_scores_the_same(app, tmp_path):
    """The selected prompt comes out as a hard_prompt artifact; attached as users attach it, it scores
    the dev data exactly as the search scored it (zero-shot, uncalibrated)."""
    from softprompt import api

    config = _search_config(tmp_path, k_shot=0, autoprompt=None, calibration=False)
    result = CliRunner().invoke(app, ["search", str(config), "--quiet"])
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "out" / "s" / "search.json").read_text())
    artifact = api.load_prompt(saved["artifact"])
    assert artifact.artifact.method == "hard_prompt"
    assert artifact.artifact.meta["task"]["template"] == saved["best"]["template"]
    assert artifact.artifact.meta["search"]["k_shot"] == 0
    metrics = api.evaluate(artifact, tmp_path / "dev.jsonl")
    assert metrics["accuracy"] == pytest.approx(saved["best"]["accuracy"])
    assert len(api.predict(artifact, ["a fine film"])) == 1
