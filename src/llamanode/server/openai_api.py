"""OpenAI-compatible routes: chat completions, completions, embeddings, models."""

from __future__ import annotations

import base64
import struct
import time
import uuid
from collections.abc import Callable
from typing import Annotated, Any

import pydantic_core
from fastapi import APIRouter, Header
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from ..chat import ChatMessage
from ..chat_segments import chat_segments
from ..config import DecodeConfig
from ..errors import UnsupportedFeatureError
from ..kvsession import KVSession
from ..session import StreamChunk
from .engine import Generation, Plan
from .errors import ApiError, from_exception, openai_error
from .prepare import (
    SessionKey,
    check_model,
    check_prompt_size,
    decode_config,
    first_key,
    route_workspace,
    unknown_model,
)
from .responses import (
    AssistantMessage,
    ChatChoice,
    ChatChunk,
    ChatChunkChoice,
    ChatCompletion,
    ChatDelta,
    Completion,
    CompletionChunk,
    EmbeddingItem,
    EmbeddingList,
    EmbeddingUsage,
    ModelCard,
    ModelList,
    ModelMeta,
    PromptTokensDetails,
    TextChoice,
    UsageOut,
)
from .runtime import Runtime
from .schemas import (
    WORKSPACE_HEADER,
    WORKSPACE_ID_PATTERN,
    ChatCompletionRequest,
    ChatMessageIn,
    CompletionRequest,
    EmbeddingRequest,
    ResponseFormatJsonObject,
    ResponseFormatJsonSchema,
)
from .streaming import collect, data_event, sse_response, stream_generation
from .web import ERROR_RESPONSES, CallDep, JsonRoute, RuntimeDep, event_stream, json_response

__all__ = ["router"]

COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's documented default for /v1/completions

router = APIRouter(route_class=JsonRoute, tags=["OpenAI"])

WorkspaceHeader = Annotated[
    str | None,
    Header(
        alias=WORKSPACE_HEADER,
        pattern=WORKSPACE_ID_PATTERN,
        description="Workspace to run in (created if new). Without it: the `user` field, else the workspace "
        "sharing the longest prompt prefix.",
    ),
]


@router.get("/v1/models", summary="List the served model", responses={200: {"model": ModelList}, **ERROR_RESPONSES})
async def models(rt: RuntimeDep) -> Response:
    return json_response(ModelList(data=[_model_card(rt)]))


@router.get(
    "/v1/models/{model}", summary="Describe the served model", responses={200: {"model": ModelCard}, **ERROR_RESPONSES}
)
async def model(rt: RuntimeDep, model: str) -> Response:
    if model != rt.model_id:
        raise unknown_model(rt, model)
    return json_response(_model_card(rt))


@router.post(
    "/v1/chat/completions",
    summary="Chat completion (OpenAI-compatible)",
    responses={200: {"model": ChatCompletion, "content": event_stream(ChatChunk)}, **ERROR_RESPONSES},
)
async def chat_completions(
    body: ChatCompletionRequest, rt: RuntimeDep, call: CallDep, workspace: WorkspaceHeader = None
) -> Response:
    check_model(rt, body.model)
    _check_unsupported(body.presence_penalty, body.frequency_penalty)
    if body.logprobs:
        raise from_exception(UnsupportedFeatureError("logprobs"), "logprobs")
    max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    chat = [_message(m) for m in body.messages]

    config = await _decode_config(rt, body, max_tokens, _json_schema(body.response_format))
    split = rt.template.split(chat)  # on the loop: well under a millisecond for a 100 KB prompt
    check_prompt_size(rt, len(split.prefix.encode()) + len(split.suffix.encode()))
    ws = await route_workspace(rt, call, workspace, first_key(SessionKey("user", body.user or "")), split.text)
    segments = await run_in_threadpool(chat_segments, rt.template, chat, split)
    after = (lambda session, answer: _warm_next(rt, session, chat, answer)) if rt.settings.warm_next else None
    generation = rt.engine.generation(call, Plan(ws, segments, split.suffix, config, after))
    return await _respond(rt, generation, body.stream, _include_usage(body), split.text, chat=True)


