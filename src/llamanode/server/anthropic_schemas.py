"""Anthropic Messages request bodies (pydantic): /v1/messages and /v1/messages/count_tokens.

One rule for what the model cannot honour: the fields in IGNORED_FIELDS (thinking budgets, context
editing, output effort, service tiers, containers, MCP connectors, ...) are accepted and ignored, and
the request log names them (`ignored_fields`); any other unknown field is refused (400), as on every
route. Content blocks and tools of a kind this server cannot use are parsed loosely here and refused
by anthropic_convert.py with a message that names them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

__all__ = [
    "IGNORED_FIELDS",
    "CacheControl",
    "CountTokensRequest",
    "CustomTool",
    "MessageIn",
    "MessagesRequest",
    "OtherBlock",
    "RedactedThinkingBlock",
    "ServerTool",
    "TextBlock",
    "ThinkingBlock",
    "ToolResultBlock",
    "ToolUseBlock",
]

# Accepted and ignored: they shape how Anthropic's service runs or bills Claude, not what a local
# model can do. Listed in the request log's `ignored_fields` when sent.
IGNORED_FIELDS = (
    "thinking",
    "context_management",
    "output_config",
    "service_tier",
    "container",
    "mcp_servers",
    "diagnostics",
    "inference_geo",
    "speed",
    "cache_control",
)
_STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class _Strict(BaseModel):
    model_config = _STRICT


class _Loose(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class CacheControl(_Strict):
    """A prompt-cache breakpoint: here it names a manifest segment (the whole prefix is cached anyway)."""

    type: Literal["ephemeral"]
    ttl: Literal["5m", "1h"] | None = None


class TextBlock(_Strict):
    type: Literal["text"]
    text: str
    cache_control: CacheControl | None = None
    citations: list[dict[str, Any]] | None = Field(default=None, description="Accepted and ignored.")


class ToolUseBlock(_Strict):
    type: Literal["tool_use"]
    id: Annotated[str, Field(max_length=256)]
    name: Annotated[str, Field(min_length=1, max_length=128)]
    input: dict[str, Any]
    cache_control: CacheControl | None = None
    caller: dict[str, Any] | None = Field(default=None, description="Accepted and ignored.")
    toolset_name: str | None = Field(default=None, description="Accepted and ignored.")


class OtherBlock(_Loose):
    """A block of a type this server does not render (image, document, ...): refused, naming it."""

    type: str


def _tag(known: frozenset[str], default: str) -> Discriminator:
    def tag(value: Any) -> str:
        kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
        return kind if isinstance(kind, str) and kind in known else default

    return Discriminator(tag)


ResultPart = Annotated[
    Annotated[TextBlock, Tag("text")] | Annotated[OtherBlock, Tag("other")],
    _tag(frozenset({"text"}), "other"),
]


class ToolResultBlock(_Strict):
    type: Literal["tool_result"]
    tool_use_id: Annotated[str, Field(max_length=256)]
    content: str | list[ResultPart] | None = None
    is_error: bool | None = None
    cache_control: CacheControl | None = None
    toolset_name: str | None = Field(default=None, description="Accepted and ignored.")


class ThinkingBlock(_Strict):
    """The model's earlier reasoning, sent back: not rendered (this server never emits thinking)."""

    type: Literal["thinking"]
    thinking: str
    signature: str | None = None


class RedactedThinkingBlock(_Strict):
    type: Literal["redacted_thinking"]
    data: str


_BLOCKS = frozenset({"text", "tool_use", "tool_result", "thinking", "redacted_thinking"})
Block = Annotated[
    Annotated[TextBlock, Tag("text")]
    | Annotated[ToolUseBlock, Tag("tool_use")]
    | Annotated[ToolResultBlock, Tag("tool_result")]
    | Annotated[ThinkingBlock, Tag("thinking")]
    | Annotated[RedactedThinkingBlock, Tag("redacted_thinking")]
    | Annotated[OtherBlock, Tag("other")],
    _tag(_BLOCKS, "other"),
]


class MessageIn(_Strict):
    # Claude Code (2.1.x) sends its environment as a "system" message after the first user turn
    role: Literal["user", "assistant", "system"]
    content: str | list[Block]


class CustomTool(_Strict):
    """A tool the client runs: the model calls it with input that validates against input_schema."""

    type: Literal["custom"] | None = None
    name: Annotated[str, Field(min_length=1, max_length=128)]
    description: str | None = None
    input_schema: dict[str, Any]
    cache_control: CacheControl | None = None
    strict: bool | None = Field(default=None, description="Accepted: calls always follow input_schema here.")
    eager_input_streaming: bool | None = Field(default=None, description="Accepted: input always streams here.")
    defer_loading: bool | None = Field(default=None, description="Accepted and ignored.")
    input_examples: list[dict[str, Any]] | None = Field(default=None, description="Accepted and ignored.")
    allowed_callers: list[str] | None = Field(default=None, description="Accepted and ignored.")


class ServerTool(_Loose):
    """A tool Anthropic's service runs itself (web_search_*, bash_*, ...): refused, naming it."""

    type: str
    name: str | None = None


def _tool_tag(value: Any) -> str:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return "custom" if kind in (None, "custom") else "server"


Tool = Annotated[
    Annotated[CustomTool, Tag("custom")] | Annotated[ServerTool, Tag("server")],
    Discriminator(_tool_tag),
]


class _Parallel(_Strict):
    disable_parallel_tool_use: bool | None = None


class ToolChoiceAuto(_Parallel):
    type: Literal["auto"]


class ToolChoiceAny(_Parallel):
    type: Literal["any"]


class ToolChoiceTool(_Parallel):
    type: Literal["tool"]
    name: Annotated[str, Field(min_length=1, max_length=128)]


class ToolChoiceNone(_Strict):
    type: Literal["none"]


ToolChoice = Annotated[ToolChoiceAuto | ToolChoiceAny | ToolChoiceTool | ToolChoiceNone, Field(discriminator="type")]


class Metadata(_Strict):
    user_id: Annotated[str | None, Field(max_length=1024)] = None


class _Conversation(_Strict):
    """What /v1/messages and count_tokens share: the prompt, and the fields accepted and ignored."""

    model: Annotated[str, Field(min_length=1)]
    messages: Annotated[list[MessageIn], Field(min_length=1)]
    system: str | list[TextBlock] | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    thinking: dict[str, Any] | None = None
    context_management: dict[str, Any] | None = None
    output_config: dict[str, Any] | None = None
    service_tier: str | None = None
    container: str | dict[str, Any] | None = None
    mcp_servers: list[dict[str, Any]] | None = None
    diagnostics: dict[str, Any] | None = None
    inference_geo: str | None = None
    speed: str | None = None
    cache_control: dict[str, Any] | None = None

    def ignored(self) -> list[str]:
        """The fields sent that this server accepts and ignores."""
        return [name for name in IGNORED_FIELDS if getattr(self, name) is not None]


class MessagesRequest(_Conversation):
    max_tokens: Annotated[
        int, Field(ge=1, description="Required. A cap: generation also ends when the context window is full.")
    ]
    stop_sequences: Annotated[list[Annotated[str, Field(min_length=1)]], Field(max_length=16)] | None = None
    temperature: Annotated[float | None, Field(ge=0, le=1)] = None
    top_p: Annotated[float | None, Field(gt=0, le=1)] = None
    top_k: Annotated[int | None, Field(ge=0, le=100_000)] = None
    metadata: Metadata | None = None
    stream: bool = False


class CountTokensRequest(_Conversation):
    pass
