"""Every registered method on every listed family: trains, round-trips through its file, and mixes
with the other methods row by row in one batch."""

import pytest
import torch

from softprompt import api
from softprompt.api import build_task, load_prompt, method_config
from softprompt.core import PromptArtifact, PromptedModel
from softprompt.methods import METHODS
from softprompt.tasks.readers import Example
from softprompt.tasks.runner import Prepared, TaskPrompt, class_logits, export_unit, predict_logits
from helpers import run_config
from tiny import FAMILIES, tiny_base

METHOD_CONFIGS = {
    "prompt_tuning": {"num_virtual_tokens": 3, "init": "random"},
    "ptuning": {"num_virtual_tokens": 4, "encoder": "lstm", "init": "vocab"},
    "ptuning_v2": {"prefix_length": 3, "init": "random"},
    "prefix_tuning": {"prefix_length": 2, "hidden": 16, "init": "words", "init_text": "good bad"},
    "hard_prompt": {},
}
EXAMPLES = [Example("a warm and funny film", label="pos"), Example("the plot is dull", label="neg"),
            Example("boring , slow and far too long", label="neg")]


def test_every_registered_method_is_covered():
    assert set(METHODS) == set(METHOD_CONFIGS)


def _unit(base, key, method, template="review : {text} sentiment : {mask}", seed=0):
    cls, cfg = method_config({"name": method, **METHOD_CONFIGS[method], "seed": seed})
    section = {"kind": "classification", "labels": ["pos", "neg"]}
    if base.info.kind.value != "encoder":
        section.update(template=template, verbalizer={"pos": "good", "neg": "bad"})
    task = build_task(section, base, ["pos", "neg"], cls.input_positions(cfg))
    torch.manual_seed(seed)
    method_module = cls.initialise(cfg, base, task.label_words)
    with torch.no_grad():  # move away from the (zero-output) start so the test sees real tensors
        for p in method_module.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return TaskPrompt(key, method_module, task).eval()


@pytest.fixture(params=sorted(FAMILIES))
def base(request):
    return tiny_base(request.param)


