import json

import pytest
import torch

from softprompt import api
from softprompt.core import PromptArtifact
from helpers import full_and_resumed, run_config


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("family", ["gpt2", "bert"])
def test_interrupted_run_resumes_to_the_same_final_prompt(tmp_path, family):
    config = run_config(tmp_path, family, checkpoint_every=3, eval_every=4)
    full, resumed = full_and_resumed(config, tmp_path, stop_at=7)
    a = PromptArtifact.load(full.artifact).tensors
    b = PromptArtifact.load(resumed.artifact).tensors
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert resumed.history == full.history
    assert resumed.best_step == full.best_step
    assert [h["step"] for h in full.history if "accuracy" in h] == [0, 4, 8, 12]  # the start once, then every 4


def test_training_learns_and_writes_its_outputs(tmp_path):
    result = api.train(run_config(tmp_path, steps=30, eval_every=10, lr=0.3), progress=False, log=lambda s: None)
    run = result.run_dir
    for name in ("prompt.safetensors", "config.yaml", "metrics.json", "history.json", "training.png"):
        assert (run / name).exists(), name
    assert any((run / "tensorboard").iterdir())
    losses = [h["loss"] for h in result.history if "loss" in h]
    assert losses[-1] < losses[0]
    meta = PromptArtifact.load(result.artifact).meta
    assert meta["method"] == "prompt_tuning" and meta["task"]["labels"] == ["positive", "negative"]
    assert meta["metrics"]["dev"]["accuracy"] == json.loads((run / "metrics.json").read_text())["dev"]["accuracy"]
    # the artifact holds the best dev prompt, which is at least as good as the last one
    assert meta["metrics"]["dev"]["accuracy"] == max(h["accuracy"] for h in result.history if "accuracy" in h)
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["best_step"] == result.best_step and saved["kept_start"] is result.kept_start


def test_a_diverging_run_keeps_the_starting_prompt_and_says_so(tmp_path):
    """A learning rate far past stability only makes the prompt worse: the starting prompt is
    evaluated (step 0), kept, and the log, metrics.json, the artifact and the result say so."""
    from softprompt.transfer import init_overrides

    config = run_config(tmp_path, steps=60, eval_every=10, lr=0.1)
    config["method"]["num_virtual_tokens"] = 8
    good = api.train(config, ["output=" + str(tmp_path / "good")], progress=False, log=lambda s: None)
    start = PromptArtifact.load(good.artifact).tensors["prompt.input"]
    assert good.metrics["dev"]["accuracy"] >= 0.8  # a start worth keeping
    lines = []
    run = api.train(config, [*init_overrides([good.artifact]), "training.lr=100", "training.warmup=0",
                             "training.steps=6", "training.eval_every=2", "output=" + str(tmp_path / "diverged")],
                    progress=False, log=lines.append)
    evals = [(h["step"], h["accuracy"]) for h in run.history if "accuracy" in h]
    assert evals[0] == (0, good.metrics["dev"]["accuracy"])
    assert [step for step, _ in evals[1:]] == [2, 4, 6] and all(acc < evals[0][1] for _, acc in evals[1:])
    assert run.best_step == 0 and run.kept_start
    saved = PromptArtifact.load(run.artifact)
    assert torch.equal(saved.tensors["prompt.input"], start)
    assert run.metrics["dev"]["accuracy"] == evals[0][1]
    assert json.loads((run.run_dir / "metrics.json").read_text())["kept_start"] is True
    assert saved.meta["training"]["kept_start"] is True and saved.meta["training"]["best_step"] == 0
    assert any("no evaluation beat the starting prompt" in line for line in lines)
    assert any("at best" in line and "later" in line for line in lines)  # how far below the start it fell
    # The exit line says what to do: which rate to try, or the sweep command for this very config.
    assert "the starting prompt" in lines[-1] and "training.lr=33 (a third)" in lines[-1]
    sweep_line = lines[-1].split("let a sweep choose: ")[1].split()
    assert sweep_line[:3] == ["softprompt", "sweep", str(run.run_dir / "config.yaml")]
    assert sweep_line[3:] == ["--lr", "10", "--lr", "33", "--lr", "1e+02"]
    from softprompt.configs import load_run_config

    assert load_run_config(sweep_line[2]).training.lr == 100  # the written config loads as the sweep reads it
    assert not good.kept_start


