"""Prompt transfer: similarity measures, init from artifacts, SPoT strategies, retrieval, zero-shot transfer."""

import csv
import json

import pytest
import torch
from helpers import run_config
from tiny import tiny_base

from softprompt import api
from softprompt.core import PromptArtifact
from softprompt.errors import ArtifactError, ConfigError
from softprompt.methods.prompt_tuning import PromptTuning, PromptTuningConfig
from softprompt.transfer import (
    activated_neurons,
    best_of_top_k,
    cosine_flat,
    cosine_mean,
    euclidean,
    init_overrides,
    multitask_mixture,
    neuron_overlap,
    rank_by_similarity,
    rank_by_zero_shot,
    rank_sources,
    similarity_matrix,
    similarity_weights,
    transferred_artifact,
    weighted_average_init,
    zero_shot,
)

QUIET = {"progress": False, "log": lambda _: None}


def prompt_artifact(tensor, fingerprint="fp", name="p", width=None):
    return PromptArtifact({"prompt.input": tensor}, {
        "method": "prompt_tuning", "name": name, "method_config": {"num_virtual_tokens": tensor.shape[0]},
        "task": {"kind": "classification", "labels": ["negative", "positive"]},
        "base_model": {"name": "tiny", "fingerprint": fingerprint, "hidden_size": width or tensor.shape[1]}})


def test_measures_on_known_vectors():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert cosine_flat(a, a) == pytest.approx(1.0)
    assert cosine_flat(a, torch.tensor([[0.0, 1.0], [-1.0, 0.0]])) == pytest.approx(0.0)
    assert cosine_flat(a, -a) == pytest.approx(-1.0)
    assert cosine_mean(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0], [0.0, 4.0]])) == pytest.approx(0.0)
    assert cosine_mean(a, torch.tensor([[3.0, 3.0]])) == pytest.approx(1.0)  # different lengths are fine
    assert euclidean(a, torch.zeros(2, 2)) == pytest.approx(2**0.5)
    with pytest.raises(ArtifactError, match="shapes differ"):
        cosine_flat(a, torch.zeros(3, 2))
    masks = torch.tensor([1, 1, 0, 0], dtype=torch.bool), torch.tensor([0, 0, 1, 1], dtype=torch.bool)
    assert neuron_overlap(masks[0], masks[0]) == 1.0 and neuron_overlap(*masks) == 0.0
    assert neuron_overlap(masks[0], torch.tensor([1, 0, 0, 0])) == pytest.approx(1 / 2**0.5)


