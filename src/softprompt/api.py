"""The Python API: train, evaluate, predict and list models, as typed functions over configs.

The CLI is a thin shell over these; everything a command does, a function here does.
"""

from __future__ import annotations

import atexit
import json
import threading
import weakref
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from .configs import ModelConfig
from .core import PromptArtifact, PromptedModel
from .engine import Engine, EnginePrompt, GenerationResult
from .errors import ConfigError, DataError
from .models import EMBEDDED, BaseModel, embedded_status
from .models.precision import check_dtype
from .models.quantize import check_quantize
from .tasks.kinds import Prediction
from .tasks.readers import Example
from .tasks.runner import Prepared, generate_texts, predict_logits, register_units
from .training.run import (  # noqa: F401  (the API's names for the run-level functions)
    TASK_KINDS,
    LoadedPrompt,
    TrainResult,
    build_task,
    data_config_of,
    evaluate_items,
    labels_of,
    load_model,
    load_prompt,
    method_config,
    prepare,
    read_split,
    resolve_device,
    train,
)


def evaluate(artifact: str | Path | LoadedPrompt, data_path: str | Path, *, format: str = "auto",
             text_field: str | None = None, text_b_field: str | None = None, label_field: str | None = None,
             batch_size: int = 32, allow_model_mismatch: bool = False, base: BaseModel | None = None,
             calibrate: bool | None = None, dtype: str = "auto", quantize: str | None = None) -> dict:
    """Accuracy, macro-F1 and the per-class report of a prompt on a labelled data file (calibrate:
    contextual calibration on or off; None: as the artifact says; dtype, quantize: see attach)."""
    loaded = attach(artifact, base, allow_model_mismatch=allow_model_mismatch, calibrate=calibrate, dtype=dtype,
                    quantize=quantize)
    data = data_config_of(loaded, format=format, text_field=text_field, text_b_field=text_b_field, label_field=label_field)
    examples = read_split(str(data_path), data, kind=loaded.unit.task.kind)
    pm = PromptedModel(loaded.base)
    items = prepare(loaded.unit.task, loaded.unit.key, examples)
    return evaluate_items(pm, loaded.unit, items, examples, batch_size, "left")


def predict(artifact: str | Path | LoadedPrompt, inputs: Sequence[str | Example], *, batch_size: int = 32,
            allow_model_mismatch: bool = False, base: BaseModel | None = None,
            calibrate: bool | None = None, dtype: str = "auto", quantize: str | None = None) -> list[Prediction]:
    """Label and class probabilities for each text (or Example, for text pairs); a tag per word for
    token labelling; the generated text for generation. calibrate: contextual calibration of a
    classification prompt on or off (None: as the artifact says); dtype, quantize: see attach."""
    loaded = attach(artifact, base, allow_model_mismatch=allow_model_mismatch, calibrate=calibrate, dtype=dtype,
                    quantize=quantize)
    key = loaded.unit.key
    examples = [loaded.unit.task.unlabelled(value, f"input {i + 1}") for i, value in enumerate(inputs)]
    return _predictions({key: loaded}, [key] * len(examples), examples, batch_size)


def _predictions(prompts: Mapping[str, LoadedPrompt], names: Sequence[str], examples: Sequence,
                 batch_size: int) -> list[Prediction]:
    """Predictions for examples that each name their prompt, in shared batches over one base model:
    rows of kinds that decode (generation) decoded together, the others scored together; each
    output made a Prediction by its own task."""
    units = {name: p.unit for name, p in prompts.items()}
    prepared = [Prepared(name, units[name].task.prepare(e)) for name, e in zip(names, examples)]
    pm = PromptedModel(next(iter(prompts.values())).base)
    decoded = [i for i, name in enumerate(names) if units[name].task.decodes]
    scored = [i for i, name in enumerate(names) if not units[name].task.decodes]
    texts = generate_texts(pm, units, [prepared[i] for i in decoded], batch_size) if decoded else []
    logits = predict_logits(pm, units, [prepared[i] for i in scored], batch_size,
                            progress=len(scored) > batch_size) if scored else []
    out: list[Prediction | None] = [None] * len(examples)
    for i, output in zip(decoded + scored, [*texts, *logits]):
        out[i] = units[names[i]].task.prediction(output, prepared[i].item, examples[i])
    return out


