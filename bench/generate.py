"""Inference speed: softprompt's engine against PEFT and plain transformers, all sides in one run.

Every side runs in this process on its own copy of the model (the competitors' copy never sees our
attention wrapper), once untimed to warm up, then --repeats timed runs alternating the order of
the sides; the table reports medians and our ratio to each side. The machine is named in the output.

Parts (--part):
  generate  CPU, smollm2-135m, 16 E2E meaning representations ("Data: {mr}\\nDescription:"), 64 new
            tokens per row, greedy, the end token ignored so that every side makes 16 x 64 tokens.
              ours-1    the engine, one prompt-tuning prompt (20 tokens) for all rows
              ours-16   16 prompts of mixed methods in one batch (prompt tuning, P-tuning (MLP),
                        prefix tuning, P-tuning v2, 20 tokens each, and a hard prompt)
              ours-16-compiled  the same with the decoding step compiled by torch.compile (about a
                        minute, once per batch size, in the untimed warm-up)
              plain     transformers generate, no prompt, the 16 rows in one call
              peft-1    PEFT prompt tuning (20 tokens), one adapter, the 16 rows in one call
              peft-16   16 PEFT prompt-tuning adapters, set_adapter per task, one call per row
  score     CPU, smollm2-135m, 64 classification tasks x 4 requests of 128-token texts (SST-2
            sentences joined and cut to 128 tokens). Each task: its own prompt-tuning prompt (20
            tokens) and its own instruction template, label words " positive"/" negative".
              ours      the engine, all 256 requests submitted at once (passes of --batch rows)
              peft      PEFT prompt tuning, 64 adapters, set_adapter per task, the task's 4 requests
                        in one forward with logits_to_keep=1 (only the last position's logits)
  gpu       CUDA, the Llama-3.2-1B shape with random weights, bf16, 16 rows of 256 random tokens, 64
            new tokens, 16 prompts (prompt tuning, prefix tuning, P-tuning v2, 20 tokens each; a hard prompt).
              ours-16   the engine (CUDA graphs for decoding)
              plain     transformers generate, no prompt, 16 rows in one call (dynamic cache)
              peft-16   16 PEFT prompt-tuning adapters, set_adapter per task, one call per row

    python bench/generate.py --part generate --out bench/results/generate_cpu.json
    python bench/generate.py --part score --out bench/results/score_cpu.json
    python bench/generate.py --part gpu --out bench/results/generate_gpu.json
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, llama_1b_config, machine, write_result  # noqa: E402

TOKENS = 20  # virtual tokens / prefix length of every soft prompt, ours and PEFT's


def timed(fn) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def alternate(sides: dict, repeats: int, work: float) -> dict:
    """Warm every side up once, then time each repeats times in rotating order: {side: median seconds}."""
    for name, fn in sides.items():
        fn()
    times = {name: [] for name in sides}
    names = list(sides)
    for r in range(repeats):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            seconds = timed(sides[name])
            times[name].append(seconds)
            print(f"  {name}: {seconds:.3f} s ({work / seconds:.1f}/s)", flush=True)
    return {name: statistics.median(t) for name, t in times.items()}


# ---- prompts of every method on one base ------------------------------------------------------------

def our_units(base, n: int, task_section: dict, label_words=()):
    """n task prompts cycling through the methods (fresh initialisations: speed does not depend on training)."""
    from softprompt.api import build_task, method_config
    from softprompt.tasks.runner import TaskPrompt

    methods = [{"name": "prompt_tuning", "num_virtual_tokens": TOKENS, "init": "vocab"},
               {"name": "ptuning", "num_virtual_tokens": TOKENS, "encoder": "mlp"},
               {"name": "prefix_tuning", "prefix_length": TOKENS, "init": "random"},
               {"name": "ptuning_v2", "prefix_length": TOKENS, "init": "random"},
               {"name": "hard_prompt"}]
    units = {}
    for i in range(n):
        spec = dict(methods[i % len(methods)] if n > 1 else methods[0], seed=i)
        cls, config = method_config(spec)
        task = build_task(task_section, base, list(label_words), getattr(config, "num_virtual_tokens", 0))
        method = None if spec["name"] == "hard_prompt" else cls.initialise(config, base, label_words=task.label_words)
        if method is not None:
            method.eval()
        units[f"t{i}"] = TaskPrompt(f"t{i}", method, task).eval()
    return units


def peft_model(model, adapters: int, path: str | None):
    import peft

    config = peft.PromptTuningConfig(task_type=peft.TaskType.CAUSAL_LM, num_virtual_tokens=TOKENS,
                                     prompt_tuning_init=peft.PromptTuningInit.RANDOM)
    wrapped = peft.get_peft_model(model, config, adapter_name="t0")
    for i in range(1, adapters):
        wrapped.add_adapter(f"t{i}", config)
    wrapped.eval()
    return wrapped


def e2e_inputs(n: int) -> list[str]:
    with (SHARED / "e2e" / "testset_w_refs.csv").open(newline="", encoding="utf-8") as f:
        return list(dict.fromkeys(row["mr"] for row in csv.DictReader(f)))[:n]


# ---- parts ------------------------------------------------------------------------------------------

def part_generate(a) -> dict:
    from softprompt.engine import Engine, SamplingParams
    from softprompt.models import load_base
    from softprompt.tasks.readers import Example
    from softprompt.tasks.runner import register_units

    base = load_base("smollm2-135m", reuse=False)
    theirs = copy.deepcopy(base.model)
    tok = base.tokenizer
    mrs = e2e_inputs(a.rows)
    section = {"kind": "generation", "template": "Data: {text}\nDescription: {mask}", "max_new_tokens": a.new_tokens}
    params = SamplingParams(max_new_tokens=a.new_tokens, ignore_eos=True)
    engines = {}
    for label, count, compiled in (("ours-1", 1, False), ("ours-16", a.rows, False),
                                   ("ours-16-compiled", a.rows, True)):
        units = our_units(base, count, section)
        engine = Engine(base, max_batch_rows=a.rows, max_running=a.rows, compile_decoding=compiled)
        entries = register_units(engine, units)
        keys = [f"t{i % count}" for i in range(a.rows)]
        rows = [units[k].task.prepare(Example(mr)).prefix for k, mr in zip(keys, mrs)]
        engines[label] = (engine, [entries[k] for k in keys], rows)

    def ours(label):
        engine, entries, rows = engines[label]
        handles = [engine.submit_generate(e, r, params) for e, r in zip(entries, rows)]
        made = sum(len(h.result().token_ids) for h in handles)
        assert made == a.rows * a.new_tokens, made

    texts = [f"Data: {mr}\nDescription:" for mr in mrs]
    batch = tok(texts, return_tensors="pt", padding=True, padding_side="left")
    singles = [tok([t], return_tensors="pt") for t in texts]
    plain_model = theirs
    peft_one = peft_model(copy.deepcopy(theirs), 1, None)
    peft_many = peft_model(copy.deepcopy(theirs), a.rows, None)
    settings = dict(max_new_tokens=a.new_tokens, min_new_tokens=a.new_tokens, do_sample=False,
                    pad_token_id=tok.pad_token_id)

    def plain():
        with torch.inference_mode():
            out = plain_model.generate(**batch, **settings)
        assert out.shape[1] - batch.input_ids.shape[1] == a.new_tokens

    def peft_1():
        with torch.inference_mode():
            peft_one.generate(**batch, **settings)

    def peft_16():
        with torch.inference_mode():
            for i, single in enumerate(singles):
                peft_many.set_adapter(f"t{i}")
                peft_many.generate(**single, **settings)

    sides = {"ours-1": lambda: ours("ours-1"), "ours-16": lambda: ours("ours-16"),
             "ours-16-compiled": lambda: ours("ours-16-compiled"), "plain": plain, "peft-1": peft_1, "peft-16": peft_16}
    work = a.rows * a.new_tokens
    medians = alternate(sides, a.repeats, work)
    for engine, _, _ in engines.values():
        engine.close()
    rates = {k: work / v for k, v in medians.items()}
    return {"unit": "new tokens/s", "rates": rates, "seconds": medians,
            "ratios": {"ours-16 / plain": rates["ours-16"] / rates["plain"],
                       "ours-16-compiled / plain": rates["ours-16-compiled"] / rates["plain"],
                       "ours-16 / peft-16": rates["ours-16"] / rates["peft-16"],
                       "ours-1 / plain": rates["ours-1"] / rates["plain"],
                       "ours-1 / peft-1": rates["ours-1"] / rates["peft-1"]}}


def texts_of(tok, count: int, length: int) -> list[list[int]]:
    """count token sequences of exactly length tokens, from SST-2 training sentences in file order."""
    out, current = [], []
    with (SHARED / "sentence-classification" / "stsa.binary.train").open(encoding="utf-8") as f:
        for line in f:
            current += tok(" " + line.split(" ", 1)[1].strip(), add_special_tokens=False).input_ids
            while len(current) >= length and len(out) < count:
                out.append(current[:length])
                current = current[length:]
            if len(out) == count:
                return out
    raise SystemExit("not enough SST-2 text")


def part_score(a) -> dict:
    from softprompt.engine import Engine
    from softprompt.models import load_base
    from softprompt.tasks.classification import Item
    from softprompt.tasks.runner import register_units

    base = load_base("smollm2-135m", reuse=False)
    theirs = copy.deepcopy(base.model)
    tok = base.tokenizer
    tasks, per_task = a.tasks, a.requests
    bodies = texts_of(tok, tasks * per_task, a.length)
    words = [tok(" negative", add_special_tokens=False).input_ids[0], tok(" positive", add_special_tokens=False).input_ids[0]]
    templates, sections = [], []
    for t in range(tasks):
        instruction = (f"You are reviewer number {t + 1}. Read the movie review below and say whether its "
                       "sentiment is positive or negative.")
        templates.append(instruction)
        sections.append({"kind": "classification", "template": instruction + "\nReview: {text}\nSentiment: {mask}",
                         "verbalizer": {"0": "negative", "1": "positive"}, "max_length": 512})
    units = {}
    for t, section in enumerate(sections):
        unit = our_units(base, 1, section, ["0", "1"])["t0"]
        unit.key = f"t{t}"
        units[unit.key] = unit
    # identical token ids on both sides: the template around the 128-token body, ours with its virtual tokens first
    rows_plain, rows_ours = [], []
    for t in range(tasks):
        head = tok(templates[t] + "\nReview:", add_special_tokens=False).input_ids
        tail = tok("\nSentiment:", add_special_tokens=False).input_ids
        for r in range(per_task):
            ids = head + bodies[t * per_task + r] + tail
            rows_plain.append(ids)
            rows_ours.append([-(k + 1) for k in range(TOKENS)] + ids)
    engine = Engine(base, max_batch_rows=a.batch)
    entries = register_units(engine, units)
    for t in range(tasks):  # the fixed start: the virtual tokens and the instruction (the rows are built here)
        head = tuple(rows_ours[t * per_task][:TOKENS + len(tok(templates[t] + "\nReview:", add_special_tokens=False).input_ids)])
        entries[f"t{t}"] = engine.add_prompt(f"t{t}", entries[f"t{t}"].tensors, units[f"t{t}"].task, fixed_start=head)
    items = [Item([tuple(r)], None, [[[(0, words[0], 0)]], [[(0, words[1], 0)]]]) for r in rows_ours]
    peft_many = peft_model(theirs, tasks, None)
    work = tasks * per_task
    got = {}

    def ours():
        futures = [engine.submit_score(entries[f"t{i // per_task}"], item) for i, item in enumerate(items)]
        got["ours"] = torch.stack([f.result() for f in futures])

    def peft_side():
        out = []
        with torch.inference_mode():
            for t in range(tasks):
                peft_many.set_adapter(f"t{t}")
                ids = torch.tensor(rows_plain[t * per_task:(t + 1) * per_task])
                logits = peft_many(input_ids=ids, attention_mask=torch.ones_like(ids), logits_to_keep=1).logits[:, -1]
                out.append(torch.log_softmax(logits.float(), -1)[:, words])
        got["peft"] = torch.cat(out)

    medians = alternate({"ours": ours, "peft": peft_side}, a.repeats, work)
    engine.close()
    rates = {k: work / v for k, v in medians.items()}
    fixed = len(rows_ours[0]) - a.length - len(tok("\nSentiment:", add_special_tokens=False).input_ids)
    return {"unit": "requests/s", "rates": rates, "seconds": medians, "ratios": {"ours / peft": rates["ours"] / rates["peft"]},
            "row_tokens": {"peft": len(rows_plain[0]) + TOKENS, "ours": len(rows_ours[0]),
                           "fixed_start_ours": fixed}}


def part_gpu(a) -> dict:
    import transformers

    from softprompt.core import PromptTensors
    from softprompt.engine import Engine, SamplingParams
    from softprompt.models import wrap_model

    config = llama_1b_config()
    torch.manual_seed(0)
    with torch.device("cuda"):
        torch.set_default_dtype(torch.bfloat16)
        ours_model = transformers.LlamaForCausalLM(config).eval()
        theirs = transformers.LlamaForCausalLM(copy.deepcopy(config)).eval()  # its own config: never our attention
        torch.set_default_dtype(torch.float32)
    theirs.load_state_dict(ours_model.state_dict())
    base = wrap_model(ours_model, None, "llama-3.2-1b-shape")
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1000, 120000, (a.rows, a.length), generator=g)
    info = base.info
    shape = (info.num_layers, 2, info.num_kv_heads, TOKENS, info.head_dim)
    engine = Engine(base, max_batch_rows=a.rows, max_running=a.rows)
    entries, rows = [], []
    for i in range(a.rows):
        kind = i % 4
        if kind == 0:
            prompt = PromptTensors(input=torch.randn(TOKENS, info.hidden_size, generator=g) * 0.02)
        elif kind in (1, 2):
            prompt = PromptTensors(deep={"decoder": torch.randn(shape, generator=g) * 0.5})
        else:
            prompt = None
        virtual = [-(k + 1) for k in range(TOKENS)] if kind == 0 else []
        entries.append(engine.add_prompt(f"t{i}", prompt, fixed_start=virtual + ids[i, :8].tolist()))
        rows.append(virtual + ids[i].tolist())
    params = SamplingParams(max_new_tokens=a.new_tokens, ignore_eos=True)

    def ours():
        handles = [engine.submit_generate(e, r, params) for e, r in zip(entries, rows)]
        assert sum(len(h.result().token_ids) for h in handles) == a.rows * a.new_tokens

    batch = ids.cuda()
    settings = dict(max_new_tokens=a.new_tokens, min_new_tokens=a.new_tokens, do_sample=False, pad_token_id=128001)

    def plain():
        with torch.inference_mode():
            theirs.generate(input_ids=batch, attention_mask=torch.ones_like(batch), **settings)

    peft_many = peft_model(theirs, a.rows, None) if not a.no_peft else None

    def peft_16():
        with torch.inference_mode():
            for i in range(a.rows):
                peft_many.set_adapter(f"t{i}")
                peft_many.generate(input_ids=batch[i:i + 1], attention_mask=torch.ones_like(batch[i:i + 1]), **settings)

    sides = {"ours-16": ours}
    if peft_many is not None:
        sides["peft-16"] = peft_16
    else:
        sides["plain"] = plain
    work = a.rows * a.new_tokens
    medians = alternate(sides, a.repeats, work)
    if peft_many is not None:  # plain generate on the unwrapped model, after PEFT is done with it
        peft_many = peft_many.get_base_model()
        plain_model = peft_many

        def plain():  # noqa: F811
            with torch.inference_mode():
                plain_model.generate(input_ids=batch, attention_mask=torch.ones_like(batch), **settings)

        medians.update(alternate({"plain": plain, "ours-16": ours}, a.repeats, work))
    breakdown = where_time_goes(engine, ours)
    engine.close()
    rates = {k: work / v for k, v in medians.items()}
    return {"unit": "new tokens/s", "rates": rates, "seconds": medians, "breakdown_ms": breakdown,
            "graphs": engine._slots.graphs_enabled, "compiled": engine._slots.compile_enabled,
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
            "ratios": {f"ours-16 / {k}": rates["ours-16"] / v for k, v in rates.items() if k != "ours-16"}}


def where_time_goes(engine, run) -> dict:
    """One more run of ours, timed pass by pass (an engine "pass" hook), and the captured decoding
    step replayed alone: how much of a step is the GPU's and how much the host's."""
    stamps = []
    remove = engine.add_hook("pass", lambda kind, rows, tokens: stamps.append((kind, time.perf_counter())))
    start = time.perf_counter()
    run()
    end = time.perf_counter()
    remove()
    decodes = [t for kind, t in stamps if kind == "decode"]
    out = {"total": 1000 * (end - start), "to_first_step": 1000 * (decodes[0] - start),
           "per_step": 1000 * (decodes[-1] - decodes[0]) / max(1, len(decodes) - 1), "steps": len(decodes)}
    graphs = engine._slots._graphs if engine._slots is not None else {}
    if graphs:
        graph = graphs[max(graphs)][0]
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(50):
            graph.replay()
        torch.cuda.synchronize()
        out["graph_replay"] = 1000 * (time.perf_counter() - t) / 50
    print("breakdown (ms):", json.dumps(out), flush=True)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=["generate", "score", "gpu"], required=True)
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--tasks", type=int, default=64)
    parser.add_argument("--requests", type=int, default=4)
    parser.add_argument("--length", type=int, default=None, help="input tokens (score: 128, gpu: 256)")
    parser.add_argument("--batch", type=int, default=32, help="score: rows per engine pass")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-peft", action="store_true", help="gpu: skip the PEFT side")
    parser.add_argument("--out", type=Path)
    a = parser.parse_args()
    torch.set_num_threads(a.threads)
    a.length = a.length or (256 if a.part == "gpu" else 128)
    print(f"{a.part} on {machine()}", flush=True)
    result = {"generate": part_generate, "score": part_score, "gpu": part_gpu}[a.part](a)
    result.update(part=a.part, machine=machine(), args={k: str(v) for k, v in vars(a).items()})
    write_result(result, a.out)


if __name__ == "__main__":
    main()
