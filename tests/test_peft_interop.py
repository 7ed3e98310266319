"""PEFT interop: PEFT's prompt-tuning, P-tuning and prefix-tuning adapters imported score as PEFT does,
and exported ones load in PEFT and score as we do (fp32, max abs difference 1e-5 on the real tokens'
logits), on a grouped-query Llama and on GPT-2 (absolute positions)."""

import json

import pytest
import torch
from safetensors.torch import save_file

peft = pytest.importorskip("peft")

from softprompt import load_prompt  # noqa: E402
from softprompt.core import PromptArtifact, PromptedModel, virtual  # noqa: E402
from softprompt.errors import ArtifactError, ConfigError  # noqa: E402
from softprompt.interop import export_peft, import_peft  # noqa: E402
from tiny import tiny_base, tiny_model  # noqa: E402

ATOL = 1e-5
TEXTS = ["a warm and funny film", "boring", "the plot is dull and the acting is terrible"]

ADAPTERS = {  # name -> (PEFT config, the method the artifact gets)
    "prompt_tuning": (lambda t: peft.PromptTuningConfig(task_type=t, num_virtual_tokens=4), "prompt_tuning"),
    "ptuning_mlp": (lambda t: peft.PromptEncoderConfig(task_type=t, num_virtual_tokens=4, encoder_hidden_size=24),
                    "ptuning"),
    "ptuning_lstm": (lambda t: peft.PromptEncoderConfig(task_type=t, num_virtual_tokens=4, encoder_hidden_size=12,
                                                        encoder_reparameterization_type="LSTM"), "ptuning"),
    "prefix": (lambda t: peft.PrefixTuningConfig(task_type=t, num_virtual_tokens=3), "ptuning_v2"),
    "prefix_projection": (lambda t: peft.PrefixTuningConfig(task_type=t, num_virtual_tokens=3, prefix_projection=True,
                                                            encoder_hidden_size=24), "prefix_tuning"),
}


def _peft_model(family, name, task_type="CAUSAL_LM", seed=0):
    """A PEFT prompt model on a fresh tiny model, its prompt weights random (not PEFT's zero/vocab start)."""
    model, _ = tiny_model(family)
    model.name_or_path = f"tiny-{family}"  # what PEFT records as base_model_name_or_path (from_pretrained sets it)
    wrapped = peft.get_peft_model(model, ADAPTERS[name][0](task_type))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in wrapped.prompt_encoder["default"].parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return wrapped.eval()


def _peft_logits(model, tokenizer, texts, n_virtual):
    """PEFT's logits of each text's real tokens: right-padded (PEFT's positions ignore left padding)."""
    ids = [tokenizer(t).input_ids for t in texts]
    width = max(map(len, ids))
    input_ids = torch.full((len(ids), width), tokenizer.pad_token_id)
    mask = torch.zeros(len(ids), width, dtype=torch.long)
    for i, row in enumerate(ids):
        input_ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=mask).logits
    return [logits[i, n_virtual : n_virtual + len(row)] for i, row in enumerate(ids)]


def _our_logits(base, artifact, texts):
    """Our logits of each text's real tokens, the artifact attached as a user attaches it, left-padded,
    virtual tokens first as PEFT puts them."""
    loaded = load_prompt(artifact, base, key="p")
    n = loaded.unit.method.num_virtual_tokens
    pm = PromptedModel(base)
    rows = [[virtual(k) for k in range(n)] + base.tokenizer(t).input_ids for t in texts]
    batch = pm.collate(rows, ["p"] * len(rows), padding_side="left")
    with torch.no_grad():
        hidden = pm.encode(batch, loaded.unit.input_prompts())
        return [pm.lm_logits(hidden[i][batch.attention_mask[i].bool() & (batch.virtual_slot[i] < 0)])
                for i in range(len(rows))]