def predict_mixed(prompts: Mapping[str, LoadedPrompt], requests: Sequence[tuple[str, str | Example]], *,
                  batch_size: int = 32) -> list[Prediction]:
    """Predictions for requests that each name their task, served from one base model in shared
    batches: row i of a batch may use one prompt (and method) and row j another. Classification
    rows get labels and probabilities, token-labelling rows tags, generation rows generated text
    (decoded together, each row with its own prompt)."""
    if not prompts:
        raise ConfigError("predict_mixed needs at least one loaded prompt")
    bases = {id(p.base) for p in prompts.values()}
    if len(bases) != 1:
        raise ConfigError("predict_mixed serves prompts of one base model object; load them all onto the same base")
    examples = []
    for i, (name, value) in enumerate(requests):
        if name not in prompts:
            raise DataError(f"request {i + 1}: unknown task {name!r} (tasks: {', '.join(prompts)})")
        examples.append(prompts[name].unit.task.unlabelled(value, f"request {i + 1}"))
    return _predictions(prompts, [name for name, _ in requests], examples, batch_size)


def predict_file(artifact: str | Path | LoadedPrompt, in_path: str | Path, out_path: str | Path | None = None, *,
                 format: str = "auto", text_field: str | None = None, text_b_field: str | None = None,
                 batch_size: int = 32, allow_model_mismatch: bool = False,
                 calibrate: bool | None = None, dtype: str = "auto", quantize: str | None = None) -> list[Prediction]:
    """Predict every example of a file; with out_path, write one JSON object per line."""
    loaded = attach(artifact, allow_model_mismatch=allow_model_mismatch, calibrate=calibrate, dtype=dtype,
                    quantize=quantize)
    data = data_config_of(loaded, format=format, text_field=text_field, text_b_field=text_b_field)
    examples = read_split(str(in_path), data, require_label=False, kind=loaded.unit.task.kind)
    predictions = predict(loaded, examples, batch_size=batch_size)
    if out_path is not None:
        out_path = Path(out_path)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = out_path.with_name(f".{out_path.name}.tmp")
        with tmp.open("w", encoding="utf-8") as handle:
            for p in predictions:
                row = {"source": p.source, "text": p.text, "label": p.label, "probabilities": p.probabilities}
                if p.tags is not None:
                    row = {"source": p.source, "tokens": p.text.split(" "), "tags": p.tags}
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        tmp.replace(out_path)
    return predictions


def attach(artifact: str | Path | PromptArtifact | LoadedPrompt, base: BaseModel | str | None = None, *,
           allow_model_mismatch: bool = False, calibrate: bool | None = None, dtype: str = "auto",
           quantize: str | None = None) -> LoadedPrompt:
    """A prompt on its base model: artifact as is when already loaded, else attached to base, or, when
    base is a name or None (the artifact's own base model), to that base loaded in dtype (auto |
    float32 | bfloat16 | float16) and quantized as quantize says (None | "int8": its linear layers,
    for inference); a given BaseModel stays as it was loaded."""
    check_dtype(dtype, "dtype")  # also when unused: a typo is an error, not a silent default
    check_quantize(quantize, "quantize")
    if isinstance(artifact, LoadedPrompt):
        return artifact
    if base is None or isinstance(base, str):
        artifact = artifact if isinstance(artifact, PromptArtifact) else PromptArtifact.load(artifact)
        artifact.require(*([] if base else ["base_model.name"]))
        base = load_model(ModelConfig(name=base or artifact.meta["base_model"]["name"], dtype=dtype,
                                      quantize=quantize))
    return load_prompt(artifact, base, allow_model_mismatch=allow_model_mismatch, calibrate=calibrate)


def _generation_prompt(artifact, base, allow_model_mismatch, dtype, quantize) -> LoadedPrompt:
    loaded = attach(artifact, base, allow_model_mismatch=allow_model_mismatch, dtype=dtype, quantize=quantize)
    if not loaded.unit.task.decodes:
        raise ConfigError(f"{loaded.artifact.path or 'the prompt'} is a {loaded.unit.task.kind} prompt; generate and "
                          "stream take prompts of a task that generates (use predict)")
    return loaded


