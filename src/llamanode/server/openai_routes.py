"""OpenAI-compatible routes: chat completions, completions, embeddings, models."""

from __future__ import annotations

import base64
import hashlib
import struct
import time
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from ..chat import ChatMessage
from ..config import DecodeConfig
from ..errors import UnsupportedFeatureError
from ..kvsession import KVSession
from ..workspace_id import is_workspace_id
from .engine import Job
from .errors import ApiError, from_exception
from .http import ClientGone, JsonResponse, Request, Response, StreamResponse, parse_body, sse_event
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

if TYPE_CHECKING:
    from .app import App

__all__ = ["WORKSPACE_HEADER", "OpenAIRoutes"]

COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's documented default for /v1/completions


class OpenAIRoutes:
    def __init__(self, app: App) -> None:
        self.app = app

    # -- /v1/models ------------------------------------------------------------------------
    def models(self, request: Request) -> Response:
        return JsonResponse({"object": "list", "data": [self._model_card()]})

    def model(self, request: Request) -> Response:
        if request.params["model"] != self.app.model_id:
            raise self._unknown_model(request.params["model"])
        return JsonResponse(self._model_card())

    def _model_card(self) -> dict[str, Any]:
        info = self.app.model_info
        return {
            "id": self.app.model_id,
            "object": "model",
            "created": self.app.started_at,
            "owned_by": "llamanode",
            "meta": {"description": info.description, "sha256": info.digest, "num_ctx": self.app.num_ctx},
        }

    # -- /v1/chat/completions ----------------------------------------------------------------
    def chat_completions(self, request: Request) -> Response:
        body = parse_body(request, ChatCompletionRequest)
        self._check_model(body.model)
        _check_unsupported(body.presence_penalty, body.frequency_penalty)
        if body.logprobs:
            raise from_exception(UnsupportedFeatureError("logprobs"), "logprobs")
        max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        config = self._decode_config(body, max_tokens, _json_schema(body.response_format))
        split = self.app.template.split([_message(m) for m in body.messages])
        self._check_prompt_size(len(split.prefix.encode()) + len(split.suffix.encode()))
        workspace = self._route(request, body.user, lambda: split.text)
        job = self.app.engine.start(request, workspace, (("chat", split.prefix),), split.suffix, config)
        if self.app.settings.warm_next:
            chat = [_message(m) for m in body.messages]
            job.after_success = lambda session: self._warm_next(request, session, chat, job.text)
        return self._respond(request, job, body.stream, _include_usage(body), split.text, chat=True)

    def _warm_next(self, request: Request, session: KVSession, chat: list[ChatMessage], answer: str) -> None:
        """Prefill this answer as the next request will send it back, once the response is out.

        The generated tokens' KV came from one-token decode steps and is never reused (it differs
        from a batched prefill); re-prefilling the answer in a batch while the client reads it
        makes the next turn's prefix warm up to its new user message, exactly.
        """
        if chat[-1].role == "assistant":
            return
        expected = self.app.template.split([*chat, ChatMessage("assistant", answer), ChatMessage("user", "")])
        status = session.ensure_prefix(session.prefix((("chat", expected.prefix),)))
        self.app.metrics.inc("llamanode_warm_next_tokens_total", status.prefilled_tokens)
        request.log["warm_next_tokens"] = status.prefilled_tokens

    # -- /v1/completions -------------------------------------------------------------------------
    def completions(self, request: Request) -> Response:
        body = parse_body(request, CompletionRequest)
        self._check_model(body.model)
        _check_unsupported(body.presence_penalty, body.frequency_penalty)
        if body.echo:
            raise from_exception(UnsupportedFeatureError("echo"), "echo")
        prompt = body.prompt if isinstance(body.prompt, str) else body.prompt[0]
        if not prompt:
            raise ApiError(400, "prompt must not be empty", param="prompt", code="invalid_value")
        max_tokens = body.max_tokens if body.max_tokens is not None else COMPLETIONS_DEFAULT_MAX_TOKENS
        config = self._decode_config(body, max_tokens, None)
        self._check_prompt_size(len(prompt.encode()))
        workspace = self._route(request, body.user, lambda: prompt)
        job = self.app.engine.start(request, workspace, (("prompt", prompt),), None, config)
        return self._respond(request, job, body.stream, _include_usage(body), prompt, chat=False)

    # -- /v1/embeddings ------------------------------------------------------------------------
    def embeddings(self, request: Request) -> Response:
        body = parse_body(request, EmbeddingRequest)
        self._check_model(body.model)
        texts = [body.input] if isinstance(body.input, str) else list(body.input)
        self._check_prompt_size(sum(len(t.encode()) for t in texts))
        data: list[dict[str, Any]] = []
        tokens = 0
        counts = [len(self.app.pool.tokenize(text)) for text in texts]
        if 0 in counts:
            raise ApiError(
                400,
                f"input {counts.index(0)} has no tokens (e.g. only control characters)",
                param="input",
                code="invalid_input",
            )
        with self.app.admission.slot(None):
            for index, text in enumerate(texts):
                vector = self.app.model_probe.embed(self.app.config, text)
                if body.dimensions is not None and body.dimensions != len(vector):
                    raise from_exception(UnsupportedFeatureError(f"dimensions other than {len(vector)}"), "dimensions")
                tokens += counts[index]
                value: Any = vector
                if body.encoding_format == "base64":
                    value = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
                data.append({"object": "embedding", "index": index, "embedding": value})
        request.log["embedded_inputs"] = len(texts)
        return JsonResponse(
            {
                "object": "list",
                "data": data,
                "model": self.app.model_id,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    # -- shared ---------------------------------------------------------------------------------
    def _check_model(self, name: str) -> None:
        if name not in self.app.model_names:
            raise self._unknown_model(name)

    def _unknown_model(self, name: str) -> ApiError:
        return ApiError(
            404,
            f"model {name!r} is not served here; this server serves {self.app.model_id!r} (see /v1/models)",
            code="model_not_found",
            param="model",
        )

    def _check_prompt_size(self, size: int) -> None:
        limit = self.app.settings.max_prompt_bytes
        if size > limit:
            raise ApiError(
                413,
                f"prompt is {size} bytes; this server accepts at most {limit}",
                code="prompt_too_large",
                param="messages",
            )

    def _decode_config(
        self, body: ChatCompletionRequest | CompletionRequest, max_tokens: int | None, schema: dict[str, Any] | None
    ) -> DecodeConfig:
        values: dict[str, Any] = {"max_tokens": max_tokens}
        for name in ("temperature", "top_p", "top_k", "min_p", "repeat_penalty", "seed"):
            value = getattr(body, name)
            if value is not None:
                values[name] = value
        if body.stop is not None:
            values["stop"] = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop)
        if schema is not None:
            values["json_schema"] = schema
        config = DecodeConfig.from_mapping(values)
        self.app.model_probe.check_grammar(config)
        return config

    def _route(self, request: Request, user: str | None, full_text: Callable[[], str]) -> str:
        """Header, else the OpenAI `user` field, else the workspace sharing the longest token prefix."""
        header = request.header(WORKSPACE_HEADER)
        if header is not None:
            if not is_workspace_id(header):
                raise ApiError(
                    400,
                    f"{WORKSPACE_HEADER} must match {WORKSPACE_ID_PATTERN}",
                    code="invalid_workspace",
                    param=WORKSPACE_HEADER,
                )
            request.log["routed_by"] = "header"
            return header
        if user:
            request.log["routed_by"] = "user"
            return "user-" + hashlib.sha256(user.encode("utf-8")).hexdigest()[:24]
        found, how = self.app.router.find(full_text())
        if found is not None:
            request.log["routed_by"] = how
            return found
        request.log["routed_by"] = "new"
        return "auto-" + uuid.uuid4().hex[:16]

    def _respond(
        self, request: Request, job: Job, stream: bool, include_usage: bool, prompt: str, chat: bool
    ) -> Response:
        ident = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        headers = {WORKSPACE_HEADER: job.workspace}
        if stream:
            events = _stream_events(self.app, job, ident, created, chat, include_usage, prompt)
            return StreamResponse(events, headers=headers, after=job.close)
        try:
            text, finish = _collect(job)
        except BaseException:
            job.close()
            raise
        self.app.router.remember(job.workspace, prompt)
        base = {
            "id": ident,
            "object": "chat.completion" if chat else "text_completion",
            "created": created,
            "model": self.app.model_id,
            "system_fingerprint": self.app.fingerprint,
            "usage": job.usage().openai(),
        }
        if chat:
            message = {"role": "assistant", "content": text, "refusal": None}
            choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        return JsonResponse({**base, "choices": [choice]}, headers=headers, after=job.close)


def _collect(job: Job) -> tuple[str, str]:
    parts: list[str] = []
    finish = "stop"
    for chunk in job:
        parts.append(chunk.text)
        if chunk.finish_reason is not None:
            if chunk.error is not None:
                raise from_exception(chunk.error)
            finish = chunk.finish_reason
    return "".join(parts), finish


def _stream_events(
    app: App, job: Job, ident: str, created: int, chat: bool, include_usage: bool, prompt: str
) -> Iterator[bytes]:
    obj = "chat.completion.chunk" if chat else "text_completion"
    base = {
        "id": ident,
        "object": obj,
        "created": created,
        "model": app.model_id,
        "system_fingerprint": app.fingerprint,
    }
    usage_null = {"usage": None} if include_usage else {}

    def event(delta_text: str | None, finish: str | None, first: bool = False) -> bytes:
        if chat:
            delta: dict[str, Any] = {}
            if first:
                delta["role"] = "assistant"
            if delta_text is not None:
                delta["content"] = delta_text
            choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": delta_text or "", "logprobs": None, "finish_reason": finish}
        return sse_event({**base, "choices": [choice], **usage_null})

    try:
        first = True
        for chunk in job:
            if chunk.error is not None:
                yield sse_event(from_exception(chunk.error).body())
                return
            if chunk.text or first:
                yield event(chunk.text, None, first=first)
                first = False
            if chunk.finish_reason is not None:
                yield event(None, chunk.finish_reason)
        app.router.remember(job.workspace, prompt)
        if include_usage:
            yield sse_event({**base, "choices": [], "usage": job.usage().openai()})
        yield sse_event("[DONE]")
    except ClientGone:
        return


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
