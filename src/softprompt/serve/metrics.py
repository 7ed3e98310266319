"""Prometheus metrics of one server, in a registry of its own (several servers in one process, as in
tests, never share counters). Labels come from bounded sets only: routes and loaded prompt names;
a replica of a replicated server (serve/ray.py) adds its own name to every sample (`const_labels`)."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384)


class ServerMetrics:
    def __init__(self, prompts, const_labels: dict[str, str] | None = None):
        self.prompts = prompts
        self.const_labels = dict(const_labels or {})  # on every sample rendered, e.g. {"replica": ...}
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("softprompt_requests", "HTTP requests by route, prompt and status.",
                                ["route", "prompt", "status"], registry=r)
        self.errors = Counter("softprompt_request_errors", "HTTP requests answered with an error (status >= 400).",
                              ["route", "prompt", "status"], registry=r)
        self.latency = Histogram("softprompt_request_seconds", "Time to answer (to the first byte of a stream).",
                                 ["route"], buckets=LATENCY, registry=r)
        self.queue_seconds = Histogram("softprompt_queue_seconds", "Time a request waited before its first pass.",
                                       ["kind"], buckets=LATENCY, registry=r)
        self.batch_rows = Histogram("softprompt_batch_rows", "Rows per forward pass.", ["pass"], buckets=SIZES,
                                    registry=r)
        self.batch_tokens = Histogram("softprompt_batch_tokens", "Token positions per forward pass (padding included).",
                                      ["pass"], buckets=SIZES, registry=r)
        self.tokens = Counter("softprompt_generated_tokens", "Tokens generated.", ["prompt"], registry=r)
        engine = prompts.engine
        Gauge("softprompt_queue_depth", "Requests waiting for their first pass.", registry=r).set_function(
            engine.queue_depth)
        Gauge("softprompt_running_rows", "Generation rows being decoded.", registry=r).set_function(engine.running)
        self.loaded = Gauge("softprompt_prompts_loaded", "Prompts being served.", registry=r)
        self.prompts_changed()

    def _prompt(self, name: str | None) -> str:
        return name if name is not None and name in self.prompts.names() else "none"

    def request(self, route: str, prompt: str | None, status: int, seconds: float) -> None:
        prompt = self._prompt(prompt)
        self.requests.labels(route, prompt, str(status)).inc()
        if status >= 400:
            self.errors.labels(route, prompt, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def on_pass(self, kind: str, rows: int, tokens: int) -> None:
        self.batch_rows.labels(kind).observe(rows)
        self.batch_tokens.labels(kind).observe(tokens)

    def on_admit(self, kind: str, seconds: float) -> None:
        self.queue_seconds.labels(kind).observe(seconds)

    def generated(self, prompt: str, count: int) -> None:
        self.tokens.labels(self._prompt(prompt)).inc(count)

    def prompts_changed(self) -> None:
        self.loaded.set(len(self.prompts.names()))

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self if self.const_labels else self.registry), CONTENT_TYPE_LATEST

    def collect(self):
        """The registry's metric families with const_labels added to every sample (what render reads)."""
        for family in self.registry.collect():
            family.samples = [s._replace(labels={**self.const_labels, **s.labels}) for s in family.samples]
            yield family
