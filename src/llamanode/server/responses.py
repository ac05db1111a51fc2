"""Response bodies as pydantic models: handlers build these, and the OpenAPI document names them.

Native session reports are the core's own dataclasses (PrefixStatus, SuffixStatus, DecodeReport),
serialized through pydantic as they are; `ContextOut` adds the manifest digest to ContextReport.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, TypeAdapter

from ..manifest import ManifestSegment
from ..session import DecodeReport, Divergence, ForkOrigin, PrefixStatus, PrewarmReport, SegmentResidency
from .anthropic_responses import ANTHROPIC_STREAM_MODELS
from .responses_events import EVENT_MODELS as RESPONSES_EVENT_MODELS

__all__ = [
    "STREAM_MODELS",
    "ChatChunk",
    "ChatCompletion",
    "Completion",
    "CompletionChunk",
    "ContextOut",
    "DecodeEvent",
    "DecodeResult",
    "EmbeddingList",
    "ErrorResponse",
    "Health",
    "ModelCard",
    "ModelList",
    "SessionDeleted",
    "SessionInfo",
    "SessionList",
    "UsageOut",
    "dump_json",
]


class ErrorObject(BaseModel):
    model_config = ConfigDict(extra="allow")  # typed errors add fields (num_ctx, requested_tokens, field...)
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorObject


class Health(BaseModel):
    status: Literal["ok"]
    model: str
    queued: int
    active: int
    version: str


# -- OpenAI ----------------------------------------------------------------------------------------
class ModelMeta(BaseModel):
    description: str
    sha256: str
    num_ctx: int


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    meta: ModelMeta


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class PromptTokensDetails(BaseModel):
    cached_tokens: int


class UsageOut(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails


class FunctionCallOut(BaseModel):
    name: str
    arguments: str  # JSON text of an object that validates against the function's parameters


class ToolCallOut(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallOut


class AssistantMessage(BaseModel):
    """content is null when the message only calls tools; tool_calls is null when it calls none."""

    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: None = None
    tool_calls: list[ToolCallOut] | None = None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: None = None
    finish_reason: str


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChatChoice]
    usage: UsageOut


class FunctionCallDelta(BaseModel):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(BaseModel):
    """A call's first delta has its id, type and name (arguments ""); later ones add argument text."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionCallDelta


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    logprobs: None
    finish_reason: str | None


class ChatChunk(BaseModel):
    """One `data:` event of a streamed chat completion (serialized without unset fields: usage only
    when the client asked for it, the delta's role only in the first event)."""

    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChatChunkChoice]
    usage: UsageOut | None = None


class TextChoice(BaseModel):
    index: int
    text: str
    logprobs: None = None
    finish_reason: str | None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    system_fingerprint: str
    choices: list[TextChoice]
    usage: UsageOut


class CompletionChunk(BaseModel):
    """One `data:` event of a streamed completion (serialized without unset fields: usage only when
    the client asked for it)."""

    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    system_fingerprint: str
    choices: list[TextChoice]
    usage: UsageOut | None = None


class EmbeddingItem(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str  # floats, or little-endian float32 bytes in base64


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingItem]
    model: str
    usage: EmbeddingUsage


# -- native sessions -------------------------------------------------------------------------------
class SessionInfo(BaseModel):
    """A workspace: live (KV in memory), evicted (snapshot on disk), or declared and still empty."""

    model_config = ConfigDict(from_attributes=True)
    id: str
    live: bool
    resident_tokens: int
    kv_bytes: int
    snapshot_bytes: int
    last_used: float | None = None
    forked_from: str | None = None


class SessionList(BaseModel):
    object: Literal["list"] = "list"
    data: list[SessionInfo]


class SessionDeleted(BaseModel):
    id: str
    object: Literal["session"] = "session"
    deleted: Literal[True] = True


class DecodeResult(BaseModel):
    text: str
    finish_reason: str | None
    report: DecodeReport | None


class DecodeEvent(BaseModel):
    """One `data:` event of a streamed native decode; the last one has finish_reason and report."""

    text: str
    token_ids: list[int]
    finish_reason: str | None = None
    report: DecodeReport | None = None


class ManifestOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    model_digest: str
    tokenizer_digest: str
    runtime_digest: str
    template_digest: str
    add_bos: bool
    segments: tuple[ManifestSegment, ...]
    digest: str


class ContextOut(BaseModel):
    """ContextReport, with the manifest's digest."""

    model_config = ConfigDict(from_attributes=True)
    resident_tokens: int
    prefix_tokens: int
    suffix_tokens: int
    generated_tokens: int
    num_ctx: int
    available_tokens: int
    stable_byte_hash: str
    stable_token_hash: str
    manifest_digest: str
    manifest: ManifestOut | None
    closed: bool
    fatal: bool
    segments: tuple[SegmentResidency, ...]
    last_divergence: Divergence | None
    last_prefix: PrefixStatus | None
    last_prewarm: PrewarmReport | None
    forked_from: ForkOrigin | None = None


# Streamed events: the OpenAPI document names them in event_stream() schemas, so it includes them too.
STREAM_MODELS: tuple[type[BaseModel], ...] = (
    *(ChatChunk, CompletionChunk, DecodeEvent),
    *RESPONSES_EVENT_MODELS,
    *ANTHROPIC_STREAM_MODELS,
)

_ADAPTERS: dict[type[Any], TypeAdapter[Any]] = {}


def dump_json(value: Any, *, exclude_unset: bool = False) -> bytes:
    """A response model or a core report dataclass as JSON bytes."""
    if isinstance(value, BaseModel):
        return value.model_dump_json(exclude_unset=exclude_unset).encode()
    adapter = _ADAPTERS.get(type(value))
    if adapter is None:
        adapter = _ADAPTERS[type(value)] = TypeAdapter(type(value))
    return adapter.dump_json(value)
