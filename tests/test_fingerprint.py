"""The base-model fingerprint: every weight tensor counts, dtypes do not, and older artifacts still load."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from test_cli import error_line, sp
from helpers import run_config

from softprompt import api
from softprompt.core import PromptArtifact
from softprompt.errors import ArtifactError
from softprompt.models import loading, wrap_model
from softprompt.models.fingerprint import VERSION, fingerprint_v1, fingerprints
from tiny import tiny_model


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A prompt trained on a tiny Llama saved to disk, and that model's directory."""
    tmp = tmp_path_factory.mktemp("fingerprint")
    config = run_config(tmp, family="llama", steps=4, eval_every=4)
    result = api.train(config, progress=False, log=lambda _: None)
    return tmp / "tiny-llama", result.artifact


def changed_copy(model_dir, target, change):
    """A copy of the saved model with change(model) applied, as another directory."""
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    with torch.no_grad():
        change(model)
    model.save_pretrained(target)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(target)
    return target


def last_mlp(model):
    return model.model.layers[-1].mlp.down_proj.weight


def test_new_artifacts_record_the_fingerprint_version(trained):
    model_dir, artifact = trained
    recorded = PromptArtifact.load(artifact).meta["base_model"]
    base = api.load_model(str(model_dir))
    assert recorded["fingerprint_version"] == VERSION
    assert (recorded["fingerprint"], recorded["weights"], recorded["dtype"]) == (base.fingerprint, base.weights, "float32")


def test_a_changed_late_mlp_weight_is_refused_and_the_override_still_works(trained, tmp_path):
    model_dir, artifact = trained
    noise = torch.Generator().manual_seed(0)
    changed = changed_copy(model_dir, tmp_path / "changed",
                           lambda m: last_mlp(m).add_(0.01 * torch.randn(last_mlp(m).shape, generator=noise)))
    base = api.load_model(str(changed))
    with pytest.raises(ArtifactError, match=r"made for base model .*\(fingerprint [0-9a-f]{16}\), not .*"
                                            r"\(fingerprint [0-9a-f]{16}\); pass --allow-model-mismatch"):
        api.load_prompt(artifact, base)
    loaded = api.load_prompt(artifact, base, allow_model_mismatch=True)
    assert loaded.base is base


def test_a_rescaled_tensor_keeps_its_signs_but_is_refused_by_its_values(trained, tmp_path):
    model_dir, artifact = trained
    changed = changed_copy(model_dir, tmp_path / "rescaled", lambda m: last_mlp(m).mul_(1.5))
    base = api.load_model(str(changed))
    assert base.fingerprint == api.load_model(str(model_dir)).fingerprint  # signs alone cannot see it
    with pytest.raises(ArtifactError, match=r"\(weights [0-9a-f]{16}\), not .*the same signs, other values"):
        api.load_prompt(artifact, base)


def test_the_same_model_in_another_dtype_fits(trained):
    model_dir, artifact = trained
    for dtype in ("bfloat16", "float16"):
        base = loading.load_base(str(model_dir), dtype=dtype, reuse=False)
        loaded = api.load_prompt(artifact, base)  # no ArtifactError: the fingerprint ignores the dtype
        assert loaded.base is base and loaded.artifact.meta["base_model"]["fingerprint_version"] >= 2


def test_fingerprints_across_dtypes():
    model, _ = tiny_model("llama")
    base32 = fingerprints(model)
    bf16 = fingerprints(model.to(torch.bfloat16))
    model, _ = tiny_model("llama")
    fp16 = fingerprints(model.to(torch.float16))
    assert base32 == bf16  # float32 and bfloat16 share sign and bfloat16 value digests
    assert fp16[0] == base32[0] and fp16[1] != base32[1]  # float16 rounds values elsewhere; signs stay


def test_every_tensor_counts_and_v1_missed_them():
    model, _ = tiny_model("gpt2")
    before, before_v1 = fingerprints(model), fingerprint_v1(model)
    with torch.no_grad():
        model.transformer.h[-1].mlp.c_proj.bias.neg_()  # a one-dimensional tensor, late in the model
    assert fingerprints(model)[0] != before[0]
    assert fingerprint_v1(model) == before_v1  # the gap version 2 closes


def old_format(artifact, tmp_path, fingerprint):
    """The artifact as softprompt wrote it before fingerprint versions: no version, v1 fingerprint."""
    old = PromptArtifact.load(artifact)
    base_meta = {k: v for k, v in old.meta["base_model"].items() if k not in ("fingerprint_version", "weights", "dtype")}
    old.meta["base_model"] = {**base_meta, "fingerprint": fingerprint}
    return old.save(tmp_path / "old.safetensors")


