"""OpenAI-compatible routes: chat completions, completions, embeddings, models."""

from __future__ import annotations

import base64
import struct
from typing import Annotated, Any

from fastapi import APIRouter, Header
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from ..chat import messages_from_mappings
from ..config import DecodeConfig
from ..errors import UnsupportedFeatureError
from ..tools import ToolPlan, Tools
from .engine import Plan
from .errors import ApiError, from_exception
from .openai_output import respond
from .prepare import (
    SessionKey,
    check_model,
    check_prompt_size,
    decode_config,
    first_key,
    note_annotations,
    route_workspace,
    unknown_model,
)
from .reply import Reply, prompt_segments, split_prompt, tool_decode_options, warm_next
from .responses import (
    ChatChunk,
    ChatCompletion,
    Completion,
    CompletionChunk,
    EmbeddingItem,
    EmbeddingList,
    EmbeddingUsage,
    ModelCard,
    ModelList,
    ModelMeta,
)
from .runtime import Runtime
from .schemas import (
    WORKSPACE_HEADER,
    WORKSPACE_ID_PATTERN,
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    NamedToolChoice,
    ResponseFormatJsonObject,
    ResponseFormatJsonSchema,
)
from .web import ERROR_RESPONSES, CallDep, JsonRoute, RuntimeDep, event_stream, json_response

__all__ = ["WorkspaceHeader", "chat_tool_plan", "router"]

COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's documented default for /v1/completions

router = APIRouter(route_class=JsonRoute, tags=["OpenAI"])

WorkspaceHeader = Annotated[
    str | None,
    Header(
        alias=WORKSPACE_HEADER,
        pattern=WORKSPACE_ID_PATTERN,
        description="Workspace to run in (created if new). Without it: the client's session key "
        "(previous_response_id, prompt_cache_key, user: README, routing), else the workspace sharing the longest "
        "prompt prefix.",
    ),
]


@router.get(
    "/v1/models",
    summary="List the served model, then its aliases (--alias)",
    responses={200: {"model": ModelList}, **ERROR_RESPONSES},
)
async def models(rt: RuntimeDep) -> Response:
    names = [rt.model_id, *(a for a in rt.settings.aliases if a != rt.model_id)]
    return json_response(ModelList(data=[_model_card(rt, name) for name in dict.fromkeys(names)]))


@router.get(
    "/v1/models/{model}", summary="Describe the served model", responses={200: {"model": ModelCard}, **ERROR_RESPONSES}
)
async def model(rt: RuntimeDep, model: str) -> Response:
    if model not in rt.model_names:
        raise unknown_model(rt, model)
    return json_response(_model_card(rt, model))


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
    chat = messages_from_mappings([m.model_dump(exclude_none=True) for m in body.messages])
    plan = chat_tool_plan(rt, body)

    schema = _json_schema(body.response_format)
    config = await _decode_config(rt, body, max_tokens, schema, plan)
    note_annotations(call, plan, schema)
    split = split_prompt(rt, plan, chat)  # on the loop: well under a millisecond for a 100 KB prompt
    check_prompt_size(rt, len(split.prefix.encode()) + len(split.suffix.encode()))
    key = first_key(SessionKey("prompt_cache_key", body.prompt_cache_key or ""), SessionKey("user", body.user or ""))
    ws = await route_workspace(rt, call, workspace, key, split.text)
    segments = await run_in_threadpool(prompt_segments, rt, plan, chat, split)
    reply = Reply(plan)
    after = (lambda session, _: warm_next(rt, session, plan, chat, reply)) if rt.settings.warm_next else None
    generation = rt.engine.generation(call, Plan(ws, segments, split.suffix, config, after))
    return await respond(rt, generation, reply, body.stream, _include_usage(body), split.text, chat=True)


def chat_tool_plan(rt: Runtime, body: ChatCompletionRequest) -> ToolPlan | None:
    """The request's tools on the model's template; None without tools (the prompt is then plain chat)."""
    if not body.tools:
        if body.tool_choice not in (None, "none", "auto"):
            raise ApiError(400, "tool_choice needs tools", param="tool_choice", code="invalid_value")
        return None
    choice = body.tool_choice.model_dump() if isinstance(body.tool_choice, NamedToolChoice) else body.tool_choice
    tools = Tools.from_openai([t.model_dump(exclude_none=True) for t in body.tools], choice, body.parallel_tool_calls)
    return ToolPlan(rt.template, tools)


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

    config = await _decode_config(rt, body, max_tokens, None, None)
    check_prompt_size(rt, len(prompt.encode()), "prompt")
    ws = await route_workspace(rt, call, workspace, first_key(SessionKey("user", body.user or "")), prompt)
    generation = rt.engine.generation(call, Plan(ws, (("prompt", prompt),), None, config))
    return await respond(rt, generation, Reply(None), body.stream, _include_usage(body), prompt, chat=False)


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
def _model_card(rt: Runtime, name: str) -> ModelCard:
    """The served model under one of its names (an alias names the same model)."""
    info = rt.model_info
    meta = ModelMeta(description=info.description, sha256=info.digest, num_ctx=rt.num_ctx)
    return ModelCard(id=name, created=rt.started_at, owned_by="llamanode", meta=meta)


async def _decode_config(
    rt: Runtime,
    body: ChatCompletionRequest | CompletionRequest,
    max_tokens: int | None,
    schema: dict[str, Any] | None,
    plan: ToolPlan | None,
) -> DecodeConfig:
    stop = (body.stop,) if isinstance(body.stop, str) else None if body.stop is None else tuple(body.stop)
    sampling = {
        name: getattr(body, name) for name in ("temperature", "top_p", "top_k", "min_p", "repeat_penalty", "seed")
    }
    values = {"max_tokens": max_tokens, **sampling, "stop": stop, "json_schema": schema}
    return await decode_config(rt, values | tool_decode_options(plan, schema, stop))


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
