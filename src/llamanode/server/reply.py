"""Tool calls for every generating API: what constrains decoding, and what the model answered.

`tool_decode_options` gives the DecodeConfig fields of a request's ToolPlan. A `Reply` feeds decoded
text through the plan's parser (all of it is content when the request has no callable tools), keeps
what it read, names the finish reason, and gives the assistant message as the next request will send
it back. `warm_next` gives the next turn's prefix with that message, prewarmed once the response is
out, so the next turn's prefix is warm up to its new message.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..chat import ChatMessage, SplitPrompt
from ..chat_segments import chat_segments, message_cuts
from ..errors import UnsupportedFeatureError
from ..kvsession import KVSession
from ..session import PrefixInput
from ..tools import CallFinished, ContentDelta, ToolCall, ToolCallParser, ToolEvent, ToolPlan
from .runtime import Runtime

__all__ = ["Reply", "split_prompt", "tool_decode_options", "warm_next"]


def tool_decode_options(
    plan: ToolPlan | None, schema: Mapping[str, Any] | None, stop: Sequence[str] | None
) -> dict[str, Any]:
    """The grammar (lazy for 'auto') that makes every call parse and validate; {} when no call is possible.

    A JSON schema for the answer or stop strings cannot go with callable tools: the schema's grammar
    would forbid the calls, a stop string inside a call's arguments would cut it.
    """
    options = plan.decode_options() if plan is not None else {}
    if options and schema is not None:
        raise UnsupportedFeatureError("a JSON response format together with tools the model may call")
    if options and stop:
        raise UnsupportedFeatureError("stop strings together with tools the model may call (one could cut a call)")
    return options


class Reply:
    """Content and calls decoded so far (see the module docstring)."""

    def __init__(self, plan: ToolPlan | None) -> None:
        self._parser: ToolCallParser | None = plan.parser() if plan is not None else None
        self._content: list[str] = []
        self.calls: list[CallFinished] = []

    @property
    def content(self) -> str:
        return "".join(self._content)

    def feed(self, text: str) -> list[ToolEvent]:
        if self._parser is None:
            return self._note([ContentDelta(text)] if text else [])
        return self._note(self._parser.feed(text))

    def finish(self) -> list[ToolEvent]:
        """The end of the output: text held back as a possible call marker comes out now."""
        return self._note(self._parser.finish() if self._parser is not None else [])

    def read(self, text: str) -> list[ToolEvent]:
        """All of an answer at once (non-streamed responses)."""
        return self.feed(text) + self.finish()

    def finish_reason(self, decoded: str) -> str:
        """'length' when decoding was cut (a call may be open), 'tool_calls' when it called, else decoded's."""
        if decoded == "length":
            return "length"
        return "tool_calls" if any(c.complete for c in self.calls) else decoded

    def tool_calls(self) -> list[ToolCall]:
        """The complete calls (a call cut by a length limit has no valid arguments to send back)."""
        return [c.tool_call() for c in self.calls if c.complete]

    def message(self) -> ChatMessage:
        """The assistant message as a client sends it back in the next turn."""
        return ChatMessage("assistant", self.content, None, tuple(self.tool_calls()))

    def _note(self, events: list[ToolEvent]) -> list[ToolEvent]:
        for event in events:
            if isinstance(event, ContentDelta):
                self._content.append(event.text)
            elif isinstance(event, CallFinished):
                self.calls.append(event)
        return events


def split_prompt(rt: Runtime, plan: ToolPlan | None, messages: Sequence[ChatMessage]) -> SplitPrompt:
    """The rendered prompt, cut into prefix and suffix: through the tool plan when the request has tools."""
    return plan.split(messages) if plan is not None else rt.template.split(messages)


def prompt_segments(
    rt: Runtime, plan: ToolPlan | None, messages: Sequence[ChatMessage], split: SplitPrompt
) -> tuple[tuple[str, str], ...]:
    """split.prefix as one named manifest segment per message (and the tools' own), so a miss names its message."""
    if plan is not None:
        return plan.segments(messages, split, message_cuts(messages))
    return chat_segments(rt.template, messages, split)


def warm_next(
    rt: Runtime, session: KVSession, plan: ToolPlan | None, messages: Sequence[ChatMessage], reply: Reply
) -> PrefixInput | None:
    """The next turn's prefix up to its new message (a tool result after calls): prewarmed once the response is out.

    The generated tokens' KV came from one-token decode steps and is never reused (it differs
    from a batched prefill); re-prefilling the answer in a batch while the client reads it
    makes the next turn's prefix warm up to its new message, exactly.
    """
    if messages[-1].role == "assistant":
        return None
    answer = reply.message()
    if answer.tool_calls:
        following = ChatMessage("tool", "", tool_call_id=answer.tool_calls[0].id)
    else:
        following = ChatMessage("user", "")
    expected_messages = [*messages, answer, following]
    expected = split_prompt(rt, plan, expected_messages)
    return session.prefix(prompt_segments(rt, plan, expected_messages, expected))