def _assert_all_close(got, want):
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_import_scores_as_peft_and_the_export_loads_in_peft_scoring_as_we_do(family, name, tmp_path):
    reference = _peft_model(family, name)
    reference.save_pretrained(tmp_path / "adapter")
    base = tiny_base(family)
    artifact = import_peft(tmp_path / "adapter", base, out=tmp_path / "prompt.safetensors")
    assert artifact.method == ADAPTERS[name][1]
    assert artifact.meta["base_model"]["fingerprint"] == base.fingerprint
    n = reference.peft_config["default"].num_virtual_tokens
    n_virtual = 0 if "prefix" in name else n
    want = _peft_logits(reference, base.tokenizer, TEXTS, n_virtual)
    ours = _our_logits(base, tmp_path / "prompt.safetensors", TEXTS)
    _assert_all_close(ours, want)
    plain = _peft_logits(tiny_model(family)[0], base.tokenizer, TEXTS, 0)
    assert max(float((a - b).abs().max()) for a, b in zip(ours, plain)) > 1e-2  # the prompt matters

    out = export_peft(tmp_path / "prompt.safetensors", tmp_path / "export", base)
    reloaded = peft.PeftModel.from_pretrained(tiny_model(family)[0], out).eval()
    _assert_all_close(_peft_logits(reloaded, base.tokenizer, TEXTS, n_virtual), ours)
    again = import_peft(out, base)  # and back: the same tensors
    for key, tensor in artifact.tensors.items():
        torch.testing.assert_close(again.tensors[key], tensor, atol=0, rtol=0)


@pytest.mark.parametrize("name", ["ptuning_lstm", "prefix_projection"])
def test_an_adapter_saved_with_its_prompt_encoder_is_run_through_it(name, tmp_path):
    """A file holding PEFT's encoder (not its output) gives the tokens the encoder makes, as PEFT does
    when it runs the encoder itself."""
    reference = _peft_model("llama", name)
    directory = tmp_path / "adapter"
    reference.peft_config["default"].save_pretrained(directory)
    state = reference.prompt_encoder["default"].state_dict()
    save_file({f"prompt_encoder.default.{k}": v.contiguous() for k, v in state.items()},
              str(directory / "adapter_model.safetensors"))
    base = tiny_base("llama")
    artifact = import_peft(directory, base)
    n_virtual = 0 if "prefix" in name else 4
    _assert_all_close(_our_logits(base, artifact, TEXTS), _peft_logits(reference, base.tokenizer, TEXTS, n_virtual))


@pytest.mark.parametrize("name", ["prompt_tuning", "ptuning_mlp"])
def test_encoder_decoder_input_prompts_round_trip(name, tmp_path):
    reference = _peft_model("t5", name, task_type="SEQ_2_SEQ_LM")
    reference.save_pretrained(tmp_path / "adapter")
    base = tiny_base("t5")
    artifact = import_peft(tmp_path / "adapter", base)
    assert artifact.tensors["prompt.input"].shape == (4, base.info.hidden_size)
    assert artifact.meta["task"]["template"] == "{text}"
    ids = base.tokenizer(TEXTS[0]).input_ids
    decoder = torch.tensor([[base.model.config.decoder_start_token_id, 5, 7, 9]])

    def peft_logits(model):
        with torch.no_grad():
            return model(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                         decoder_input_ids=decoder).logits[0]

    loaded = load_prompt(artifact, base, key="p")
    pm = PromptedModel(base)
    batch = pm.collate([[virtual(k) for k in range(4)] + ids], ["p"], padding_side="right")
    with torch.no_grad():
        ours = pm.decoder_logits(pm.encode(batch, loaded.unit.input_prompts()), batch.attention_mask, decoder)[0]
    torch.testing.assert_close(ours, peft_logits(reference), atol=ATOL, rtol=0)
    out = export_peft(artifact, tmp_path / "export", base)
    reloaded = peft.PeftModel.from_pretrained(tiny_model("t5")[0], out).eval()
    torch.testing.assert_close(peft_logits(reloaded), ours, atol=ATOL, rtol=0)