def test_matrix_csv_heatmap_and_base_check(tmp_path):
    g = torch.Generator().manual_seed(0)
    arts = [prompt_artifact(torch.randn(3, 4, generator=g), name=f"t{i}") for i in range(3)]
    matrix = similarity_matrix(arts, "cosine")
    assert matrix.names == ["t0", "t1", "t2"] and matrix.values.shape == (3, 3)
    assert torch.allclose(torch.tensor(matrix.values.diagonal()), torch.ones(3, dtype=torch.float64))
    rows = list(csv.reader(matrix.to_csv(tmp_path / "m.csv").open()))
    assert rows[0] == ["cosine", "t0", "t1", "t2"] and float(rows[2][2]) == pytest.approx(1.0)
    png = matrix.heatmap(tmp_path / "m.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert similarity_matrix(arts, "euclidean").values[1, 1] == 0
    other = prompt_artifact(torch.randn(3, 4, generator=g), fingerprint="other", name="x")
    with pytest.raises(ArtifactError, match="different base models"):
        similarity_matrix([*arts, other], "cosine_mean")
    with pytest.raises(ConfigError, match="not one of"):
        similarity_matrix(arts, "dot")


@pytest.mark.parametrize("family", ["gpt2", "llama", "bert"])
def test_activated_neuron_overlap_on_a_tiny_model(family):
    base = tiny_base(family)
    g = torch.Generator().manual_seed(1)
    scale = base.input_embeddings().weight.std().item()
    a = torch.randn(4, base.info.hidden_size, generator=g) * scale
    mask = activated_neurons(base, a)
    ffn = {"gpt2": 128, "llama": 64, "bert": 64}[family]  # gpt2's inner width defaults to 4 x 32
    assert mask.dtype == torch.bool and mask.numel() == base.info.num_layers * ffn  # every FFN neuron of each layer
    arts = [prompt_artifact(t, base.fingerprint, f"p{i}") for i, t in enumerate([a, a.clone(), -a * 3, a[:2]])]
    values = similarity_matrix(arts, "neurons", base=base).values
    assert values[0, 1] == pytest.approx(1.0) and 0 <= values[0, 2] < 1 and 0 <= values[0, 3] <= 1
    with pytest.raises(ConfigError, match="pass base="):
        similarity_matrix(arts, "neurons")


def test_init_from_artifacts_is_the_weighted_average(tmp_path):
    base = tiny_base("gpt2")
    g = torch.Generator().manual_seed(0)
    tensors = [torch.randn(4, base.info.hidden_size, generator=g) for _ in range(2)]
    paths = [prompt_artifact(t, base.fingerprint, f"s{i}").save(tmp_path / f"s{i}.safetensors") for i, t in enumerate(tensors)]
    config = PromptTuningConfig(num_virtual_tokens=4, init="artifact", init_from=[str(p) for p in paths],
                                init_weights=[3.0, 1.0])
    prompt = PromptTuning.initialise(config, base).embedding
    assert torch.allclose(prompt, 0.75 * tensors[0] + 0.25 * tensors[1], atol=1e-6)
    plain = PromptTuning.initialise(PromptTuningConfig(4, init="artifact", init_from=[str(paths[0])]), base)
    assert torch.equal(plain.embedding, tensors[0])
    with pytest.raises(ConfigError, match="set it to 4"):
        PromptTuning.initialise(PromptTuningConfig(5, init="artifact", init_from=[str(paths[0])]), base)
    other = prompt_artifact(tensors[0], "someone-else").save(tmp_path / "o.safetensors")
    with pytest.raises(ArtifactError, match="made for base model"):
        PromptTuning.initialise(PromptTuningConfig(4, init="artifact", init_from=[str(other)]), base)
    with pytest.raises(ConfigError, match="needs method.init_from"):
        PromptTuningConfig(4, init="artifact")
    with pytest.raises(ConfigError, match="one weight per file"):
        PromptTuningConfig(4, init="artifact", init_from=["a"], init_weights=[1.0, 2.0])
    assert similarity_weights([0.6, 0.2, -0.5]) == pytest.approx([0.75, 0.25, 0.0])
    assert similarity_weights([-1.0, -2.0]) == [0.5, 0.5]
    overrides = weighted_average_init([(paths[0], 0.6), (paths[1], 0.2)])
    assert overrides[0] == "method.init=artifact" and overrides[2] == "method.init_weights=[0.75, 0.25]"


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A tiny trained sentiment prompt, a second prompt (its negation) and a target whose gold labels are
    the first prompt's own predictions, so the first is the right source by construction."""
    tmp = tmp_path_factory.mktemp("transfer")
    config = run_config(tmp, steps=4, eval_every=4, eval_start=False)  # the trained prompt, even if no better than its start
    run = api.train(config, **QUIET)
    art = PromptArtifact.load(run.artifact)
    anti = PromptArtifact({"prompt.input": -3 * art.tensors["prompt.input"]}, {**art.meta, "name": "anti"})
    anti_path = anti.save(tmp / "anti.safetensors")
    texts = [json.loads(line)["text"] for line in (tmp / "dev.jsonl").read_text().splitlines()]
    preds = api.predict(run.artifact, texts)
    target = tmp / "target.jsonl"
    target.write_text("".join(json.dumps({"text": t, "label": p.label}) + "\n" for t, p in zip(texts, preds)))
    base = api.load_model(config["model"]["name"])
    target_config = {**config, "data": {"train": str(target), "dev": str(target)}, "name": "target"}
    return tmp, config, target_config, run.artifact, anti_path, base


def test_zero_shot_transfer_maps_label_words(source):
    tmp, _, _, good, _, base = source
    same = zero_shot(good, tmp / "dev.jsonl", base=base)
    assert same["accuracy"] == pytest.approx(api.evaluate(good, tmp / "dev.jsonl", base=base)["accuracy"])
    swapped = transferred_artifact(PromptArtifact.load(good), label_map={"positive": "negative", "negative": "positive"})
    assert swapped.meta["task"]["verbalizer"] == {"positive": ["bad"], "negative": ["good"]}
    text = ["a warm and funny film"]
    p1 = api.predict(api.load_prompt(good, base), text)[0].probabilities
    p2 = api.predict(api.load_prompt(swapped, base), text)[0].probabilities
    assert p1["positive"] == pytest.approx(p2["negative"], abs=1e-5)
    with pytest.raises(ConfigError, match="source labels"):
        transferred_artifact(PromptArtifact.load(good), label_map={"x": "neutral", "y": "positive"})


def test_rank_by_similarity_and_zero_shot_put_the_right_source_first(source):
    _, _, target_config, good, anti, base = source
    query = PromptArtifact.load(good)
    near = PromptArtifact({"prompt.input": query.tensors["prompt.input"] + 0.01}, query.meta)
    ranked = rank_by_similarity(near, {"anti": anti, "good": good})
    assert [r.name for r in ranked] == ["good", "anti"] and ranked[0].score > 0.99
    ranked = rank_by_zero_shot({"anti": anti, "good": good}, target_config, base=base)
    assert ranked[0].name == "good" and ranked[0].score == 1.0 and ranked[1].score < 1.0


def test_spot_retrieval_and_best_of_top_k(source, tmp_path):
    _, _, target_config, good, anti, base = source
    # SPoT task embedding: a short run on the target, started from the good prompt, stays nearest to it.
    ranked = rank_sources(target_config, {"anti": anti, "good": good}, by="spot", k=1, base=base, steps=2,
                          output=tmp_path / "embedding")
    assert [r.name for r in ranked] == ["good"]
    result = best_of_top_k(target_config, [anti, good], steps=1, overrides=["training.lr=1e-6"], base=base,
                           output=tmp_path / "best", log=lambda _: None)
    assert result.best == good and result.scores[str(good)] == 1.0 and result.scores[str(anti)] < 1.0
    assert result.overrides == init_overrides([good])


def test_multitask_mixture_gives_a_prompt_that_initialises_a_target(source, tmp_path):
    _, config, target_config, _, _, base = source
    mixed = multitask_mixture([config, target_config], steps=3, base=base, output=tmp_path / "mix",
                              num_virtual_tokens=4, batch_size=4, log=lambda _: None)
    art = PromptArtifact.load(mixed)
    assert art.tensors["prompt.input"].shape == (4, base.info.hidden_size)
    assert art.meta["transfer"]["sources"] == ["t", "target"]
    run = api.train(target_config, [*init_overrides([mixed]), "training.steps=1", f"output={tmp_path / 'run'}"],
                    base=base, **QUIET)
    assert PromptArtifact.load(run.artifact).meta["method_config"]["init_from"] == [str(mixed)]


def test_k_shot_training_uses_k_examples_per_class(tmp_path):
    config = run_config(tmp_path, steps=1, eval_every=1)
    lines = []
    api.train(config, ["data.k_shot=3"], log=lines.append, progress=False)
    assert lines[0].split(": ")[1].startswith("6 training and 20 dev examples")
    with pytest.raises(Exception, match="fewer than 30 examples"):
        api.train(config, ["data.k_shot=30"], **QUIET)
