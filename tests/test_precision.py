"""model.dtype auto and the --dtype switches: auto never picks a type slower than float32 (the CPU's
flags mocked), explicit bfloat16 on a slow CPU warns, prompts stay float32 on a bfloat16 base, and a
base in bfloat16 fingerprints as the same model as in float32."""

import importlib.util
import warnings

import pytest
import torch
from safetensors import safe_open

from helpers import run_config, write_data
from test_cli import error_line, sp

from softprompt import api
from softprompt.configs import ModelConfig
from softprompt.errors import ConfigError
from softprompt.models import loading, precision
from softprompt.models.precision import DTYPE_ENV, choose_auto, cpu_flags, resolve
from softprompt.serve import build_registry
from softprompt.serve.registry import read_prompt_list

AVX2_ONLY = frozenset({"sse4_2", "avx", "avx2", "fma"})
AVX512_NO_BF16 = AVX2_ONLY | {"avx512f", "avx512bw", "avx512_vnni"}


@pytest.fixture
def unpinned(monkeypatch):
    """auto as on a user's machine: conftest pins it to float32 for every other test."""
    monkeypatch.delenv(DTYPE_ENV, raising=False)


@pytest.mark.parametrize("flags, expected", [
    (AVX2_ONLY, "float32"),
    (AVX512_NO_BF16, "float32"),  # AVX-512 alone has no bfloat16 dot products
    (AVX2_ONLY | {"amx_tile", "amx_bf16"}, "bfloat16"),
    (AVX512_NO_BF16 | {"avx512_bf16"}, "float32"),  # a whole pass measured 0.68x float32 there
    (frozenset(), "float32"),  # nothing known: the safe type
])
def test_auto_on_a_cpu_picks_bfloat16_only_with_amx(unpinned, flags, expected):
    chosen = choose_auto("cpu", flags=flags)
    assert chosen.dtype == expected
    assert ("the CPU has amx_bf16" in chosen.reason) == (expected == "bfloat16")


def test_auto_on_a_gpu_is_bfloat16_where_it_has_it(unpinned):
    assert choose_auto("cuda", cuda_bf16=True).dtype == "bfloat16"
    assert choose_auto("cuda", cuda_bf16=False).dtype == "float32"
    assert choose_auto("mps").dtype == "float32"


def test_the_environment_pins_what_auto_means(monkeypatch):
    monkeypatch.setenv(DTYPE_ENV, "float32")
    assert choose_auto("cpu", flags=frozenset({"amx_bf16"})).dtype == "float32"
    assert resolve("auto", "cuda").reason == f"{DTYPE_ENV}=float32"
    assert resolve("bfloat16", "cpu", flags=frozenset({"amx_bf16"})).dtype == "bfloat16"  # explicit wins
    monkeypatch.setenv(DTYPE_ENV, "fp8")
    with pytest.raises(ConfigError, match=f"{DTYPE_ENV}='fp8' is not one of: auto, float32, bfloat16, float16"):
        choose_auto("cpu")


def test_cpu_flags_read_the_kernel_list_when_torch_cannot_tell(tmp_path, monkeypatch):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512_bf16\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx2": True, "amx_bf16": False, "num_sockets": 1})
    assert cpu_flags(cpuinfo) == {"fpu", "sse", "avx2", "avx512_bf16"}
    assert cpu_flags(tmp_path / "absent") == {"avx2"}  # not Linux: torch's probe alone


def test_explicit_bfloat16_on_a_slow_cpu_warns_and_still_works(unpinned):
    with pytest.warns(UserWarning, match="bfloat16 on a CPU without AMX: it runs slower"):
        assert resolve("bfloat16", "cpu", flags=AVX2_ONLY).dtype == "bfloat16"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resolve("bfloat16", "cpu", flags=frozenset({"amx_bf16"}))
        resolve("bfloat16", "cuda", flags=AVX2_ONLY)
        resolve("float32", "cpu", flags=AVX2_ONLY)


def test_bad_dtypes_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="model.dtype='fp32' is not one of: auto, float32, bfloat16, float16"):
        ModelConfig(dtype="fp32")
    assert ModelConfig().dtype == "auto"
    for command in (["predict", tmp_path / "p.safetensors", "a text"], ["eval", tmp_path / "p.safetensors", tmp_path],
                    ["serve"]):
        assert error_line(sp(*command, "--dtype", "int4")) == \
            "error: --dtype='int4' is not one of: auto, float32, bfloat16, float16"
    listed = tmp_path / "serve.yaml"
    listed.write_text(f"dtype: half\nprompts: {{a: {tmp_path / 'p.safetensors'}}}\n")
    assert read_prompt_list(listed)["dtype"] == "half"
    with pytest.raises(ConfigError, match=r"serve.yaml: dtype='half' is not one of"):
        build_registry(config=listed, log=lambda _: None)


