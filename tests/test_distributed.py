"""Data-parallel training under `accelerate launch`: two CPU processes (gloo) against one.

Accelerate starts several processes on a CPU-only machine with `--multi_gpu` (its torchrun
launcher); softprompt then sets the process group up with gloo. Each process takes every second item
of each batch and the trainable gradients are summed over the two, so the run computes the same
gradient as one process; only the order of float32 additions differs (two partial sums, and rows
padded to other lengths), so the final prompt agrees to 1e-4 (measured: ~1.4e-6 after 40 steps at
lr 0.1), not bit for bit. A two-process run that is killed and resumed with the same two processes
repeats the uninterrupted one exactly.

Launched with Accelerate's FSDP settings (the shipped examples/accelerate/fsdp.yaml, or FSDP1's
flags) or a DeepSpeed ZeRO-3 config, the frozen base's blocks are sharded over the processes
(FSDP2); the prompt trains to the one-process prompt within the same 1e-4, and resumes exactly.
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


FSDP_EXAMPLE = Path(__file__).parents[1] / "examples" / "accelerate" / "fsdp.yaml"


def launch(config: Path, name: str, *extra: str, wait: bool = True, command: str = "train",
           how: tuple[str, ...] = ("--multi_gpu",), env: dict | None = None):
    """`softprompt COMMAND CONFIG name=NAME EXTRA...` in two processes (COMMAND may be several words);
    how: accelerate's options that say how to launch."""
    return launch_args(*command.split(), str(config), f"name={name}", *(["--quiet"] if command == "train" else []),
                       *extra, wait=wait, how=how, env=env)


def launch_args(*args: str, wait: bool = True, how: tuple[str, ...] = ("--multi_gpu",), env: dict | None = None):
    command = [str(ACCELERATE), "launch", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
               "--dynamo_backend", "no", "--main_process_port", str(free_port()), *how,  # how: the last word
               "-m", "softprompt.cli", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", **(env or {})}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                               start_new_session=True)
    if not wait:
        return process
    out, _ = process.communicate(timeout=600)
    assert process.returncode == 0, out[-3000:]
    return out


def killed_and_resumed(config: Path, cut: Path, how: tuple[str, ...] = ("--multi_gpu",)) -> Path:
    """Launch the run into cut, kill -9 the launcher and both training processes once checkpoint 30
    is written (mid-run), then launch it again with --resume; returns cut."""
    process = launch(config, cut.name, wait=False, how=how)
    deadline = time.monotonic() + 300
    while not (cut / "checkpoints" / "step-000030").exists():
        assert process.poll() is None, process.stdout.read()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (cut / "prompt.safetensors").exists(), "the run ended before it was killed"
    launch(config, cut.name, "--resume", how=how)
    return cut


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
    cut = killed_and_resumed(config, tmp / "runs" / "cut")
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


def test_the_launchers_mixed_precision_sets_the_runs_precision(setup):
    from softprompt.core import PromptArtifact

    tmp, config = setup
    out = launch(config, "bf16", "training.steps=4", how=("--multi_gpu", "--mixed_precision", "bf16"))
    assert out.count("training.precision=bf16, as accelerate launch --mixed_precision asks") == 1
    assert PromptArtifact.load(tmp / "runs" / "bf16" / "prompt.safetensors").meta["training"]["precision"] == "bf16"


# ---- a sharded base (FSDP, DeepSpeed ZeRO-3) ---------------------------------------------------------

def assert_same_prompt(one: Path, two: Path, steps: int) -> None:
    a, b = final_state(one, steps), final_state(two, steps)
    assert a.keys() == b.keys() and a
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-4, rtol=0)
    scores = lambda run: [{k: v for k, v in h.items() if k not in ("loss", "lr")}  # noqa: E731
                          for h in json.loads((run / "history.json").read_text()) if "loss" not in h]
    assert scores(one) == scores(two)  # every dev evaluation, example for example
    assert json.loads((one / "metrics.json").read_text())["dev"] == json.loads((two / "metrics.json").read_text())["dev"]