def test_a_shifted_prompt_keeps_its_positions_in_a_mixed_batch(tmp_path):
    """PEFT-imported prefixes start their row's positions at P; a batch mixing them with rows of other
    prompts (or none), left-padded, gives each row what it gets alone."""
    base = tiny_base("gpt2")
    for name in ("prefix", "prompt_tuning"):
        _peft_model("gpt2", name).save_pretrained(tmp_path / name)
    units = {name: load_prompt(import_peft(tmp_path / name, base), base, key=name).unit
             for name in ("prefix", "prompt_tuning")}
    prompts = {k: v for unit in units.values() for k, v in unit.input_prompts().items()}
    tok = base.tokenizer
    rows = [tok(TEXTS[0]).input_ids, [virtual(k) for k in range(4)] + tok(TEXTS[1]).input_ids, tok(TEXTS[2]).input_ids,
            tok(TEXTS[1]).input_ids]
    keys = ["prefix", "prompt_tuning", None, "prefix"]
    pm = PromptedModel(base)

    def last_logits(rows, keys):
        batch = pm.collate(rows, keys, padding_side="left")
        with torch.no_grad():
            return pm.lm_logits(pm.encode(batch, prompts)[:, -1])

    mixed = last_logits(rows, keys)
    for i in range(len(rows)):
        torch.testing.assert_close(mixed[i], last_logits([rows[i]], [keys[i]])[0], atol=ATOL, rtol=0)
    assert not torch.allclose(mixed[3], last_logits([rows[3]], [None])[0], atol=1e-3)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("name", ["prefix", "prompt_tuning"])
def test_generation_with_an_imported_prompt_follows_peft_positions(family, name, tmp_path):
    """Greedy decoding in the engine (plain, and from a compiled start) gives at every step the logits
    PEFT's forward gives over the same sequence. (PEFT's own generate() is not the reference: with
    peft 0.21 and transformers 5 it drifts from PEFT's forward after the first step.)"""
    from softprompt.engine import Engine, SamplingParams

    reference = _peft_model(family, name)
    reference.save_pretrained(tmp_path / "adapter")
    base = tiny_base(family)
    unit = load_prompt(import_peft(tmp_path / "adapter", base), base, key="p").unit
    n = unit.method.num_virtual_tokens
    ids = base.tokenizer(TEXTS[0]).input_ids
    row = [virtual(k) for k in range(n)] + ids
    for fixed_start in (None, row[: n + 2]):
        engine = Engine(base)
        try:
            engine.add_prompt("p", unit.input_prompts()["p"], fixed_start=fixed_start)
            params = SamplingParams(max_new_tokens=5, ignore_eos=True, return_logits=True)
            result = engine.submit_generate("p", row, params).result(timeout=120)
        finally:
            engine.close()
        sequence = ids + result.token_ids[:-1]
        with torch.no_grad():
            want = reference(input_ids=torch.tensor([sequence]),
                             attention_mask=torch.ones(1, len(sequence), dtype=torch.long)).logits[0, n + len(ids) - 1:]
        torch.testing.assert_close(result.logits.cpu().float(), want, atol=ATOL, rtol=0)
        assert result.token_ids == want.argmax(-1).tolist()


def _native_artifact(base, method, tensors, section):
    """An artifact as training here writes one (its prefixes take no positions)."""
    return PromptArtifact(tensors, {
        "method": method, "method_config": section,
        "task": {"kind": "generation", "template": "{text}{mask}", "labels": []},
        "base_model": {"name": base.name, "fingerprint": base.fingerprint, "hidden_size": base.info.hidden_size},
    })


def _random_prefixes(base, length=3):
    info = base.info
    g = torch.Generator().manual_seed(5)
    return torch.randn(info.num_layers, 2, info.num_kv_heads, length, info.head_dim, generator=g)


@pytest.mark.parametrize("family", ["llama", "gpt_neox"])
def test_deep_prompt_trained_here_exports_exactly_on_rotary_models(family, tmp_path):
    """Our prefixes take no positions, PEFT's take the first P: on rotary models the export rotates
    the keys so PEFT's logits are ours (gpt_neox: rotary on part of each head)."""
    base = tiny_base(family)
    artifact = _native_artifact(base, "ptuning_v2", {"prompt.deep.decoder": _random_prefixes(base)}, {"prefix_length": 3})
    ours = _our_logits(base, artifact, TEXTS)
    out = export_peft(artifact, tmp_path / "export", base)
    reloaded = peft.PeftModel.from_pretrained(tiny_model(family)[0], out).eval()
    _assert_all_close(_peft_logits(reloaded, base.tokenizer, TEXTS, 0), ours)
    config = json.loads((out / "adapter_config.json").read_text())
    assert (config["num_attention_heads"], config["token_dim"]) == (
        base.info.num_kv_heads, base.info.num_kv_heads * base.info.head_dim)


