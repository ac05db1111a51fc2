"""`llamanode serve`: the OpenAI-compatible HTTP server over pooled workspaces.

The model is chosen here, at start-up; no request can make the server open a path.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

from .common import add_model_options, config_from_args

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """Bytes from '512M', '2G', '1.5GiB' or a plain number."""
    found = _SIZE.match(text)
    if not found:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 512M, 2G, 1048576)")
    unit = (found.group(2) or "").lower().rstrip("b").rstrip("i")
    return int(float(found.group(1)) * _UNITS[unit])


def parse_count(text: str) -> int:
    """A whole number of at least 0."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"not a count: {text!r} (a whole number, 0 or more)")
    return value


def configure(parser: argparse.ArgumentParser) -> None:
    add_model_options(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s, loopback only)")
    parser.add_argument("--port", type=int, default=8080, help="port (default: %(default)s; 0 picks a free one)")
    parser.add_argument(
        "--api-key",
        default=os.environ.get("LLAMANODE_API_KEY"),
        help="require 'Authorization: Bearer KEY' (or 'x-api-key: KEY') on every route but /health "
        "(default: $LLAMANODE_API_KEY)",
    )
    parser.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="allow this browser origin (repeatable; off by default)",
    )
    parser.add_argument(
        "--alias", action="append", default=[], help="another name clients may use as `model` (repeatable)"
    )
    parser.add_argument("--store-dir", type=Path, default=None, help="where evicted workspaces' snapshots live")
    parser.add_argument("--memory-budget", type=parse_size, default=None, help="KV bytes kept in memory (e.g. 2G)")
    parser.add_argument(
        "--max-live", type=int, default=8, help="without --memory-budget: workspaces kept live (default: %(default)s)"
    )
    parser.add_argument("--disk-budget", type=parse_size, default=None, help="snapshot bytes kept on disk (e.g. 20G)")
    parser.add_argument(
        "--parallel",
        type=int,
        default=2,
        help="workspaces running at once (default: %(default)s); without --threads each gets cores/parallel threads",
    )
    parser.add_argument("--max-queue", type=int, default=16, help="requests waiting before 429 (default: %(default)s)")
    parser.add_argument("--queue-timeout", type=float, default=300.0, help="seconds a request may wait before 503")
    parser.add_argument("--max-body", type=parse_size, default=8 << 20, help="request body limit (default: 8M)")
    parser.add_argument("--max-prompt", type=parse_size, default=2 << 20, help="rendered prompt limit (default: 2M)")
    parser.add_argument(
        "--fork-min-tokens",
        type=parse_count,
        default=256,
        help="a request naming a new session (header, user, session key) starts as a fork of the workspace sharing"
        " at least this many prompt tokens with it (default: %(default)s; 0: always start cold)",
    )
    parser.add_argument(
        "--no-warm-next",
        action="store_true",
        help="do not prefill a chat answer ahead of the next turn (after the response is sent)",
    )
    parser.add_argument(
        "--keep-billing-header",
        action="store_true",
        help="/v1/messages: render a leading system block that is only Claude Code's per-session billing line "
        "(x-anthropic-billing-header: ...), which is dropped by default so new sessions share their opening",
    )
    connections = parser.add_argument_group("connections")
    connections.add_argument(
        "--max-connections", type=int, default=256, help="open connections; more get 503 (default: %(default)s)"
    )
    connections.add_argument(
        "--keep-alive-timeout", type=float, default=15.0, help="idle seconds before a connection is closed"
    )
    connections.add_argument(
        "--header-timeout", type=float, default=10.0, help="seconds for a request's line and headers to arrive"
    )
    connections.add_argument("--body-timeout", type=float, default=60.0, help="seconds for a request body to arrive")
    connections.add_argument(
        "--shutdown-timeout",
        type=float,
        default=30.0,
        help="on SIGTERM/SIGINT: seconds in-flight requests may take before they are cancelled (a second signal "
        "exits at once)",
    )
    parser.add_argument("--quiet", action="store_true", help="no per-request JSON log lines on stderr")


def run(args: argparse.Namespace) -> int:
    from ..server import ServerSettings, bind, build_runtime, serve

    if args.threads == 0:  # llama.cpp's spinning barriers make oversubscribed cores very slow
        args.threads = max(1, (os.cpu_count() or 1) // max(args.parallel, 1))

    settings = ServerSettings(
        host=args.host,
        port=args.port,
        api_key=args.api_key or None,
        cors_origins=tuple(args.cors_origin),
        max_body_bytes=args.max_body,
        max_prompt_bytes=args.max_prompt,
        parallel=args.parallel,
        max_queue=args.max_queue,
        queue_timeout_s=args.queue_timeout,
        aliases=tuple(args.alias),
        log_requests=not args.quiet,
        warm_next=not args.no_warm_next,
        keep_billing_header=args.keep_billing_header,
        fork_min_tokens=args.fork_min_tokens,
        max_connections=args.max_connections,
        keep_alive_s=args.keep_alive_timeout,
        header_timeout_s=args.header_timeout,
        body_timeout_s=args.body_timeout,
        shutdown_timeout_s=args.shutdown_timeout,
    )
    sock = bind(settings.host, settings.port)
    try:
        runtime = build_runtime(
            settings,
            args.model,
            config_from_args(args),
            store_dir=args.store_dir,
            memory_budget_bytes=args.memory_budget,
            disk_budget_bytes=args.disk_budget,
            max_live=args.max_live,
        )
    except BaseException:
        sock.close()
        raise
    host, port = str(sock.getsockname()[0]), int(sock.getsockname()[1])
    shown = f"[{host}]" if ":" in host else host

    def listening() -> None:
        line = {
            "event": "listening",
            "url": f"http://{shown}:{port}",
            "model": runtime.model_id,
            "num_ctx": runtime.num_ctx,
            "rope_scaling": runtime.model_probe.rope(runtime.config).describe(),
            "api_key": bool(settings.api_key),
            "cors_origins": list(settings.cors_origins),
            "chat_template": "chatml (fallback: the model has none)"
            if runtime.template.fallback
            else "the model's own",
        }
        print(json.dumps(line), file=sys.stderr, flush=True)

    serve(runtime, sock, listening)
    print(json.dumps({"event": "stopped", "checkpointed": True}), file=sys.stderr, flush=True)
    return 0
