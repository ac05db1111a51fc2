"""Request bodies of the OpenAI Responses API (`POST /v1/responses`).

The request's own fields are strict (an unknown one is a 400 naming it). Input items and tools are read
for what they mean to the prompt; their bookkeeping fields (ids, status, phase, annotations, caller, ...)
are accepted and not read. Item and tool types llamanode does not render are kept as `OtherItem`/`OtherTool`
so that responses_items can apply its documented rule to them (README: Responses API).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from .schemas import PromptCacheKey, StrictModel

__all__ = [
    "FunctionCallItem",
    "FunctionCallOutputItem",
    "FunctionTool",
    "FunctionToolChoice",
    "InputItem",
    "InputTextPart",
    "MessageItem",
    "OtherItem",
    "OtherPart",
    "OtherTool",
    "OutputTextPart",
    "ReasoningItem",
    "RefusalPart",
    "ResponseRequest",
    "TextConfig",
    "TextFormatJsonObject",
    "TextFormatJsonSchema",
]


class _Lenient(BaseModel):
    """A conversation item or tool: fields llamanode does not read are accepted and ignored."""

    model_config = ConfigDict(extra="ignore", strict=True, allow_inf_nan=False)


class _Open(BaseModel):
    """An item, part or tool of a type llamanode does not render: kept whole for its documented rule."""

    model_config = ConfigDict(extra="allow")


def _kind(known: tuple[str, ...], default: str | None) -> Any:
    """Variants by `type` (default when absent); any type not in known is the "other" variant."""

    def kind(value: Any) -> str:
        found = value.get("type", default) if isinstance(value, dict) else getattr(value, "type", default)
        return found if found in known else "other"

    return Discriminator(kind)


def _none_of(known: tuple[str, ...]) -> Any:
    """The "other" variant's type: any string but the known ones (so the document's oneOf stays exclusive)."""
    return Field(json_schema_extra={"not": {"enum": list(known)}})


_PART_TYPES = ("input_text", "output_text", "refusal")
_ITEM_TYPES = ("message", "function_call", "function_call_output", "reasoning")
_TOOL_TYPES = ("function",)


# -- content parts ------------------------------------------------------------------------------------
class InputTextPart(_Lenient):
    type: Literal["input_text"]
    text: str


class OutputTextPart(_Lenient):
    type: Literal["output_text"]
    text: str


class RefusalPart(_Lenient):
    type: Literal["refusal"]
    refusal: str


class OtherPart(_Open):
    """input_image, input_file, input_audio, ...: refused (only text reaches this model)."""

    type: Annotated[str, _none_of(_PART_TYPES)]


ContentPart = Annotated[
    Annotated[InputTextPart, Tag("input_text")]
    | Annotated[OutputTextPart, Tag("output_text")]
    | Annotated[RefusalPart, Tag("refusal")]
    | Annotated[OtherPart, Tag("other")],
    _kind(_PART_TYPES, None),
]


# -- input items ---------------------------------------------------------------------------------------
class MessageItem(_Lenient):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[ContentPart]


class FunctionCallItem(_Lenient):
    type: Literal["function_call"]
    call_id: Annotated[str, Field(min_length=1)]
    name: Annotated[str, Field(min_length=1)]
    arguments: str
    # "incomplete": cut by max_output_tokens, so its arguments may not parse; rendered as sent back
    status: Literal["in_progress", "completed", "incomplete"] | None = None


class FunctionCallOutputItem(_Lenient):
    type: Literal["function_call_output"]
    # Codex CLI sends some outputs (its own namespaced tools) with a name and no call_id
    call_id: Annotated[str | None, Field(min_length=1)] = None
    name: str | None = None
    output: str | list[ContentPart]


class ReasoningItem(_Open):
    """A reasoning item from an earlier turn: left out of the prompt (this model does not reason)."""

    type: Literal["reasoning"]


class OtherItem(_Open):
    """Any other item type (item_reference, hosted-tool calls, ...): refused, naming the type."""

    type: Annotated[str, _none_of(_ITEM_TYPES)]


InputItem = Annotated[
    Annotated[MessageItem, Tag("message")]
    | Annotated[FunctionCallItem, Tag("function_call")]
    | Annotated[FunctionCallOutputItem, Tag("function_call_output")]
    | Annotated[ReasoningItem, Tag("reasoning")]
    | Annotated[OtherItem, Tag("other")],
    _kind(_ITEM_TYPES, "message"),
]


# -- tools -----------------------------------------------------------------------------------------------
class FunctionTool(_Lenient):
    type: Literal["function"]
    name: Annotated[str, Field(min_length=1, max_length=128)]
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: Annotated[bool | None, Field(description="Accepted; arguments always follow the schema.")] = None


class OtherTool(_Open):
    """namespace, web_search, file_search, custom, mcp, ...: left out of the prompt, named in the log."""

    type: Annotated[str, _none_of(_TOOL_TYPES)]


Tool = Annotated[
    Annotated[FunctionTool, Tag("function")] | Annotated[OtherTool, Tag("other")],
    _kind(_TOOL_TYPES, None),
]


class FunctionToolChoice(StrictModel):
    type: Literal["function"]
    name: Annotated[str, Field(min_length=1)]


# -- text format -----------------------------------------------------------------------------------------
class TextFormatText(StrictModel):
    type: Literal["text"]


class TextFormatJsonObject(StrictModel):
    type: Literal["json_object"]


class TextFormatJsonSchema(StrictModel):
    type: Literal["json_schema"]
    name: Annotated[str, Field(min_length=1, max_length=64)]
    schema_: Annotated[dict[str, Any], Field(alias="schema")]
    description: str | None = None
    strict: bool | None = None


class TextConfig(StrictModel):
    format: Annotated[
        TextFormatText | TextFormatJsonObject | TextFormatJsonSchema | None, Field(discriminator="type")
    ] = None
    verbosity: Annotated[Literal["low", "medium", "high"] | None, Field(description="Accepted; no effect.")] = None


# -- the request -----------------------------------------------------------------------------------------
class ResponseRequest(StrictModel):
    model: Annotated[str, Field(min_length=1)]
    input: Annotated[str | list[InputItem] | None, Field(description="Text (one user message) or items.")] = None
    instructions: Annotated[str | None, Field(description="A system message first; not carried over.")] = None
    tools: Annotated[list[Tool] | None, Field(max_length=1024)] = None
    tool_choice: Literal["auto", "none", "required"] | FunctionToolChoice | None = None
    parallel_tool_calls: bool | None = None
    max_output_tokens: Annotated[
        int | None, Field(ge=1, description="A cap: a larger value ends where the window does (incomplete).")
    ] = None
    temperature: Annotated[float | None, Field(ge=0, le=2)] = None
    top_p: Annotated[float | None, Field(gt=0, le=1)] = None
    stream: bool = False
    store: Annotated[
        bool, Field(description="Remember the response (bounded, in memory) for previous_response_id.")
    ] = True
    previous_response_id: str | None = None
    text: TextConfig | None = None
    prompt_cache_key: PromptCacheKey = None
    user: Annotated[str | None, Field(max_length=256)] = None
    metadata: Annotated[dict[str, str] | None, Field(max_length=16, description="Echoed on the response.")] = None
    # Accepted and without effect here (README: Responses API): nothing they ask for exists on this model.
    include: list[str] | None = None
    reasoning: dict[str, Any] | None = None
    client_metadata: dict[str, Any] | None = None
    prompt_cache_retention: str | None = None
    safety_identifier: Annotated[str | None, Field(max_length=256)] = None
    service_tier: str | None = None
    stream_options: dict[str, Any] | None = None
    # Accepted only with the value that asks for nothing unsupported.
    truncation: Literal["auto", "disabled"] | None = None
    background: bool | None = None
    top_logprobs: Annotated[int | None, Field(ge=0, le=20)] = None
