"""One training loop for one task or several: a run config listing tasks trains them together in
mixed batches, each saved as its own artifact with its own dev metrics; optimisers, schedules and
precision are chosen in the config."""

import json

import pytest
import torch

from softprompt import api
from softprompt.configs import TrainingConfig
from softprompt.core import PromptArtifact
from softprompt.errors import ConfigError
from softprompt.training.loop import build_optimizer, build_scheduler, mixture_batch_order
from helpers import full_and_resumed, run_config

QUESTIONS = [("where is the station", "place"), ("who wrote this book", "person"), ("where do you live", "place"),
             ("who is the new teacher", "person"), ("where did it go", "place"), ("who called me", "person")]


def two_task_config(tmp_path, **training):
    config = run_config(tmp_path, **training)
    with (tmp_path / "questions.jsonl").open("w") as f:
        for i in range(36):
            text, label = QUESTIONS[i % len(QUESTIONS)]
            f.write(json.dumps({"question": text, "label": label}) + "\n")
    config["tasks"] = [
        {"name": "sentiment", "data": config.pop("data")},
        {"name": "questions", "data": {"train": str(tmp_path / "questions.jsonl"), "text_field": "question",
                                       "dev_fraction": 0.25},
         "task": {"kind": "classification", "template": "question : {text} asks for : {mask}",
                  "verbalizer": {"place": "where", "person": "who"}},
         "method": {"name": "prefix_tuning", "prefix_length": 3}, "lr": 0.01},
    ]
    return config


def test_two_tasks_train_together_and_each_is_saved_with_its_own_metrics(tmp_path):
    config = two_task_config(tmp_path, steps=12, eval_every=6)
    result = api.train(config, progress=False, log=lambda s: None)
    assert set(result.tasks) == {"sentiment", "questions"}
    history = result.history
    evals = [h for h in history if "sentiment/accuracy" in h]
    assert [h["step"] for h in evals] == [0, 6, 12] and all("questions/accuracy" in h for h in evals)
    for name, method in (("sentiment", "prompt_tuning"), ("questions", "prefix_tuning")):
        run = result.run_dir / name
        art = PromptArtifact.load(run / "prompt.safetensors")
        assert art.meta["method"] == method and art.meta["name"] == name
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["dev"]["accuracy"] == art.meta["metrics"]["dev"]["accuracy"]
        best = max(h[f"{name}/accuracy"] for h in evals)
        assert metrics["dev"]["accuracy"] == pytest.approx(best)  # each keeps its own best evaluation
        loaded = api.load_prompt(run / "prompt.safetensors")
        assert loaded.labels == (["positive", "negative"] if name == "sentiment" else ["place", "person"])
    assert art.meta["training"]["lr"] == 0.01  # the task's own learning rate
    assert (result.run_dir / "training.png").exists()


def test_a_two_task_run_resumes_to_the_same_prompts(tmp_path):
    config = two_task_config(tmp_path, steps=8, eval_every=4, checkpoint_every=2, mixing="temperature")
    full, resumed = full_and_resumed(config, tmp_path, stop_at=5)
    for name in full.tasks:
        a = PromptArtifact.load(full.tasks[name].artifact).tensors
        b = PromptArtifact.load(resumed.tasks[name].artifact).tensors
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert resumed.history == full.history


def test_a_task_without_dev_examples_keeps_its_last_prompt(tmp_path):
    config = two_task_config(tmp_path, steps=6, eval_every=3)
    config["tasks"][1]["data"]["dev_fraction"] = 0
    result = api.train(config, progress=False, log=lambda s: None)
    questions = result.tasks["questions"]
    assert "dev" not in questions.metrics and questions.best_step == 6 and not questions.kept_start
    saved = PromptArtifact.load(questions.artifact).tensors
    state = PromptArtifact.load(result.run_dir / "sentiment" / "prompt.safetensors")  # the other still picks by dev
    assert state.meta["metrics"]["dev"]["n"] == 20 and saved


