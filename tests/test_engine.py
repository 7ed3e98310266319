"""The engine: re-entrant forward passes, compiled prompts, decoding settings per row, streaming,
continuous batching. Every comparison is against the plain uncached forward, to 1e-5 in float32."""

import threading

import pytest
import torch

from softprompt.api import build_task, method_config
from softprompt.core import PromptedModel, PromptTensors, virtual
from softprompt.core.compiled import compile_prompt
from softprompt.engine import Engine, EngineBusy, SamplingParams
from softprompt.errors import ConfigError
from softprompt.tasks.readers import Example
from softprompt.tasks.runner import Prepared, TaskPrompt, class_logits, fixed_start, register_units
from tiny import CAUSAL, tiny_base

TEXTS = ["a warm and funny film", "boring , slow and far too long", "the plot is dull",
         "what a wonderful surprise this movie was", "great"]


def _unit(base, key, method, template, seed, **task):
    method_cls, cfg = method_config({"seed": seed, **method})
    labels = ["pos", "neg"]
    section = {"kind": "classification", "labels": labels, **task}
    if base.info.kind.value != "encoder":
        section.update(template=template, verbalizer={"pos": "good", "neg": ["bad", "awful"]})
    n = getattr(cfg, "num_virtual_tokens", 0)
    built = build_task(section, base, labels, n)
    torch.manual_seed(seed)
    if built.head is not None:
        torch.nn.init.normal_(built.head.weight)
    method_obj = method_cls.initialise(cfg, base, label_words=built.label_words) if method["name"] != "hard_prompt" else None
    unit = TaskPrompt(key, method_obj, built)
    unit.eval()
    return unit


def _units(base):
    """Prompts of every kind on one base: cacheable starts, P-tuning tokens mid-template, a deep prompt,
    a hard prompt, and a head that reads every position (mean pooling: never cached)."""
    units = {
        "pt": _unit(base, "pt", {"name": "prompt_tuning", "num_virtual_tokens": 3, "init": "random"},
                    "review : {text} sentiment : {mask}", 1),
        "p1": _unit(base, "p1", {"name": "ptuning", "num_virtual_tokens": 4, "encoder": "mlp"},
                    "[P*2] the {text} [P*2] it was {mask}", 2),
        "v2": _unit(base, "v2", {"name": "ptuning_v2", "prefix_length": 3, "init": "random"},
                    "question : is this review good ? review : {text} answer : {mask}", 3),
        "hard": _unit(base, "hard", {"name": "prompt_tuning", "num_virtual_tokens": 2, "init": "random"},
                      "the film was great . the plot is dull . {text} it was {mask}", 4),
    }
    if base.info.kind.value == "causal":
        units["mean"] = _unit(base, "mean", {"name": "prompt_tuning", "num_virtual_tokens": 2, "init": "random"},
                              "review : {text} sentiment : {mask}", 5, head="linear", pooling="mean")
    return units


def _prepared(units):
    keys = list(units)
    return [Prepared(keys[i % len(keys)], units[keys[i % len(keys)]].task.prepare(Example(t)))
            for i, t in enumerate(TEXTS * 2)]


