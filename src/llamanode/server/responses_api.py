"""The OpenAI Responses API: `POST /v1/responses` (streamed or not) and `GET /v1/responses/{id}`.

Requests are read by responses_items (README: Responses API has the rules for items and tools), rendered
with the model's template (through a ToolPlan when there are function tools) and generated like a chat
completion, with `max_output_tokens` as a cap: a larger value ends where the window does (incomplete).
`store` keeps the response and its conversation (responses_store) so `previous_response_id` continues
it in the workspace that already holds it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from ..chat import ChatMessage
from ..errors import UnsupportedFeatureError
from ..tools import ToolPlan, Tools
from .call import Call
from .engine import Generation, Plan
from .errors import ApiError, from_exception
from .openai_api import WorkspaceHeader
from .prepare import (
    SessionKey,
    check_model,
    check_prompt_size,
    decode_config,
    first_key,
    note_annotations,
    route_workspace,
)
from .reply import Reply, prompt_segments, split_prompt, tool_decode_options, warm_next
from .responses_events import ResponseObject, ResponsesStreamEvent
from .responses_items import Conversation, read_input, read_tools
from .responses_output import ResponseDraft, ResponsesEncoder, response_usage, sse
from .responses_schemas import ResponseRequest, TextFormatJsonObject, TextFormatJsonSchema
from .responses_store import ResponseStore, StoredResponse
from .runtime import Runtime
from .schemas import WORKSPACE_HEADER
from .streaming import collect, sse_response, stream_generation
from .web import ERROR_RESPONSES, CallDep, JsonRoute, RuntimeDep, event_stream, json_response

__all__ = ["ResponseStore", "router"]

router = APIRouter(route_class=JsonRoute, tags=["OpenAI Responses"])


async def _store(request: Request) -> ResponseStore:
    store = request.app.state.responses
    assert isinstance(store, ResponseStore)
    return store


StoreDep = Annotated[ResponseStore, Depends(_store)]


@router.post(
    "/v1/responses",
    summary="Create a response (OpenAI Responses API)",
    responses={200: {"model": ResponseObject, "content": event_stream(ResponsesStreamEvent, None)}, **ERROR_RESPONSES},
)
async def create_response(
    body: ResponseRequest, rt: RuntimeDep, call: CallDep, store: StoreDep, workspace: WorkspaceHeader = None
) -> Response:
    check_model(rt, body.model)
    _refuse_unsupported(body)
    previous = _previous(store, body.previous_response_id)
    conversation = read_input(body.input)
    tools, ignored = read_tools(body)
    _note(call, conversation, ignored)
    history = [*(previous.messages if previous else ()), *conversation.messages]
    messages = [*([ChatMessage("system", body.instructions)] if body.instructions else []), *history]
    if not conversation.messages:
        raise ApiError(400, "input has no message to answer", param="input", code="invalid_value")
    tool_plan = ToolPlan(rt.template, tools) if tools is not None else None

    schema = _json_schema(body)
    sampling = {"max_tokens": body.max_output_tokens, "temperature": body.temperature, "top_p": body.top_p}
    config = await decode_config(rt, sampling | {"json_schema": schema} | tool_decode_options(tool_plan, schema, None))
    note_annotations(call, tool_plan, schema)
    split = split_prompt(rt, tool_plan, messages)
    check_prompt_size(rt, len(split.text.encode()), "input")
    key = first_key(SessionKey("prompt_cache_key", body.prompt_cache_key or ""), SessionKey("user", body.user or ""))
    ws = await route_workspace(rt, call, workspace or (previous.workspace if previous else None), key, split.text)
    if workspace is None and previous is not None:
        call.log["routed_by"] = "previous_response_id"

    reply = Reply(tool_plan)
    after = (lambda session, _: warm_next(rt, session, tool_plan, messages, reply)) if rt.settings.warm_next else None
    segments = await run_in_threadpool(prompt_segments, rt, tool_plan, messages, split)
    plan = Plan(ws, segments, split.suffix, config, after, max_tokens_is_cap=True)
    generation = rt.engine.generation(call, plan)
    draft = ResponseDraft(_response_object(body, rt, tools, config.temperature, config.top_p))

    def complete(done: ResponseDraft) -> None:
        rt.router.remember(ws, split.text)
        _log_finish(call, done.response, generation, body.max_output_tokens)
        if body.store:
            store.put(done.response.id, StoredResponse(ws, (*history, reply.message()), done.response))

    headers = {WORKSPACE_HEADER: ws}
    if body.stream:
        encoder = ResponsesEncoder(draft, generation, reply, complete)
        return sse_response(_opened(draft, stream_generation(generation, encoder)), headers)
    decoded = await collect(generation)
    draft.feed(reply.read(generation.text))
    draft.end(decoded, response_usage(generation))
    complete(draft)
    return json_response(draft.response, headers=headers)


@router.get(
    "/v1/responses/{response_id}",
    summary="A stored response (store: true; kept in memory, bounded: README)",
    responses={200: {"model": ResponseObject}, **ERROR_RESPONSES},
)
async def get_response(store: StoreDep, response_id: Annotated[str, Path(max_length=128)]) -> Response:
    stored = store.get(response_id)
    if stored is None:
        raise ApiError(404, _not_stored(response_id), code="response_not_found", param="response_id")
    return json_response(stored.response)


def _previous(store: ResponseStore, response_id: str | None) -> StoredResponse | None:
    if response_id is None:
        return None
    stored = store.get(response_id)
    if stored is None:
        raise ApiError(400, _not_stored(response_id), code="previous_response_not_found", param="previous_response_id")
    return stored


def _not_stored(response_id: str) -> str:
    return (
        f"no stored response {response_id!r}: it was made with store false, or it is no longer kept (responses are "
        "kept in memory, the most recent ones only, and not across restarts); send the whole conversation as input"
    )


def _refuse_unsupported(body: ResponseRequest) -> None:
    refusals = (
        (body.truncation == "auto", "truncation", "truncation 'auto' (input is never dropped; see context errors)"),
        (bool(body.background), "background", "background responses"),
        (bool(body.top_logprobs), "top_logprobs", "top_logprobs"),
        ("message.output_text.logprobs" in (body.include or ()), "include", "include message.output_text.logprobs"),
    )
    for refused, param, what in refusals:
        if refused:
            raise from_exception(UnsupportedFeatureError(what), param)


def _note(call: Call, conversation: Conversation, ignored: list[str]) -> None:
    """What the request's rules left out, in its log line."""
    if ignored:
        call.log["ignored_tools"] = ignored
    if conversation.dropped_reasoning:
        call.log["dropped_items"] = {"reasoning": conversation.dropped_reasoning}