def test_fsdp_from_the_example_config_shards_the_base_and_trains_the_one_process_prompt(setup):
    tmp, config = setup
    if not (tmp / "runs" / "one").exists():
        api.train(config, ["name=one"], progress=False, log=lambda s: None)
    out = launch(config, "fsdp", how=("--config_file", str(FSDP_EXAMPLE)))
    assert out.count("FSDP: the frozen base's blocks are sharded over 2 processes") == 1
    assert "(2 modules sharded; this process holds " in out  # tiny GPT-2's two blocks (its _no_split_modules)
    assert_same_prompt(tmp / "runs" / "one", tmp / "runs" / "fsdp", 120)


def test_a_killed_fsdp_run_resumes_to_the_same_prompt(setup):
    tmp, config = setup
    how = ("--config_file", str(FSDP_EXAMPLE))
    if not (tmp / "runs" / "fsdp").exists():
        launch(config, "fsdp", how=how)
    cut = killed_and_resumed(config, tmp / "runs" / "fsdp-cut", how=how)
    expected, got = final_state(tmp / "runs" / "fsdp", 120), final_state(cut, 120)
    for key in expected:
        assert torch.equal(got[key], expected[key]), key


def test_fsdp1_flags_shard_a_llama_with_prefixes_checkpointing_and_uneven_shards(tmp_path):
    """Prefix tuning (keys/values in every sharded block), activation checkpointing (blocks gathered
    again in the recomputation), batches of 3 split 2 + 1 and a dev set of 21 (the second process
    pads its share: every process must run as many passes)."""
    from helpers import write_data

    config = run_config(tmp_path, family="llama", steps=20, eval_every=10, checkpoint_every=10, batch_size=3,
                        eval_batch_size=4)
    config["method"] = {"name": "prefix_tuning", "prefix_length": 3, "hidden": 16}
    config["data"]["dev"] = str(write_data(tmp_path, 21, 2, "dev21.jsonl"))
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    api.train(path, ["name=one"], progress=False, log=lambda s: None)
    out = launch(path, "two", how=("--use_fsdp", "--fsdp_version", "1", "--fsdp_sharding_strategy", "FULL_SHARD",
                                   "--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP",
                                   "--fsdp_activation_checkpointing", "true"))
    assert "done: " in out
    assert json.loads((tmp_path / "runs" / "two" / "metrics.json").read_text())["dev"]["n"] == 21
    assert_same_prompt(tmp_path / "runs" / "one", tmp_path / "runs" / "two", 20)


@pytest.mark.parametrize("sharded", [False, True], ids=["data-parallel", "deepspeed-zero3"])
def test_a_generation_task_decodes_in_two_processes(tmp_path, sharded):
    """Data-parallel, each process decodes a share of the dev inputs and the texts are gathered;
    with the base sharded (a DeepSpeed ZeRO-3 config), every process decodes them all. accelerate
    launch --use_deepspeed needs DeepSpeed installed; what it hands each process is its environment,
    given here directly, with the DeepSpeed JSON config it names."""
    from test_generation_task import _config

    config = _config(tmp_path, "llama", "prompt_tuning")
    config["training"].update(steps=20, eval_every=10, checkpoint_every=10)
    config["data"]["max_dev"] = 5
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"train_micro_batch_size_per_gpu": "auto", "zero_optimization": {"stage": 3}}))
    api.train(path, ["output=" + str(tmp_path / "runs" / "one")], progress=False, log=lambda s: None)
    out = launch(path, "two", "output=" + str(tmp_path / "runs" / "two"),
                 env={"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_CONFIG_FILE": str(ds)} if sharded else {})
    assert out.count("DeepSpeed ZeRO-3: the frozen base's blocks are sharded over 2 processes") == int(sharded)
    assert json.loads((tmp_path / "runs" / "two" / "metrics.json").read_text())["dev"]["n"] == 3  # 3 distinct inputs
    assert_same_prompt(tmp_path / "runs" / "one", tmp_path / "runs" / "two", 20)


