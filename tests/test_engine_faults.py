"""The engine never strands a request: a failure at each point it can happen (slot admission, prompt
compilation, an admit hook, the iteration itself, a streaming consumer) ends the requests it concerns
with the error within a second, every other request completes, and the engine serves the next one.
Also: the queue cap holds under many submitting threads, and the oldest request is never overtaken
without bound."""

import threading
import time

import pytest
import torch

from softprompt.core import PromptedModel
from softprompt.engine import Engine, EngineBusy, RequestState, SamplingParams
from softprompt.engine.scheduler import MAX_OVERTAKES
from softprompt.tasks.runner import register_units
from test_engine import _gen_engine, _prepared, _units
from tiny import tiny_base

LONG = SamplingParams(max_new_tokens=40, ignore_eos=True)
SHORT = SamplingParams(max_new_tokens=4, ignore_eos=True)


def _fails_with(future_or_handle, error: type, match: str):
    """The request ended with the injected error within a second (not a hang, not another error)."""
    with pytest.raises(error, match=match):
        future_or_handle.result(timeout=1.0)


def test_out_of_memory_admitting_new_rows_fails_only_those_rows():
    engine, rows = _gen_engine()
    with engine:
        alone = engine.submit_generate("p", rows[0], LONG).result().token_ids
        running = engine.submit_generate("p", rows[0], LONG, stream=True)
        pieces = iter(running)
        next(pieces), next(pieces)  # the second piece comes from a decoding step: its rows are in the slots
        slots = engine._slots
        admit = slots.admit

        def out_of_memory(*args, **kwargs):
            slots.admit = admit  # once
            raise MemoryError("no room for the new rows' slots")

        slots.admit = out_of_memory
        new = engine.submit_generate("p", rows[1], SHORT)
        _fails_with(new, MemoryError, "no room")
        assert running.result(timeout=30).token_ids == alone  # the rows already decoding go on
        assert len(engine.submit_generate("p", rows[2], SHORT).result(timeout=30).token_ids) == 4
    assert engine.running() == 0


def test_a_prompt_that_fails_to_compile_fails_its_own_request(monkeypatch):
    base = tiny_base("llama")
    units = _units(base)
    prepared = _prepared(units)
    import softprompt.engine.runner as runner

    real = runner.compile_prompt
    calls = []

    def failing(pm, key, *args):
        calls.append(key)
        if len(calls) == 1:
            raise RuntimeError(f"cannot compile {key}")
        return real(pm, key, *args)

    monkeypatch.setattr(runner, "compile_prompt", failing)
    with Engine(PromptedModel(base)) as engine:
        entries = register_units(engine, units)
        compiled = [p for p in prepared if p.key == "pt"][0]
        other = [p for p in prepared if p.key == "mean"][0]  # mean pooling: never compiled
        futures = engine.submit_scores([(entries[compiled.key], compiled.item), (entries[other.key], other.item)])
        _fails_with(futures[0], RuntimeError, "cannot compile pt#")
        assert futures[1].result(timeout=30).shape == (2,)
        again = engine.submit_score(entries[compiled.key], compiled.item).result(timeout=30)  # compiled this time
        assert again.shape == (2,) and engine._compiled(entries[compiled.key]) is not None


def test_a_raising_admit_hook_is_ignored_and_a_failed_iteration_ends_its_requests():
    engine, rows = _gen_engine()
    with engine:
        engine.add_hook("admit", lambda kind, waited: 1 / 0)
        assert len(engine.submit_generate("p", rows[0], SHORT).result(timeout=30).token_ids) == 4
        run = engine.runner.run

        def broken(*args):  # an error the runner does not catch, after the scheduler admitted the requests
            engine.runner.run = run
            raise RuntimeError("iteration broke")

        engine.runner.run = broken
        handles = engine.submit_generates([("p", rows[1], SHORT), ("p", rows[2], SHORT)])
        for handle in handles:
            _fails_with(handle, RuntimeError, "iteration broke")
        assert [h.future.exception() is not None for h in handles] == [True, True]
        assert len(engine.submit_generate("p", rows[3], SHORT).result(timeout=30).token_ids) == 4


def test_a_raising_stream_consumer_fails_only_its_own_request():
    engine, rows = _gen_engine()
    params = SamplingParams(max_new_tokens=12, ignore_eos=True)
    with engine:
        alone = [engine.submit_generate("p", rows[i], params).result().text for i in range(3)]
        seen = []

        def consumer(delta):
            seen.append(delta)
            if len(seen) == 2:
                raise ConnectionError("the client went away")

        bad = engine.submit_generate("p", rows[0], params, on_delta=consumer)
        streamed = engine.submit_generate("p", rows[1], params, stream=True)
        plain = engine.submit_generate("p", rows[2], params)
        _fails_with(bad, ConnectionError, "went away")
        assert "".join(streamed) == alone[1] and streamed.result().text == alone[1]
        assert plain.result(timeout=30).text == alone[2]
        assert engine.submit_generate("p", rows[0], params).result(timeout=30).text == alone[0]
    assert len(seen) == 2  # no text after the consumer failed


