"""Request bodies (pydantic, unknown fields rejected), the workspace id rule and header."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..workspace_id import WORKSPACE_ID_PATTERN

__all__ = [
    "WORKSPACE_HEADER",
    "WORKSPACE_ID_PATTERN",
    "ChatCompletionRequest",
    "ChatMessageIn",
    "ChatTool",
    "ChatToolChoice",
    "CompletionRequest",
    "DecodeRequest",
    "EmbeddingRequest",
    "ForkRequest",
    "PrefixRequest",
    "PromptCacheKey",
    "SessionCreateRequest",
    "StrictModel",
    "SuffixRequest",
]

WORKSPACE_HEADER = "X-Llamanode-Workspace"
_STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

WorkspaceId = Annotated[str, Field(pattern=WORKSPACE_ID_PATTERN)]
StopField = Annotated[
    str | Annotated[list[Annotated[str, Field(min_length=1)]], Field(max_length=16)] | None,
    Field(description="Up to 16 stop strings; generation ends before the first one."),
]
MaxTokens = Annotated[int | None, Field(ge=1, le=1_000_000)]
Temperature = Annotated[float | None, Field(ge=0, le=2)]
TopP = Annotated[float | None, Field(gt=0, le=1)]
Seed = Annotated[int | None, Field(ge=0, le=2**32 - 2)]
ZeroPenalty = Annotated[
    float | None, Field(ge=-2, le=2, description="Accepted for compatibility; only 0 is supported.")
]


class _Strict(BaseModel):
    model_config = _STRICT


StrictModel = _Strict  # for request models in other modules (responses_schemas, llama_api)


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class FunctionCallIn(_Strict):
    name: Annotated[str, Field(min_length=1)]
    arguments: Annotated[str, Field(description="The arguments as JSON text of an object.")]


class ToolCallIn(_Strict):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallIn


class ChatMessageIn(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None


class FunctionDef(_Strict):
    name: Annotated[str, Field(min_length=1, max_length=128)]
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: Annotated[bool | None, Field(description="Accepted; arguments always follow the schema.")] = None


class ChatTool(_Strict):
    type: Literal["function"]
    function: FunctionDef


class FunctionName(_Strict):
    name: Annotated[str, Field(min_length=1)]


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: FunctionName


ChatToolChoice = Literal["auto", "none", "required"] | NamedToolChoice
PromptCacheKey = Annotated[
    str | None,
    Field(max_length=512, description="The client's name for its conversation: routes it to one workspace."),
]


class StreamOptions(_Strict):
    include_usage: bool = False


class ResponseFormatText(_Strict):
    type: Literal["text"]


class ResponseFormatJsonObject(_Strict):
    type: Literal["json_object"]


class JsonSchemaSpec(_Strict):
    name: Annotated[str, Field(min_length=1, max_length=64)]
    schema_: Annotated[dict[str, Any] | None, Field(alias="schema")] = None
    description: str | None = None
    strict: bool | None = None


class ResponseFormatJsonSchema(_Strict):
    type: Literal["json_schema"]
    json_schema: JsonSchemaSpec


ResponseFormat = Annotated[
    ResponseFormatText | ResponseFormatJsonObject | ResponseFormatJsonSchema, Field(discriminator="type")
]


class _Sampling(_Strict):
    """Sampling fields shared by /v1/chat/completions and /v1/completions."""

    model: Annotated[str, Field(min_length=1)]
    max_tokens: MaxTokens = None
    temperature: Temperature = None
    top_p: TopP = None
    top_k: Annotated[int | None, Field(ge=0, le=100_000)] = None
    min_p: Annotated[float | None, Field(ge=0, le=1)] = None
    repeat_penalty: Annotated[float | None, Field(gt=0, le=10)] = None
    presence_penalty: ZeroPenalty = None
    frequency_penalty: ZeroPenalty = None
    seed: Seed = None
    stop: StopField = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: Annotated[int | None, Field(ge=1, le=1, description="Only 1 is supported.")] = None
    user: Annotated[str | None, Field(max_length=256)] = None


class ChatCompletionRequest(_Sampling):
    messages: Annotated[list[ChatMessageIn], Field(min_length=1)]
    max_completion_tokens: MaxTokens = None
    response_format: ResponseFormat | None = None
    logprobs: Annotated[bool | None, Field(description="Only false is supported.")] = None
    tools: Annotated[list[ChatTool] | None, Field(max_length=1024)] = None
    tool_choice: ChatToolChoice | None = None
    parallel_tool_calls: bool | None = None
    prompt_cache_key: PromptCacheKey = None


class CompletionRequest(_Sampling):
    prompt: str | Annotated[list[str], Field(min_length=1, max_length=1)]
    echo: Annotated[bool | None, Field(description="Only false is supported.")] = None


class EmbeddingRequest(_Strict):
    model: Annotated[str, Field(min_length=1)]
    input: (
        Annotated[str, Field(min_length=1)]
        | Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1, max_length=256)]
    )
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int | None, Field(ge=1)] = None
    user: Annotated[str | None, Field(max_length=256)] = None


class SessionCreateRequest(_Strict):
    id: WorkspaceId | None = None


class Segment(_Strict):
    name: Annotated[str, Field(min_length=1, max_length=256)]
    text: str


class PrefixRequest(_Strict):
    segments: Annotated[list[Segment], Field(min_length=1, max_length=4096)]


class SuffixRequest(_Strict):
    text: str


class DecodeRequest(_Strict):
    max_tokens: MaxTokens = 256
    temperature: Annotated[float, Field(ge=0, le=100)] = 0.0
    top_k: Annotated[int, Field(ge=0, le=100_000)] = 40
    top_p: Annotated[float, Field(gt=0, le=1)] = 0.95
    min_p: Annotated[float, Field(ge=0, le=1)] = 0.05
    repeat_penalty: Annotated[float, Field(gt=0, le=10)] = 1.0
    seed: Seed = None
    stop: Annotated[list[Annotated[str, Field(min_length=1)]], Field(max_length=16)] = Field(default_factory=list)
    grammar: str | None = None
    json_schema: dict[str, Any] | None = None
    stream: bool = False


class ForkRequest(_Strict):
    dst: WorkspaceId
