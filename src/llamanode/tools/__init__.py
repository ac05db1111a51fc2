"""Tool calling, backend-neutral: types, call formats, prompt rendering, grammars and an incremental parser.

The HTTP layers (chat completions, Anthropic Messages, Responses) build a `ToolPlan` per request:

    plan = ToolPlan(template, Tools.from_openai(body.tools, body.tool_choice, body.parallel_tool_calls))
    split = plan.split(messages)                                  # prefix / suffix for the session
    config = DecodeConfig(max_tokens=..., **plan.decode_options())
    parser = plan.parser()                                        # None: plain text only
    for chunk in session.decode(config): events = parser.feed(chunk.text) ...
"""

from __future__ import annotations

from .constrain import ToolGrammar, tool_grammar
from .formats import FORMATS, GENERIC, HERMES, LLAMA3, MISTRAL, ToolFormat, detect_format, template_renders_tools
from .parser import ArgumentsDelta, CallFinished, CallStarted, ContentDelta, ToolCallParser, ToolEvent
from .plan import ToolPlan
from .render import call_text, fallback_messages, tool_block
from .types import ToolCall, ToolChoice, Tools, ToolSpec, new_call_id

__all__ = [
    "FORMATS",
    "GENERIC",
    "HERMES",
    "LLAMA3",
    "MISTRAL",
    "ArgumentsDelta",
    "CallFinished",
    "CallStarted",
    "ContentDelta",
    "ToolCall",
    "ToolCallParser",
    "ToolChoice",
    "ToolEvent",
    "ToolFormat",
    "ToolGrammar",
    "ToolPlan",
    "ToolSpec",
    "Tools",
    "call_text",
    "detect_format",
    "fallback_messages",
    "new_call_id",
    "template_renders_tools",
    "tool_block",
    "tool_grammar",
]
