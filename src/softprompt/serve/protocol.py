"""Every request and response the server speaks, as pydantic models (FastAPI builds the OpenAPI schema
from them, and validation errors come from them).

The OpenAI-compatible routes follow OpenAI's field names and defaults (temperature 1, max_tokens 16);
`model` names a loaded prompt. top_k and repetition_penalty are accepted as vLLM accepts them.
Fields OpenAI has and softprompt does not implement are refused when set, never silently ignored.
The request models say what they ask of the engine (to_sampling_params); the stream chunks are typed
as the responses are.
"""

from __future__ import annotations

from typing import ClassVar, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_serializer

from ..engine import SamplingParams
from ..errors import SoftpromptError
from .errors import APIError


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Sampling(_Request):
    model: str = Field(min_length=1, description="The name of a loaded prompt (GET /v1/models).")
    max_tokens: int | None = Field(16, ge=1, description="New tokens at most (the server may cap it).")
    temperature: float = Field(1.0, ge=0.0, le=2.0, description="0 decodes greedily.")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0, description="Keep the k most likely tokens (0: all). vLLM's extension.")
    repetition_penalty: float = Field(1.0, gt=0.0, le=10.0, description="vLLM's extension.")
    n: int = Field(1, ge=1, le=16, description="Choices to generate (seed + i for choice i).")
    stream: bool = Field(False, description="Send the text as server-sent events as it is decoded.")
    stop: Union[str, list[str], None] = Field(None, description="Up to 4 strings that end the text.")
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="The same seed gives the same text.")
    user: str | None = Field(None, description="Accepted and ignored, as an end-user id for logs.")
    # OpenAI fields softprompt does not implement: refused when given a non-default value
    logprobs: Union[int, bool, None] = None
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None

    # each unimplemented field and the values that ask nothing of it (any other value is refused)
    _unsupported: ClassVar[dict[str, tuple]] = {"logprobs": (None, 0), "presence_penalty": (None, 0),
                                                "frequency_penalty": (None, 0), "logit_bias": (None, {})}

    def _new_tokens(self) -> int | None:
        return self.max_tokens

    def to_sampling_params(self, max_tokens_limit: int) -> SamplingParams:
        """How the engine decodes this request; APIError (400, naming the field) for a field softprompt
        does not implement, more than 4 stop strings, or max_tokens over the server's limit."""
        for name, harmless in self._unsupported.items():
            if getattr(self, name) not in harmless:
                raise APIError(400, f"{name} is not supported by softprompt serve", param=name, code="unsupported")
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
                                  stop=tuple(stop))
        except SoftpromptError as exc:
            raise APIError(400, str(exc)) from None


class CompletionRequest(_Sampling):
    prompt: Union[str, list[str]] = Field(description="The input text (or several): it fills the prompt's template.")
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = Field(None, ge=1)

    _unsupported: ClassVar[dict[str, tuple]] = {**_Sampling._unsupported, "echo": (False,), "suffix": (None,),
                                                "best_of": (None, 1)}

    def texts(self) -> list[str]:
        """The input texts (one choice set each)."""
        texts = [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)
        if not texts:
            raise APIError(400, "prompt must not be an empty list", param="prompt")
        return texts


class ChatMessage(_Request):
    role: Literal["system", "user", "assistant", "developer"]
    content: str
    name: str | None = None


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)

    def _new_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def turns(self) -> list[dict[str, str]]:
        """The conversation as chat-template turns ({role, content}; OpenAI's developer role is the system's)."""
        return [{"role": "system" if m.role == "developer" else m.role, "content": m.content} for m in self.messages]


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: Literal["stop", "length"] | None
    logprobs: None = None


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
    logprobs: None = None


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
    logprobs: None = None


class CompletionChunk(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionStreamChoice]


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
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatStreamChoice]


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