def test_the_start_is_evaluated_unless_told(tmp_path):
    config = run_config(tmp_path, steps=8, eval_every=3)
    evals = lambda result: [h["step"] for h in result.history if "accuracy" in h]  # noqa: E731
    run = api.train(config, ["output=" + str(tmp_path / "a")], progress=False, log=lambda s: None)
    assert evals(run) == [0, 3, 6, 8]
    run = api.train(config, ["output=" + str(tmp_path / "b"), "training.eval_start=false"],
                    progress=False, log=lambda s: None)
    assert evals(run) == [3, 6, 8] and not run.kept_start


def test_early_stopping_stops(tmp_path):
    result = api.train(run_config(tmp_path, steps=200, eval_every=2, patience=2, lr=1e-6), progress=False,
                       log=lambda s: None)
    assert result.steps < 200


def test_encoder_head_is_trained_and_saved(tmp_path):
    result = api.train(run_config(tmp_path, "bert", steps=6), progress=False, log=lambda s: None)
    tensors = PromptArtifact.load(result.artifact).tensors
    assert set(tensors) == {"prompt.input", "head.weight", "head.bias"}
    assert tensors["head.weight"].shape == (2, 32)


def test_two_trained_prompts_served_mixed_in_one_batch_match_each_alone(tmp_path):
    import softprompt

    one = api.train(run_config(tmp_path, steps=4), ["output=" + str(tmp_path / "one")], progress=False, log=lambda s: None)
    config = run_config(tmp_path, steps=4)
    config["task"]["verbalizer"] = {"positive": "great", "negative": "awful"}
    config["method"]["num_virtual_tokens"] = 6
    two = api.train(config, ["output=" + str(tmp_path / "two")], progress=False, log=lambda s: None)
    base = api.load_model(str(tmp_path / "tiny-gpt2"))
    prompts = {"one": api.load_prompt(one.artifact, base), "two": api.load_prompt(two.artifact, base)}
    texts = ["a warm and funny film", "the plot is dull", "great cast", "boring and slow"]
    requests = [("one", texts[0]), ("two", texts[1]), ("two", texts[2]), ("one", texts[3])]
    mixed = softprompt.predict_mixed(prompts, requests)
    for (name, text), got in zip(requests, mixed):
        (alone,) = softprompt.predict(prompts[name], [text])
        assert got.label == alone.label
        for label in got.probabilities:
            assert abs(got.probabilities[label] - alone.probabilities[label]) < 1e-5


def test_sweep_halves_candidates_and_keeps_the_best_prompt(tmp_path):
    from softprompt.sweep import sweep

    result = sweep(run_config(tmp_path), lrs=[0.01, 0.3], lengths=[2, 4], min_steps=2, eta=2, rungs=2,
                   log=lambda s: None)
    assert len(result.rows) == 4
    assert sum(1 for r in result.rows if len(r.scores) == 2) == 2  # half went on to the second rung
    assert result.artifact.exists() and (result.artifact.parent / "sweep.md").exists()
    best_score = max(max(r.scores.values()) for r in result.rows)
    assert max(result.best.scores.values()) == best_score
    assert PromptArtifact.load(result.artifact).tensors["prompt.input"].shape[0] == result.best.length


def test_skip_empty_lets_a_file_with_label_only_lines_train(tmp_path):
    from softprompt.errors import DataError

    config = run_config(tmp_path, steps=2)
    lines = (tmp_path / "train.jsonl").read_text().splitlines()
    lines.insert(3, '{"text": "  ", "label": "positive"}')
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"train\.jsonl:4"):
        api.train(config, progress=False, log=lambda s: None)
    result = api.train(config, ["data.skip_empty=true"], progress=False, log=lambda s: None)
    assert result.artifact.exists()


