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

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from .chat import ChatMessage, ChatTemplate, ChatTemplateError, SplitPrompt
from .errors import ToolError
from .prefix import common_prefix_len

__all__ = [
    "START_CACHE",
    "Cut",
    "Render",
    "Segments",
    "StartCache",
    "chat_segments",
    "message_cuts",
    "prompt_segments",
    "template_key",
]

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
    cache_key: str | None = None,
) -> Segments:
    """(name, text) pieces whose texts join to split.prefix; the first starts at 0 whatever its cut says.

    render renders messages as split was rendered (tools included). without_tools, when the request
    has tools, renders them without: the tools' piece is where the two renderings differ. Closing
    text after the tools that holds only special tokens and whitespace joins the tools' piece.
    cache_key names everything but the messages that decides render's output (template, tools):
    with it, message starts are remembered across requests (StartCache).
    """
    prefix = split.prefix
    ordered = sorted(cuts, key=lambda c: (c.message, c.offset))
    wanted = sorted({c.message for c in ordered[1:] if c.offset == 0})
    starts = _message_starts(prefix, messages, wanted, render, special_tokens, cache_key)
    points: list[tuple[int, int, str]] = []  # (position, order, name)
    floor = 0
    for order, cut in enumerate(ordered):
        if order == 0:
            found: int | None = 0
        elif cut.offset == 0:
            found = starts[cut.message]
        else:
            found = _locate_inside(prefix, messages, cut, render)
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


def _message_starts(
    prefix: str,
    messages: Sequence[ChatMessage],
    wanted: Sequence[int],
    render: Render,
    special_tokens: Sequence[str],
    cache_key: str | None,
) -> dict[int, int | None]:
    """Where messages[i] starts for each wanted i (ascending); None when the template does not show it."""
    found: dict[int, int | None] = {}
    chain = hashlib.sha256((cache_key or "").encode())  # chain.copy() names messages[:i] under cache_key
    checked = hashlib.sha256()  # sha256 of prefix[:upto]
    done = upto = 0
    for i in wanted:
        for message in messages[done:i]:
            chain.update(hashlib.sha256(json.dumps(message.as_template_value(), sort_keys=True).encode()).digest())
        done = i
        key = chain.hexdigest() if cache_key is not None else None
        known = START_CACHE.get(key) if key is not None else None
        if known is not None and upto <= known[0] <= len(prefix):
            checked.update(prefix[upto : known[0]].encode())
            upto = known[0]
            if checked.hexdigest() == known[1]:  # the prompt begins with that rendering of messages[:i]
                found[i] = known[0]
                continue
        found[i] = _locate_start(prefix, messages[:i], render, special_tokens, key)
    return found


def _locate_start(
    prefix: str, earlier: Sequence[ChatMessage], render: Render, special_tokens: Sequence[str], key: str | None
) -> int | None:
    """Where the message after `earlier` starts in prefix (see the module docstring)."""
    shorter = _rendering(lambda: render(earlier, False))
    if shorter is None:
        return None
    at = common_prefix_len(prefix, shorter)
    if at == len(shorter):  # the earlier messages render as the prompt's beginning
        if key is not None:
            START_CACHE.put(key, at, hashlib.sha256(shorter.encode()).hexdigest())
        return at
    at = _snap(prefix, at, special_tokens)  # or at least up to a special token
    return at if special_tokens and prefix.startswith(tuple(special_tokens), at) else None


def _locate_inside(prefix: str, messages: Sequence[ChatMessage], cut: Cut, render: Render) -> int | None:
    """Where a cut inside a message's content falls in prefix: a rendering with a marker there agrees
    with the prompt up to the marker."""
    message = messages[cut.message]
    marked = message.content[: cut.offset] + _MARK + message.content[cut.offset :]
    changed = [*messages[: cut.message], replace(message, content=marked), *messages[cut.message + 1 :]]
    rendered = _rendering(lambda: render(changed, True))
    if rendered is None:
        return None
    at = common_prefix_len(prefix, rendered)
    return at if rendered.startswith(_MARK, at) else None


class StartCache:
    """Message starts already found, by (cache key, messages before): (length, sha256 of that rendering).

    An agent's next request repeats its earlier messages, so only the new ones need rendering; a hit is
    used only when the prompt is checked to begin with the very text remembered.
    """

    def __init__(self, capacity: int = 16384) -> None:
        self._capacity = capacity
        self._known: OrderedDict[str, tuple[int, str]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> tuple[int, str] | None:
        with self._lock:
            found = self._known.get(key)
            if found is not None:
                self._known.move_to_end(key)
            return found

    def put(self, key: str, length: int, digest: str) -> None:
        with self._lock:
            self._known[key] = (length, digest)
            self._known.move_to_end(key)
            while len(self._known) > self._capacity:
                self._known.popitem(last=False)


START_CACHE = StartCache()


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
        cache_key=template_key(template),
    )


def template_key(template: ChatTemplate) -> str:
    """What decides a template's rendering besides the messages (a cache key)."""
    fields = [template.source, template.bos_token, template.eos_token, template.add_bos, template.add_eos]
    return hashlib.sha256(json.dumps(fields).encode()).hexdigest()
