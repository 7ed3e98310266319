"""Typed run configuration: dataclasses that validate themselves, read from YAML with overrides."""

from __future__ import annotations

import dataclasses
import difflib
import enum
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from .errors import ConfigError


def _unknown_key(key: str, allowed: Sequence[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(allowed)}"
    return ConfigError(f"unknown key {where}{key!r}{hint}")


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return _coerce(value, option, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where + ".")
    if origin in (list, Sequence, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        (item,) = typing.get_args(hint)[:1] or (Any,)
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin in (dict, Mapping):
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        _, item = typing.get_args(hint) or (Any, Any)
        return {str(k): _coerce(v, item, f"{where}.{k}") for k, v in value.items()}
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        try:
            return hint(value)
        except ValueError:
            choices = ", ".join(str(e.value) for e in hint)
            raise ConfigError(f"{where}={value!r} is not one of: {choices}") from None
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where} must be a whole number, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML reads 3e-2 (no dot) as a string
            except ValueError:
                pass
        raise ConfigError(f"{where} must be a number, got {value!r}")
    if hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where} must be a string, got {value!r}")
    return value


def coerce_enum(obj, name: str, enum: type[enum.Enum], section: str) -> None:
    """Turn obj.name into a member of enum, or raise ConfigError quoting the value and the choices."""
    try:
        setattr(obj, name, enum(getattr(obj, name)))
    except ValueError:
        choices = ", ".join(str(e.value) for e in enum)
        raise ConfigError(f"{section}.{name}={getattr(obj, name)!r} is not one of: {choices}") from None


def check_whole(obj, name: str, low: int, high: int, section: str) -> None:
    """Raise ConfigError unless obj.name is a whole number in [low, high]."""
    value = getattr(obj, name)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{section}.{name}={value!r} must be a whole number {low}..{high}")