@pytest.mark.parametrize("family,method", [("gpt2", None), ("bert", {"name": "ptuning_v2", "prefix_length": 3}),
                                           ("llama", {"name": "prefix_tuning", "prefix_length": 3, "hidden": 8})])
def test_gradient_checkpointing_trains_the_same_prompt_with_dropout_off(tmp_path, family, method):
    config = run_config(tmp_path, family, steps=4, eval_every=4)
    if method:
        config["method"] = method
    base = api.load_model(config["model"])  # the copy api.train uses
    dropout = [m for m in base.model.modules() if isinstance(m, torch.nn.Dropout) and m.p > 0]
    results, active = [], []

    def during(step):  # which layers checkpoint while training runs
        active.append(sum(getattr(m, "gradient_checkpointing", False) is True and m.training
                          for m in base.model.modules()))

    for checkpointing in (False, True):
        out = ["output=" + str(tmp_path / f"gc{checkpointing}"), f"training.gradient_checkpointing={checkpointing}"]
        result = api.train(config, out, progress=False, log=lambda s: None, on_step=during)
        results.append(PromptArtifact.load(result.artifact))
        assert not base.model.training and not any(m.training for m in base.model.modules())
    plain, checkpointed = (r.tensors for r in results)
    for k in plain:
        assert torch.allclose(plain[k], checkpointed[k], atol=1e-5), k
    assert active[:4] == [0] * 4 and min(active[4:]) >= 2  # two tiny layers checkpointed in the second run
    assert dropout or family == "llama"  # the tiny GPT-2/BERT carry dropout that must stay off


@pytest.mark.parametrize("family,method,expected", [
    ("gpt2", {"name": "prompt_tuning", "num_virtual_tokens": 2, "init": "vocab"}, 3e-2),
    ("gpt2", {"name": "ptuning_v2", "prefix_length": 2}, 3e-3),
    ("bert", {"name": "ptuning_v2", "prefix_length": 2}, 3e-2),
])
def test_an_unset_learning_rate_is_the_methods_default_and_is_recorded(tmp_path, family, method, expected):
    import yaml

    config = run_config(tmp_path, family, steps=1, eval_every=1)
    del config["training"]["lr"]
    config["method"] = method
    result = api.train(config, progress=False, log=lambda s: None)
    assert yaml.safe_load((result.run_dir / "config.yaml").read_text())["training"]["lr"] == expected


def test_a_hard_prompt_is_saved_as_written_and_served_like_a_trained_one(tmp_path):
    """method hard_prompt on a verbalizer: nothing trains, the artifact holds the template and
    label words, its dev metrics are the zero-shot ones, and it mixes with soft prompts."""
    import softprompt

    config = run_config(tmp_path, steps=4)
    hard = api.train(config, ["method={name: hard_prompt}", "output=" + str(tmp_path / "hard")],
                     progress=False, log=lambda s: None)
    saved = PromptArtifact.load(hard.artifact)
    assert saved.tensors == {} and saved.meta["method"] == "hard_prompt" and hard.steps == 0
    assert "{mask}" in saved.meta["task"]["template"]
    soft = api.train(config, ["output=" + str(tmp_path / "soft")], progress=False, log=lambda s: None)
    base = api.load_model(config["model"])
    prompts = {"hard": api.load_prompt(hard.artifact, base), "soft": api.load_prompt(soft.artifact, base)}
    requests = [("hard", "great cast"), ("soft", "great cast"), ("hard", "boring and slow")]
    for (name, text), got in zip(requests, softprompt.predict_mixed(prompts, requests)):
        (alone,) = softprompt.predict(prompts[name], [text])
        assert got.label == alone.label
        assert all(abs(got.probabilities[k] - alone.probabilities[k]) < 1e-5 for k in got.probabilities)
    assert softprompt.evaluate(hard.artifact, config["data"]["dev"])["accuracy"] == hard.metrics["dev"]["accuracy"]