def test_auto_loads_bfloat16_where_the_cpu_has_it(unpinned, monkeypatch, tmp_path):
    path = str(run_config(tmp_path, family="llama")["model"]["name"])
    monkeypatch.setattr(precision, "cpu_flags", lambda: AVX2_ONLY | {"amx_bf16"})
    fast = loading.load_base(path, dtype="auto", reuse=False)
    assert fast.dtype == torch.bfloat16 and fast.precision == "bfloat16 (auto: the CPU has amx_bf16)"
    monkeypatch.setattr(precision, "cpu_flags", lambda: AVX2_ONLY)
    slow = loading.load_base(path, reuse=False)  # auto is the default
    assert slow.dtype == torch.float32 and slow.precision.startswith("float32 (auto: the CPU has no AMX")
    monkeypatch.setattr(precision, "cpu_flags", lambda: AVX512_NO_BF16 | {"avx512_bf16"})
    assert "avx512_bf16 without AMX" in loading.load_base(path, reuse=False).precision
    assert (fast.fingerprint, fast.weights) == (slow.fingerprint, slow.weights)  # one model, either dtype


@pytest.fixture(scope="module")
def bf16_runs(tmp_path_factory):
    """Prompts of every soft method trained on a bfloat16 tiny Llama: {method: artifact path}."""
    tmp = tmp_path_factory.mktemp("bf16")
    methods = {"prompt_tuning": {"num_virtual_tokens": 3, "init": "vocab"},
               "ptuning": {"num_virtual_tokens": 2, "encoder": "mlp"},
               "prefix_tuning": {"prefix_length": 2, "init": "random"},
               "ptuning_v2": {"prefix_length": 2, "init": "random"}}
    out = {}
    for name, options in methods.items():
        config = run_config(tmp, family="llama", steps=3, eval_every=3)
        config.update(name=name, method={"name": name, **options})
        config["model"]["dtype"] = "bfloat16"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # this CPU may run bfloat16 slowly: the warning is tested above
            out[name] = api.train(config, progress=False, log=lambda _: None).artifact
    return tmp, out


def test_prompts_trained_on_a_bfloat16_base_stay_float32(bf16_runs):
    _, artifacts = bf16_runs
    for method, artifact in artifacts.items():
        with safe_open(str(artifact), "pt") as f:
            dtypes = {f.get_tensor(k).dtype for k in f.keys() if k.startswith("prompt.")}
        assert dtypes == {torch.float32}, method


def test_dtype_reaches_the_base_through_the_api_and_the_cli(bf16_runs):
    tmp, artifacts = bf16_runs
    artifact, dev = artifacts["prompt_tuning"], write_data(tmp, 20, 1, "dev.jsonl")
    texts = ["a warm and funny film", "the plot is dull"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        half = api.attach(artifact, dtype="bfloat16")
        full = api.attach(artifact, dtype="float32")
        assert (half.base.dtype, full.base.dtype) == (torch.bfloat16, torch.float32)
        assert half.artifact.meta["base_model"]["dtype"] == "bfloat16"  # made on bf16, fits float32 too
        assert [p.label for p in api.predict(artifact, texts, dtype="bfloat16")] == \
            [p.label for p in api.predict(artifact, texts, dtype="float32")]
        assert api.evaluate(artifact, dev, dtype="float32")["accuracy"] == api.evaluate(full, dev)["accuracy"]
        result = sp("eval", artifact, dev, "--dtype", "bfloat16", "--json")
    assert result.returncode == 0 and '"accuracy"' in result.stdout
    with pytest.raises(ConfigError, match="dtype='bf16' is not one of"):
        api.predict(artifact, texts, dtype="bf16")


def test_an_int8_base_fingerprints_as_its_float32_self_and_scores_alike(bf16_runs, missing_tool):
    if importlib.util.find_spec("torchao") is None:
        missing_tool("torchao", "pip install 'softprompt[quantize]'")
    tmp, artifacts = bf16_runs
    path = str(tmp / "tiny-llama")
    full = loading.load_base(path, dtype="float32", reuse=False)
    int8 = loading.load_base(path, dtype="float32", quantize="int8", reuse=False)
    assert (int8.fingerprint, int8.weights) == (full.fingerprint, full.weights)
    assert int8.quantize == "int8" and int8.precision.endswith("14 linear layers int8")  # 2 blocks x 7
    assert type(int8.model.lm_head.weight) is torch.nn.Parameter  # the head stays float
    texts = ["a warm and funny film", "the plot is dull", "boring and slow", "great cast"]
    ours = api.attach(artifacts["prompt_tuning"], int8)  # no ArtifactError: the same base
    assert [p.label for p in api.predict(ours, texts)] == [p.label for p in api.predict(artifacts["prompt_tuning"], texts,
                                                                                         base=full)]


def test_quantize_is_for_inference_and_checked(tmp_path):
    config = run_config(tmp_path, family="llama")
    config["model"]["quantize"] = "int8"
    with pytest.raises(ConfigError, match="model.quantize=int8 is for inference"):
        api.train(config, progress=False, log=lambda _: None)
    with pytest.raises(ConfigError, match="model.quantize='int4' is not one of: none, int8"):
        ModelConfig(quantize="int4")
    assert ModelConfig(quantize="none").quantize is None
    assert error_line(sp("predict", tmp_path / "p.safetensors", "a text", "--quantize", "int4")) == \
        "error: --quantize='int4' is not one of: none, int8"