def _warm_next(rt: Runtime, session: KVSession, chat: list[ChatMessage], answer: str) -> int:
    """Prefill this answer as the next request will send it back, once the response is out.

    The generated tokens' KV came from one-token decode steps and is never reused (it differs
    from a batched prefill); re-prefilling the answer in a batch while the client reads it
    makes the next turn's prefix warm up to its new user message, exactly.
    """
    if chat[-1].role == "assistant":
        return 0
    expected_chat = [*chat, ChatMessage("assistant", answer), ChatMessage("user", "")]
    expected = rt.template.split(expected_chat)
    status = session.ensure_prefix(session.prefix(chat_segments(rt.template, expected_chat, expected)))
    rt.metrics.warm_next_tokens.inc(status.prefilled_tokens)
    return status.prefilled_tokens


@router.post(
    "/v1/completions",
    summary="Text completion (OpenAI-compatible)",
    responses={200: {"model": Completion, "content": event_stream(CompletionChunk)}, **ERROR_RESPONSES},
)
async def completions(
    body: CompletionRequest, rt: RuntimeDep, call: CallDep, workspace: WorkspaceHeader = None
) -> Response:
    check_model(rt, body.model)
    _check_unsupported(body.presence_penalty, body.frequency_penalty)
    if body.echo:
        raise from_exception(UnsupportedFeatureError("echo"), "echo")
    prompt = body.prompt if isinstance(body.prompt, str) else body.prompt[0]
    if not prompt:
        raise ApiError(400, "prompt must not be empty", param="prompt", code="invalid_value")
    max_tokens = body.max_tokens if body.max_tokens is not None else COMPLETIONS_DEFAULT_MAX_TOKENS

    config = await _decode_config(rt, body, max_tokens, None)
    check_prompt_size(rt, len(prompt.encode()), "prompt")
    ws = await route_workspace(rt, call, workspace, first_key(SessionKey("user", body.user or "")), prompt)
    generation = rt.engine.generation(call, Plan(ws, (("prompt", prompt),), None, config))
    return await _respond(rt, generation, body.stream, _include_usage(body), prompt, chat=False)


@router.post(
    "/v1/embeddings",
    summary="Embeddings (OpenAI-compatible)",
    responses={200: {"model": EmbeddingList}, **ERROR_RESPONSES},
)
async def embeddings(body: EmbeddingRequest, rt: RuntimeDep, call: CallDep) -> Response:
    check_model(rt, body.model)
    texts = [body.input] if isinstance(body.input, str) else list(body.input)
    check_prompt_size(rt, sum(len(t.encode()) for t in texts), "input")
    counts = await run_in_threadpool(lambda: [len(rt.pool.tokenize(text)) for text in texts])
    if 0 in counts:
        raise ApiError(
            400,
            f"input {counts.index(0)} has no tokens (e.g. only control characters)",
            param="input",
            code="invalid_input",
        )

    def run() -> list[EmbeddingItem]:
        items: list[EmbeddingItem] = []
        for index, text in enumerate(texts):
            vector = rt.model_probe.embed(rt.config, text)
            if body.dimensions is not None and body.dimensions != len(vector):
                raise from_exception(UnsupportedFeatureError(f"dimensions other than {len(vector)}"), "dimensions")
            value: list[float] | str = vector
            if body.encoding_format == "base64":
                value = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
            items.append(EmbeddingItem(object="embedding", index=index, embedding=value))
        return items

    data = await rt.engine.run(call, None, run)
    call.log["embedded_inputs"] = len(texts)
    usage = EmbeddingUsage(prompt_tokens=sum(counts), total_tokens=sum(counts))
    return json_response(EmbeddingList(data=data, model=rt.model_id, usage=usage))


# -- shared -----------------------------------------------------------------------------------------
def _model_card(rt: Runtime) -> ModelCard:
    info = rt.model_info
    meta = ModelMeta(description=info.description, sha256=info.digest, num_ctx=rt.num_ctx)
    return ModelCard(id=rt.model_id, created=rt.started_at, owned_by="llamanode", meta=meta)


async def _decode_config(
    rt: Runtime, body: ChatCompletionRequest | CompletionRequest, max_tokens: int | None, schema: dict[str, Any] | None
) -> DecodeConfig:
    stop = (body.stop,) if isinstance(body.stop, str) else None if body.stop is None else tuple(body.stop)
    sampling = {
        name: getattr(body, name) for name in ("temperature", "top_p", "top_k", "min_p", "repeat_penalty", "seed")
    }
    return await decode_config(rt, {"max_tokens": max_tokens, **sampling, "stop": stop, "json_schema": schema})