class _BaseEngine:
    """The engine the API keeps for one base model, and the prompts registered with it: each under a
    key of its own loaded unit, registered again when the unit's artifact tensors change."""

    def __init__(self, base: BaseModel):
        self.engine = Engine(base)  # the defaults: 32 rows a pass, 64 generations running
        self.entries: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # unit -> (tensors, entry)
        self.lock = threading.Lock()

    def entry(self, loaded: LoadedPrompt) -> EnginePrompt:
        unit = loaded.unit
        with self.lock:
            known = self.entries.get(unit)
            if known is not None and known[0] is loaded.artifact.tensors:
                return known[1]
            key = f"api:{id(unit)}"
            entry = register_units(self.engine, {key: unit})[key]
            if known is None:  # a unit dropped by its caller leaves the engine too
                weakref.finalize(unit, self.engine.remove_prompt, key)
            self.entries[unit] = (loaded.artifact.tensors, entry)
            return entry


_ENGINES: dict[int, _BaseEngine] = {}  # by id(base); the engine holds its base, so the id stays its own
_ENGINES_LOCK = threading.Lock()


def engine_of(base: BaseModel) -> Engine:
    """The long-lived engine the API decodes with on a base model: made at the first generate or
    stream on it and kept, with its compiled prompts, until close_engines (or the interpreter's exit)."""
    return _base_engine(base).engine


def _base_engine(base: BaseModel) -> _BaseEngine:
    with _ENGINES_LOCK:
        held = _ENGINES.get(id(base))
        if held is None:
            held = _ENGINES[id(base)] = _BaseEngine(base)
        return held


def close_engines(wait: bool = True) -> None:
    """Close the API's engines (with wait, requests in flight finish first), releasing their base models."""
    with _ENGINES_LOCK:
        held = list(_ENGINES.values())
        _ENGINES.clear()
    for h in held:
        h.engine.close(wait=wait)


atexit.register(close_engines, wait=False)  # at exit nobody waits for a result: stop, do not drain


def generate(artifact: str | Path | LoadedPrompt, inputs: Sequence[str | Example], *, base: BaseModel | None = None,
             allow_model_mismatch: bool = False, dtype: str = "auto", quantize: str | None = None,
             **sampling) -> list[GenerationResult]:
    """Generated text for each input of a generation prompt, decoded together by the base model's
    engine (engine_of).

    sampling: SamplingParams fields (max_new_tokens, temperature, top_k, top_p, repetition_penalty,
    seed, num_beams, length_penalty, stop, stop_token_ids, ignore_eos, return_logits); the task's own
    max_new_tokens and beam settings by default, greedy unless temperature > 0."""
    loaded = _generation_prompt(artifact, base, allow_model_mismatch, dtype, quantize)
    task = loaded.unit.task
    params = task.sampling(**sampling)
    rows = [task.prepare(task.unlabelled(value, f"input {i + 1}")).prefix for i, value in enumerate(inputs)]
    held = _base_engine(loaded.base)
    entry = held.entry(loaded)
    handles = held.engine.submit_generates([(entry, row, params) for row in rows])
    return [handle.result() for handle in handles]


def stream(artifact: str | Path | LoadedPrompt, text: str | Example, *, base: BaseModel | None = None,
           allow_model_mismatch: bool = False, dtype: str = "auto", quantize: str | None = None,
           **sampling) -> Iterator[str]:
    """The generated text of one input, piece by piece as it is decoded (joined: what generate gives)."""
    loaded = _generation_prompt(artifact, base, allow_model_mismatch, dtype, quantize)
    task = loaded.unit.task
    params = task.sampling(**sampling)
    row = task.prepare(task.unlabelled(text, "input")).prefix
    held = _base_engine(loaded.base)
    handle = held.engine.submit_generate(held.entry(loaded), row, params, stream=True)
    try:
        yield from handle
    finally:
        handle.cancel()


def list_models() -> list[dict[str, str]]:
    """The embedded default models and whether each is ready to load."""
    return [
        {"name": name, "status": embedded_status(name), "description": spec.description, "install": spec.install}
        for name, spec in EMBEDDED.items()
    ]
