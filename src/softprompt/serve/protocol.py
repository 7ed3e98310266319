"""Every request and response the server speaks, as pydantic models (FastAPI builds the OpenAPI schema
from them, and validation errors come from them).

The OpenAI-compatible routes follow OpenAI's field names and defaults (temperature 1, max_tokens 16);
`model` names a loaded prompt. top_k and repetition_penalty are accepted as vLLM accepts them.
Fields OpenAI has and softprompt does not implement are refused when set to a value that asks
something of them, and unknown fields are refused, both with a 400 naming the field (its path in a
nested body): never silently ignored, never a generic 422. Fields that change nothing in an answer
(user, metadata, store) are accepted.
The request models say what they ask of the engine (to_sampling_params); the stream chunks are typed
as the responses are.
"""

from __future__ import annotations

import json
from typing import ClassVar, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_serializer, model_validator

from ..engine import SamplingParams
from ..errors import SoftpromptError
from .errors import APIError


class _Request(BaseModel):
    """A request body: fields softprompt cannot honour and unknown fields are refused with a 400 that
    names them (a client must hear that an answer would not be what it asked for, never a generic 422)."""

    model_config = ConfigDict(extra="forbid")
    # fields (OpenAI's, or a value of one) softprompt does not implement, each with the values that ask
    # nothing of it: any other value is refused; one the model does not declare is dropped when harmless
    _unsupported: ClassVar[dict[str, tuple]] = {}
    _nested: ClassVar[dict[str, type["_Request"]]] = {}  # fields holding bodies of another model (or lists of them)

    @model_validator(mode="before")
    @classmethod
    def _honourable(cls, data):
        return cls._checked(data, "") if isinstance(data, dict) else data

    @classmethod
    def _checked(cls, data: dict, where: str) -> dict:
        """data without harmless undeclared fields; APIError (400, naming the field) for one it cannot honour."""
        kept = {}
        for name, value in sorted(data.items(), key=lambda item: item[0] not in cls._unsupported):
            path = f"{where}.{name}" if where else name
            if name in cls._unsupported:
                if not any(_same(value, harmless) for harmless in cls._unsupported[name]):
                    raise APIError(400, f"{path}={_short(value)} is not supported by softprompt serve", param=path,
                                   code="unsupported")
                if name not in cls.model_fields:
                    continue
            elif name not in cls.model_fields:
                raise APIError(400, f"unknown field {path!r} (fields: {', '.join(cls.model_fields)})", param=path,
                               code="unknown_field")
            nested = cls._nested.get(name)
            if nested is not None and isinstance(value, dict):
                value = nested._checked(value, path)
            elif nested is not None and isinstance(value, list):
                value = [nested._checked(v, f"{path}[{i}]") if isinstance(v, dict) else v for i, v in enumerate(value)]
            kept[name] = value
        return kept


def _same(value, harmless) -> bool:
    """value is harmless (True is not 1 here: best_of=true asks something, best_of=1 does not)."""
    return value == harmless and isinstance(value, bool) == isinstance(harmless, bool)


def _short(value) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# OpenAI fields of both completion routes that ask for what softprompt does not do
_NOT_IMPLEMENTED = {"presence_penalty": (None, 0), "frequency_penalty": (None, 0), "logit_bias": (None, {}),
                    "service_tier": (None, "auto", "default")}
# OpenAI chat fields for tools, structured or other-modality output, and reasoning models
_CHAT_ONLY = {"tools": (None, []), "tool_choice": (None, "none"), "parallel_tool_calls": (None,),
              "functions": (None, []), "function_call": (None, "none"), "response_format": (None, {"type": "text"}),
              "modalities": (None, ["text"]), "audio": (None,), "prediction": (None,), "reasoning_effort": (None,),
              "verbosity": (None,), "web_search_options": (None,)}


class StreamOptions(_Request):
    include_usage: bool = Field(False, description="Send a last chunk with the usage and no choices.")
    include_obfuscation: bool | None = Field(None, description="Accepted and ignored: chunks are never padded.")


