"""Chat and text completions on the wire: one JSON body, or OpenAI's streamed chunks (tool-call deltas included)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import pydantic_core
from starlette.responses import Response

from ..session import StreamChunk
from ..tools import ArgumentsDelta, CallFinished, CallStarted, ContentDelta, ToolEvent
from .engine import Generation
from .errors import ApiError, openai_error
from .reply import Reply
from .responses import (
    AssistantMessage,
    ChatChoice,
    ChatChunk,
    ChatChunkChoice,
    ChatCompletion,
    ChatDelta,
    Completion,
    CompletionChunk,
    FunctionCallDelta,
    FunctionCallOut,
    PromptTokensDetails,
    TextChoice,
    ToolCallDelta,
    ToolCallOut,
    UsageOut,
)
from .runtime import Runtime
from .schemas import WORKSPACE_HEADER
from .streaming import collect, data_event, sse_response, stream_generation
from .web import json_response

__all__ = ["respond", "usage_out"]


async def respond(
    rt: Runtime,
    generation: Generation,
    reply: Reply,
    stream: bool,
    include_usage: bool,
    prompt: str,
    chat: bool,
) -> Response:
    ident = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
    encoder = _Encoder(rt, generation, reply, ident, int(time.time()), chat, include_usage, prompt)
    headers = {WORKSPACE_HEADER: generation.workspace}
    if stream:
        return sse_response(stream_generation(generation, encoder), headers)
    decoded = await collect(generation)
    rt.router.remember(generation.workspace, prompt)
    reply.read(generation.text)
    finish = reply.finish_reason(decoded)
    base: dict[str, Any] = encoder.base | {"usage": usage_out(generation)}
    if chat:
        calls = [
            ToolCallOut(id=c.id, function=FunctionCallOut(name=c.name, arguments=c.arguments)) for c in reply.calls
        ]
        content = reply.content if reply.content or not calls else None
        message = AssistantMessage(content=content, tool_calls=calls or None)
        choice = ChatChoice(index=0, message=message, finish_reason=finish)
        return json_response(ChatCompletion(**base, choices=[choice]), headers=headers)
    text_choice = TextChoice(index=0, text=reply.content, finish_reason=finish)
    return json_response(Completion(**base, choices=[text_choice]), headers=headers)


def _call_out(call: CallFinished) -> ToolCallOut:
    return ToolCallOut(id=call.id, function=FunctionCallOut(name=call.name, arguments=call.arguments))


def usage_out(generation: Generation) -> UsageOut:
    usage = generation.usage()
    return UsageOut(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.prompt_tokens + usage.completion_tokens,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=usage.cached_tokens),
    )


class _Encoder:
    """OpenAI's streamed chunks: the first carries the role, the last the finish reason; then usage
    (when asked for) and [DONE]. A call streams as one delta with its id and name, then its arguments."""

    def __init__(
        self,
        rt: Runtime,
        generation: Generation,
        reply: Reply,
        ident: str,
        created: int,
        chat: bool,
        include_usage: bool,
        prompt: str,
    ) -> None:
        self.rt = rt
        self.generation = generation
        self.reply = reply
        self.chat = chat
        self.include_usage = include_usage
        self.prompt = prompt
        self.base = {"id": ident, "created": created, "model": rt.model_id, "system_fingerprint": rt.fingerprint}
        self._first = True

    def chunk(self, chunk: StreamChunk) -> list[bytes]:
        events = self.reply.feed(chunk.text)
        if chunk.finish_reason is not None:
            events += self.reply.finish()
        deltas = [d for d in map(self._delta, events) if d is not None]
        if self._first and (not deltas or deltas[0].content is None):
            deltas.insert(0, ChatDelta(content=""))  # the role comes first, with the content so far
        out = [self._event(delta, None) for delta in deltas]
        if chunk.finish_reason is not None:
            out.append(self._event(ChatDelta(), self.reply.finish_reason(chunk.finish_reason)))
        return out

    def done(self) -> list[bytes]:
        self.rt.router.remember(self.generation.workspace, self.prompt)
        events = [self._dump(choices=[], usage=usage_out(self.generation))] if self.include_usage else []
        return [*events, data_event("[DONE]")]

    def error(self, error: ApiError) -> bytes:
        return data_event(pydantic_core.to_json(openai_error(error)))

    @staticmethod
    def _delta(event: ToolEvent) -> ChatDelta | None:
        if isinstance(event, ContentDelta):
            return ChatDelta(content=event.text)
        if isinstance(event, CallStarted):
            fn = FunctionCallDelta(name=event.name, arguments="")
            return ChatDelta(tool_calls=[ToolCallDelta(index=event.index, id=event.id, type="function", function=fn)])
        if isinstance(event, ArgumentsDelta):
            fn = FunctionCallDelta(arguments=event.text)
            return ChatDelta(tool_calls=[ToolCallDelta(index=event.index, function=fn)])
        return None  # CallFinished: the arguments are all out

    def _event(self, delta: ChatDelta, finish: str | None) -> bytes:
        if self._first:
            delta.role, self._first = "assistant", False  # assigned fields count as set: serialized
        if self.chat:
            choices: list[Any] = [ChatChunkChoice(index=0, delta=delta, logprobs=None, finish_reason=finish)]
        else:
            choices = [TextChoice(index=0, text=delta.content or "", logprobs=None, finish_reason=finish)]
        return self._dump(choices=choices, **({"usage": None} if self.include_usage else {}))

    def _dump(self, **fields: Any) -> bytes:
        model: Callable[..., Any] = ChatChunk if self.chat else CompletionChunk
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        return data_event(model(**self.base, object=obj, **fields).model_dump_json(exclude_unset=True))
