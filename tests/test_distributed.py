"""Data-parallel training under `accelerate launch`: two CPU processes (gloo) against one.

Accelerate starts several processes on a CPU-only machine with `--multi_gpu` (its torchrun
launcher); softprompt then sets the process group up with gloo. Each process takes every second item
of each batch and the trainable gradients are summed over the two, so the run computes the same
gradient as one process; only the order of float32 additions differs (two partial sums, and rows
padded to other lengths), so the final prompt agrees to 1e-4 (measured: ~1.4e-6 after 40 steps at
lr 0.1), not bit for bit. A two-process run that is killed and resumed with the same two processes
repeats the uninterrupted one exactly.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from softprompt import api
from helpers import run_config

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="accelerate's launcher on POSIX")

ACCELERATE = Path(sys.executable).with_name("accelerate")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(config: Path, name: str, *extra: str, wait: bool = True, command: str = "train"):
    """`softprompt COMMAND CONFIG name=NAME EXTRA...` in two processes (COMMAND may be several words)."""
    return launch_args(*command.split(), str(config), f"name={name}", *(["--quiet"] if command == "train" else []),
                       *extra, wait=wait)


def launch_args(*args: str, wait: bool = True):
    command = [str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
               "-m", "softprompt.cli", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                               start_new_session=True)
    if not wait:
        return process
    out, _ = process.communicate(timeout=600)
    assert process.returncode == 0, out[-3000:]
    return out


def final_state(run_dir: Path, steps: int) -> dict[str, torch.Tensor]:
    state = load_file(str(run_dir / "checkpoints" / f"step-{steps:06d}" / "state.safetensors"))
    return {k: v for k, v in state.items() if k.startswith("module/")}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    config = run_config(tmp, steps=120, eval_every=40, checkpoint_every=10, keep_checkpoints=20)
    config["output"] = str(tmp / "runs" / "{name}")
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return tmp, path


def test_two_processes_train_the_prompt_one_process_trains(setup):
    tmp, config = setup
    api.train(config, ["name=one"], progress=False, log=lambda s: None)
    out = launch(config, "two")
    assert out.count("done: ") == 1  # the main process alone reports (and writes)
    one, two = final_state(tmp / "runs" / "one", 120), final_state(tmp / "runs" / "two", 120)
    assert one.keys() == two.keys() and one
    for key in one:
        assert not torch.equal(one[key], load_file(str(tmp / "runs" / "one" / "checkpoints" / "step-000010" /
                                                       "state.safetensors"))[key])  # it trained
        torch.testing.assert_close(two[key], one[key], atol=1e-4, rtol=0)
    # Evaluation was split over the two processes and gathered: the same dev scores, example for example.
    history_one = json.loads((tmp / "runs" / "one" / "history.json").read_text())
    history_two = json.loads((tmp / "runs" / "two" / "history.json").read_text())
    assert [h.get("accuracy") for h in history_one] == [h.get("accuracy") for h in history_two]
    metrics_one = json.loads((tmp / "runs" / "one" / "metrics.json").read_text())
    metrics_two = json.loads((tmp / "runs" / "two" / "metrics.json").read_text())
    assert metrics_two["dev"]["n"] == 20 and metrics_two["dev"]["accuracy"] == metrics_one["dev"]["accuracy"]


def test_a_killed_two_process_run_resumes_to_the_same_prompt(setup):
    tmp, config = setup
    if not (tmp / "runs" / "two").exists():
        launch(config, "two")
    cut = tmp / "runs" / "cut"
    process = launch(config, "cut", wait=False)
    deadline = time.monotonic() + 300
    while not (cut / "checkpoints" / "step-000030").exists():
        assert process.poll() is None, process.stdout.read()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)  # the launcher and both training processes, mid-run
    process.wait()
    assert not (cut / "prompt.safetensors").exists(), "the run ended before it was killed"
    launch(config, "cut", "--resume")
    expected, got = final_state(tmp / "runs" / "two", 120), final_state(cut, 120)
    for key in expected:
        assert torch.equal(got[key], expected[key]), key
    assert json.loads((cut / "history.json").read_text()) == json.loads((tmp / "runs" / "two" / "history.json").read_text())


def test_a_sweep_runs_data_parallel_and_the_main_process_reports(setup):
    tmp, config = setup
    out = launch(config, "sweep", "--lr", "0.1", "--lr", "0.01", "--length", "4", "--min-steps", "4", "--rungs", "2",
                 "--eta", "2", command="sweep")
    assert out.count("best: lr") == 1
    rows = json.loads((tmp / "runs" / "sweep" / "sweep.json").read_text())
    assert sorted(r["lr"] for r in rows) == [0.01, 0.1] and (tmp / "runs" / "sweep" / "prompt.safetensors").exists()


def test_ppt_pretraining_runs_data_parallel_and_writes_once(setup, tmp_path):
    from softprompt.core import PromptArtifact
    from test_ppt import write_text

    tmp, _ = setup
    out = launch_args("ppt", "pretrain", str(tmp / "tiny-gpt2"), str(write_text(tmp_path / "t.txt")), "--out",
                      str(tmp_path / "ppt"), "--format", "pair", "--steps", "4", "--examples", "40", "--tokens", "4",
                      "--batch-size", "4")
    assert out.count("done: ") == 1
    art = PromptArtifact.load(tmp_path / "ppt" / "prompt.safetensors")
    assert art.meta["transfer"]["format"] == "pair" and art.meta["training"]["steps_done"] == 4
    assert len((tmp_path / "ppt" / "data" / "train.jsonl").read_text().splitlines()) == 36


@pytest.mark.parametrize("variable", ["ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"])
def test_a_sharded_launch_is_refused_with_what_to_do(monkeypatch, variable):
    from softprompt.errors import ConfigError
    from softprompt.training import distributed

    monkeypatch.setenv(variable, "true")
    monkeypatch.setattr(distributed, "_current", None)
    with pytest.raises(ConfigError, match="not supported yet.*model.device_map=auto"):
        distributed.processes()
