"""The `llamanode` command. Each subcommand lives in its own module with configure() and run()."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from . import __version__
from .errors import LlamaNodeError

__all__ = ["main"]

# name -> (module under llamanode.commands, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("demo", "run the coding-loop demo: a cold turn, warm turns, edits mid-prefix ordered by the assembler"),
    "info": ("info", "show the model, the llama.cpp build and what this runtime can do"),
    "serve": ("serve", "serve the OpenAI-compatible HTTP API over pooled, persistent workspaces"),
    "snapshot": ("snapshot", "check stored workspace snapshots (verify)"),
    "workspaces": ("workspaces", "list, summarise or drop stored workspaces"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llamanode",
        description="Keep a coding agent's prompt prefix hot in a local LLM; prefill only what changed.",
    )
    parser.add_argument("--version", action="version", version=f"llamanode {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in COMMANDS.items():
        command = importlib.import_module(f"llamanode.commands.{module}")
        command.configure(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = importlib.import_module(f"llamanode.commands.{COMMANDS[args.command][0]}")
    try:
        return int(command.run(args))
    except LlamaNodeError as exc:
        print(f"llamanode: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