def _log_finish(call: Call, response: ResponseObject, generation: Generation, max_output_tokens: int | None) -> None:
    call.log["response_id"] = response.id
    if response.status == "incomplete":  # say what cut it: the asked cap, or the window's room
        by_window = generation.window_capped or max_output_tokens is None
        call.log["cut_by"] = "window" if by_window else "max_output_tokens"


def _json_schema(body: ResponseRequest) -> dict[str, Any] | None:
    fmt = body.text.format if body.text is not None else None
    if isinstance(fmt, TextFormatJsonObject):
        return {"type": "object"}  # as response_format json_object: any JSON object
    if isinstance(fmt, TextFormatJsonSchema):
        return dict(fmt.schema_)
    return None


def _response_object(
    body: ResponseRequest, rt: Runtime, tools: Tools | None, temperature: float, top_p: float
) -> ResponseObject:
    text_format = body.text.format if body.text is not None and body.text.format is not None else None
    choice = body.tool_choice
    return ResponseObject(
        id="resp_" + uuid.uuid4().hex,
        created_at=int(time.time()),
        status="in_progress",
        instructions=body.instructions,
        max_output_tokens=body.max_output_tokens,
        metadata=body.metadata or {},
        model=rt.model_id,
        output=[],
        parallel_tool_calls=tools.parallel if tools is not None else body.parallel_tool_calls is not False,
        previous_response_id=body.previous_response_id,
        prompt_cache_key=body.prompt_cache_key,
        reasoning={"effort": None, "summary": None} | (body.reasoning or {}),
        store=body.store,
        temperature=temperature,
        text={"format": text_format.model_dump(by_alias=True) if text_format else {"type": "text"}},
        tool_choice=choice.model_dump() if choice is not None and not isinstance(choice, str) else choice or "auto",
        tools=[tool.model_dump() for tool in body.tools or ()],
        top_p=top_p,
        user=body.user,
    )


async def _opened(draft: ResponseDraft, events: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """response.created and response.in_progress at once (before the prompt is even queued), then the rest."""
    for event in draft.opening():
        yield sse(event)
    async for data in events:
        yield data
