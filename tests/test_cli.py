"""The command line end to end, and its one-line errors with exit code 2."""

import json
import os
import subprocess
import sys

import pytest
import yaml

from helpers import run_config
from tiny import save_tiny

from typer.testing import CliRunner

from softprompt.cli import app

CLI = [sys.executable, "-m", "softprompt.cli"]


class Result:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def sp(*args):
    """Run the CLI in-process (fast); the console-script test below runs a real process."""
    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return Result(result.exit_code, result.stdout, result.stderr)


def test_console_entry_point_runs_in_a_real_process(tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    out = subprocess.run([*CLI, "--help"], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0 and "train" in out.stdout and "predict" in out.stdout
    out = subprocess.run([*CLI, "eval", tmp_path / "none.safetensors", tmp_path / "none.jsonl"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 2 and out.stderr.strip() == f"error: {tmp_path / 'none.safetensors'}: file not found"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    config = run_config(tmp, steps=6, eval_every=3)
    path = tmp / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    result = sp("train", path, "training.lr=0.2", "--quiet")
    assert result.returncode == 0, result.stderr
    assert "done:" in result.stdout
    return tmp, tmp / "runs" / "t" / "prompt.safetensors"


def test_train_predict_eval_info(trained):
    tmp, artifact = trained
    assert (artifact.parent / "config.yaml").exists()
    assert yaml.safe_load((artifact.parent / "config.yaml").read_text())["training"]["lr"] == 0.2
    out = sp("predict", artifact, "a warm and funny film")
    assert out.returncode == 0, out.stderr
    label, probs = out.stdout.strip().split("\t")
    assert label in ("positive", "negative") and "positive" in probs and "negative" in probs
    out = sp("predict", artifact, "--file", tmp / "dev.jsonl", "--out", tmp / "pred.jsonl")
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in (tmp / "pred.jsonl").read_text().splitlines()]
    assert len(rows) == 20 and abs(sum(rows[0]["probabilities"].values()) - 1) < 1e-5
    out = sp("eval", artifact, tmp / "dev.jsonl", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["n"] == 20
    out = sp("info", artifact)
    assert out.returncode == 0 and "prompt_tuning" in out.stdout


def _one_line_error(result, pattern):
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    err = result.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert pattern in err, err


def test_wrong_model_artifact(trained, tmp_path):
    _, artifact = trained
    other = save_tiny("llama", tmp_path / "llama")
    _one_line_error(sp("info", artifact, "--model", other), "made for base model")


def test_bad_data_files(trained, tmp_path):
    _, artifact = trained
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "good", "label": "positive"}\n{"text": "bad", "label": \n')
    _one_line_error(sp("eval", artifact, bad), "bad.jsonl:2")
    unknown = tmp_path / "unknown.jsonl"
    unknown.write_text('{"text": "good", "label": "maybe"}\n')
    _one_line_error(sp("eval", artifact, unknown), "unknown label 'maybe'")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    _one_line_error(sp("eval", artifact, empty), "no examples")
    _one_line_error(sp("eval", artifact, tmp_path / "missing.jsonl"), "missing.jsonl: file not found")
    _one_line_error(sp("predict", artifact, "   "), "empty text")
    _one_line_error(sp("predict", tmp_path / "nope.safetensors", "good"), "file not found")


def test_bad_configs(tmp_path):
    config = run_config(tmp_path)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    _one_line_error(sp("train", path, "training.lrr=0.1"), "did you mean 'lr'")
    _one_line_error(sp("train", path, "method.init=text"), "init_text")
    _one_line_error(sp("train", path, "task.template={text"), "column")
    _one_line_error(sp("train", tmp_path / "none.yaml"), "config file not found")