class _Sampling(_Request):
    model: str = Field(min_length=1, description="The name of a loaded prompt (GET /v1/models).")
    max_tokens: int | None = Field(16, ge=1, description="New tokens at most (the server may cap it).")
    temperature: float = Field(1.0, ge=0.0, le=2.0, description="0 decodes greedily.")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0, description="Keep the k most likely tokens (0: all). vLLM's extension.")
    repetition_penalty: float = Field(1.0, gt=0.0, le=10.0, description="vLLM's extension.")
    n: int = Field(1, ge=1, le=16, description="Choices to generate (seed + i for choice i).")
    stream: bool = Field(False, description="Send the text as server-sent events as it is decoded.")
    stream_options: StreamOptions | None = None
    stop: Union[str, list[str], None] = Field(None, description="Up to 4 strings that end the text.")
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="The same seed gives the same text.")
    user: str | None = Field(None, description="Accepted and ignored, as an end-user id for logs.")
    metadata: dict[str, str] | None = Field(None, description="Accepted and ignored (changes nothing in an answer).")
    store: bool | None = Field(None, description="Accepted and ignored: nothing is stored.")
    # OpenAI fields softprompt does not implement: refused when given a value that asks something of them
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None

    _unsupported: ClassVar[dict[str, tuple]] = _NOT_IMPLEMENTED
    _nested: ClassVar[dict[str, type[_Request]]] = {"stream_options": StreamOptions}

    def _new_tokens(self) -> int | None:
        return self.max_tokens

    def top_logprobs_asked(self) -> int | None:
        """How many most likely tokens each token's log-probabilities come with (None: none asked)."""
        return None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    def to_sampling_params(self, max_tokens_limit: int) -> SamplingParams:
        """How the engine decodes this request; APIError (400, naming the field) for more than 4 stop
        strings or max_tokens over the server's limit."""
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stop) > 4 or any(not s for s in stop):
            raise APIError(400, "stop takes at most 4 non-empty strings", param="stop")
        tokens = self._new_tokens()
        tokens = tokens if tokens is not None else 16  # OpenAI's default
        if tokens > max_tokens_limit:
            raise APIError(400, f"max_tokens={tokens} is over this server's limit of {max_tokens_limit}",
                           param="max_tokens")
        try:
            return SamplingParams(max_new_tokens=tokens, temperature=self.temperature, top_p=self.top_p,
                                  top_k=self.top_k, repetition_penalty=self.repetition_penalty, seed=self.seed,
                                  stop=tuple(stop), logprobs=self.top_logprobs_asked())
        except SoftpromptError as exc:
            raise APIError(400, str(exc)) from None


class CompletionRequest(_Sampling):
    prompt: Union[str, list[str]] = Field(description="The input text (or several): it fills the prompt's template.")
    logprobs: int | None = Field(None, ge=0, le=20, description=(
        "Each token's log-probability with this many most likely tokens' (a classification prompt: every label's)."))
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = Field(None, ge=1)

    _unsupported: ClassVar[dict[str, tuple]] = {**_Sampling._unsupported, "echo": (False,), "suffix": (None,),
                                                "best_of": (None, 1)}

    def top_logprobs_asked(self) -> int | None:
        return self.logprobs

    def texts(self) -> list[str]:
        """The input texts (one choice set each)."""
        texts = [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)
        if not texts:
            raise APIError(400, "prompt must not be an empty list", param="prompt")
        return texts


class TextPart(_Request):
    """One part of a message's content: text (the only kind softprompt reads)."""

    type: Literal["text"]
    text: str

    _unsupported: ClassVar[dict[str, tuple]] = {"type": ("text",)}


class ChatMessage(_Request):
    role: Literal["system", "user", "assistant", "developer"]
    content: Union[str, list[TextPart]] = Field(description="The text, or a list of text parts (joined).")
    name: str | None = None

    _unsupported: ClassVar[dict[str, tuple]] = {
        "role": ("system", "user", "assistant", "developer"), "tool_calls": (None, []), "tool_call_id": (None,),
        "function_call": (None,), "refusal": (None,), "audio": (None,)}
    _nested: ClassVar[dict[str, type[_Request]]] = {"content": TextPart}

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = Field(None, description="Return each token's log-probability (a classification "
                                                    "prompt: its label's, with every label's).")
    top_logprobs: int | None = Field(None, ge=0, le=20, description="With logprobs: this many most likely tokens'.")

    _unsupported: ClassVar[dict[str, tuple]] = {**_Sampling._unsupported, **_CHAT_ONLY}
    _nested: ClassVar[dict[str, type[_Request]]] = {**_Sampling._nested, "messages": ChatMessage}

    def _new_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def top_logprobs_asked(self) -> int | None:
        if self.top_logprobs is not None and not self.logprobs:
            raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
        return (self.top_logprobs or 0) if self.logprobs else None

    def turns(self) -> list[dict[str, str]]:
        """The conversation as chat-template turns ({role, content}; OpenAI's developer role is the system's)."""
        return [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in self.messages]