def _shard_in_two(rank: int, init: str, model_dir: str, out: str) -> None:
    import torch.distributed as dist

    from softprompt.models import load_base
    from softprompt.training.distributed import Processes, Sharding, shard_base

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    base = load_base(model_dir, reuse=False)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        whole = base.model(input_ids=ids).logits
    sharded = shard_base(base.model, Processes(rank, 2, torch.device("cpu"), Sharding("FSDP")))
    layer = base.model.model.layers[0].mlp.up_proj.weight
    with torch.no_grad():
        logits = base.model(input_ids=ids).logits
    blocks = sum(p.numel() * 4 for p in base.model.model.layers.parameters())  # float32, whole
    finer = load_base(model_dir, reuse=False)  # size-based: the blocks' large parts too, each block for the rest
    parts = shard_base(finer.model, Processes(rank, 2, torch.device("cpu"), Sharding("FSDP", min_params=1000)))
    with torch.no_grad():
        finer_diff = float((whole - finer.model(input_ids=ids).logits).abs().max())
    torch.save({"count": sharded.modules, "parts": parts.modules, "finer_diff": finer_diff, "bytes": (sharded.local_bytes, sharded.total_bytes, blocks), "local": tuple(layer.to_local().shape), "global": tuple(layer.shape),
                "embedding": type(base.model.get_input_embeddings().weight).__name__,
                "diff": float((whole - logits).abs().max())}, f"{out}.{rank}")
    dist.destroy_process_group()


def test_shard_base_keeps_half_of_each_block_per_process_and_the_same_outputs(tmp_path):
    from tiny import save_tiny

    save_tiny("llama", tmp_path / "tiny-llama")
    torch.multiprocessing.spawn(_shard_in_two, args=(f"file://{tmp_path / 'init'}", str(tmp_path / "tiny-llama"),
                                                     str(tmp_path / "out")), nprocs=2)
    for rank in (0, 1):
        got = torch.load(f"{tmp_path / 'out'}.{rank}")
        assert got["count"] == 2  # the two LlamaDecoderLayer blocks
        local, total, blocks = got["bytes"]
        assert local == total - blocks // 2  # half of every block's bytes left this process
        assert got["local"][0] * 2 == got["global"][0]  # each process holds half of the block's weights
        assert got["embedding"] == "Parameter"  # the input embeddings stay whole (prompts read them)
        assert got["diff"] < 1e-5
        assert got["parts"] > 2 * 2 and got["finer_diff"] < 1e-5  # nested in each block: more than the blocks


@pytest.mark.parametrize("env, expected", [
    ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"}, None),
    ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3",
      "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE": "cpu"}, ("DeepSpeed ZeRO-3", True, True)),
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1", "FSDP_SHARDING_STRATEGY": "NO_SHARD"}, None),
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1", "FSDP_SHARDING_STRATEGY": "SHARD_GRAD_OP"},
     ("FSDP", False, False)),
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_RESHARD_AFTER_FORWARD": "true",
      "FSDP_OFFLOAD_PARAMS": "true"}, ("FSDP", True, True)),
])
def test_the_launchers_settings_say_what_is_sharded(monkeypatch, env, expected):
    from softprompt.training.distributed import sharding_from_launcher

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    got = sharding_from_launcher()
    assert (None if got is None else (got.source, got.reshard_after_forward, got.offload)) == expected


def test_unusable_sharding_settings_are_refused_with_what_to_do(monkeypatch, tmp_path):
    from softprompt.errors import ConfigError
    from softprompt.training.distributed import sharding_from_launcher

    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", str(tmp_path / "missing.json"))
    with pytest.raises(ConfigError, match="missing.json: cannot read this DeepSpeed config"):
        sharding_from_launcher()
    (tmp_path / "nvme.json").write_text(json.dumps({"zero_optimization": {"stage": 3, "offload_param": {"device": "nvme"}}}))
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", str(tmp_path / "nvme.json"))
    with pytest.raises(ConfigError, match="offload_param.device='nvme'.*'cpu'"):
        sharding_from_launcher()


def test_a_device_map_with_a_sharded_base_is_refused(monkeypatch):
    from softprompt.errors import ConfigError
    from softprompt.training import distributed, run

    monkeypatch.setattr(distributed, "_current", distributed.Processes(0, 2, torch.device("cpu"),
                                                                       distributed.Sharding("FSDP")))
    with pytest.raises(ConfigError, match="device_map='auto'.*sharded over the processes"):
        run.load_model({"name": "smollm2-135m", "device_map": "auto"})
