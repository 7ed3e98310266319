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


def test_every_command_and_group_is_on_the_app():
    """The command modules register nothing themselves; softprompt.cli names each command and group
    (new ones may join; none of these may go missing)."""
    import typer

    tree = typer.main.get_command(app)
    commands = ["train", "eval", "predict", "sweep", "models", "info", "demo", "similarity", "search", "inspect",
                "library", "transfer", "ppt"]
    assert [name for name in tree.commands if name in commands] == commands
    groups = {"library": ["add", "check", "export", "list", "rm", "search", "show"],
              "transfer": ["fit-projector", "project", "rank", "vocab-projector", "zero-shot"],
              "ppt": ["examples", "pretrain"]}
    for group, subcommands in groups.items():
        assert set(subcommands) <= set(tree.commands[group].commands), group


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


def test_train_into_a_log_file_writes_plain_lines(tmp_path):
    """Output that is no terminal (CI, `> run.log 2>&1`) gets a plain line every log_every steps
    instead of progress-bar frames redrawn with carriage returns."""
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(run_config(tmp_path, steps=6, eval_every=3, log_every=2)))
    log = tmp_path / "run.log"
    with log.open("w") as out:
        done = subprocess.run([*CLI, "train", path], stdout=out, stderr=subprocess.STDOUT, timeout=300,
                              env={**os.environ, "PYTHONWARNINGS": "ignore"})
    text = log.read_text()
    assert done.returncode == 0, text
    assert "\r" not in text
    lines = text.splitlines()
    assert [line.split(" loss ")[0] for line in lines if " loss " in line] == ["step 2/6", "step 4/6", "step 6/6"]
    assert any(line.startswith("step 3: dev accuracy") for line in lines) and "done:" in lines[-1]


def error_line(result) -> str:
    """The one line a failed command printed (asserting exit code 2, one line, no traceback)."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    err = result.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_wrong_model_artifact(trained, tmp_path):
    _, artifact = trained
    other = save_tiny("llama", tmp_path / "llama")
    assert "made for base model" in error_line(sp("info", artifact, "--model", other))


def test_bad_data_files(trained, tmp_path):
    _, artifact = trained
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "good", "label": "positive"}\n{"text": "bad", "label": \n')
    assert "bad.jsonl:2" in error_line(sp("eval", artifact, bad))
    unknown = tmp_path / "unknown.jsonl"
    unknown.write_text('{"text": "good", "label": "maybe"}\n')
    assert "unknown label 'maybe'" in error_line(sp("eval", artifact, unknown))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert "no examples" in error_line(sp("eval", artifact, empty))
    assert "missing.jsonl: file not found" in error_line(sp("eval", artifact, tmp_path / "missing.jsonl"))
    assert "empty text" in error_line(sp("predict", artifact, "   "))
    assert "file not found" in error_line(sp("predict", tmp_path / "nope.safetensors", "good"))


def test_bad_configs(tmp_path):
    config = run_config(tmp_path)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    assert "did you mean 'lr'" in error_line(sp("train", path, "training.lrr=0.1"))
    assert "init_text" in error_line(sp("train", path, "method.init=text"))
    assert "column" in error_line(sp("train", path, "task.template={text"))
    assert "config file not found" in error_line(sp("train", tmp_path / "none.yaml"))
    config["training"]["stepz"] = 5  # a wrong key in the file itself: the line names the file
    path.write_text(yaml.safe_dump(config))
    result = sp("train", path)
    assert result.returncode == 2 and error_line(result).startswith(f"error: {path}: unknown key training.'stepz'")


def test_sweep_command_prints_the_table(tmp_path):
    config = run_config(tmp_path)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    out = sp("sweep", path, "--lr", "0.05", "--lr", "0.2", "--length", "2", "--min-steps", "2", "--rungs", "1")
    assert out.returncode == 0, out.stderr
    assert "| lr | length | 2 steps |" in out.stdout and "best: lr" in out.stdout


def test_a_full_disk_while_writing_run_files_is_one_error_line(tmp_path, monkeypatch):
    import errno

    from softprompt import api

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "run" / "metrics.json"))

    monkeypatch.setattr(api, "train", full)
    result = CliRunner().invoke(app, ["train", str(tmp_path / "any.yaml")])
    assert result.exit_code == 2
    assert result.output.strip() == f"error: cannot write {tmp_path / 'run' / 'metrics.json'}: No space left on device"