def test_an_old_artifact_still_loads_on_the_unchanged_model(trained, tmp_path):
    model_dir, artifact = trained
    base = api.load_model(str(model_dir))
    path = old_format(artifact, tmp_path, base.fingerprint_v1)
    assert "fingerprint_version" not in PromptArtifact.load(path).meta["base_model"]
    assert api.load_prompt(path, base).artifact.meta["base_model"]["fingerprint"] == base.fingerprint_v1
    # ... and is still refused where version 1 could see the change (the input embeddings).
    changed = changed_copy(model_dir, tmp_path / "embeddings", lambda m: m.model.embed_tokens.weight.mul_(-1))
    with pytest.raises(ArtifactError, match=rf"\(fingerprint {base.fingerprint_v1}\), not .*\(fingerprint [0-9a-f]{{16}}\)"):
        api.load_prompt(path, api.load_model(str(changed)))


def test_an_unknown_fingerprint_version_is_refused(trained, tmp_path):
    model_dir, artifact = trained
    art = PromptArtifact.load(artifact)
    art.meta["base_model"]["fingerprint_version"] = VERSION + 1
    path = art.save(tmp_path / "future.safetensors")
    with pytest.raises(ArtifactError, match=f"fingerprint version {VERSION + 1}.*upgrade softprompt"):
        api.load_prompt(path, api.load_model(str(model_dir)))


def test_cli_refuses_a_model_changed_in_place_and_the_flag_overrides(trained, tmp_path, monkeypatch):
    model_dir, artifact = trained
    copy = PromptArtifact.load(artifact)
    changed = changed_copy(model_dir, tmp_path / "in-place",
                           lambda m: last_mlp(m).add_(0.01 * torch.randn(last_mlp(m).shape)))
    copy.meta["base_model"]["name"] = str(changed)  # as if the model at its path had been fine-tuned
    copy.meta["base_model"]["fingerprint"] = api.load_model(str(model_dir)).fingerprint
    path = copy.save(tmp_path / "p.safetensors")
    monkeypatch.setattr(loading, "_LOADED", {})
    assert "made for base model" in error_line(sp("predict", path, "a warm and funny film"))
    out = sp("predict", path, "a warm and funny film", "--allow-model-mismatch")
    assert out.returncode == 0 and out.stdout.split("\t")[0] in ("positive", "negative")


def test_wrap_model_fingerprint_is_what_the_function_gives():
    model, tokenizer = tiny_model("llama")
    base = wrap_model(model, tokenizer, "tiny")
    assert (base.fingerprint, base.weights) == fingerprints(model)
    assert base.fingerprint_meta() == {"fingerprint": base.fingerprint, "fingerprint_version": VERSION,
                                       "weights": base.weights, "dtype": "float32"}


def test_records_of_one_fingerprint_version_compare_by_hash_and_of_two_by_name_and_shape():
    from softprompt.models.fingerprint import same_base

    v2 = {"name": "m", "fingerprint": "aaaa", "fingerprint_version": 2, "hidden_size": 32, "num_layers": 2}
    assert same_base(v2, dict(v2)) and not same_base(v2, {**v2, "fingerprint": "bbbb"})
    old = {"name": "m", "fingerprint": "cccc", "hidden_size": 32, "num_layers": 2}  # made before versions
    with pytest.warns(UserWarning, match="version 2 and the other 1.*name and shape only"):
        assert same_base(v2, old)
    assert not same_base(v2, {**old, "name": "other"}) and not same_base(v2, {**old, "hidden_size": 64})
    assert not same_base(old, {**old, "fingerprint": "dddd"})  # both version 1: the hashes decide


def test_prompts_of_one_model_across_fingerprint_versions_are_compared(tmp_path):
    from softprompt.core import PromptArtifact
    from softprompt.transfer.similarity import _check_one_base

    record = {"name": "m", "fingerprint": "aaaa", "fingerprint_version": 2, "hidden_size": 32, "num_layers": 2}
    new = PromptArtifact({"prompt.input": torch.zeros(2, 32)}, {"method": "prompt_tuning", "base_model": record})
    old = PromptArtifact({"prompt.input": torch.zeros(2, 32)},
                         {"method": "prompt_tuning", "base_model": {**record, "fingerprint": "cccc",
                                                                    "fingerprint_version": None}})
    with pytest.warns(UserWarning):
        _check_one_base([new, old], ["new", "old"])
    other = PromptArtifact(new.tensors, {"method": "prompt_tuning", "base_model": {**record, "fingerprint": "bbbb"}})
    with pytest.raises(ArtifactError, match="different base models"):
        _check_one_base([new, other], ["new", "other"])
