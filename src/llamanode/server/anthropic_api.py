"""Anthropic Messages API: POST /v1/messages (JSON or SSE) and POST /v1/messages/count_tokens.

A request becomes a conversation (anthropic_convert.py), rendered through a ToolPlan (tools through
the template or the generic fallback, grammar-constrained arguments), split into a warm prefix named
per message and cache breakpoint, and generated with max_tokens as a cap on the window. Routing:
the workspace header, else the session in metadata.user_id, else the longest shared prefix.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Header
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from ..chat import ChatMessage, SplitPrompt
from ..chat_segments import Cut, Segments
from ..kvsession import KVSession
from ..session import PrefixInput
from ..tools import ToolPlan
from .anthropic_convert import Conversation, convert
from .anthropic_responses import AnthropicError, MessageOut, MessageStreamEvent, TokenCount
from .anthropic_schemas import CountTokensRequest, MessagesRequest, Metadata
from .anthropic_stream import Blocks, MessagesEncoder, message_out, new_tool_use_id, ping, stop_reason, usage
from .call import Call
from .engine import Generation, Plan
from .prepare import (
    SessionKey,
    check_model,
    check_prompt_size,
    decode_config,
    first_key,
    note_annotations,
    route_workspace,
)
from .runtime import Runtime
from .schemas import WORKSPACE_HEADER, WORKSPACE_ID_PATTERN
from .streaming import collect, sse_response, stream_generation
from .web import CallDep, JsonRoute, RuntimeDep, event_stream, json_response

__all__ = ["BASE", "ERROR_RESPONSES", "router", "session_of"]

BASE = "/v1/messages"
router = APIRouter(route_class=JsonRoute, tags=["Anthropic"])
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    "4XX": {
        "model": AnthropicError,
        "description": "Refused (Anthropic's error shape; see the OpenAI routes for codes)",
    },
    "5XX": {"model": AnthropicError, "description": "Failed, or unavailable (503 overloaded_error, see Retry-After)"},
}
WorkspaceHeader = Annotated[
    str | None,
    Header(
        alias=WORKSPACE_HEADER,
        pattern=WORKSPACE_ID_PATTERN,
        description="Workspace to run in (created if new). Without it: the session in metadata.user_id, else the "
        "workspace sharing the longest prompt prefix.",
    ),
]


def session_of(metadata: Metadata | None) -> str:
    """The session a metadata.user_id names: Claude Code sends a JSON string with a `session_id`; any
    other value is the session itself."""
    raw = metadata.user_id if metadata is not None else None
    if not raw:
        return ""
    try:
        value = json.loads(raw)
    except ValueError:
        return raw
    session = value.get("session_id") if isinstance(value, dict) else None
    return session if isinstance(session, str) and session else raw


@dataclass(frozen=True)
class Prompt:
    """One request's rendering: the conversation, its plan, the split and the prefix's segments."""

    conversation: Conversation
    plan: ToolPlan
    split: SplitPrompt
    segments: Segments


def _prompt(rt: Runtime, body: MessagesRequest | CountTokensRequest, named: bool = True) -> Prompt:
    """Convert, render and split; named: cut the prefix into segments too."""
    conversation = convert(body, rt.settings.keep_billing_header)
    plan = ToolPlan(rt.template, conversation.tools)
    split = plan.split(conversation.messages)
    segments = plan.segments(conversation.messages, split, conversation.cuts) if named else ()
    return Prompt(conversation, plan, split, segments)


def _log_request(call: Call, body: MessagesRequest | CountTokensRequest, conversation: Conversation) -> None:
    call.log["dropped_blocks"] = conversation.dropped_blocks
    ignored = body.ignored()
    if ignored:
        call.log["ignored_fields"] = ignored


@router.post(
    BASE,
    summary="Create a message (Anthropic Messages API)",
    responses={200: {"model": MessageOut, "content": event_stream(MessageStreamEvent, done=None)}, **ERROR_RESPONSES},
)
async def messages(body: MessagesRequest, rt: RuntimeDep, call: CallDep, workspace: WorkspaceHeader = None) -> Response:
    check_model(rt, body.model)
    prompt = await run_in_threadpool(_prompt, rt, body)
    _log_request(call, body, prompt.conversation)
    note_annotations(call, prompt.plan)
    split = prompt.split
    check_prompt_size(rt, len(split.prefix.encode()) + len(split.suffix.encode()))
    stop = tuple(body.stop_sequences) if body.stop_sequences else None
    sampling = {"temperature": body.temperature, "top_p": body.top_p, "top_k": body.top_k}
    config = await decode_config(
        rt, {"max_tokens": body.max_tokens, **sampling, "stop": stop, **prompt.plan.decode_options()}
    )
    key = first_key(SessionKey("metadata.user_id", session_of(body.metadata)))
    ws = await route_workspace(rt, call, workspace, key, split.text)
    blocks = Blocks(prompt.plan.parser(new_tool_use_id))
    after = (lambda session, _: _warm_next(prompt, blocks, session)) if rt.settings.warm_next else None
    plan = Plan(ws, prompt.segments, split.suffix, config, after, max_tokens_is_cap=True)
    generation = rt.engine.generation(call, plan)
    ident = "msg_" + uuid.uuid4().hex[:24]
    headers = {WORKSPACE_HEADER: ws}
    if body.stream:
        encoder = MessagesEncoder(generation, blocks, ident, body.model, lambda: rt.router.remember(ws, split.text))
        return sse_response(stream_generation(generation, encoder, ping), headers)
    await collect(generation)
    rt.router.remember(ws, split.text)
    return json_response(_message(generation, blocks, ident, body.model), headers=headers)


def _message(generation: Generation, blocks: Blocks, ident: str, model: str) -> MessageOut:
    """A finished generation as one message object."""
    blocks.feed(generation.text)
    blocks.finish()
    reason = stop_reason(generation, blocks)
    generation.call.log["stop_reason"] = reason[0]
    return message_out(ident, model, blocks.content, reason, usage(generation))


def _warm_next(prompt: Prompt, blocks: Blocks, session: KVSession) -> PrefixInput | None:
    """The next request's prefix with this answer as it will be sent back (see reply.warm_next)."""
    conversation = prompt.conversation
    if conversation.messages[-1].role == "assistant":
        return None
    expected = [*conversation.messages, blocks.assistant_message(), ChatMessage("user", "")]
    turn = conversation.turns  # the answer's index among the next request's messages
    cuts = [*conversation.cuts, Cut(len(expected) - 2, f"msg{turn}:assistant"), Cut(len(expected) - 1, "next")]
    split = prompt.plan.split(expected)
    return session.prefix(prompt.plan.segments(expected, split, cuts))


@router.post(
    f"{BASE}/count_tokens",
    summary="Count a message's input tokens (Anthropic Messages API)",
    responses={200: {"model": TokenCount}, **ERROR_RESPONSES},
)
async def count_tokens(body: CountTokensRequest, rt: RuntimeDep, call: CallDep) -> Response:
    check_model(rt, body.model)
    prompt = await run_in_threadpool(_prompt, rt, body, False)
    _log_request(call, body, prompt.conversation)
    check_prompt_size(rt, len(prompt.split.text.encode()))
    tokens = await run_in_threadpool(rt.pool.tokenize, prompt.split.text)
    return json_response(TokenCount(input_tokens=len(tokens)))
