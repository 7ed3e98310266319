"""How each generation row picks its next token: greedy, sampling or beam search, per row.

Rows of one decoding step may each have their own settings (temperature, top-k, top-p, repetition
penalty, seed, stop tokens and strings, budget). Settings shared by many rows are applied to all
of them at once; sampling draws each row's uniform number from that row's own seeded generator on
the host, so a seed gives the same text whatever else shares the batch, and one step costs one
transfer from the device, not one per row.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import ConfigError


@dataclass
class SamplingParams:
    """How one request is decoded (OpenAI-style names where there is one)."""

    max_new_tokens: int = 64
    temperature: float = 0.0  # 0: greedy; > 0: sample from softmax(logits / temperature)
    top_k: int = 0  # keep the k most likely tokens (0: all)
    top_p: float = 1.0  # keep the smallest set of tokens whose probability reaches top_p
    repetition_penalty: float = 1.0  # > 1 discourages tokens already in the row (as transformers does)
    seed: int | None = None  # sampling: the same seed gives the same text
    num_beams: int = 1  # > 1: beam search (greedy within beams; temperature must be 0)
    length_penalty: float = 1.0  # beam search ranks finished outputs by log-probability / length ** this
    stop: tuple[str, ...] = ()  # stop strings: the text ends before the first one found
    stop_token_ids: tuple[int, ...] = ()  # tokens that end a row (besides the end-of-sequence token)
    ignore_eos: bool = False  # keep going past the end-of-sequence token
    return_logits: bool = False  # keep each step's logits (T, V) in the result
    # keep each new token's log-probability and the k most likely tokens' (k = this; None: none), read
    # from the model's distribution before temperature and filtering, as OpenAI and vLLM report them
    logprobs: int | None = None

    def __post_init__(self):
        self.stop = tuple([self.stop] if isinstance(self.stop, str) else (self.stop or ()))
        self.stop_token_ids = tuple(int(t) for t in (self.stop_token_ids or ()))
        checks = [
            (isinstance(self.max_new_tokens, int) and self.max_new_tokens >= 1, "max_new_tokens must be a whole number >= 1"),
            (self.temperature >= 0, "temperature must be >= 0"),
            (isinstance(self.top_k, int) and self.top_k >= 0, "top_k must be a whole number >= 0"),
            (0 < self.top_p <= 1, "top_p must be in (0, 1]"),
            (self.repetition_penalty > 0, "repetition_penalty must be > 0"),
            (isinstance(self.num_beams, int) and self.num_beams >= 1, "num_beams must be a whole number >= 1"),
            (self.num_beams == 1 or self.temperature == 0, "beam search does not sample: set temperature=0"),
            (all(s for s in self.stop), "stop strings must not be empty"),
            (self.logprobs is None or (isinstance(self.logprobs, int) and self.logprobs >= 0),
             "logprobs must be a whole number >= 0"),
            (self.logprobs is None or self.num_beams == 1, "logprobs are kept for one row: not with beam search"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"sampling: {message}")

    @property
    def sampling(self) -> bool:
        return self.temperature > 0


def process_logits(logits: torch.Tensor, params: list[SamplingParams], seen: list[list[int]]) -> torch.Tensor:
    """Logits (R, V) after each row's repetition penalty, temperature, top-k and top-p (float32).

    Rows whose settings change nothing are left as they are; filtered tokens get -inf."""
    logits = logits.float()
    for r, p in enumerate(params):
        if p.repetition_penalty != 1.0 and seen[r]:
            index = torch.tensor(sorted(set(seen[r])), device=logits.device)
            picked = logits[r, index]
            logits[r, index] = torch.where(picked > 0, picked / p.repetition_penalty, picked * p.repetition_penalty)
    sampled = [r for r, p in enumerate(params) if p.sampling]
    if not sampled:
        return logits
    rows = torch.tensor(sampled, device=logits.device)
    temps = torch.tensor([params[r].temperature for r in sampled], device=logits.device)[:, None]
    part = logits[rows] / temps
    top_k = [params[r].top_k for r in sampled]
    top_p = [params[r].top_p for r in sampled]
    if any(k > 0 for k in top_k) or any(p < 1 for p in top_p):
        ordered, order = part.sort(dim=-1, descending=True)
        vocab = part.shape[-1]
        ks = torch.tensor([k if k > 0 else vocab for k in top_k], device=part.device)[:, None]
        drop = torch.arange(vocab, device=part.device)[None, :] >= ks
        ps = torch.tensor(top_p, device=part.device)[:, None]
        probs = torch.softmax(ordered.masked_fill(drop, float("-inf")), dim=-1)
        # drop a token when the tokens before it already reach top_p (the first one always stays)
        drop |= (probs.cumsum(-1) - probs) >= ps
        ordered = ordered.masked_fill(drop, float("-inf"))
        part = torch.full_like(part, float("-inf")).scatter(-1, order, ordered)
    logits[rows] = part
    return logits


def token_logprobs(logits: torch.Tensor, tokens: list[int], ks: list[int]) -> list[tuple[float, list[tuple[int, float]]]]:
    """Each row's chosen token's log-probability and its ks[r] most likely (token, log-probability),
    from raw logits (R, V): computed on the device, read back in one transfer."""
    logp = torch.log_softmax(logits.float(), -1)
    chosen = logp.gather(1, torch.tensor(tokens, device=logp.device)[:, None]).squeeze(1)
    top, ids = logp.topk(min(max(ks), logp.shape[-1]), dim=-1)
    chosen, top, ids = chosen.tolist(), top.tolist(), ids.tolist()
    return [(chosen[r], list(zip(ids[r][:k], top[r][:k]))) for r, k in enumerate(ks)]


def choose(logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator | None]) -> list[int]:
    """Each row's next token from processed logits (R, V): argmax, or a draw from its own generator."""
    greedy = logits.argmax(-1)
    sampled = [r for r, p in enumerate(params) if p.sampling]
    if sampled:
        rows = torch.tensor(sampled, device=logits.device)
        probs = torch.softmax(logits[rows], dim=-1)
        uniform = torch.tensor([float(torch.rand((), generator=generators[r])) for r in sampled],
                               device=logits.device, dtype=probs.dtype)
        cdf = probs.cumsum(-1)
        picks = torch.searchsorted(cdf, (uniform * cdf[:, -1])[:, None]).squeeze(1).clamp(max=probs.shape[-1] - 1)
        greedy = greedy.clone()
        greedy[rows] = picks
    return greedy.tolist()