def test_mixture_batches_follow_the_temperature_and_repeat_by_step():
    groups = [list(range(0, 900)), list(range(900, 1000))]  # 900 and 100 examples
    share = lambda t: sum(i >= 900 for s in range(200) for i in mixture_batch_order(groups, 16, s, 0, t)) / 3200  # noqa: E731
    assert share(1.0) == pytest.approx(0.1, abs=0.02)  # proportional to size
    assert share(1e6) == pytest.approx(0.5, abs=0.03)  # uniform over tasks
    assert share(2.0) == pytest.approx(10 / 40, abs=0.03)  # sqrt: 30 against 10
    assert mixture_batch_order(groups, 16, 7, 3, 2.0) == mixture_batch_order(groups, 16, 7, 3, 2.0)


def test_task_entries_are_checked(tmp_path):
    config = two_task_config(tmp_path)
    config["tasks"][1]["name"] = "sentiment"
    with pytest.raises(ConfigError, match="names must differ"):
        api.train(config, progress=False, log=lambda s: None)
    config = two_task_config(tmp_path)
    del config["tasks"][1]["data"]
    with pytest.raises(ConfigError, match="tasks.questions: data.train is not set"):
        api.train(config, progress=False, log=lambda s: None)
    config = two_task_config(tmp_path, sampling="balanced")
    with pytest.raises(ConfigError, match="mixes them with training.mixing"):
        api.train(config, progress=False, log=lambda s: None)


@pytest.mark.parametrize("schedule", ["linear", "cosine", "constant"])
def test_schedules_after_warmup(schedule):
    config = TrainingConfig(steps=10, warmup=2, lr=1.0, schedule=schedule)
    p = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.SGD([p], lr=1.0)
    scheduler = build_scheduler(optimizer, config)
    lrs = []
    for _ in range(10):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert lrs[:3] == [0.0, 0.5, 1.0]  # warmup
    if schedule == "constant":
        assert lrs[2:] == [1.0] * 8
    elif schedule == "linear":
        assert lrs[6] == pytest.approx(0.5)
    else:
        assert lrs[6] == pytest.approx(0.5) and lrs[4] == pytest.approx((1 + 0.5 ** 0.5) / 2)


def test_adafactor_trains_and_resumes_exactly(tmp_path):
    config = run_config(tmp_path, steps=8, eval_every=4, checkpoint_every=2, optimizer="adafactor", lr=0.3)
    full, resumed = full_and_resumed(config, tmp_path, stop_at=3)
    losses = [h["loss"] for h in full.history if "loss" in h]
    assert losses[-1] < losses[0]
    assert resumed.history == full.history


def test_adafactor_is_what_the_config_asks_for(tmp_path):
    from transformers.optimization import Adafactor

    from softprompt.tasks.runner import TaskPrompt

    unit = TaskPrompt("t", torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    assert isinstance(build_optimizer({"t": unit}, TrainingConfig(lr=0.1, optimizer="adafactor")), Adafactor)
    assert isinstance(build_optimizer({"t": unit}, TrainingConfig(lr=0.1)), torch.optim.AdamW)


def test_bf16_autocast_trains_float32_prompts_and_fp16_on_a_cpu_is_refused(tmp_path):
    result = api.train(run_config(tmp_path, steps=6, eval_every=3, precision="bf16", lr=0.3),
                       progress=False, log=lambda s: None)
    tensors = PromptArtifact.load(result.artifact).tensors
    assert all(t.dtype == torch.float32 for t in tensors.values())
    losses = [h["loss"] for h in result.history if "loss" in h]
    assert all(torch.isfinite(torch.tensor(losses)))
    with pytest.raises(ConfigError, match="precision=fp16 needs a GPU"):
        api.train(run_config(tmp_path, precision="fp16"), ["output=" + str(tmp_path / "fp16")], progress=False,
                  log=lambda s: None)
    with pytest.raises(ConfigError, match="training.precision='fp8' is not one of: fp32, bf16, fp16"):
        TrainingConfig(precision="fp8")