async def _respond(
    rt: Runtime, generation: Generation, stream: bool, include_usage: bool, prompt: str, chat: bool
) -> Response:
    ident = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
    encoder = _Encoder(rt, generation, ident, int(time.time()), chat, include_usage, prompt)
    headers = {WORKSPACE_HEADER: generation.workspace}
    if stream:
        return sse_response(stream_generation(generation, encoder), headers)
    finish = await collect(generation)
    rt.router.remember(generation.workspace, prompt)
    base: dict[str, Any] = encoder.base | {"usage": _usage(generation)}
    if chat:
        message = AssistantMessage(content=generation.text)
        choice = ChatChoice(index=0, message=message, finish_reason=finish)
        return json_response(ChatCompletion(**base, choices=[choice]), headers=headers)
    text_choice = TextChoice(index=0, text=generation.text, finish_reason=finish)
    return json_response(Completion(**base, choices=[text_choice]), headers=headers)


def _usage(generation: Generation) -> UsageOut:
    usage = generation.usage()
    return UsageOut(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.prompt_tokens + usage.completion_tokens,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=usage.cached_tokens),
    )


class _Encoder:
    """OpenAI's streamed chunks: the first carries the role, the last the finish reason; then usage
    (when asked for) and [DONE]."""

    def __init__(
        self,
        rt: Runtime,
        generation: Generation,
        ident: str,
        created: int,
        chat: bool,
        include_usage: bool,
        prompt: str,
    ) -> None:
        self.rt = rt
        self.generation = generation
        self.chat = chat
        self.include_usage = include_usage
        self.prompt = prompt
        self.base = {"id": ident, "created": created, "model": rt.model_id, "system_fingerprint": rt.fingerprint}
        self._first = True

    def chunk(self, chunk: StreamChunk) -> list[bytes]:
        events: list[bytes] = []
        if chunk.text or self._first:
            events.append(self._event(chunk.text, None))
        if chunk.finish_reason is not None:
            events.append(self._event(None, chunk.finish_reason))
        return events

    def done(self) -> list[bytes]:
        self.rt.router.remember(self.generation.workspace, self.prompt)
        events = [self._dump(choices=[], usage=_usage(self.generation))] if self.include_usage else []
        return [*events, data_event("[DONE]")]

    def error(self, error: ApiError) -> bytes:
        return data_event(pydantic_core.to_json(openai_error(error)))

    def _event(self, text: str | None, finish: str | None) -> bytes:
        first, self._first = self._first, False
        if self.chat:
            delta = ChatDelta(role="assistant") if first else ChatDelta()
            if text is not None:
                delta.content = text  # assigned fields count as set: serialized
            choices: list[Any] = [ChatChunkChoice(index=0, delta=delta, logprobs=None, finish_reason=finish)]
        else:
            choices = [TextChoice(index=0, text=text or "", logprobs=None, finish_reason=finish)]
        return self._dump(choices=choices, **({"usage": None} if self.include_usage else {}))

    def _dump(self, **fields: Any) -> bytes:
        model: Callable[..., Any] = ChatChunk if self.chat else CompletionChunk
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        return data_event(model(**self.base, object=obj, **fields).model_dump_json(exclude_unset=True))


def _message(m: ChatMessageIn) -> ChatMessage:
    if m.content is None:
        content = ""
    elif isinstance(m.content, str):
        content = m.content
    else:
        content = "\n".join(part.text for part in m.content)  # llama.cpp joins text parts with newlines
    return ChatMessage(m.role, content, m.name)


def _json_schema(fmt: object) -> dict[str, Any] | None:
    if isinstance(fmt, ResponseFormatJsonObject):
        return {"type": "object"}  # llama-server's reading of json_object: any JSON object
    if isinstance(fmt, ResponseFormatJsonSchema):
        return dict(fmt.json_schema.schema_ or {"type": "object"})
    return None


def _include_usage(body: ChatCompletionRequest | CompletionRequest) -> bool:
    return bool(body.stream and body.stream_options is not None and body.stream_options.include_usage)


def _check_unsupported(presence: float | None, frequency: float | None) -> None:
    if presence:
        raise from_exception(
            UnsupportedFeatureError("presence_penalty other than 0 (use repeat_penalty)"), "presence_penalty"
        )
    if frequency:
        raise from_exception(
            UnsupportedFeatureError("frequency_penalty other than 0 (use repeat_penalty)"), "frequency_penalty"
        )