def test_a_hard_prompt_on_an_encoder_trains_only_the_head(tmp_path):
    result = api.train(run_config(tmp_path, "bert", steps=6), ["method={name: hard_prompt}"], progress=False,
                       log=lambda s: None)
    saved = PromptArtifact.load(result.artifact)
    assert result.steps == 6 and set(saved.tensors) == {k for k in saved.tensors if k.startswith("head.")}
    assert saved.tensors and result.trainable_parameters == sum(t.numel() for t in saved.tensors.values())


def test_model_dropout_is_on_in_training_steps_and_off_in_evaluation(tmp_path):
    """training.model_dropout: the base's dropout runs in the training forwards (P-tuning v2's
    reference loop), never in evaluation, and the base is back in eval mode afterwards."""
    config = run_config(tmp_path, "bert", steps=4, eval_every=2)
    config["method"] = {"name": "ptuning_v2", "prefix_length": 3}
    base = api.load_model(config["model"])
    assert any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in base.model.modules())
    modes, losses = [], []
    base.model.register_forward_pre_hook(lambda module, args: modes.append((torch.is_grad_enabled(), module.training)))
    for on in (False, True):
        modes.clear()
        out = ["output=" + str(tmp_path / f"d{on}"), f"training.model_dropout={on}"]
        result = api.train(config, out, base=base, progress=False, log=lambda s: None)
        assert {training for grad, training in modes if grad} == {on}
        assert {training for grad, training in modes if not grad} == {False}
        assert not any(m.training for m in base.model.modules())
        # the training losses, not the kept prompts: both runs may keep the starting prompt (step 0)
        losses.append([h["loss"] for h in result.history if "loss" in h])
    assert losses[0] != losses[1]


def test_capped_step_limits_each_step_to_a_share_of_the_tensors_norm():
    from softprompt.training.loop import capped_step

    capped, free = (torch.nn.Parameter(torch.full((4, 8), 0.1)) for _ in range(2))
    opt = torch.optim.AdamW([{"params": [capped], "lr": 1.0, "max_update": 0.02},
                             {"params": [free], "lr": 1.0, "max_update": 0.0}])
    for _ in range(3):
        before = (capped.detach().clone(), free.detach().clone())
        opt.zero_grad()
        (capped.sum() + free.sum()).backward()
        capped_step(opt, opt.step)
        assert (capped.detach() - before[0]).norm() <= 0.02 * before[0].norm() * (1 + 1e-6)
        assert (free.detach() - before[1]).norm() > 0.5 * before[1].norm()  # an uncapped Adam step of lr 1


def test_a_cap_on_the_relative_update_bounds_how_far_a_huge_rate_moves_the_prompt(tmp_path):
    """At lr 10 an Adam step moves each coordinate by about 10; with training.max_update=0.02, 12 steps
    move the prompt by at most 1.02^12 - 1 = 27% of its starting norm. The start is a run whose cap
    (1e-9) leaves it where it began; every run starts from the same vocab init."""
    prompts = {}
    for cap in (1e-9, 0.02, 0):
        config = run_config(tmp_path, steps=12, lr=10.0, warmup=0, max_update=cap, eval_start=False, eval_every=12)
        config["output"] = str(tmp_path / f"run-{cap}")
        result = api.train(config, progress=False, log=lambda s: None)
        prompts[cap] = PromptArtifact.load(result.artifact).tensors["prompt.input"].float()
    start = prompts[1e-9]
    bound = (1.02 ** 12 - 1) * start.norm()
    assert (prompts[0.02] - start).norm() <= bound * 1.001
    assert (prompts[0.02] - start).norm() > 0.5 * bound  # it did move, as far as the cap lets it
    assert (prompts[0] - start).norm() > 10 * bound  # without the cap (the default) lr 10 flings it far away


@pytest.mark.parametrize("bad", [-0.1, "auto", True])
def test_a_cap_that_is_no_number_at_or_above_zero_is_refused(bad):
    from softprompt.configs import TrainingConfig
    from softprompt.errors import ConfigError

    with pytest.raises(ConfigError, match="training.max_update"):
        TrainingConfig(max_update=bad)