def test_all_methods_mixed_in_one_batch_equal_each_alone(base):
    pm = PromptedModel(base)
    units = {m: _unit(base, m, m, seed=i) for i, m in enumerate(METHOD_CONFIGS)}
    prepared = [Prepared(m, units[m].task.prepare(e)) for m in METHOD_CONFIGS for e in EXAMPLES]
    with torch.no_grad():
        mixed = class_logits(pm, units, prepared)
        for i, p in enumerate(prepared):
            (alone,) = class_logits(pm, units, [p])
            torch.testing.assert_close(mixed[i], alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize("method", sorted(METHOD_CONFIGS))
def test_round_trip_and_backward(base, method, tmp_path):
    pm = PromptedModel(base)
    unit = _unit(base, "x", method)
    items = [Prepared("x", unit.task.prepare(e)) for e in EXAMPLES]
    logits = torch.stack(class_logits(pm, {"x": unit}, items))
    if method == "hard_prompt":  # nothing trainable in the prompt; an encoder's head still learns
        assert not list(unit.method.parameters())
        assert logits.requires_grad == (base.info.kind.value == "encoder")
    else:
        (logits * torch.randn_like(logits)).sum().backward()
        grads = [p.grad for p in unit.method.parameters() if p.requires_grad]
        assert grads and any(g is not None and g.abs().sum() > 0 for g in grads)
    cls, cfg = method_config({"name": method, **METHOD_CONFIGS[method]})
    meta = {"method": method, "method_config": {k: (v.value if hasattr(v, "value") else v) for k, v in vars(cfg).items()},
            "task": {"kind": "classification", "template": str(unit.task.template), "labels": ["pos", "neg"],
                     "verbalizer": unit.task.config.verbalizer},
            "base_model": {"name": base.name, "fingerprint": base.fingerprint, "hidden_size": base.info.hidden_size}}
    path = PromptArtifact(export_unit(unit), meta).save(tmp_path / "p.safetensors")
    loaded = load_prompt(path, base, key="x")
    before = predict_logits(pm, {"x": unit}, items)
    after = predict_logits(pm, {"x": loaded.unit}, items)
    for a, b in zip(before, after):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    params = sum(t.numel() for t in PromptArtifact.load(path).tensors.values())
    assert path.stat().st_size <= params * 4 + 16 * 1024


@pytest.mark.parametrize("method", ["ptuning", "prefix_tuning"])
def test_reparameterised_methods_resume_exactly(tmp_path, method):
    config = run_config(tmp_path, "gpt2", checkpoint_every=3, eval_every=4)
    config["method"] = {"name": method, **METHOD_CONFIGS[method]}
    if method == "ptuning":
        config["task"]["template"] = "[P*2] review : {text} [P*2] sentiment : {mask}"
    full = api.train(config, ["output=" + str(tmp_path / "full")], progress=False, log=lambda s: None)

    def stop(step):
        if step == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        api.train(config, ["output=" + str(tmp_path / "cut")], progress=False, on_step=stop, log=lambda s: None)
    resumed = api.train(config, ["output=" + str(tmp_path / "cut")], resume=True, progress=False, log=lambda s: None)
    a, b = PromptArtifact.load(full.artifact).tensors, PromptArtifact.load(resumed.artifact).tensors
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_template_virtual_token_count_must_match_the_method():
    from softprompt.errors import ConfigError

    base = tiny_base("gpt2")
    with pytest.raises(ConfigError, match="places 3 virtual tokens but the method has 4"):
        _unit(base, "x", "ptuning", template="[P*3] {text} it was {mask}")


def test_prefix_tuning_starts_at_real_word_activations_not_noise():
    base = tiny_base("llama")
    pm = PromptedModel(base)
    cls, cfg = method_config({"name": "prefix_tuning", "prefix_length": 2, "init": "words", "init_text": "good bad"})
    module = cls.initialise(cfg, base)
    captured = pm.capture_kv(base.tokenizer("good bad", add_special_tokens=False).input_ids)
    torch.testing.assert_close(module.prompt_tensors().deep["decoder"], captured["decoder"][:, :, :, :2])


@pytest.mark.parametrize("method,template", [("ptuning", "[P*2] review : {text} [P*2] sentiment : {mask}"),
                                             ("prefix_tuning", "review : {text} sentiment : {mask}")])
def test_export_folds_the_reparameterisation_without_its_dropout(method, template):
    """Training leaves the unit in train mode when it saves the best prompt: the saved prompt must be
    the deterministic one that serving computes, not one draw of the MLP's dropout."""
    base = tiny_base("gpt2")
    cls, cfg = method_config({"name": method, **METHOD_CONFIGS[method], "dropout": 0.5})
    task = build_task({"kind": "classification", "labels": ["pos", "neg"], "template": template,
                       "verbalizer": {"pos": "good", "neg": "bad"}}, base, ["pos", "neg"],
                      getattr(cfg, "num_virtual_tokens", 0))
    module = cls.initialise(cfg, base, task.label_words)
    with torch.no_grad():  # the MLP starts at zero output, which dropout leaves alone
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    unit = TaskPrompt("x", module, task).train()
    first, second = export_unit(unit), export_unit(unit)
    assert unit.training  # the mode training left is restored
    unit.eval()
    served = export_unit(unit)
    for k in served:
        assert torch.equal(first[k], served[k]) and torch.equal(second[k], served[k]), k


def test_ptuning_v2_prefix_dropout_acts_in_training_only():
    from softprompt.errors import ConfigError

    base = tiny_base("bert")
    cls, cfg = method_config({"name": "ptuning_v2", "prefix_length": 4, "dropout": 0.5})
    module = cls.initialise(cfg, base)
    params = dict(module.prefixes.items())
    module.train()
    noisy = module.prompt_tensors().deep
    assert all((noisy[s] == 0).any() and not torch.equal(noisy[s], params[s]) for s in params)
    module.eval()
    clean = module.prompt_tensors().deep
    assert all(clean[s] is params[s] for s in params)
    with pytest.raises(ConfigError, match=r"method\.dropout"):
        method_config({"name": "ptuning_v2", "dropout": 1.0})


def test_a_loaded_prefix_tuning_prompt_drops_nothing_even_in_train_mode():
    """Prefix tuning's dropout belongs to its MLP, which export folds away: the loaded prefixes are
    served (and trained further) as they are."""
    base = tiny_base("gpt2")
    cls, cfg = method_config({"name": "prefix_tuning", **METHOD_CONFIGS["prefix_tuning"], "dropout": 0.5})
    module = cls.initialise(cfg, base)
    loaded = cls.from_export(cfg, module.export()).train()
    deep, stored = loaded.prompt_tensors().deep, dict(loaded.prefixes.items())
    assert deep and all(deep[s] is stored[s] for s in stored)


def _protocol_members(protocol) -> set[str]:
    skip = {"__annotations__", "__dict__", "__doc__", "__init__", "__module__", "__parameters__", "__weakref__",
            "__subclasshook__", "__abstractmethods__", "__non_callable_proto_members__", "__protocol_attrs__",
            "__orig_bases__", "__class_getitem__", "__init_subclass__", "__type_params__"}
    names = set(vars(protocol)) | set(getattr(protocol, "__annotations__", {}))
    return {n for n in names if n not in skip and not n.startswith("_abc") and not n.startswith("_is_")}


def test_every_method_has_every_member_of_the_protocol_and_no_getattr_is_needed():
    from softprompt.methods import PromptMethod

    members = _protocol_members(PromptMethod)
    assert {"input_positions", "num_virtual_tokens", "initialise", "from_export", "prompt_tensors", "export",
            "name", "Config", "default_lrs"} <= members
    missing = {name: sorted(m for m in members if not hasattr(cls, m)) for name, cls in METHODS.items()}
    assert not any(missing.values()), missing
    base = tiny_base("gpt2")
    for name, cls in METHODS.items():
        config = cls.Config(**METHOD_CONFIGS[name])
        module = cls.initialise(config, base)
        positions = cls.input_positions(config)
        tensors = module.prompt_tensors()
        assert module.num_virtual_tokens == positions, name
        assert (tensors.input.shape[0] if tensors.input is not None else 0) == positions, name
        restored = cls.from_export(config, module.export())
        assert restored.num_virtual_tokens == positions, name
        assert "any" in cls.default_lrs, name
