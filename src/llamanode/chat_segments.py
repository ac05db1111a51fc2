"""Manifest segments for a rendered conversation, so explain_context() names the message where a miss began.

`prompt_segments(prefix, messages, cuts, render)` cuts a split's prefix (every message but the last,
see ChatTemplate.split) into named pieces that tile it exactly: one per message by default, more
where a cut falls inside a message's content (an Anthropic cache_control breakpoint between content
blocks), and one where the tools begin.

Nothing here knows a template's syntax:
- message i starts where the rendering of messages[:i] alone (no generation prompt) stops agreeing
  with the prefix: right after message i-1's closing text;
- a cut inside a message's content is where a rendering with a marker at that point stops agreeing;
- the tools begin where a rendering without tools stops agreeing.
A template whose rendering of earlier messages depends on later ones (or that refuses a shortened
conversation) only makes the segments coarser: positions are kept in order and empty pieces vanish.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from .chat import ChatMessage, ChatTemplate, ChatTemplateError, SplitPrompt
from .errors import ToolError
from .prefix import common_prefix_len

__all__ = ["Cut", "Render", "Segments", "chat_segments", "message_cuts", "prompt_segments"]

Render = Callable[[Sequence[ChatMessage], bool], str]  # (messages, add_generation_prompt) -> prompt text
Segments = tuple[tuple[str, str], ...]  # (name, text) pieces of a prefix, as Plan and session.prefix() take them
_MARK = "\x00llamanode-cut\x00"


@dataclass(frozen=True)
class Cut:
    """Where a named segment begins: at message `message`'s start (offset 0, its role header included)
    or `offset` characters into its content."""

    message: int
    name: str
    offset: int = 0


def message_cuts(messages: Sequence[ChatMessage]) -> list[Cut]:
    """One cut per message: `system` for a leading system (or developer) message, else `msg{i}:{role}`."""
    return [
        Cut(i, "system" if i == 0 and m.role in ("system", "developer") else f"msg{i}:{m.role}")
        for i, m in enumerate(messages)
    ]


def prompt_segments(
    split: SplitPrompt,
    messages: Sequence[ChatMessage],
    cuts: Sequence[Cut],
    render: Render,
    *,
    without_tools: Render | None = None,
    special_tokens: Sequence[str] = (),
    tools_name: str = "tools",
) -> Segments:
    """(name, text) pieces whose texts join to split.prefix; the first starts at 0 whatever its cut says.

    render renders messages as split was rendered (tools included). without_tools, when the request
    has tools, renders them without: the tools' piece is where the two renderings differ. Closing
    text after the tools that holds only special tokens and whitespace joins the tools' piece.
    """
    prefix = split.prefix
    points: list[tuple[int, int, str]] = []  # (position, order, name)
    floor = 0
    for order, cut in enumerate(sorted(cuts, key=lambda c: (c.message, c.offset))):
        found = 0 if order == 0 else _locate(prefix, messages, cut, render, special_tokens)
        if found is None or (found >= len(prefix) and order > 0):
            continue
        floor = max(found, floor)
        points.append((floor, order, cut.name))
    if without_tools is not None:
        points += _tools_points(split, messages, without_tools, points, special_tokens, tools_name)
    points.sort()
    pieces: list[tuple[str, str]] = []
    for k, (start, _, name) in enumerate(points):
        end = points[k + 1][0] if k + 1 < len(points) else len(prefix)
        if end > start or (not pieces and k == len(points) - 1):
            pieces.append((name, prefix[start:end]))
    return tuple(pieces) or (("prompt", prefix),)


def _tools_points(
    split: SplitPrompt,
    messages: Sequence[ChatMessage],
    without_tools: Render,
    points: list[tuple[int, int, str]],
    special_tokens: Sequence[str],
    name: str,
) -> list[tuple[int, int, str]]:
    """The tools' piece: where it starts and, when it ends before the next piece, where the piece it
    interrupted resumes."""
    other = _rendering(lambda: without_tools(messages, True))
    if other is None:
        return []
    full, prefix = split.text, split.prefix
    start = _snap(full, common_prefix_len(full, other), special_tokens)
    if start >= len(prefix):
        return []
    end = _snap(full, len(full) - common_prefix_len(full[start:][::-1], other[start:][::-1]), special_tokens)
    found = [(start, len(points), name)]
    interrupted = [p for p in points if p[0] <= start]
    following = [p[0] for p in points if p[0] > start] + [len(prefix)]
    if interrupted and end < min(following) and not _only_markup(prefix[end : min(following)], special_tokens):
        found.append((end, len(points) + 1, interrupted[-1][2]))
    return found


def _snap(text: str, at: int, special_tokens: Sequence[str]) -> int:
    """at, or the start of the special token it would cut through."""
    for token in special_tokens:
        found = text.find(token, max(0, at - len(token) + 1), at + len(token) - 1)
        if 0 <= found < at:
            return found
    return at


def _only_markup(text: str, special_tokens: Sequence[str]) -> bool:
    for token in special_tokens:
        text = text.replace(token, "")
    return not text.strip()


def _locate(
    prefix: str, messages: Sequence[ChatMessage], cut: Cut, render: Render, special_tokens: Sequence[str]
) -> int | None:
    """Where cut begins in prefix; None when the template does not show it plainly."""
    if cut.offset == 0:
        shorter = _rendering(lambda: render(messages[: cut.message], False))
        if shorter is None:
            return None
        at = common_prefix_len(prefix, shorter)
        if at == len(shorter):  # the earlier messages render as the prompt's beginning
            return at
        at = _snap(prefix, at, special_tokens)  # or at least up to a special token
        return at if special_tokens and prefix.startswith(tuple(special_tokens), at) else None
    message = messages[cut.message]
    marked = message.content[: cut.offset] + _MARK + message.content[cut.offset :]
    changed = [*messages[: cut.message], replace(message, content=marked), *messages[cut.message + 1 :]]
    rendered = _rendering(lambda: render(changed, True))
    if rendered is None:
        return None
    at = common_prefix_len(prefix, rendered)
    return at if rendered.startswith(_MARK, at) else None


def _rendering(render: Callable[[], str]) -> str | None:
    """The rendering, or None when the template refuses it."""
    try:
        return render()
    except (ChatTemplateError, ToolError):
        return None


def chat_segments(template: ChatTemplate, messages: Sequence[ChatMessage], split: SplitPrompt) -> Segments:
    """template.split(messages).prefix as one named segment per message (a conversation without tools)."""
    return prompt_segments(
        split,
        messages,
        message_cuts(messages),
        lambda ms, gen: template.render(ms, add_generation_prompt=gen),
        special_tokens=template.special_tokens,
    )
