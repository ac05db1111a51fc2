"""Response bodies of the OpenAI Responses API: the response object, its output items and streamed events.

Every streamed event carries `type` and `sequence_number` (0, 1, 2, ... within one stream). The order:
response.created, response.in_progress; per output item: response.output_item.added, then for a message
response.content_part.added, response.output_text.delta..., response.output_text.done,
response.content_part.done, or for a function call response.function_call_arguments.delta...,
response.function_call_arguments.done; then response.output_item.done; finally response.completed,
response.incomplete (cut by max_output_tokens or the window) or, after an `error` event, response.failed.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, RootModel

__all__ = [
    "EVENT_MODELS",
    "ArgumentsDeltaEvent",
    "ArgumentsDoneEvent",
    "ContentPartEvent",
    "ErrorEvent",
    "Event",
    "FunctionCallOut",
    "IncompleteDetails",
    "InputTokensDetails",
    "ItemEventKind",
    "ItemStatus",
    "LifecycleEvent",
    "LifecycleKind",
    "MessageOut",
    "OutputItem",
    "OutputItemEvent",
    "OutputTextOut",
    "OutputTokensDetails",
    "ResponseError",
    "ResponseObject",
    "ResponseUsage",
    "ResponsesStreamEvent",
    "TextDeltaEvent",
    "TextDoneEvent",
]

ItemStatus = Literal["in_progress", "completed", "incomplete"]


class OutputTextOut(BaseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[Any] = Field(default_factory=list)
    logprobs: list[Any] = Field(default_factory=list)


class MessageOut(BaseModel):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    status: ItemStatus
    content: list[OutputTextOut]


class FunctionCallOut(BaseModel):
    id: str
    type: Literal["function_call"] = "function_call"
    status: ItemStatus
    call_id: str
    name: str
    arguments: str  # JSON text of an object that validates against the function's parameters (when completed)


OutputItem = MessageOut | FunctionCallOut


class InputTokensDetails(BaseModel):
    cached_tokens: int  # reused from the workspace's resident prefix
    cache_write_tokens: int  # prefilled now, resident for the next turn


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class ResponseUsage(BaseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails
    total_tokens: int


class IncompleteDetails(BaseModel):
    reason: Literal["max_output_tokens"]


class ResponseError(BaseModel):
    code: str
    message: str


class ResponseObject(BaseModel):
    """The response; request fields it answers are echoed as the request set them (defaults filled in)."""

    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: Literal["in_progress", "completed", "incomplete", "failed"]
    completed_at: int | None = None
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None
    max_output_tokens: int | None
    metadata: dict[str, str]
    model: str
    output: list[OutputItem]
    parallel_tool_calls: bool
    previous_response_id: str | None
    prompt_cache_key: str | None
    reasoning: dict[str, Any]
    store: bool
    temperature: float | None
    text: dict[str, Any]
    tool_choice: Any
    tools: list[Any]
    top_p: float | None
    truncation: Literal["disabled"] = "disabled"
    background: Literal[False] = False
    service_tier: Literal["default"] = "default"
    usage: ResponseUsage | None = None
    user: str | None


LifecycleKind = Literal[
    "response.created", "response.in_progress", "response.completed", "response.incomplete", "response.failed"
]


class LifecycleEvent(BaseModel):
    type: LifecycleKind
    sequence_number: int
    response: ResponseObject


ItemEventKind = Literal["response.output_item.added", "response.output_item.done"]


class OutputItemEvent(BaseModel):
    type: ItemEventKind
    sequence_number: int
    output_index: int
    item: OutputItem


class ContentPartEvent(BaseModel):
    type: Literal["response.content_part.added", "response.content_part.done"]
    sequence_number: int
    item_id: str
    output_index: int
    content_index: int
    part: OutputTextOut


class TextDeltaEvent(BaseModel):
    type: Literal["response.output_text.delta"] = "response.output_text.delta"
    sequence_number: int
    item_id: str
    output_index: int
    content_index: int
    delta: str
    logprobs: list[Any] = Field(default_factory=list)


class TextDoneEvent(BaseModel):
    type: Literal["response.output_text.done"] = "response.output_text.done"
    sequence_number: int
    item_id: str
    output_index: int
    content_index: int
    text: str
    logprobs: list[Any] = Field(default_factory=list)


class ArgumentsDeltaEvent(BaseModel):
    type: Literal["response.function_call_arguments.delta"] = "response.function_call_arguments.delta"
    sequence_number: int
    item_id: str
    output_index: int
    delta: str


class ArgumentsDoneEvent(BaseModel):
    type: Literal["response.function_call_arguments.done"] = "response.function_call_arguments.done"
    sequence_number: int
    item_id: str
    output_index: int
    name: str
    arguments: str


class ErrorEvent(BaseModel):
    """A failure after the stream began (response.failed follows, with the same error)."""

    type: Literal["error"] = "error"
    sequence_number: int
    code: str | None
    message: str
    param: str | None


Event = (
    LifecycleEvent
    | OutputItemEvent
    | ContentPartEvent
    | TextDeltaEvent
    | TextDoneEvent
    | ArgumentsDeltaEvent
    | ArgumentsDoneEvent
    | ErrorEvent
)


class ResponsesStreamEvent(RootModel[Event]):
    """Any one `data:` event of a streamed response (its SSE `event:` field repeats its type)."""


EVENT_MODELS: tuple[type[BaseModel], ...] = (ResponsesStreamEvent,)