def generator_for(params: SamplingParams, offset: int = 0) -> torch.Generator | None:
    """The host generator a sampling row draws from: seeded (seed + offset, e.g. the n-th choice) or fresh."""
    if not params.sampling:
        return None
    generator = torch.Generator()
    if params.seed is not None:
        generator.manual_seed(int(params.seed) + offset)
    else:
        generator.seed()
    return generator


@dataclass
class BeamSearch:
    """Beam search over k rows of one request: finished hypotheses are ranked by score / length **
    length_penalty; the search stops once it holds k finished ones and no live beam can beat the worst."""

    k: int
    max_new_tokens: int
    length_penalty: float
    stop_ids: frozenset
    scores: torch.Tensor = field(init=False)
    sequences: list[list[int]] = field(init=False)
    finished: list[tuple[float, float, list[int]]] = field(default_factory=list)  # (ranked, sum, tokens)
    done: bool = False

    def __post_init__(self):
        self.scores = torch.full((self.k,), float("-inf"))
        self.scores[0] = 0.0  # the k copies of a row start as one beam
        self.sequences = [[] for _ in range(self.k)]

    def _ranked(self, total: float, length: int) -> float:
        return total / max(length, 1) ** self.length_penalty

    def advance(self, logits: torch.Tensor, t: int) -> tuple[list[int], list[int]]:
        """From the beams' next-token logits (k, V) at step t: each beam's new token and the beam it
        continues (parents), keeping the k best live candidates."""
        logp = torch.log_softmax(logits.float(), -1).cpu()
        vocab = logp.shape[-1]
        total = (self.scores[:, None] + logp).view(-1)
        best, index = total.topk(min(2 * self.k, self.k * vocab))
        kept = []
        for value, flat in zip(best.tolist(), index.tolist()):
            beam, word = divmod(flat, vocab)
            if value == float("-inf") or len(kept) == self.k:
                break
            if word in self.stop_ids:
                self.finished.append((self._ranked(value, t + 1), value, self.sequences[beam]))
                continue
            kept.append((beam, word, value))
        filler = next(iter(self.stop_ids), 0)
        while len(kept) < self.k:  # fewer live candidates than beams: pad with dead copies
            kept.append((kept[0][0] if kept else 0, filler, float("-inf")))
        self.sequences = [self.sequences[b] + [w] for b, w, _ in kept]
        self.scores = torch.tensor([v for _, _, v in kept])
        if len(self.finished) >= self.k:
            worst = sorted(f[0] for f in self.finished)[-self.k]
            live = max(v for _, _, v in kept)
            # log-probabilities only fall, so a live beam's best possible ranked score is now
            length = t + 1 if self.length_penalty <= 0 else self.max_new_tokens
            self.done = live == float("-inf") or self._ranked(live, length) <= worst
        if t + 1 >= self.max_new_tokens:
            self.done = True
        return [w for _, w, _ in kept], [b for b, _, _ in kept]

    def best(self) -> tuple[list[int], float]:
        """The best sequence (without its end token) and its summed log-probability."""
        pool = list(self.finished)
        for j in range(self.k):
            if self.scores[j] > float("-inf"):
                pool.append((self._ranked(float(self.scores[j]), len(self.sequences[j])), float(self.scores[j]),
                             self.sequences[j]))
        _, total, tokens = max(pool, key=lambda f: f[0])
        return tokens, total
