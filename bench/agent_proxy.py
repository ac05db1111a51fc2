"""agent_proxy: a recording proxy between a coding agent and a server.

Forwards every request to an upstream base URL, streams each response back unchanged, and appends one JSON
line per request to a recording: method, path and query, headers without credentials, the body as
forwarded, arrival time, time to the response headers, to the first body byte and to the first streamed
content event, status, and what the answer said about itself (prompt and cached tokens from the server's
usage, tool calls, stop reason; see agent_wire.py).

    .venv/bin/python -m bench.agent_proxy --upstream http://127.0.0.1:8080 --port 8090 \\
        --record bench/out/agents/claude.jsonl --label claude

Recordings hold the agents' own prompts: keep them under bench/out/ (gitignored); never commit them.
Harness edits, each off unless asked and listed in the record of the request it changed (`harness`):
  --max-output-tokens N   cap the output a request asks for (agents ask 32k-64k; the tiny model rarely stops)
  --force-tool-first      force a tool call on each session's first request that carries tools
  --stream-usage          ask chat-completion streams for their usage (aider does not)
`GET /_proxy/health` is answered by the proxy itself; every other path goes upstream.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import itertools
import json
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .agent_wire import (
    Api,
    ReplyObserver,
    api_of,
    has_tools,
    public_headers,
    session_key,
    tool_results_in,
)

# Not forwarded: connection-level headers, and accept-encoding: the proxy asks upstream for identity, so the
# bytes it forwards are the bytes upstream sent (a server that compresses anyway gets its body decoded).
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade", "host"}
    | {"content-length", "accept-encoding"}
)
HEALTH_PATH = "/_proxy/health"


# -- harness edits the proxy may make (each off unless asked) --------------------------------------


@dataclass(frozen=True)
class Harness:
    """Edits the recording proxy makes to a request before forwarding it, each off unless asked.

    max_output_tokens: cap the requested output (the 135M default model rarely stops by itself, and agents
        ask for 32k-64k tokens); a request that asks for less keeps its own figure, one that asks nothing gets
        the cap.
    force_tool_first: on a session's first request that carries tools, force a tool call (Anthropic
        `tool_choice: {"type": "any"}`, OpenAI `"required"`) so a tiny model exercises the agent's tool loop.
        Anthropic refuses forced tool use together with extended thinking, so `thinking` is dropped there.
    stream_usage: ask a chat-completions stream to end with its usage (`stream_options.include_usage`), which
        aider does not; otherwise a server need not report prompt and cached tokens there.
    """

    max_output_tokens: int | None = None
    force_tool_first: bool = False
    stream_usage: bool = False


_OUTPUT_LIMIT_FIELDS: dict[Api, tuple[str, ...]] = {
    "anthropic": ("max_tokens",),
    "responses": ("max_output_tokens",),
    "chat": ("max_tokens", "max_completion_tokens"),
}


def apply_harness(
    api: Api, body: dict[str, Any], first_with_tools: bool, harness: Harness
) -> tuple[dict[str, Any], list[str]]:
    """The body to forward and a list of the edits made, in words (recorded with the request)."""
    if api == "other":
        return body, []
    edited = copy.deepcopy(body)
    changes: list[str] = []
    cap = harness.max_output_tokens
    if cap is not None:
        names = _OUTPUT_LIMIT_FIELDS[api]
        present = [n for n in names if isinstance(edited.get(n), int)] or [names[0]]
        for name in present:
            asked = edited.get(name)
            if not isinstance(asked, int) or asked > cap:
                edited[name] = cap
                changes.append(f"{name} {asked} -> {cap}")
    if harness.force_tool_first and first_with_tools:
        edited["tool_choice"] = {"type": "any"} if api == "anthropic" else "required"
        changes.append(f"tool_choice {json.dumps(body.get('tool_choice'))} -> {json.dumps(edited['tool_choice'])}")
        if api == "anthropic" and "thinking" in edited:
            del edited["thinking"]
            changes.append("thinking dropped (Anthropic refuses it with a forced tool)")
    options = edited.get("stream_options") or {}
    if harness.stream_usage and api == "chat" and edited.get("stream") and not options.get("include_usage"):
        edited["stream_options"] = {**options, "include_usage": True}
        changes.append("stream_options.include_usage -> true")
    return edited, changes


@dataclass
class Recorder:
    """Appends one JSON line per request; remembers which sessions have had a request with tools."""

    path: Path
    label: str
    harness: Harness
    started: float = field(default_factory=time.monotonic)
    sessions_with_tools: set[str] = field(default_factory=set)
    _seq: itertools.count[int] = field(default_factory=itertools.count)

    def next_seq(self) -> int:
        return next(self._seq)

    def first_with_tools(self, session: str | None, body: object) -> bool:
        if not has_tools(body):
            return False
        key = session or ""
        first = key not in self.sessions_with_tools
        self.sessions_with_tools.add(key)
        return first

    def write(self, record: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as sink:
            sink.write(json.dumps(record, ensure_ascii=False) + "\n")


@dataclass
class Incoming:
    """One request as it arrived, after the harness edits."""

    seq: int
    arrival: float
    api: Api
    session: str | None
    headers: dict[str, str]
    body: object
    content: bytes
    changes: list[str]

    def record(self, recorder: Recorder, method: str, path: str) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "label": recorder.label,
            "session": self.session,
            "api": self.api,
            "method": method,
            "path": path,
            "headers": self.headers,
            "body": self.body if self.body is not None else None,
            "body_text": None if self.body is not None else self.content.decode("utf-8", "replace")[:4000],
            "body_bytes": len(self.content),
            "harness": self.changes,
            "tool_results_in_request": tool_results_in(self.api, self.body),
            "arrival_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds"),
            "arrival_s": round(self.arrival - recorder.started, 4),
        }


def _parse_json(raw: bytes) -> object:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None


async def _incoming(request: Request, recorder: Recorder) -> Incoming:
    arrival = time.monotonic()
    seq = recorder.next_seq()
    raw = await request.body()
    api = api_of(request.url.path)
    headers = public_headers(request.headers.items())
    body = _parse_json(raw)
    session = session_key(api, headers, body)
    changes: list[str] = []
    if isinstance(body, dict) and request.method == "POST":
        first = recorder.first_with_tools(session, body)
        body, changes = apply_harness(api, body, first, recorder.harness)
        if changes:
            raw = json.dumps(body).encode()
    return Incoming(seq, arrival, api, session, headers, body, raw, changes)


def _forward_headers(request: Request) -> list[tuple[str, str]]:
    kept = [(k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP]
    return [*kept, ("accept-encoding", "identity")]


def make_app(upstream: str, recorder: Recorder, transport: httpx.AsyncBaseTransport | None = None) -> Starlette:
    """The proxy app; `transport` replaces the network to the upstream (tests use httpx.MockTransport)."""
    client = httpx.AsyncClient(
        base_url=upstream.rstrip("/"), timeout=httpx.Timeout(None, connect=10.0), transport=transport
    )

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "upstream": upstream})

    async def forward(request: Request) -> Response:
        incoming = await _incoming(request, recorder)
        path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        record = incoming.record(recorder, request.method, path)
        outgoing = client.build_request(
            request.method, path, headers=_forward_headers(request), content=incoming.content
        )
        try:
            answer = await client.send(outgoing, stream=True)
        except httpx.HTTPError as exc:
            record.update(status=502, outcome=f"upstream unreachable: {exc!r}")
            recorder.write(record)
            return JSONResponse({"error": {"type": "proxy_error", "message": repr(exc)}}, status_code=502)
        record.update(status=answer.status_code, response_headers_s=round(time.monotonic() - incoming.arrival, 4))
        headers = {k: v for k, v in answer.headers.items() if k.lower() not in HOP_BY_HOP | {"content-encoding"}}
        return StreamingResponse(
            _relay(answer, incoming, record, recorder), status_code=answer.status_code, headers=headers
        )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await client.aclose()

    methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
    routes = [Route(HEALTH_PATH, health), Route("/{path:path}", forward, methods=methods)]
    return Starlette(routes=routes, lifespan=lifespan)


async def _relay(
    answer: httpx.Response, incoming: Incoming, record: dict[str, Any], recorder: Recorder
) -> AsyncIterator[bytes]:
    """Yield the upstream bytes unchanged while watching them; write the record when the answer ends."""
    streaming = "text/event-stream" in answer.headers.get("content-type", "")
    observer = ReplyObserver(incoming.api, streaming)
    first_byte: float | None = None
    outcome = "complete"
    try:
        async for chunk in answer.aiter_bytes():
            at = time.monotonic() - incoming.arrival
            first_byte = at if first_byte is None else first_byte
            observer.feed(chunk, at)
            yield chunk
    except BaseException as exc:  # the client went away (cancelled) or upstream broke off
        outcome = f"interrupted: {type(exc).__name__}"
        raise
    finally:
        await answer.aclose()
        reply = observer.finish(time.monotonic() - incoming.arrival)
        record.update(
            streaming=streaming,
            first_byte_s=None if first_byte is None else round(first_byte, 4),
            first_content_s=None if reply.first_content_s is None else round(reply.first_content_s, 4),
            total_s=round(time.monotonic() - incoming.arrival, 4),
            outcome=outcome,
            reply=reply.as_dict(),
        )
        recorder.write(record)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--upstream", required=True, help="base URL of the server, e.g. http://127.0.0.1:8080")
    parser.add_argument("--port", type=int, required=True, help="port to listen on (127.0.0.1)")
    parser.add_argument("--record", type=Path, required=True, help="JSON-lines file to append records to")
    parser.add_argument("--label", default="", help="a name stored in every record (e.g. the agent)")
    parser.add_argument("--max-output-tokens", type=int, default=None, help="cap each request's output tokens")
    parser.add_argument(
        "--force-tool-first", action="store_true", help="force a tool call on a session's first request with tools"
    )
    parser.add_argument("--stream-usage", action="store_true", help="ask chat-completion streams for their usage")
    args = parser.parse_args()
    harness = Harness(args.max_output_tokens, args.force_tool_first, args.stream_usage)
    recorder = Recorder(args.record, args.label, harness)
    app = make_app(args.upstream, recorder)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