def check_dropout(obj, section: str, name: str = "dropout") -> None:
    """Raise ConfigError unless obj.name is a dropout probability in [0, 1)."""
    value = getattr(obj, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ConfigError(f"{section}.{name}={value!r} must be in [0, 1)")


def from_dict(cls, data: Mapping[str, Any] | None, where: str = ""):
    """Build dataclass cls from a mapping; unknown keys and wrong types raise ConfigError."""
    if data is None:
        data = {}
    if isinstance(data, cls):
        return data
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where.rstrip('.') or 'config'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise _unknown_key(str(key), names, where)
        kwargs[key] = _coerce(value, hints[key], f"{where}{key}")
    return cls(**kwargs)


def to_dict(obj) -> Any:
    """A plain JSON/YAML-able view of a (nested) config dataclass."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


DTYPES = ("auto", "float32", "bfloat16", "float16")  # model.dtype (auto: models.precision decides)
QUANTIZE = ("none", "int8")  # model.quantize (models.quantize does it)


def check_dtype(dtype: str, where: str = "model.dtype") -> str:
    """dtype if it is one of DTYPES, else a ConfigError naming them."""
    if dtype not in DTYPES:
        raise ConfigError(f"{where}={dtype!r} is not one of: {', '.join(DTYPES)}")
    return dtype


def check_quantize(quantize: str | None, where: str = "model.quantize") -> str | None:
    """quantize as a config keeps it (None for none), or a ConfigError naming the choices."""
    if quantize is None or quantize == "none":
        return None
    if quantize not in QUANTIZE:
        raise ConfigError(f"{where}={quantize!r} is not one of: {', '.join(QUANTIZE)}")
    return quantize


@dataclass
class ModelConfig:
    """The frozen base model."""

    name: str = "smollm2-135m"  # embedded name, Hugging Face id (downloaded when the Hub is reachable) or local directory
    # auto | float32 | bfloat16 | float16: the weights are read straight into it; auto is bfloat16 on a
    # GPU and on a CPU with AMX, float32 elsewhere (models.precision)
    dtype: str = "auto"
    quantize: str | None = None  # int8: the linear layers as int8 through torchao, for inference (not training)
    device: str = "auto"  # auto (cuda when present) | cpu | cuda | cuda:N
    device_map: str | dict[str, Any] | None = None  # as transformers' (auto: spread over GPUs and CPU); replaces device

    def __post_init__(self):
        check_dtype(self.dtype)
        self.quantize = check_quantize(self.quantize)


@dataclass
class DataConfig:
    """Where the examples come from and how their fields are named."""

    train: str | None = None
    dev: str | None = None
    test: str | None = None
    format: str = "auto"  # auto | jsonl | csv | tsv | label-first | glue-tsv
    text_field: str = "text"
    text_b_field: str | None = None
    label_field: str = "label"
    max_train: int | None = None  # keep the first N training examples
    max_dev: int | None = None  # keep the first N dev examples (a warning says when they miss a label)
    dev_fraction: float = 0.1  # carved from train (seeded, stratified) when no dev file is given
    k_shot: int | None = None  # k training examples per class (seeded), for few-shot runs
    skip_empty: bool = False  # skip rows whose text is empty (CR has four) instead of stopping there


class Sampling(str, enum.Enum):
    """How training batches are drawn."""

    SHUFFLE = "shuffle"  # each epoch a seeded permutation of the training examples
    BALANCED = "balanced"  # every class equally often (small classes repeat, large ones are sub-sampled)


CLASS_WEIGHT_CHOICES = ("none", "balanced")


class Optimizer(str, enum.Enum):
    """The optimiser of the trainable parameters."""

    ADAMW = "adamw"
    ADAFACTOR = "adafactor"  # as Lester et al. trained prompts: factored second moments, fixed lr here


class Schedule(str, enum.Enum):
    """How the learning rate moves after warmup."""

    LINEAR = "linear"  # down to 0 at the last step
    COSINE = "cosine"  # half a cosine down to 0
    CONSTANT = "constant"  # flat after warmup


class Precision(str, enum.Enum):
    """The arithmetic of the forward pass while training (trainable parameters stay float32)."""

    FP32 = "fp32"
    BF16 = "bf16"  # autocast to bfloat16 (GPUs, and CPUs with bf16 units)
    FP16 = "fp16"  # autocast to float16 with a gradient scaler (GPUs only)


class Mixing(str, enum.Enum):
    """How a run of several tasks draws each batch's examples from them."""

    PROPORTIONAL = "proportional"  # from the pooled examples: each task in proportion to its size
    TEMPERATURE = "temperature"  # task k with probability proportional to n_k ** (1 / mixing_temperature)


@dataclass
class TrainingConfig:
    """The optimisation loop."""

    steps: int = 200  # optimizer steps
    batch_size: int = 16
    eval_batch_size: int = 32
    lr: float | None = None  # prompt learning rate; default: the method's own (see README, "Defaults")
    head_lr: float = 1e-2  # learning rate of a classification head, if the task has one (minilm runs: 1e-2 > 2e-3)
    weight_decay: float = 0.0
    warmup: float = 0.06  # fraction of steps (< 1) or a number of steps (>= 1)
    max_grad_norm: float = 1.0
    # Cap on each step's relative change of a prompt tensor, ||p_t - p_(t-1)|| / ||p_(t-1)|| (a trust
    # ratio, as LAMB's; 0: none). Heads are never capped. Off by default: measured on one seed only
    # (BENCHMARKS.md, SST-5 section, issue 24).
    max_update: float = 0.0
    eval_every: int = 50  # steps between dev evaluations (the best prompt is kept)
    eval_start: bool = True  # also score the starting prompt (step 0), and keep it when nothing later beats it
    patience: int | None = None  # stop after this many evaluations without improvement
    metric: str = "auto"  # dev metric that picks the best prompt; auto: accuracy, or span F1 for token labelling
    seed: int = 0
    checkpoint_every: int | None = None  # default: eval_every
    keep_checkpoints: int = 2
    padding_side: str = "left"
    group_by_length: bool = False  # batch rows of similar length (less padding, but noisier early steps)
    micro_batch_tokens: int = 768  # padded tokens per forward pass; larger batches accumulate gradients
    gradient_checkpointing: bool = False  # recompute layer activations in backward: less memory, ~30% slower
    model_dropout: bool = False  # the frozen base's own dropout on while training (as P-tuning v2's and PEFT's loops); never in evaluation
    log_every: int = 10
    # Uneven classes (classification): weight each class's loss (none | balanced: n / (classes x count),
    # as scikit-learn's class_weight='balanced' | {label: weight}), and/or draw batches class-balanced.
    class_weights: str | dict[str, float] | None = None
    sampling: Sampling = Sampling.SHUFFLE  # shuffle | balanced
    optimizer: Optimizer = Optimizer.ADAMW  # adamw | adafactor
    schedule: Schedule = Schedule.LINEAR  # linear | cosine | constant (each after warmup)
    precision: Precision = Precision.FP32  # fp32 | bf16 (autocast) | fp16 (autocast + gradient scaler, GPU)
    mixing: Mixing = Mixing.PROPORTIONAL  # several tasks: proportional | temperature
    mixing_temperature: float = 2.0  # mixing=temperature: 1 is proportional, larger flattens towards uniform

    def __post_init__(self):
        for name in ("steps", "batch_size", "eval_batch_size", "eval_every", "log_every", "keep_checkpoints",
                     "micro_batch_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"training.{name}={getattr(self, name)!r} must be >= 1")
        for name in ("lr", "head_lr"):
            if getattr(self, name) is None and name == "lr":
                continue
            if not isinstance(getattr(self, name), (int, float)) or not getattr(self, name) > 0:
                raise ConfigError(f"training.{name}={getattr(self, name)!r} must be > 0")
        if self.padding_side not in ("left", "right"):
            raise ConfigError(f"training.padding_side={self.padding_side!r} is not one of: left, right")
        coerce_enum(self, "sampling", Sampling, "training")
        coerce_enum(self, "optimizer", Optimizer, "training")
        coerce_enum(self, "schedule", Schedule, "training")
        coerce_enum(self, "precision", Precision, "training")
        coerce_enum(self, "mixing", Mixing, "training")
        if not isinstance(self.mixing_temperature, (int, float)) or not self.mixing_temperature > 0:
            raise ConfigError(f"training.mixing_temperature={self.mixing_temperature!r} must be > 0")
        if self.sampling is Sampling.BALANCED and self.group_by_length:
            raise ConfigError("training.sampling='balanced' and training.group_by_length=true do not combine: "
                              "choose one")
        self._check_class_weights()
        if self.warmup < 0:
            raise ConfigError(f"training.warmup={self.warmup!r} must be >= 0")
        if isinstance(self.max_update, bool) or not isinstance(self.max_update, (int, float)) or self.max_update < 0:
            raise ConfigError(f"training.max_update={self.max_update!r} must be a number >= 0 (0: no cap)")

    def _check_class_weights(self) -> None:
        weights = self.class_weights
        if weights is None or (isinstance(weights, str) and weights in CLASS_WEIGHT_CHOICES):
            return
        if isinstance(weights, Mapping) and weights:
            bad = {k: v for k, v in weights.items()
                   if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0}
            if bad:
                raise ConfigError(f"training.class_weights: weights must be numbers >= 0, got {bad!r}")
            if not sum(weights.values()) > 0:
                raise ConfigError("training.class_weights: at least one weight must be > 0")
            self.class_weights = {str(k): float(v) for k, v in weights.items()}
            return
        raise ConfigError(f"training.class_weights={weights!r} is not one of: none, balanced, or a mapping "
                          "label -> weight (e.g. {spam: 3, ham: 1})")

    @property
    def warmup_steps(self) -> int:
        return int(self.warmup * self.steps) if self.warmup < 1 else int(self.warmup)


@dataclass
class TaskEntry:
    """One task of a run that trains several together (RunConfig.tasks): its own data, template and
    method, each saved as its own artifact in run_dir/<name>/."""

    name: str
    data: DataConfig = field(default_factory=DataConfig)
    task: dict[str, Any] | None = None  # default: the run's task section
    method: dict[str, Any] | None = None  # default: the run's method section
    lr: float | None = None  # this task's prompt learning rate (default: training.lr, else its method's)

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.strip() or any(c in self.name for c in "/\\:"):
            raise ConfigError(f"tasks: name={self.name!r} must be a non-empty name without / \\ or : "
                              "(it names the task's folder)")
        if self.lr is not None and not self.lr > 0:
            raise ConfigError(f"tasks.{self.name}.lr={self.lr!r} must be > 0")


@dataclass
class RunConfig:
    """Everything that makes one trained prompt (or several, trained together); saved beside the artifact."""

    name: str = "run"
    model: ModelConfig = field(default_factory=ModelConfig)
    task: dict[str, Any] = field(default_factory=lambda: {"kind": "classification"})
    method: dict[str, Any] = field(default_factory=lambda: {"name": "prompt_tuning"})
    data: DataConfig = field(default_factory=DataConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    output: str = "runs/{name}"  # run directory; {name} is replaced
    # Several tasks trained together in mixed batches (each its own data, template, method, prompt);
    # the run's task and method sections are their defaults, and its data section is not used.
    tasks: list[TaskEntry] = field(default_factory=list)

    def __post_init__(self):
        if self.model.quantize:  # a run config trains: gradients do not pass torchao's int8 layers
            raise ConfigError(f"model.quantize={self.model.quantize} is for inference (predict, eval, serve); train on "
                              "the float base: the prompt then loads onto the quantized one")
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            raise ConfigError(f"tasks: names must differ, got {names}")

    @property
    def run_dir(self) -> Path:
        return Path(self.output.replace("{name}", self.name))


# A config holds a few hundred values; YAML aliases can make a few lines expand to billions
# (each alias repeats a whole part), which copying or saving the config would then spell out.
MAX_CONFIG_VALUES = 100_000


def _check_size(data: Any, where: str) -> None:
    """ConfigError when data, with every alias spelled out, holds more than MAX_CONFIG_VALUES values."""
    count, stack = 0, [data]
    while stack:
        node = stack.pop()
        count += 1
        if count > MAX_CONFIG_VALUES:
            raise ConfigError(f"{where}: the config spells out to over {MAX_CONFIG_VALUES:,} values "
                              "(YAML aliases repeating large parts?)")
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def _load_yaml(text: str, where: str) -> Any:
    """yaml.safe_load, with ConfigError naming where and the line of any problem."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            line = mark.line + 1
        elif isinstance(exc, yaml.reader.ReaderError):  # a character YAML does not allow
            line = text.count("\n", 0, exc.position) + 1
        else:
            line = None
        problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
        raise ConfigError(f"{where}{f':{line}' if line else ''}: not valid YAML ({problem})") from None
    except RecursionError:
        raise ConfigError(f"{where}: not valid YAML (nested too deeply)") from None
    _check_size(data, where)
    return data


def apply_overrides(data: dict, overrides: Sequence[str]) -> dict:
    """Set dotted keys from 'a.b=value' strings (values parsed as YAML) in a nested dict."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value, e.g. training.lr=0.01")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw  # not YAML: the text as written
        except RecursionError:
            raise ConfigError(f"override {key[:60]!r}: the value is nested too deeply") from None
        _check_size(value, f"override {key[:60]!r}")
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
            node = child
        node[parts[-1]] = value
    return data


def read_yaml(path: str | Path) -> dict:
    """A YAML mapping from a file (safe_load), with ConfigError naming the file on any problem."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: config file not found")
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory, expected a YAML config file")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"{path}:{line}: not valid UTF-8 (byte 0x{raw[exc.start]:02x}); save the config as UTF-8") from None
    data = _load_yaml(text, str(path))
    if data is None:
        raise ConfigError(f"{path}: the config is empty")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the config must be a mapping of sections (model, task, method, data, training)")
    return data


def load_run_config(source: str | Path | Mapping | RunConfig, overrides: Sequence[str] = ()) -> RunConfig:
    """A validated RunConfig from a YAML path, a mapping or a RunConfig, with key=value overrides."""
    if isinstance(source, RunConfig):
        if not overrides:
            return source
        source = to_dict(source)
    base_dir = None
    if isinstance(source, (str, Path)):
        base_dir = Path(source).parent
        data = read_yaml(source)
    else:
        data = dict(source)
    data = apply_overrides(_deep_copy(data), overrides)
    try:
        config = from_dict(RunConfig, data)
    except ConfigError as exc:
        if base_dir is None:
            raise
        # Name the file whose sections are wrong (an override may be the cause: say they were applied).
        raise ConfigError(f"{source}{' (with overrides)' if overrides else ''}: {exc}") from None
    if base_dir is not None:
        for section in [config.data] + [t.data for t in config.tasks]:
            resolve_data_paths(section, base_dir)
    return config


def resolve_data_paths(data: "DataConfig", base_dir: Path) -> None:
    """Data paths in a config file are relative to the file, so a config works from anywhere."""
    for name in ("train", "dev", "test"):
        value = getattr(data, name)
        if value and not Path(value).is_absolute() and not Path(value).exists() and (base_dir / value).exists():
            setattr(data, name, str(base_dir / value))


def _deep_copy(data):
    if isinstance(data, dict):
        return {k: _deep_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy(v) for v in data]
    return data
