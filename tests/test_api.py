"""The Python API keeps one engine per loaded base model: later generate and stream calls reuse it
(and its compiled prompts) and give what a fresh engine gives."""

import gc

import softprompt
from softprompt import api
from softprompt.engine import Engine
from softprompt.tasks.runner import register_units
from serving import GENERATION, METHODS, make_prompt
from tiny import tiny_base


def _fresh(loaded, texts, **sampling):
    """What api.generate gave before it kept an engine: a new engine for the call."""
    task = loaded.unit.task
    rows = [task.prepare(task.unlabelled(t, "input")).prefix for t in texts]
    with Engine(loaded.base) as engine:
        entry = register_units(engine, {"p": loaded.unit})["p"]
        return [h.result().text for h in engine.submit_generates([(entry, r, task.sampling(**sampling)) for r in rows])]


def test_generate_calls_on_one_base_share_one_engine_and_answer_as_a_fresh_one(tmp_path):
    base = tiny_base("llama")
    loaded = softprompt.load_prompt(make_prompt(base, tmp_path / "g.safetensors", METHODS["prefix_tuning"], GENERATION),
                                    base)
    texts = ["a warm film", "the plot is dull"]
    engine = api.engine_of(base)
    passes = []
    engine.add_hook("pass", lambda *args: passes.append(args))
    first = [r.text for r in api.generate(loaded, texts, max_new_tokens=6, ignore_eos=True)]
    after_first = len(passes)
    assert after_first > 0  # the first call decoded on this engine
    second = [r.text for r in api.generate(loaded, texts, max_new_tokens=6, ignore_eos=True)]
    streamed = "".join(api.stream(loaded, texts[0], max_new_tokens=6, ignore_eos=True))
    assert api.engine_of(base) is engine and len(passes) > after_first  # the same engine decoded them
    assert first == second == _fresh(loaded, texts, max_new_tokens=6, ignore_eos=True)
    assert streamed == first[0]
    assert len([k for k in engine.prompts if k.startswith("api:")]) == 1  # registered once, not per call


def test_a_reloaded_prompt_is_registered_anew_and_a_dropped_one_leaves_the_engine(tmp_path):
    base = tiny_base("gpt2")
    path = make_prompt(base, tmp_path / "g.safetensors", METHODS["prompt_tuning"], GENERATION)
    one = softprompt.load_prompt(path, base)
    api.generate(one, ["great"], max_new_tokens=3)
    engine = api.engine_of(base)
    two = softprompt.load_prompt(path, base)
    api.generate(two, ["great"], max_new_tokens=3)
    assert len([k for k in engine.prompts if k.startswith("api:")]) == 2
    del one
    gc.collect()
    assert len([k for k in engine.prompts if k.startswith("api:")]) == 1
    api.close_engines()
    assert api.engine_of(base) is not engine  # closed and dropped: the next call makes a new one
    api.close_engines()
