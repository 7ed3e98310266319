"""The Python API: train, evaluate, predict and list models, as typed functions over configs.

The CLI is a thin shell over these; everything a command does, a function here does.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .core import PromptedModel
from .errors import ConfigError, DataError
from .models import EMBEDDED, BaseModel, embedded_status
from .tasks.conll import TokenExample
from .tasks.readers import Example
from .engine import Engine, GenerationResult, SamplingParams
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
    task_kind,
    train,
)


def evaluate(artifact: str | Path | LoadedPrompt, data_path: str | Path, *, format: str = "auto",
             text_field: str | None = None, text_b_field: str | None = None, label_field: str | None = None,
             batch_size: int = 32, allow_model_mismatch: bool = False, base: BaseModel | None = None,
             calibrate: bool | None = None) -> dict:
    """Accuracy, macro-F1 and the per-class report of a prompt on a labelled data file (calibrate:
    contextual calibration on or off; None: as the artifact says)."""
    loaded = artifact if isinstance(artifact, LoadedPrompt) else load_prompt(
        artifact, base, allow_model_mismatch=allow_model_mismatch, calibrate=calibrate
    )
    data = data_config_of(loaded, format=format, text_field=text_field, text_b_field=text_b_field, label_field=label_field)
    examples = read_split(str(data_path), data, kind=loaded.unit.task.kind)
    pm = PromptedModel(loaded.base)
    items = prepare(loaded.unit.task, loaded.unit.key, examples)
    return evaluate_items(pm, loaded.unit, items, examples, batch_size, "left")


@dataclass
class Prediction:
    """A predicted label with the probability of every label (token labelling: a tag per word)."""

    label: str
    probabilities: dict[str, float]
    text: str = ""
    source: str = ""
    tags: list[str] | None = None


def predict(artifact: str | Path | LoadedPrompt, inputs: Sequence[str | Example], *, batch_size: int = 32,
            allow_model_mismatch: bool = False, base: BaseModel | None = None,
            calibrate: bool | None = None) -> list[Prediction]:
    """Label and class probabilities for each text (or Example, for text pairs); a tag per word for
    token labelling; the generated text for generation. calibrate: contextual calibration of a
    classification prompt on or off (None: as the artifact says)."""
    loaded = artifact if isinstance(artifact, LoadedPrompt) else load_prompt(
        artifact, base, allow_model_mismatch=allow_model_mismatch, calibrate=calibrate
    )
    key = loaded.unit.key
    examples = [_unlabelled(loaded.unit.task.kind, value, f"input {i + 1}") for i, value in enumerate(inputs)]
    return _predictions({key: loaded}, [key] * len(examples), examples, batch_size)


def _unlabelled(kind: str, value, source: str):
    """An input as an unlabelled Example (TokenExample for token labelling); DataError when empty."""
    if kind == "token_labelling":
        if isinstance(value, TokenExample):
            return TokenExample(value.tokens, None, value.source or source)
        text = value.text if isinstance(value, Example) else str(value)
        if not text.split():
            raise DataError(f"{source}: empty text")
        return TokenExample(tuple(text.split()), None, source)
    example = value if isinstance(value, Example) else Example(text=str(value), source=source)
    if not example.text.strip():
        raise DataError(f"{example.source or source}: empty text")
    return Example(example.text, example.text_b, None, example.source or source, example.fields)


def _predictions(prompts: Mapping[str, LoadedPrompt], names: Sequence[str], examples: Sequence,
                 batch_size: int) -> list[Prediction]:
    """Predictions for examples that each name their prompt, in shared batches over one base model:
    generation rows decoded together, classification and token-labelling rows scored together."""
    units = {name: p.unit for name, p in prompts.items()}
    prepared = [Prepared(name, units[name].task.prepare(e)) for name, e in zip(names, examples)]
    pm = PromptedModel(next(iter(prompts.values())).base)
    kinds = [units[name].task.kind for name in names]
    out: list[Prediction | None] = [None] * len(examples)
    generated = [i for i, kind in enumerate(kinds) if kind == "generation"]
    if generated:
        texts = generate_texts(pm, units, [prepared[i] for i in generated], batch_size)
        for i, text in zip(generated, texts):
            out[i] = Prediction(text, {}, examples[i].text, examples[i].source)
    scored = [i for i, kind in enumerate(kinds) if kind != "generation"]
    logits = predict_logits(pm, units, [prepared[i] for i in scored], batch_size,
                            progress=len(scored) > batch_size) if scored else []
    for i, value in zip(scored, logits):
        name, example = names[i], examples[i]
        if kinds[i] == "token_labelling":
            tags = units[name].task.decode(value, prepared[i].item)
            out[i] = Prediction(" ".join(tags), {}, " ".join(example.tokens), example.source, tags)
            continue
        labels = prompts[name].labels
        probs = torch.softmax(value, -1).tolist()
        best = max(range(len(probs)), key=probs.__getitem__)
        out[i] = Prediction(labels[best], dict(zip(labels, probs)), example.text, example.source)
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
        examples.append(_unlabelled(prompts[name].unit.task.kind, value, f"request {i + 1}"))
    return _predictions(prompts, [name for name, _ in requests], examples, batch_size)


def predict_file(artifact: str | Path | LoadedPrompt, in_path: str | Path, out_path: str | Path | None = None, *,
                 format: str = "auto", text_field: str | None = None, text_b_field: str | None = None,
                 batch_size: int = 32, allow_model_mismatch: bool = False,
                 calibrate: bool | None = None) -> list[Prediction]:
    """Predict every example of a file; with out_path, write one JSON object per line."""
    loaded = artifact if isinstance(artifact, LoadedPrompt) else load_prompt(
        artifact, allow_model_mismatch=allow_model_mismatch, calibrate=calibrate)
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


def _generation_prompt(artifact, base, allow_model_mismatch) -> LoadedPrompt:
    loaded = artifact if isinstance(artifact, LoadedPrompt) else load_prompt(
        artifact, base, allow_model_mismatch=allow_model_mismatch)
    if loaded.unit.task.kind != "generation":
        raise ConfigError(f"{loaded.artifact.path or 'the prompt'} is a {loaded.unit.task.kind} prompt; generate and "
                          "stream take generation prompts (use predict)")
    return loaded


def _sampling(task, options: Mapping) -> SamplingParams:
    options = dict(options)
    options.setdefault("max_new_tokens", task.config.max_new_tokens)
    options.setdefault("num_beams", task.config.num_beams)
    options.setdefault("length_penalty", task.config.length_penalty)
    return SamplingParams(**options)


def generate(artifact: str | Path | LoadedPrompt, inputs: Sequence[str | Example], *, base: BaseModel | None = None,
             allow_model_mismatch: bool = False, **sampling) -> list[GenerationResult]:
    """Generated text for each input of a generation prompt, decoded together by the engine.

    sampling: SamplingParams fields (max_new_tokens, temperature, top_k, top_p, repetition_penalty,
    seed, num_beams, length_penalty, stop, stop_token_ids, ignore_eos, return_logits); the task's own
    max_new_tokens and beam settings by default, greedy unless temperature > 0."""
    loaded = _generation_prompt(artifact, base, allow_model_mismatch)
    unit = loaded.unit
    params = _sampling(unit.task, sampling)
    examples = [_unlabelled("generation", value, f"input {i + 1}") for i, value in enumerate(inputs)]
    rows = [unit.task.prepare(e).prefix for e in examples]
    with Engine(loaded.base, max_batch_rows=32, max_running=64) as engine:
        entry = register_units(engine, {unit.key: unit})[unit.key]
        handles = engine.submit_generates([(entry, row, params) for row in rows])
        return [handle.result() for handle in handles]


def stream(artifact: str | Path | LoadedPrompt, text: str | Example, *, base: BaseModel | None = None,
           allow_model_mismatch: bool = False, **sampling) -> Iterator[str]:
    """The generated text of one input, piece by piece as it is decoded (joined: what generate gives)."""
    loaded = _generation_prompt(artifact, base, allow_model_mismatch)
    unit = loaded.unit
    params = _sampling(unit.task, sampling)
    row = unit.task.prepare(_unlabelled("generation", text, "input")).prefix
    with Engine(loaded.base) as engine:
        entry = register_units(engine, {unit.key: unit})[unit.key]
        handle = engine.submit_generate(entry, row, params, stream=True)
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
