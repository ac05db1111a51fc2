"""The wire details of coding agents, in one place for the agent proxy, the scenario runner, the replay
benchmark and the end-to-end tests.

Three APIs: Anthropic Messages (`POST /v1/messages`, Claude Code), OpenAI Responses (`POST /v1/responses`,
Codex CLI) and OpenAI chat completions (`POST /v1/chat/completions`, aider). For each: the session key an
agent sends, the server's usage fields (prompt tokens and the part of them served from cache), the first
streamed content event (what TTFT is measured to), tool calls the server emitted and tool results the agent
sent back (evidence that it executed them).

Usage semantics differ per API: Anthropic's `input_tokens` excludes cached tokens (prompt = input_tokens +
cache_read_input_tokens + cache_creation_input_tokens); OpenAI's `input_tokens` / `prompt_tokens` include them
(`input_tokens_details.cached_tokens` / `prompt_tokens_details.cached_tokens`). llama-server also attaches its
own `timings` (`prompt_n` tokens evaluated, `cache_n` tokens reused), kept alongside as a cross-check.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "CREDENTIAL_HEADERS",
    "Api",
    "Reply",
    "ReplyObserver",
    "SSEParser",
    "api_of",
    "has_tools",
    "public_headers",
    "read_recording",
    "session_key",
    "tool_results_in",
]

Api = Literal["anthropic", "responses", "chat", "other"]

CREDENTIAL_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "x-api-key", "api-key", "cookie", "set-cookie", "openai-api-key"}
)
_SESSION_IN_USER_ID = re.compile(r"session_([0-9a-fA-F-]{36})")


def api_of(path: str) -> Api:
    """Which API a request path belongs to (query string ignored; count_tokens is not a generation)."""
    route = path.split("?", 1)[0].rstrip("/")
    if route.endswith("/v1/messages"):
        return "anthropic"
    if route.endswith("/v1/responses"):
        return "responses"
    if route.endswith("/v1/chat/completions") or route.endswith("/chat/completions"):
        return "chat"
    return "other"


def public_headers(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Headers with names lower-cased and every credential left out (recordings must hold no secrets)."""
    return {k.lower(): v for k, v in headers if k.lower() not in CREDENTIAL_HEADERS}


def session_key(api: Api, headers: Mapping[str, str], body: object) -> str | None:
    """The agent's own session identifier, where its API carries one.

    Anthropic: `metadata.user_id` (Claude Code sends a JSON string with `session_id`; older versions a
    `..._session_<uuid>` string), else the `x-claude-code-session-id` header. Responses: `prompt_cache_key`,
    else the `session-id` header. Chat: `user`, else the `x-llamanode-workspace` header.
    """
    fields = body if isinstance(body, dict) else {}
    if api == "anthropic":
        user_id = (fields.get("metadata") or {}).get("user_id")
        if isinstance(user_id, str) and user_id:
            return _session_from_user_id(user_id)
        return headers.get("x-claude-code-session-id")
    if api == "responses":
        return fields.get("prompt_cache_key") or headers.get("session-id")
    if api == "chat":
        return fields.get("user") or headers.get("x-llamanode-workspace")
    return None


def _session_from_user_id(user_id: str) -> str:
    try:
        parsed = json.loads(user_id)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and parsed.get("session_id"):
        return str(parsed["session_id"])
    found = _SESSION_IN_USER_ID.search(user_id)
    return found.group(1) if found else user_id


def has_tools(body: object) -> bool:
    return isinstance(body, dict) and bool(body.get("tools"))


def tool_results_in(api: Api, body: object) -> int:
    """How many tool results the agent sent back in this request: each is a tool call it executed."""
    if not isinstance(body, dict):
        return 0
    if api == "anthropic":
        return sum(
            1
            for message in body.get("messages") or []
            if isinstance(message.get("content"), list)
            for block in message["content"]
            if isinstance(block, dict) and block.get("type") == "tool_result"
        )
    if api == "responses":
        items = body.get("input")
        outputs = {"function_call_output", "custom_tool_call_output", "local_shell_call_output"}
        if not isinstance(items, list):
            return 0
        return sum(1 for item in items if isinstance(item, dict) and item.get("type") in outputs)
    if api == "chat":
        return sum(1 for message in body.get("messages") or [] if message.get("role") == "tool")
    return 0


# -- reading what a server answered ------------------------------------------------------------------