def test_deep_prompt_trained_here_is_refused_for_peft_on_absolute_positions(tmp_path):
    base = tiny_base("gpt2")
    artifact = _native_artifact(base, "ptuning_v2", {"prompt.deep.decoder": _random_prefixes(base)}, {"prefix_length": 3})
    with pytest.raises(ArtifactError, match=r"no rotary positions.*method\.position_shift=3"):
        export_peft(artifact, tmp_path / "export", base)
    shifted = _native_artifact(base, "ptuning_v2", dict(artifact.tensors), {"prefix_length": 3, "position_shift": 3})
    out = export_peft(shifted, tmp_path / "export", base)  # trained with PEFT's positions: exact
    reloaded = peft.PeftModel.from_pretrained(tiny_model("gpt2")[0], out).eval()
    _assert_all_close(_peft_logits(reloaded, base.tokenizer, TEXTS, 0), _our_logits(base, shifted, TEXTS))


def test_a_task_section_travels_and_a_headed_or_label_less_one_is_refused(tmp_path):
    _peft_model("gpt2", "prompt_tuning").save_pretrained(tmp_path / "adapter")
    base = tiny_base("gpt2")
    task = {"kind": "classification", "template": "review : {text} sentiment : {mask}",
            "verbalizer": {"positive": "good", "negative": "bad"}}
    artifact = import_peft(tmp_path / "adapter", base, task=task, name="sst2")
    assert artifact.meta["task"]["labels"] == ["positive", "negative"]
    assert artifact.meta["name"] == "sst2" and artifact.meta["peft"]["peft_type"] == "PROMPT_TUNING"
    assert load_prompt(artifact, base).labels == ["positive", "negative"]
    with pytest.raises(ConfigError, match="task.labels or task.verbalizer"):
        import_peft(tmp_path / "adapter", base, task={"kind": "classification"})
    with pytest.raises(ConfigError, match="trained head"):
        import_peft(tmp_path / "adapter", base, task={"kind": "classification", "labels": ["a", "b"], "head": "linear"})
    with pytest.raises(ConfigError, match="places 2 virtual tokens"):
        import_peft(tmp_path / "adapter", base, task={"kind": "generation", "template": "[P*2] {text}{mask}"})


def test_the_base_model_is_checked_by_name_and_by_shape(tmp_path):
    _peft_model("llama", "prefix").save_pretrained(tmp_path / "adapter")
    qwen2 = tiny_base("qwen2")  # the same sizes as the tiny llama: only the name tells them apart
    with pytest.raises(ArtifactError, match=r"made for base model 'tiny-llama', not 'tiny-qwen2'"):
        import_peft(tmp_path / "adapter", qwen2)
    assert import_peft(tmp_path / "adapter", qwen2, allow_model_mismatch=True).meta["base_model"]["name"] == "tiny-qwen2"
    with pytest.raises(ArtifactError, match=r"token_dim=16, but 'tiny-gpt2' needs 32"):
        import_peft(tmp_path / "adapter", tiny_base("gpt2"), allow_model_mismatch=True)
    _peft_model("t5", "prompt_tuning", task_type="SEQ_2_SEQ_LM").save_pretrained(tmp_path / "t5")
    with pytest.raises(ArtifactError, match="SEQ_2_SEQ_LM adapter, but 'tiny-llama' is a causal model"):
        import_peft(tmp_path / "t5", tiny_base("llama"), allow_model_mismatch=True)


def _write_config(directory, **fields):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "PROMPT_TUNING", "task_type": "CAUSAL_LM", "num_virtual_tokens": 4, **fields}))
    return directory