def test_eight_threads_never_queue_more_than_max_queue():
    cap = 5
    engine, rows = _gen_engine(max_queue=cap)
    held, release = threading.Event(), threading.Event()

    def hold(*args):
        held.set()
        release.wait(30)

    with engine:
        engine.add_hook("pass", hold)
        first = engine.submit_generate("p", rows[0], SHORT)
        assert held.wait(30)  # the worker is inside a pass: nothing leaves the queue now
        accepted, refused, errors = [], [], []

        def client(k):
            try:
                for i in range(10):
                    try:
                        accepted.append(engine.submit_generate("p", rows[(k + i) % len(rows)], SHORT))
                    except EngineBusy:
                        refused.append(k)
                    assert engine.queue_depth() <= cap
            except BaseException as exc:  # collected: an error in a thread must fail the test
                errors.append(exc)

        threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
        try:
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        finally:
            release.set()
        assert not errors
        assert len(accepted) == cap and len(refused) == 80 - cap
        assert engine.scheduler.high_water <= cap and engine.stats["queue_high_water"] == cap  # counted inside
        for handle in [first, *accepted]:
            assert len(handle.result(timeout=60).token_ids) == 4


def test_the_oldest_request_is_not_overtaken_without_bound():
    """Requests start in age order whatever their kind, but for scoring requests that may join at most
    MAX_OVERTAKES passes past a generation waiting for decoding rows. A 2-beam generation (it needs
    both decoding rows) amid a stream of 1-row generations and scoring requests starts once the
    requests ahead of it have: in decoding steps from submission to result, at most (gens ahead /
    max_running + 2) x (N + 3) + MAX_OVERTAKES to start and N + 2 to finish. A scoring request waits at most N + 2 steps for each
    request ahead of it (a generation ahead may wait that long for decoding rows)."""
    n = 5
    base = tiny_base("llama")
    units = _units(base)
    prepared = _prepared(units)
    engine, rows = _gen_engine(max_running=2)
    steps = [0]
    engine.add_hook("pass", lambda kind, *a: steps.__setitem__(0, steps[0] + (kind == "decode")))
    stop, errors, scored = threading.Event(), [], []
    with engine:
        entries = register_units(engine, units)

        def feeder():  # keeps the queue full of younger requests, each budget different so rows free at odd times
            k = 0
            try:
                while not stop.is_set():
                    if engine.queue_depth() < 4:
                        k += 1
                        engine.submit_generate("p", rows[k % 5], SamplingParams(max_new_tokens=n - 1 + k % 3,
                                                                                ignore_eos=True))
                        p = prepared[k % len(prepared)]
                        ahead, at = engine.queue_depth(), steps[0]
                        future = engine.submit_score(entries[p.key], p.item)
                        future.add_done_callback(lambda f, at=at, ahead=ahead: scored.append((steps[0] - at, ahead)))
                    time.sleep(0.001)
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=feeder)
        thread.start()
        try:
            while steps[0] < 3 * n:  # the stream is under way
                time.sleep(0.01)
            probe = engine.submit_generate("p", rows[0], SamplingParams(max_new_tokens=n, num_beams=2, ignore_eos=True))
            at, ahead = steps[0], engine.queue_depth()
            bound = (ahead // 2 + 2) * (n + 3) + MAX_OVERTAKES + n + 2
            deadline = time.monotonic() + 60
            while not probe.done() and steps[0] - at <= bound and time.monotonic() < deadline:
                time.sleep(0.005)
            waited = steps[0] - at
        finally:
            stop.set()
            thread.join()
        assert probe.done() and waited <= bound, f"the 2-beam request waited {waited} steps (bound {bound})"
        assert probe.result().finish_reason == "length"
    assert not errors
    assert scored and all(taken <= (ahead + 1) * (n + 2) + 2 for taken, ahead in scored), max(scored)


def test_requests_queued_together_form_the_same_passes_whenever_they_arrive():
    """The same items queued in one call give bit-identical scores on an idle engine and on one whose
    worker was busy while they arrived: their passes do not depend on submission timing."""
    base = tiny_base("llama")
    units = _units(base)
    prepared = _prepared(units)
    pm = PromptedModel(base)
    results = []
    for busy in (False, True):
        with Engine(pm, max_batch_rows=3) as engine:
            entries = register_units(engine, units)
            held, release = threading.Event(), threading.Event()
            if busy:
                remove = engine.add_hook("pass", lambda *a: (held.set(), release.wait(30)))
                blocker = engine.submit_score(entries[prepared[0].key], prepared[0].item)
                assert held.wait(30)
            futures = engine.submit_scores([(entries[p.key], p.item) for p in prepared])
            if busy:
                remove()
                release.set()
                blocker.result(timeout=30)
            results.append([f.result(timeout=60) for f in futures])
    assert all(torch.equal(a, b) for a, b in zip(*results))


def test_every_request_ends_in_one_final_state():
    engine, rows = _gen_engine()
    with engine:
        done = engine.submit_generate("p", rows[0], SHORT)
        cancelled = engine.submit_generate("p", rows[1], SamplingParams(max_new_tokens=500, ignore_eos=True),
                                           stream=True)
        next(iter(cancelled))
        cancelled.cancel()
        assert done.result(timeout=30).finish_reason == "length"
        assert cancelled.result(timeout=30).finish_reason == "cancelled"
    assert RequestState.CANCELLED.is_finished() and not RequestState.RUNNING.is_finished()
    assert not engine.scheduler._running and engine.queue_depth() == 0