class SSEParser:
    """Incremental server-sent-events parser over raw bytes: feed chunks, get (event, data) pairs.

    Hand-written because the proxy must pass upstream bytes through unchanged while it watches the events,
    and httpx-sse only parses a stream it consumes itself. Lines end in LF or CRLF (all servers here).
    """

    def __init__(self) -> None:
        self._buffer = b""
        self._event = ""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[tuple[str, str]]:
        self._buffer += chunk
        events: list[tuple[str, str]] = []
        while (end := self._buffer.find(b"\n")) != -1:
            line = self._buffer[:end].rstrip(b"\r").decode("utf-8", "replace")
            self._buffer = self._buffer[end + 1 :]
            events.extend(self._line(line))
        return events

    def close(self) -> list[tuple[str, str]]:
        """Dispatch an event the stream ended without a blank line after."""
        rest = self._buffer.rstrip(b"\r").decode("utf-8", "replace")
        self._buffer = b""
        return [*self._line(rest), *self._line("")] if rest else list(self._line(""))

    def _line(self, line: str) -> Iterator[tuple[str, str]]:
        if not line:
            if self._data:
                yield (self._event or "message", "\n".join(self._data))
            self._event, self._data = "", []
            return
        if line.startswith(":"):
            return
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)


@dataclass
class Reply:
    """What one answer said about itself. Times are seconds from when the request was sent."""

    prompt_tokens: int | None = None
    cached_tokens: int | None = None
    output_tokens: int | None = None
    timings_prompt_n: int | None = None  # llama-server's own counts (`timings`), where it sends them
    timings_cache_n: int | None = None
    first_content_s: float | None = None
    stop_reason: str | None = None
    tool_calls: list[str] = field(default_factory=list)
    error: str | None = None
    events: int = 0
    finished: bool = False  # the answer's own end was seen (a client may close the stream right after it)
    usage_source: str | None = None  # "usage" (the API's fields), "timings" (llama-server's), or None

    def settle(self) -> None:
        """Fall back to llama-server's timings where the API's usage is missing (a chat stream without
        `stream_options.include_usage`)."""
        if self.prompt_tokens is not None:
            self.usage_source = "usage"
        elif self.timings_prompt_n is not None and self.timings_cache_n is not None:
            self.prompt_tokens = self.timings_prompt_n + self.timings_cache_n
            self.cached_tokens = self.timings_cache_n
            self.usage_source = "timings"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def reuse(self) -> float | None:
        """Fraction of the prompt served from cache, from the API's usage fields."""
        if self.prompt_tokens and self.cached_tokens is not None:
            return self.cached_tokens / self.prompt_tokens
        return None


class ReplyObserver:
    """Watches a response's bytes as they pass (SSE or one JSON body) and fills a Reply."""

    def __init__(self, api: Api, streaming: bool) -> None:
        self.api = api
        self.streaming = streaming
        self.reply = Reply()
        self._sse = SSEParser()
        self._body = bytearray()

    def feed(self, chunk: bytes, at_s: float) -> None:
        if not self.streaming:
            self._body += chunk
            return
        for event, data in self._sse.feed(chunk):
            self._event(event, data, at_s)

    def finish(self, at_s: float) -> Reply:
        if self.streaming:
            for event, data in self._sse.close():
                self._event(event, data, at_s)
        elif self._body:
            try:
                obj = json.loads(bytes(self._body))
            except ValueError:
                obj = None
            if isinstance(obj, dict):
                _observe_body(self.api, obj, self.reply)
                self.reply.finished = True
                if self.reply.error is None:
                    self.reply.first_content_s = at_s
        if self.reply.first_content_s is None and self.reply.finished and self.reply.error is None:
            self.reply.first_content_s = at_s  # an empty answer: its first token time is its end
        self.reply.settle()
        return self.reply

    def _event(self, event: str, data: str, at_s: float) -> None:
        if data == "[DONE]":
            self.reply.finished = True
            return
        try:
            obj = json.loads(data)
        except ValueError:
            return
        if not isinstance(obj, dict):
            return
        self.reply.events += 1
        _observe_timings(obj, self.reply)
        kind = obj.get("type") or event
        is_content = _observe_event(self.api, kind, obj, self.reply)
        self.reply.finished = self.reply.finished or kind in _FINAL_EVENTS
        if is_content and self.reply.first_content_s is None:
            self.reply.first_content_s = at_s


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _observe_timings(obj: Mapping[str, Any], reply: Reply) -> None:
    timings = obj.get("timings")
    if isinstance(timings, dict):
        reply.timings_prompt_n = _int(timings.get("prompt_n"))
        reply.timings_cache_n = _int(timings.get("cache_n"))