@pytest.mark.parametrize("case, message", [
    ("missing", "no such directory"),
    ("empty", "no adapter_config.json"),
    ("pickle", r"adapter_model.bin: a pickle file, which softprompt never loads"),
    ("lora", r"peft_type 'LORA' is not a prompt method"),
    ("corrupt", "not a readable safetensors file"),
    ("wrong_rows", r"prompt table of shape \(3, 32\)"),
])
def test_bad_adapter_directories_get_one_clear_line(case, message, tmp_path):
    directory = tmp_path / "adapter"
    if case == "empty":
        directory.mkdir()
    elif case == "pickle":
        (_write_config(directory) / "adapter_model.bin").write_bytes(b"never unpickled")
    elif case == "lora":
        save_file({"w": torch.zeros(2)}, str(_write_config(directory, peft_type="LORA") / "adapter_model.safetensors"))
    elif case == "corrupt":
        (_write_config(directory) / "adapter_model.safetensors").write_bytes(b"not safetensors")
    elif case == "wrong_rows":
        save_file({"prompt_embeddings": torch.zeros(3, 32)}, str(_write_config(directory) / "adapter_model.safetensors"))
    with pytest.raises(ArtifactError, match=message) as caught:
        import_peft(directory, tiny_base("gpt2"))
    assert "\n" not in str(caught.value)


def test_export_refuses_what_peft_cannot_hold(tmp_path):
    base = tiny_base("gpt2")
    hard = _native_artifact(base, "hard_prompt", {}, {})
    with pytest.raises(ArtifactError, match="method 'hard_prompt' has no PEFT counterpart"):
        export_peft(hard, tmp_path / "out", base)
    prompt = torch.zeros(2, base.info.hidden_size)
    headed = _native_artifact(base, "prompt_tuning", {"prompt.input": prompt, "head.weight": torch.zeros(2, 32)},
                              {"num_virtual_tokens": 2})
    with pytest.raises(ArtifactError, match=r"trained task head \(head.weight\)"):
        export_peft(headed, tmp_path / "out", base)
    inside = _native_artifact(base, "ptuning", {"prompt.input": prompt}, {"num_virtual_tokens": 2})
    inside.meta["task"]["template"] = "{text} [P*2] {mask}"
    with pytest.raises(ArtifactError, match="places virtual tokens inside the text"):
        export_peft(inside, tmp_path / "out", base)


def test_the_commands_import_and_export_peft_adapters(tmp_path):
    """`softprompt import-peft DIR -o FILE` and `softprompt export FILE --format peft -o DIR` on a local
    model directory; a directory that is not an adapter is one error line and exit code 2."""
    from typer.testing import CliRunner

    from softprompt.cli import app
    from tiny import save_tiny

    model_dir = save_tiny("llama", tmp_path / "tiny-llama")
    adapter = tmp_path / "adapter"
    _peft_model("llama", "prefix").save_pretrained(adapter)
    runner = CliRunner()
    imported = runner.invoke(app, ["import-peft", str(adapter), "-o", str(tmp_path / "p.safetensors"), "--model",
                                   model_dir, "--allow-model-mismatch"])
    assert imported.exit_code == 0, imported.output
    artifact = PromptArtifact.load(tmp_path / "p.safetensors")
    assert artifact.method == "ptuning_v2"
    exported = runner.invoke(app, ["export", str(tmp_path / "p.safetensors"), "--format", "peft", "-o",
                                   str(tmp_path / "back"), "--model", model_dir])
    assert exported.exit_code == 0, exported.output
    assert (tmp_path / "back" / "adapter_config.json").exists()
    assert (tmp_path / "back" / "adapter_model.safetensors").exists()
    bad = runner.invoke(app, ["import-peft", str(tmp_path), "-o", str(tmp_path / "x.safetensors"), "--model", model_dir])
    assert bad.exit_code == 2 and bad.output.count("error:") == 1
    wrong = runner.invoke(app, ["export", str(tmp_path / "p.safetensors"), "--format", "onnx", "-o", str(tmp_path / "o")])
    assert wrong.exit_code == 2 and "peft" in wrong.output
