"""Cross-model transfer: projectors fitted on paired prompts, on shared-vocabulary anchors and with the
target's task loss; projected prompts load on the target model; the CLI commands."""

import pytest
import torch
from tiny import tiny_base
from typer.testing import CliRunner

from softprompt import api
from softprompt.core import PromptArtifact
from softprompt.errors import ArtifactError, ConfigError
from softprompt.transfer.projector import (
    Projector,
    finetune_projector,
    fit_from_artifacts,
    fit_projector,
    project,
    shared_words,
    vocab_projector,
)


def artifact(tensor, base=None, name="p", fingerprint=None):
    return PromptArtifact({"prompt.input": tensor}, {
        "method": "prompt_tuning", "name": name, "method_config": {"num_virtual_tokens": tensor.shape[0]},
        "task": {"kind": "classification", "labels": ["negative", "positive"], "template": "review : {text} sentiment : {mask}",
                 "verbalizer": {"positive": ["good"], "negative": ["bad"]}},
        "base_model": {"name": base.name if base else "a", "fingerprint": fingerprint or base.fingerprint,
                       "hidden_size": tensor.shape[1]}})


@pytest.fixture(scope="module")
def bases():
    return tiny_base("gpt2"), tiny_base("llama")


def test_regression_recovers_a_known_linear_map(tmp_path):
    g = torch.Generator().manual_seed(0)
    w, b = torch.randn(8, 12, generator=g), torch.randn(12, generator=g)
    sources = [torch.randn(5, 8, generator=g) for _ in range(6)]
    targets = [s @ w + b for s in sources]
    linear = fit_projector(sources, targets, ridge=1e-8)
    held_out = torch.randn(3, 8, generator=g)
    assert torch.allclose(linear(held_out), held_out @ w + b, atol=1e-3)
    mlp = fit_projector(sources, targets, kind="mlp", hidden=64, steps=400, lr=1e-2)
    relative = (mlp(held_out) - (held_out @ w + b)).norm() / (held_out @ w + b).norm()
    assert relative < 0.25 and mlp.meta["fit"]["final_mse"] < 0.05
    loaded = Projector.load(mlp.save(tmp_path / "p.safetensors"))
    assert torch.allclose(loaded(held_out), mlp(held_out)) and loaded.kind.value == "mlp"
    with pytest.raises(ConfigError, match="one number of virtual tokens"):
        fit_projector([torch.zeros(2, 8)], [torch.zeros(3, 12)])
    with pytest.raises(ArtifactError, match="not a projector file"):
        Projector.load(artifact(torch.zeros(2, 8), name="x", fingerprint="f").save(tmp_path / "a.safetensors"))


def test_projected_prompt_fits_the_target_model(bases, tmp_path):
    a, b = bases
    g = torch.Generator().manual_seed(1)
    pairs = [(artifact(torch.randn(4, 32, generator=g), a, f"t{i}"), artifact(torch.randn(4, 32, generator=g), b, f"t{i}"))
             for i in range(3)]
    projector = fit_from_artifacts(pairs)
    assert projector.meta["source"]["fingerprint"] == a.fingerprint and projector.meta["target"]["fingerprint"] == b.fingerprint
    path = projector.save(tmp_path / "proj.safetensors")
    moved = project(pairs[0][0], path, b)
    assert moved.meta["base_model"]["fingerprint"] == b.fingerprint and moved.meta["transfer"]["strategy"] == "projection"
    saved = moved.save(tmp_path / "moved.safetensors")
    loaded = api.load_prompt(saved, b)
    assert torch.allclose(loaded.unit.method.embedding, projector(pairs[0][0].tensors["prompt.input"]))
    assert api.predict(loaded, ["a warm and funny film"])[0].label in ("negative", "positive")
    with pytest.raises(ArtifactError, match="projector maps from"):
        project(pairs[0][1], projector, b)  # a prompt of the target model is not a source
    with pytest.raises(ArtifactError, match="projector maps to"):
        project(pairs[0][0], projector, a)
    with pytest.raises(ArtifactError, match="source prompts come from 2 base models"):
        fit_from_artifacts([pairs[0], (pairs[1][1], pairs[1][1])])


def test_vocabulary_anchored_map_sends_a_word_to_the_same_word(bases):
    a, _ = bases
    b = tiny_base("llama", seed=3)
    g = torch.Generator().manual_seed(2)
    mix = torch.randn(32, 32, generator=g) / 32**0.5
    words, ids_a, ids_b = shared_words(a, b)
    assert "great" in words and len(words) > 30
    with torch.no_grad():  # target embeddings: a hidden linear image of the source's, word by word
        b.input_embeddings().weight[ids_b] = a.input_embeddings().weight[ids_a] @ mix
    projector = vocab_projector(a, b, ridge=1e-6)
    i = words.index("great")
    x, y = a.input_embeddings().weight[ids_a[i]], b.input_embeddings().weight[ids_b[i]]
    assert torch.nn.functional.cosine_similarity(projector(x[None])[0], y, dim=0) > 0.99
    assert projector.meta["fit"] == {"method": "vocabulary", "anchors": len(words), "ridge": 1e-6}


def test_task_loss_fine_tuning_moves_the_projector(bases, tmp_path):
    from helpers import run_config

    a, b = bases
    config = run_config(tmp_path, family="llama", steps=1)
    config["data"]["max_train"] = 8
    projector = vocab_projector(a, b)
    before = projector.net.weight.detach().clone()
    source = artifact(torch.randn(4, 32, generator=torch.Generator().manual_seed(3)), a, "s")
    finetune_projector(projector, [(source, config)], base=b, steps=2, lr=1e-2, batch_size=4, log=lambda _: None)
    assert not torch.equal(before, projector.net.weight) and projector.meta["finetune"][0]["steps"] == 2
    assert all(p.grad is None or not p.requires_grad for p in b.model.parameters())


def test_cli_projects_a_prompt(bases, tmp_path):
    from softprompt.cli import app

    a, b = bases
    g = torch.Generator().manual_seed(4)
    paths = [(artifact(torch.randn(4, 32, generator=g), a, f"t{i}").save(tmp_path / f"a{i}.safetensors"),
              artifact(torch.randn(4, 32, generator=g), b, f"t{i}").save(tmp_path / f"b{i}.safetensors")) for i in range(2)]
    runner = CliRunner()
    result = runner.invoke(app, ["transfer", "fit-projector", *[f"{x}={y}" for x, y in paths], "-o", str(tmp_path / "p.safetensors")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["transfer", "fit-projector", "nonsense", "-o", str(tmp_path / "q.safetensors")])
    assert result.exit_code == 2 and "SOURCE.safetensors=TARGET.safetensors" in result.output
    result = runner.invoke(app, ["ppt", "examples", str(tmp_path / "missing.txt"), "-o", str(tmp_path / "x.jsonl")])
    assert result.exit_code == 2 and "file not found" in result.output