def _anthropic_usage(usage: object, reply: Reply) -> None:
    if not isinstance(usage, dict):
        return
    if "input_tokens" in usage:  # message_delta may carry only output_tokens
        parts = ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")
        reply.prompt_tokens = sum(_int(usage.get(p)) or 0 for p in parts)
        reply.cached_tokens = _int(usage.get("cache_read_input_tokens")) or 0
    reply.output_tokens = _int(usage.get("output_tokens")) or reply.output_tokens


def _openai_usage(usage: object, reply: Reply, prompt: str, details: str, output: str) -> None:
    if not isinstance(usage, dict):
        return
    reply.prompt_tokens = _int(usage.get(prompt))
    cached = (usage.get(details) or {}).get("cached_tokens")
    reply.cached_tokens = _int(cached)
    reply.output_tokens = _int(usage.get(output))


_RESPONSES_CONTENT = (".delta",)
_FINAL_EVENTS = {"message_stop", "response.completed", "response.incomplete", "response.failed"}
_ANTHROPIC_CONTENT = {"content_block_delta"}


def _observe_event(api: Api, kind: str, obj: dict[str, Any], reply: Reply) -> bool:
    """Fold one event into the reply; True when it carries generated content (text, thinking or a call)."""
    if kind == "error" or obj.get("error"):
        reply.error = json.dumps(obj.get("error", obj))[:500]
        return False
    if api == "anthropic":
        return _anthropic_event(kind, obj, reply)
    if api == "responses":
        return _responses_event(kind, obj, reply)
    if api == "chat":
        return _chat_chunk(obj, reply)
    return False


def _anthropic_event(kind: str, obj: dict[str, Any], reply: Reply) -> bool:
    if kind == "message_start":
        _anthropic_usage((obj.get("message") or {}).get("usage"), reply)
    elif kind == "message_delta":
        _anthropic_usage(obj.get("usage"), reply)
        reply.stop_reason = (obj.get("delta") or {}).get("stop_reason") or reply.stop_reason
    elif kind == "content_block_start":
        block = obj.get("content_block") or {}
        if block.get("type") == "tool_use":
            reply.tool_calls.append(str(block.get("name")))
            return True
    return kind in _ANTHROPIC_CONTENT


def _responses_event(kind: str, obj: dict[str, Any], reply: Reply) -> bool:
    if kind in ("response.completed", "response.incomplete", "response.failed"):
        _responses_body(obj.get("response") or {}, reply)
        return False
    if kind == "response.output_item.added":
        return (obj.get("item") or {}).get("type") == "function_call"
    return kind.endswith(_RESPONSES_CONTENT)


def _responses_body(response: dict[str, Any], reply: Reply) -> None:
    _openai_usage(response.get("usage"), reply, "input_tokens", "input_tokens_details", "output_tokens")
    reply.stop_reason = response.get("status") or reply.stop_reason
    reply.tool_calls = [
        str(item.get("name")) for item in response.get("output") or [] if item.get("type") == "function_call"
    ]
    if response.get("error"):
        reply.error = json.dumps(response["error"])[:500]


def _chat_chunk(obj: dict[str, Any], reply: Reply) -> bool:
    if obj.get("usage"):
        _openai_usage(obj["usage"], reply, "prompt_tokens", "prompt_tokens_details", "completion_tokens")
    content = False
    for choice in obj.get("choices") or []:
        delta = choice.get("delta") or choice.get("message") or {}
        calls = delta.get("tool_calls") or []
        reply.tool_calls += [str(c["function"]["name"]) for c in calls if (c.get("function") or {}).get("name")]
        content = content or bool(delta.get("content") or delta.get("reasoning_content") or calls)
        reply.stop_reason = choice.get("finish_reason") or reply.stop_reason
    return content


def _observe_body(api: Api, obj: dict[str, Any], reply: Reply) -> None:
    """A whole JSON answer (not streamed)."""
    _observe_timings(obj, reply)
    if "error" in obj and obj.get("error"):
        reply.error = json.dumps(obj["error"])[:500]
    if api == "anthropic":
        _anthropic_usage(obj.get("usage"), reply)
        reply.stop_reason = obj.get("stop_reason")
        reply.tool_calls = [str(b.get("name")) for b in obj.get("content") or [] if b.get("type") == "tool_use"]
    elif api == "responses":
        _responses_body(obj, reply)
    elif api == "chat":
        _chat_chunk(obj, reply)


# -- recordings ------------------------------------------------------------------------------------


def read_recording(path: Path) -> list[dict[str, Any]]:
    """The proxy's records, one JSON object per line, in arrival order."""
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return sorted(records, key=lambda r: r["seq"])