# ---- log-probabilities, in OpenAI's two shapes ----------------------------------------------------------
class CompletionLogprobs(BaseModel):
    """The legacy completions' shape: per token its text, log-probability, most likely tokens and offset."""

    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[TokenLogprob]


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: Literal["stop", "length"] | None
    logprobs: CompletionLogprobs | None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class ChatResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: ChatResponseMessage
    finish_reason: Literal["stop", "length"] | None
    logprobs: ChatLogprobs | None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


# ---- stream chunks: one server-sent event each, as OpenAI streams them ------------------------------
class CompletionStreamChoice(BaseModel):
    index: int
    text: str
    finish_reason: Literal["stop", "length"] | None = None
    logprobs: CompletionLogprobs | None = None


class CompletionChunk(BaseModel):
    """A choice's new text or its end; with stream_options.include_usage, a last chunk with no choices
    carries the usage (and the others usage null), as OpenAI streams it."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionStreamChoice]
    usage: Usage | None = None


class ChatDelta(BaseModel):
    """What a chunk adds to the message: the role in the first chunk, then text; {} in the last."""

    role: Literal["assistant"] | None = None
    content: str | None = None

    @model_serializer(mode="wrap")
    def _present(self, handler):
        return {k: v for k, v in handler(self).items() if v is not None}  # OpenAI leaves out what is unset


class ChatStreamChoice(BaseModel):
    index: int
    delta: ChatDelta
    finish_reason: Literal["stop", "length"] | None = None
    logprobs: ChatLogprobs | None = None


class ChatCompletionChunk(BaseModel):
    """As CompletionChunk, for chat."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatStreamChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "softprompt"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class TextPair(_Request):
    text: str
    text_b: str | None = None


class ClassifyRequest(_Request):
    model: str = Field(min_length=1, description="The name of a loaded classification prompt.")
    input: Union[str, TextPair, list[Union[str, TextPair]]] = Field(
        description="A text, a text pair, or a list of them (at most 256).")

    _nested: ClassVar[dict[str, type[_Request]]] = {"input": TextPair}


class Classification(BaseModel):
    index: int
    label: str
    probabilities: dict[str, float]


class ClassifyResponse(BaseModel):
    object: Literal["list"] = "list"
    model: str
    data: list[Classification]


class TagRequest(_Request):
    model: str = Field(min_length=1, description="The name of a loaded token-labelling prompt.")
    input: Union[str, list[str], list[list[str]]] = Field(
        description="A sentence (split on white space), a list of sentences, or a list of token lists.")


class Tagging(BaseModel):
    index: int
    tokens: list[str]
    tags: list[str]


class TagResponse(BaseModel):
    object: Literal["list"] = "list"
    model: str
    data: list[Tagging]


class PromptInfo(BaseModel):
    name: str
    method: str
    kind: str
    view: str = "text"  # how a result is shown: "label" (with probabilities), "tags" (one per word) or "text"
    labels: list[str]
    parameters: int
    bytes: int | None
    metrics: dict
    source: str
    template: str | None = None


class PromptList(BaseModel):
    object: Literal["list"] = "list"
    base_model: str
    data: list[PromptInfo]


class LoadPromptRequest(_Request):
    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    path: str | None = Field(None, description="A prompt .safetensors file on the server.")
    library: str | None = Field(None, description="A library reference: name, name@version or name:version.")


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class Health(BaseModel):
    status: Literal["ok", "draining"]
    base_model: str
    prompts: int
    queue_depth: int
    running_rows: int