@pytest.mark.parametrize("family", CAUSAL)
def test_compiled_prompts_give_the_uncached_scores_in_mixed_batches(family):
    base = tiny_base(family)
    pm = PromptedModel(base)
    units = _units(base)
    prepared = _prepared(units)
    with torch.no_grad():
        reference = {side: class_logits(pm, units, prepared, side) for side in ("left", "right")}
    starts = {key: fixed_start(unit.task) for key, unit in units.items()}
    assert starts["mean"] is None  # reads every position: nothing to compile
    assert len(starts["v2"]) > 8 and len(starts["p1"]) >= 2  # an instruction; P-tuning's first virtual tokens
    for compile_prompts in (True, False):
        with Engine(pm, compile_prompts=compile_prompts, max_batch_rows=6) as engine:
            entries = register_units(engine, units)
            got = [engine.submit_score(entries[p.key], p.item).result() for p in prepared]
            compiled = [engine._compiled(e) for e in entries.values()]
        assert any(c is not None for c in compiled) == compile_prompts
        for side in ("left", "right"):
            for a, b in zip(got, reference[side]):
                torch.testing.assert_close(a, b.float(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", CAUSAL)
def test_compiled_generation_equals_the_full_forward(family):
    pm = PromptedModel(tiny_base(family))
    info = pm.info
    g = torch.Generator().manual_seed(3)
    tok = pm.base.tokenizer
    deep = {"decoder": torch.randn(info.num_layers, 2, info.num_kv_heads, 3, info.head_dim, generator=g) * 0.5}
    prompt = PromptTensors(input=torch.randn(2, info.hidden_size, generator=g), deep=deep)
    start = [virtual(0), virtual(1)] + tok("review : the plot", add_special_tokens=False).input_ids
    rows = [start + tok(t, add_special_tokens=False).input_ids for t in ("is dull", "was great and warm")]
    with Engine(pm) as engine:
        entry = engine.add_prompt("p", prompt, fixed_start=start)
        results = [engine.submit_generate(entry, row, SamplingParams(max_new_tokens=4, ignore_eos=True,
                                                                     return_logits=True)).result() for row in rows]
        assert engine._compiled(entry) is not None
    for row, result in zip(rows, results):
        full = pm.collate([row + result.token_ids], ["p"], padding_side="right")
        with torch.no_grad():
            hidden = pm.encode(full, {"p": prompt})
            logits = pm.lm_logits(hidden[0, len(row) - 1: len(row) + 3]).float()
        torch.testing.assert_close(result.logits, logits, atol=1e-5, rtol=0)


def test_a_prompt_replaced_under_its_name_drops_its_compiled_form():
    pm = PromptedModel(tiny_base("llama"))
    d = pm.info.hidden_size
    tok = pm.base.tokenizer
    start = [virtual(0), virtual(1)] + tok("review :", add_special_tokens=False).input_ids
    row = start + tok("a warm film", add_special_tokens=False).input_ids
    with Engine(pm) as engine:
        outputs = []
        for seed in (0, 1):
            prompt = PromptTensors(input=torch.randn(2, d, generator=torch.Generator().manual_seed(seed)))
            engine.add_prompt("task", prompt, fixed_start=start)
            result = engine.submit_generate("task", row, SamplingParams(max_new_tokens=1, return_logits=True)).result()
            uncached = compile_prompt(pm, "task", prompt, start)
            outputs.append(result.logits[0])
            with torch.no_grad():
                hidden = pm.encode(pm.collate([row], ["task"]), {"task": prompt})
            torch.testing.assert_close(result.logits[0], pm.lm_logits(hidden[0, -1]).float(), atol=1e-5, rtol=0)
            assert uncached is not None
        assert not torch.allclose(outputs[0], outputs[1])


@pytest.mark.parametrize("family", ["llama", "bert", "t5"])
def test_threads_sharing_one_model_get_what_they_get_alone(family):
    """Deep prompts travel with each call: two threads encoding different prompts on one model at
    once each get exactly their single-threaded outputs."""
    base = tiny_base(family)
    pm = PromptedModel(base)
    info = pm.info
    stacks = pm.deep_support().stacks
    g = torch.Generator().manual_seed(7)

    def deep(n):
        return {s: torch.randn(info.num_layers, 2, info.num_kv_heads, n, info.head_dim, generator=g) for s in stacks}

    prompts = {"a": PromptTensors(deep=deep(3)), "b": PromptTensors(deep=deep(5), input=torch.randn(2, info.hidden_size)),
               "c": PromptTensors(deep=deep(2))}
    tok = base.tokenizer
    rows = {"a": [tok(t).input_ids for t in TEXTS[:3]],
            "b": [[virtual(0), virtual(1)] + tok(t).input_ids for t in TEXTS[2:]],
            "c": [tok(t).input_ids for t in TEXTS[1:4]]}

    def run(key):
        batch = pm.collate(rows[key], [key] * len(rows[key]), "right")
        with torch.no_grad():
            hidden = pm.encode(batch, prompts)
            if info.kind.value == "seq2seq":
                dec = torch.full((len(rows[key]), 2), pm.decoder_start_id())
                return pm.decoder_logits(hidden, batch.attention_mask, dec)
        return hidden

    alone = {key: run(key) for key in prompts}
    errors, mismatches = [], []

    def worker(key):
        try:
            for _ in range(15):
                got = run(key)
                if not torch.allclose(got, alone[key], atol=1e-5, rtol=0):
                    mismatches.append(key)
        except BaseException as exc:  # a thread's exception would only warn: collect it, so the test fails
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert not mismatches


def test_engine_requests_from_many_threads_match_their_answers_alone():
    base = tiny_base("llama")
    pm = PromptedModel(base)
    units = _units(base)
    prepared = _prepared(units)
    with torch.no_grad():
        alone = [class_logits(pm, units, [p])[0] for p in prepared]
    results = {}
    with Engine(pm, max_batch_rows=4) as engine:
        entries = register_units(engine, units)

        def client(i):
            results[i] = engine.submit_score(entries[prepared[i].key], prepared[i].item).result()

        threads = [threading.Thread(target=client, args=(i,)) for i in range(len(prepared))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    for i, expected in enumerate(alone):
        torch.testing.assert_close(results[i], expected.float(), atol=1e-5, rtol=0)


def test_an_attention_implementation_without_prefixes_is_refused_when_a_deep_prompt_is_attached():
    base = tiny_base("llama")
    base.model.config._attn_implementation_internal = "flash_attention_2"
    info = base.info
    deep = {"decoder": torch.zeros(info.num_layers, 2, info.num_kv_heads, 2, info.head_dim)}
    with Engine(base) as engine:
        with pytest.raises(ConfigError, match="flash_attention_2.*sdpa"):
            engine.add_prompt("deep", PromptTensors(deep=deep))
        engine.add_prompt("input", PromptTensors(input=torch.zeros(2, info.hidden_size)))  # input prompts still fine


# ---- decoding -------------------------------------------------------------------------------------

def _gen_engine(**options):
    pm = PromptedModel(tiny_base("llama"))
    tok = pm.base.tokenizer
    engine = Engine(pm, **options)
    g = torch.Generator().manual_seed(5)
    engine.add_prompt("p", PromptTensors(input=torch.randn(2, pm.info.hidden_size, generator=g)))
    rows = [[virtual(0), virtual(1)] + tok(t).input_ids for t in TEXTS]
    return engine, rows


def test_a_seed_gives_the_same_text_and_rows_keep_their_settings_in_one_batch():
    engine, rows = _gen_engine()
    passes = []
    engine.add_hook("pass", lambda kind, n, tokens: passes.append((kind, n)))
    with engine:
        sample = SamplingParams(max_new_tokens=8, temperature=1.3, top_k=20, top_p=0.9, seed=123, ignore_eos=True)
        greedy = SamplingParams(max_new_tokens=8, ignore_eos=True)
        alone = [engine.submit_generate("p", rows[0], sample).result().token_ids,
                 engine.submit_generate("p", rows[1], greedy).result().token_ids]
        passes.clear()
        together = engine.submit_generates([("p", rows[0], sample), ("p", rows[1], greedy),
                                            ("p", rows[2], SamplingParams(max_new_tokens=5, temperature=2.0, seed=9))])
        together = [h.result().token_ids for h in together]
        assert passes[0] == ("prefill", 3)  # one batch: the three rows' prompts in one pass ...
        assert ("decode", 3) in passes  # ... and their tokens decoded in shared steps
        other_seed = engine.submit_generate("p", rows[0], SamplingParams(
            max_new_tokens=8, temperature=1.3, top_k=20, top_p=0.9, seed=124, ignore_eos=True)).result().token_ids
        top1 = engine.submit_generate("p", rows[1], SamplingParams(max_new_tokens=8, temperature=1.0, top_k=1,
                                                                   seed=1, ignore_eos=True)).result().token_ids
    assert together[:2] == alone
    assert len(together[2]) <= 5
    assert other_seed != alone[0]
    assert top1 == alone[1]  # top_k=1 sampling is greedy


def test_logprobs_are_the_raw_distributions_chosen_and_top_tokens_in_a_mixed_batch():
    engine, rows = _gen_engine()
    with engine:
        plain = SamplingParams(max_new_tokens=6, ignore_eos=True)
        sampled = SamplingParams(max_new_tokens=6, temperature=1.5, seed=3, ignore_eos=True)
        alone = [engine.submit_generate("p", rows[0], plain).result().token_ids,
                 engine.submit_generate("p", rows[1], sampled).result().token_ids]
        asked = [SamplingParams(max_new_tokens=6, ignore_eos=True, logprobs=3, return_logits=True),
                 SamplingParams(max_new_tokens=6, temperature=1.5, seed=3, ignore_eos=True, logprobs=0,
                                return_logits=True)]
        handles = engine.submit_generates([("p", rows[0], asked[0]), ("p", rows[1], asked[1]),
                                           ("p", rows[2], plain)])
        results = [h.result() for h in handles]
    assert [r.token_ids for r in results[:2]] == alone  # asking for log-probabilities changes no token
    assert results[2].logprobs is None
    for result, k in zip(results[:2], (3, 0)):
        assert len(result.logprobs) == len(result.token_ids) == 6
        # the kept logits of a sampled row are divided by its temperature (1.5, no filtering); its
        # log-probabilities are the model's own distribution, before temperature
        scale = 1.5 if result is results[1] else 1.0
        logp = torch.log_softmax(result.logits.float() * scale, -1)
        for t, (token, (chosen, top)) in enumerate(zip(result.token_ids, result.logprobs)):
            assert chosen == pytest.approx(float(logp[t, token]), abs=1e-5)
            values, ids = logp[t].topk(k)
            assert [i for i, _ in top] == ids.tolist()
            assert [v for _, v in top] == pytest.approx(values.tolist(), abs=1e-5)
    with pytest.raises(ConfigError, match="logprobs"):
        SamplingParams(logprobs=2, num_beams=2)


def test_logit_processing_matches_transformers_processors():
    from transformers import (RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper, TopKLogitsWarper,
                              TopPLogitsWarper)

    from softprompt.engine.sampling import process_logits

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 50, generator=g) * 3
    seen = [[1, 4, 4, 9], [], [2]]
    params = [SamplingParams(temperature=0.7, top_k=10, top_p=0.8, repetition_penalty=1.3),
              SamplingParams(temperature=1.5, top_p=0.5), SamplingParams(repetition_penalty=0.8)]
    got = process_logits(logits.clone(), params, seen)
    for r, p in enumerate(params):
        expected = logits[r: r + 1].clone()
        ids = torch.tensor([seen[r] or [0]])
        if p.repetition_penalty != 1.0:
            expected = RepetitionPenaltyLogitsProcessor(p.repetition_penalty)(ids, expected)
        if p.sampling:
            expected = TemperatureLogitsWarper(p.temperature)(ids, expected)
            if p.top_k:
                expected = TopKLogitsWarper(p.top_k)(ids, expected)
            if p.top_p < 1:
                expected = TopPLogitsWarper(p.top_p)(ids, expected)
        assert torch.equal(torch.isinf(got[r]), torch.isinf(expected[0]))
        keep = ~torch.isinf(expected[0])
        torch.testing.assert_close(got[r][keep], expected[0][keep])


def test_stop_strings_stop_tokens_and_streaming():
    engine, rows = _gen_engine()
    with engine:
        free = engine.submit_generate("p", rows[3], SamplingParams(max_new_tokens=12, ignore_eos=True)).result()
        words = free.text.split()
        assert len(words) >= 4
        stop = " ".join(words[2:4])
        stopped = engine.submit_generate("p", rows[3], SamplingParams(max_new_tokens=12, ignore_eos=True, stop=[stop]))
        stream = engine.submit_generate("p", rows[3], SamplingParams(max_new_tokens=12, ignore_eos=True, stop=[stop]),
                                        stream=True)
        pieces = list(stream)
        by_token = engine.submit_generate("p", rows[3], SamplingParams(
            max_new_tokens=12, ignore_eos=True, stop_token_ids=[free.token_ids[1]])).result()
    result = stopped.result()
    assert result.finish_reason == "stop" and stop not in result.text
    assert free.text.startswith(result.text) and len(result.text) < len(free.text)
    assert "".join(pieces) == stream.result().text == result.text
    assert len(pieces) >= 2  # streamed as it was decoded, not in one piece
    assert by_token.token_ids == free.token_ids[:1] and by_token.finish_reason == "stop"


def test_rows_join_between_steps_and_leave_when_they_finish():
    engine, rows = _gen_engine(max_running=8)
    passes = []
    engine.add_hook("pass", lambda kind, n, tokens: passes.append((kind, n)))
    long_params = SamplingParams(max_new_tokens=30, ignore_eos=True)
    with engine:
        alone = engine.submit_generate("p", rows[0], long_params).result().token_ids
        short_alone = engine.submit_generate("p", rows[1], SamplingParams(max_new_tokens=3, ignore_eos=True)).result()
        passes.clear()
        first = engine.submit_generate("p", rows[0], long_params, stream=True)
        seen = iter(first)
        next(seen)  # the long request is decoding: the next one joins it mid-flight
        second = engine.submit_generate("p", rows[1], SamplingParams(max_new_tokens=3, ignore_eos=True))
        assert second.result().token_ids == short_alone.token_ids
        assert first.result().token_ids == alone
    decode_rows = [n for kind, n in passes if kind == "decode"]
    assert 2 in decode_rows  # shared decoding steps
    assert decode_rows[-1] == 1  # the short one left as soon as it finished
    assert engine.running() == 0


def test_cancel_frees_the_rows_and_a_full_queue_is_refused():
    engine, rows = _gen_engine(max_queue=2)
    with engine:
        handle = engine.submit_generate("p", rows[0], SamplingParams(max_new_tokens=500, ignore_eos=True),
                                        stream=True)
        next(iter(handle))
        handle.cancel()
        result = handle.result(timeout=60)
        assert result.finish_reason == "cancelled" and len(result.token_ids) < 500
        blocker = threading.Event()
        engine.add_hook("pass", lambda *a: blocker.wait(10))  # hold the worker so requests pile up
        waiting = []
        with pytest.raises(EngineBusy, match="queue is full"):
            for _ in range(10):
                waiting.append(engine.submit_generate("p", rows[1], SamplingParams(max_new_tokens=2)))
        assert len(waiting) <= 2 + 1  # the queue's two, and at most one the held worker took
        blocker.set()
        for h in waiting:
            h.result(timeout=60)
    assert engine.running() == 0


def test_generate_and_stream_from_a_prompt_file(tmp_path):
    import softprompt
    from serving import GENERATION, METHODS, make_prompt

    base = tiny_base("llama")
    path = make_prompt(base, tmp_path / "g.safetensors", METHODS["prefix_tuning"], GENERATION)
    loaded = softprompt.load_prompt(path, base)
    results = softprompt.generate(loaded, ["a warm film", "the plot is dull"], max_new_tokens=6, ignore_eos=True)
    assert [len(r.token_ids) for r in results] == [6, 6]
    pieces = list(softprompt.stream(loaded, "a warm film", max_new_tokens=6, ignore_eos=True))
    assert "".join(pieces) == results[0].text
    sampled = [softprompt.generate(loaded, ["great"], max_new_tokens=8, temperature=1.0, seed=3)[0].text for _ in range(2)]
    assert sampled[0] == sampled[1]
    classifier = make_prompt(base, tmp_path / "c.safetensors", METHODS["prompt_tuning"],
                             {"kind": "classification", "labels": ["a", "b"], "template": "{text} it was {mask}",
                              "verbalizer": {"a": "good", "b": "bad"}})
    with pytest.raises(ConfigError, match="classification prompt"):
        softprompt.generate(softprompt.load_prompt(classifier, base), ["x"])
