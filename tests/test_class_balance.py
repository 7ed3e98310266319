"""Uneven classes in training: class-weighted loss (training.class_weights) and class-balanced
batches (training.sampling), validated with messages that name the fix."""

import collections
import json

import pytest
import torch
from helpers import run_config

from softprompt import api
from softprompt.configs import Sampling, TrainingConfig, from_dict
from softprompt.core import PromptArtifact
from softprompt.errors import ConfigError
from softprompt.tasks.classification import class_weight_tensor
from softprompt.training.loop import balanced_batch_order


def skewed(tmp_path, n_pos=4, n_neg=36):
    """A training file with 9 negatives to each positive."""
    path = tmp_path / "skewed.jsonl"
    rows = [{"text": "a great film", "label": "positive"}] * n_pos + [{"text": "boring and slow", "label": "negative"}] * n_neg
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("section,message", [
    ({"class_weights": "balancd"}, r"class_weights='balancd' is not one of: none, balanced, or a mapping"),
    ({"class_weights": {"spam": -1}}, r"weights must be numbers >= 0"),
    ({"class_weights": {"spam": 0}}, r"at least one weight must be > 0"),
    ({"sampling": "even"}, r"training.sampling='even' is not one of: shuffle, balanced"),
    ({"sampling": "balanced", "group_by_length": True}, r"do not combine"),
])
def test_bad_balance_options_are_refused_with_the_fix(section, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(TrainingConfig, section, "training.")


def test_balanced_weights_are_scikit_learns_and_a_mapping_names_labels():
    weights = class_weight_tensor("balanced", ["neg", "pos"], [0, 0, 0, 1])
    assert torch.allclose(weights, torch.tensor([4 / (2 * 3), 4 / (2 * 1)]))
    assert class_weight_tensor("none", ["neg", "pos"], [0, 1]) is None
    assert class_weight_tensor({"pos": 3}, ["neg", "pos"], [0, 1]).tolist() == [1.0, 3.0]
    with pytest.raises(ConfigError, match=r"names label\(s\) \['spam'\] that the task does not have"):
        class_weight_tensor({"spam": 3}, ["neg", "pos"], [0, 1])
    with pytest.raises(ConfigError, match=r"no example of label\(s\) \['pos'\]"):
        class_weight_tensor("balanced", ["neg", "pos"], [0, 0])


def test_balanced_batches_draw_every_class_equally_and_depend_on_seed_and_step_only():
    labels = [0] * 90 + [1] * 9 + [2] * 3
    drawn = [i for step in range(12) for i in balanced_batch_order(labels, 6, step, seed=0)]
    assert collections.Counter(labels[i] for i in drawn) == {0: 24, 1: 24, 2: 24}
    assert len(set(drawn) & set(range(90))) == 24  # the large class is sub-sampled without repeats
    assert balanced_batch_order(labels, 6, 5, seed=0) == balanced_batch_order(labels, 6, 5, seed=0)
    assert balanced_batch_order(labels, 6, 5, seed=0) != balanced_batch_order(labels, 6, 5, seed=1)


def test_class_weights_scale_each_examples_loss_by_its_class(tmp_path):
    config = run_config(tmp_path, steps=1)
    config["data"]["train"] = str(skewed(tmp_path))
    base = api.load_model(config["model"])
    plain = api.train(config, ["output=" + str(tmp_path / "plain")], base=base, progress=False, log=lambda s: None)
    loaded = api.load_prompt(plain.artifact, base)
    task = loaded.unit.task
    logits = [torch.tensor([0.3, -0.2]), torch.tensor([1.0, 0.5]), torch.tensor([-0.4, 0.9])]
    items = [type("Item", (), {"label": y})() for y in (0, 1, 1)]
    per_example = [torch.nn.functional.cross_entropy(x[None], torch.tensor([i.label])) for x, i in zip(logits, items)]
    task.class_weights = torch.tensor([2.0, 0.5])
    expected = 2.0 * per_example[0] + 0.5 * (per_example[1] + per_example[2])
    assert torch.allclose(task.loss_sum(logits, items), expected)
    task.class_weights = None
    assert torch.allclose(task.loss_sum(logits, items), sum(per_example))


def test_a_skewed_run_trains_with_both_options_and_records_them(tmp_path):
    config = run_config(tmp_path, steps=4, eval_every=2)
    config["data"]["train"] = str(skewed(tmp_path))
    base = api.load_model(config["model"])
    batches = []
    from softprompt.training import loop

    original = loop.balanced_batch_order
    loop.balanced_batch_order = lambda *a, **k: batches.append(original(*a, **k)) or batches[-1]
    try:
        run = api.train(config, ["training.class_weights=balanced", "training.sampling=balanced"], base=base,
                        progress=False, log=lambda s: None)
    finally:
        loop.balanced_batch_order = original
    labels = [json.loads(line)["label"] for line in (tmp_path / "skewed.jsonl").read_text().splitlines()]
    assert len(batches) == 4 and all(collections.Counter(labels[i] for i in b) == {"positive": 4, "negative": 4}
                                     for b in batches)
    training = PromptArtifact.load(run.artifact).meta["training"]
    assert training["class_weights"] == "balanced" and training["sampling"] == Sampling.BALANCED.value


def test_balance_options_refuse_tasks_without_one_class_per_example(tmp_path):
    config = run_config(tmp_path, steps=1)
    config["task"] = {"kind": "generation", "template": "{text} => {mask}"}
    with pytest.raises(ConfigError, match="class_weights weighs classes of a classification task"):
        api.train(config, ["training.class_weights=balanced"], progress=False, log=lambda s: None)
    with pytest.raises(ConfigError, match="sampling='balanced' needs one class label per training example"):
        api.train(config, ["training.sampling=balanced"], progress=False, log=lambda s: None)
