"""The half of the engine that decides: the queue, the budgets of each pass, every request's state.

It runs no model. Each iteration the worker asks it for a `Plan` (the waiting requests that start
now) and tells it when a request ends (`finish`, the one place a request reaches a final state).
The queue and the set of running requests are read and written under one lock, so the queue cap
(EngineBusy) and `depth()` never miss requests on their way in.

The policy is age order (the order of submission; one submit call's requests are contiguous),
with overtaking bounded by a count:
- A pass over new rows takes waiting requests oldest first while its caps on rows and padded
  tokens allow; the first request that does not fit ends the pass.
- A generation request also needs decoding rows free (max_running). One that finds too few waits
  at the head of the queue; younger requests that need no decoding rows (scoring) may still join
  passes past it, but only MAX_OVERTAKES passes in all. After that it blocks the queue until rows
  free, which they do within the longest remaining token budget of those decoding, so no request
  is overtaken without bound. Unbounded overtaking is what starved generation before: scoring
  rows need no decoding rows, so under load they joined every pass while generation requests,
  waiting for rows, were overtaken again and again (200 closed-loop clients: scoring answered in
  seconds, generation in over a minute, past 3x the FIFO wait). Strict age order (no overtaking
  at all) fixed that but left the pass over new rows idle whenever the head waited for rows, and
  cost 12% of the requests answered in the same run; the bounded count keeps those passes busy.
- A younger generation never passes an older one waiting for rows.
Nothing here reads a clock: the passes that requests queued together form depend only on the
queue's contents, which is what makes results independent of submission timing.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from ..errors import SoftpromptError
from .requests import GenerationResult, Request, RequestState


class EngineBusy(SoftpromptError):
    """The engine's queue is full: try again later."""


class EngineClosed(SoftpromptError):
    """The engine has stopped taking requests."""


@dataclass
class Plan:
    """What starts in the next iteration: requests for one pass over new rows (scoring, and new
    generation rows of the slot decoder), and generation requests that form a new cohort."""

    prefill: list[Request] = field(default_factory=list)
    cohort: list[Request] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.prefill or self.cohort)


MAX_OVERTAKES = 8  # passes younger scoring requests may join past a generation waiting for decoding rows


class Scheduler:
    """The queue and the admission policy of one engine (see the module docstring)."""

    def __init__(self, max_batch_rows: int, max_batch_tokens: int, max_running: int, max_queue: int,
                 stats: dict | None = None):
        self.max_batch_rows = max_batch_rows
        self.max_batch_tokens = max_batch_tokens
        self.max_running = max_running
        self.max_queue = max_queue
        self.lock = threading.Condition()
        self._waiting: deque[Request] = deque()
        self._running: set[Request] = set()  # admitted and not yet final
        self.closing = False
        self.high_water = 0  # the most requests ever waiting at once, recorded under the lock
        self.stats = stats if stats is not None else {}

    # ---- the caller's side ------------------------------------------------------------------------
    def put(self, requests: list[Request], start_worker: Callable[[], None]) -> None:
        """Queue requests (all or none), or raise EngineClosed / EngineBusy."""
        with self.lock:
            if self.closing:
                raise EngineClosed("the engine is shutting down and takes no new requests")
            if self.max_queue and len(self._waiting) + len(requests) > self.max_queue:
                raise EngineBusy(f"the queue is full ({self.max_queue} waiting requests)")
            self._waiting.extend(requests)
            self.high_water = max(self.high_water, len(self._waiting))
            self.stats["queue_high_water"] = self.high_water
            start_worker()
            self.lock.notify()

    def depth(self) -> int:
        with self.lock:
            return len(self._waiting)

    def close(self) -> None:
        with self.lock:
            self.closing = True
            self.lock.notify()

    # ---- the worker's side ------------------------------------------------------------------------
    def wait_for_work(self, busy: Callable[[], bool]) -> bool:
        """Block until there is something to do; False once closed with nothing left."""
        with self.lock:
            while not self._waiting and not busy():
                if self.closing:
                    return False
                self.lock.wait()
            return True

    def schedule(self, free_rows: int, slot_path: bool) -> Plan:
        """The requests that start now, oldest first (see the module docstring), moved from waiting to
        running. free_rows: decoding rows free; slot_path: generation joins the pass over new rows
        (else it forms a cohort of its own)."""
        plan = Plan()
        rows = width = cohort_rows = 0
        cancelled = []
        with self.lock:
            blocked: list[Request] = []  # older generations waiting for decoding rows, passed over
            i = 0
            while i < len(self._waiting):
                request = self._waiting[i]
                if request.cancelled:
                    del self._waiting[i]
                    self._end(request, RequestState.CANCELLED)
                    cancelled.append(request)
                    continue
                need = request.slot_rows
                # one needing more rows than max_running at all runs when nothing else decodes
                if need and (blocked or (need > free_rows and free_rows < self.max_running)):
                    if any(b.overtaken >= MAX_OVERTAKES for b in blocked + [request]):
                        break  # it has been passed over enough: the queue waits with it
                    blocked.append(request)
                    i += 1
                    continue
                if request.generates and not slot_path:
                    if plan.cohort and cohort_rows + need > self.max_batch_rows:
                        break
                    plan.cohort.append(request)
                    cohort_rows += need
                else:
                    n, wide = len(request.rows), max(width, request.length)
                    if plan.prefill and (rows + n > self.max_batch_rows or wide * (rows + n) > self.max_batch_tokens):
                        break
                    plan.prefill.append(request)
                    rows, width = rows + n, wide
                free_rows -= need
                del self._waiting[i]
                request.state = RequestState.RUNNING
                self._running.add(request)
            if plan:
                for request in blocked:
                    request.overtaken += 1
        for request in cancelled:
            self._settle(request, GenerationResult("", [], "cancelled", request.length), None)
        return plan

    def finish(self, request: Request, *, value=None, exc: BaseException | None = None, cancelled: bool = False) -> None:
        """The one way a request ends: its final state, then its Future (once; later calls do nothing).
        A cancelled generation's value is what it decoded before (nothing, if it never started)."""
        if cancelled:
            state = RequestState.CANCELLED
            value = value if value is not None else GenerationResult("", [], "cancelled", request.length)
        else:
            state = RequestState.FAILED if exc is not None else RequestState.FINISHED
        with self.lock:
            if request.state.is_finished():
                return
            self._end(request, state)
        self._settle(request, value, exc)

    def fail_running(self, exc: BaseException) -> None:
        """Every running request ends with exc (the worker lost track of what was in flight)."""
        with self.lock:
            running = list(self._running)
        for request in running:
            self.finish(request, exc=exc)

    def fail_waiting(self, exc: BaseException) -> None:
        """Every waiting request ends with exc (the worker is leaving)."""
        with self.lock:
            waiting, self._waiting = list(self._waiting), deque()
            self.closing = True
        for request in waiting:
            self.finish(request, exc=exc)

    def _end(self, request: Request, state: RequestState) -> None:
        request.state = state  # under the lock
        self._running.discard(request)

    @staticmethod
    def _settle(request: Request, value, exc: BaseException | None) -> None:
        """Resolve the caller's Future outside the lock (its callbacks are the caller's code)."""
        if not request.future.done():
            try:
                if exc is not None:
                    request.future.set_exception(exc)
                else:
                    request.future.set_result(value)
            except Exception:  # the caller cancelled it a moment ago (InvalidStateError)
                pass
        if request.handle is not None:
            request.handle._close()
