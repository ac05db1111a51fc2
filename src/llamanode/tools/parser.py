"""Incremental tool-call parser: feed text deltas, get content deltas and call events.

Text that might still become a call marker is held back (as textstream.py holds back stop
strings) and whitespace touching a call is dropped; everything else comes out exactly once.
A marker followed by something that is not a call to a known function is content after all:
its text is released, nothing is lost. A call is announced (CallStarted) once its name and the
opening brace of its arguments are read; arguments then stream as they arrive.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..errors import ToolError
from .formats import ToolFormat
from .types import ToolCall, ToolSpec, new_call_id

__all__ = ["ArgumentsDelta", "CallFinished", "CallStarted", "ContentDelta", "ToolCallParser", "ToolEvent"]

_WS = " \t\r\n"


@dataclass(frozen=True)
class ContentDelta:
    text: str


@dataclass(frozen=True)
class CallStarted:
    index: int
    id: str
    name: str


@dataclass(frozen=True)
class ArgumentsDelta:
    index: int
    text: str


@dataclass(frozen=True)
class CallFinished:
    """A call's end; complete is False when the text stopped inside its arguments."""

    index: int
    id: str
    name: str
    arguments: str
    complete: bool

    def tool_call(self) -> ToolCall:
        if not self.complete:
            raise ToolError(f"tool call {self.name} was cut off inside its arguments")
        return ToolCall(self.id, self.name, self.arguments)


ToolEvent = ContentDelta | CallStarted | ArgumentsDelta | CallFinished

# scanner results: the text needs more bytes, does not fit, or fits (with the length it used)
_MORE, _BAD = -1, -2


def _literal(text: str, at: int, literal: str) -> int:
    """Skip whitespace, then expect literal: the index after it, _MORE or _BAD."""
    while at < len(text) and text[at] in _WS:
        at += 1
    rest = text[at : at + len(literal)]
    if rest == literal:
        return at + len(literal)
    return _MORE if literal.startswith(rest) else _BAD


def _json_string(text: str, at: int) -> tuple[int, str]:
    """Skip whitespace, read one JSON string: (index after it, value), or (_MORE|_BAD, "")."""
    at = _literal(text, at, '"')
    if at < 0:
        return at, ""
    start, escaped = at - 1, False
    for i in range(at, len(text)):
        if escaped:
            escaped = False
        elif text[i] == "\\":
            escaped = True
        elif text[i] == '"':
            try:
                return i + 1, str(json.loads(text[start : i + 1]))
            except json.JSONDecodeError:
                return _BAD, ""
    return _MORE, ""


def _read_header(text: str) -> tuple[int, str]:
    """`{"name": "<fn>", "arguments"|"parameters": {` -> (index of the arguments' brace, fn) or (_MORE|_BAD, "")."""
    at, fn = 0, ""
    for step in ("{", '"name"', ":", "fn", ",", "key", ":", "{"):
        if step in ("fn", "key"):
            at, value = _json_string(text, at)
            if at >= 0 and step == "key" and value not in ("arguments", "parameters"):
                at = _BAD
            fn = value if step == "fn" else fn
        else:
            at = _literal(text, at, step)
        if at < 0:
            return at, ""
    return at - 1, fn


class _ArgsScanner:
    """Finds where a JSON object ends, tracking nesting and strings."""

    def __init__(self) -> None:
        self.depth, self.in_string, self.escaped, self.done = 0, False, False, False

    def scan(self, text: str) -> int:
        """Characters of text that belong to the object (len(text) when it has not ended)."""
        for i, ch in enumerate(text):
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif ch == "\\":
                    self.escaped = True
                elif ch == '"':
                    self.in_string = False
            elif ch == '"':
                self.in_string = True
            elif ch in "{[":
                self.depth += 1
            elif ch in "}]":
                self.depth -= 1
                if self.depth == 0:
                    self.done = True
                    return i + 1
        return len(text)


class ToolCallParser:
    """Splits model output into content and calls of one format (see module docstring)."""

    def __init__(self, fmt: ToolFormat, tools: Sequence[ToolSpec], new_id: Callable[[], str] = new_call_id) -> None:
        self._fmt = fmt
        self._names = {t.name for t in tools}
        self._new_id = new_id
        self._pending = ""  # received, not yet decided
        self._state: Callable[[bool], bool] = self._text
        self._raw = ""  # structure consumed since the last commitment; released if it is no call after all
        self._kept = ""  # a body opener (part of the call's JSON) that began the current candidate
        self._after_call = False  # drop whitespace right after a call
        self._index = -1
        self._call: tuple[str, str] = ("", "")  # id, name of the open call
        self._args = ""
        self._scanner = _ArgsScanner()
        self._events: list[ToolEvent] = []

    @property
    def calls(self) -> int:
        """How many calls have started so far."""
        return self._index + 1

    def feed(self, text: str) -> list[ToolEvent]:
        self._pending += text
        while self._state(False):
            pass
        return self._flush()

    def finish(self) -> list[ToolEvent]:
        """The end of the output: release held text; an open call ends incomplete."""
        while self._state(True):
            pass
        if self._state == self._args_state:
            self._finish_call(complete=False)
        elif self._state in (self._header, self._list_open):  # no call started: it was content
            self._content(self._raw + self._pending)
        elif self._state == self._call_close:  # the arguments are whole; only the call's "}" was cut
            self._finish_call(complete=True)
        elif self._state in (self._closer, self._list_next):  # a cut closer (or list end) is markup, not content
            pass
        elif self._pending.strip(_WS) or (self._state == self._text and not self._after_call):
            self._content(self._pending)
        self._pending, self._raw, self._state = "", "", self._text
        return self._flush()

    # -- states: each returns True when it made progress and the loop should run again ------------
    def _text(self, final: bool) -> bool:
        if self._after_call:
            stripped = self._pending.lstrip(_WS)
            if not stripped:
                self._pending = ""
                return False
            self._pending, self._after_call = stripped, False
        hit = self._first_opener()
        if hit is not None:
            at, opener, kept = hit
            before = self._pending[:at]
            self._content(before.rstrip(_WS))
            self._raw = before[len(before.rstrip(_WS)) :] + ("" if kept else opener)  # released if no call
            self._pending = self._pending[at + (0 if kept else len(opener)) :]
            self._kept = opener if kept else ""
            self._state = self._list_open if self._fmt.listed else self._header
            return True
        if not final:
            cut = len(self._pending) - self._partial_opener_len()
            cut = len(self._pending[:cut].rstrip(_WS))
            self._content(self._pending[:cut])
            self._pending = self._pending[cut:]
        return False

    def _list_open(self, final: bool) -> bool:
        at = _literal(self._pending, 0, "[")
        return self._advance(at, self._header)

    def _header(self, final: bool) -> bool:
        at, name = _read_header(self._pending)
        if at == _MORE:
            return False
        if at == _BAD or name not in self._names:
            self._revert()
            return True
        self._start_call(name)
        self._pending = self._pending[at:]  # from the arguments' opening brace
        return True

    def _args_state(self, final: bool) -> bool:
        used = self._scanner.scan(self._pending)
        if used:
            self._args += self._pending[:used]
            self._events.append(ArgumentsDelta(self._index, self._pending[:used]))
            self._pending = self._pending[used:]
        if not self._scanner.done:
            return False
        self._state = self._call_close
        return True

    def _call_close(self, final: bool) -> bool:
        at = _literal(self._pending, 0, "}")
        if at == _MORE:
            return False
        self._finish_call(complete=True)
        if at == _BAD:  # the call object goes on (another key?): what follows is content
            self._state, self._after_call = self._text, True
            return True
        self._pending = self._pending[at:]
        self._state = self._list_next if self._fmt.listed else self._closer
        return True

    def _closer(self, final: bool) -> bool:
        if not self._fmt.closer:
            self._state, self._after_call = self._text, True
            return True
        at = _literal(self._pending, 0, self._fmt.closer)
        if at == _MORE:
            return False
        self._pending = self._pending[max(at, 0) :]
        self._state, self._after_call = self._text, True
        return True

    def _list_next(self, final: bool) -> bool:
        comma, close = _literal(self._pending, 0, ","), _literal(self._pending, 0, "]")
        if comma >= 0:
            self._raw, self._pending, self._state = self._pending[:comma], self._pending[comma:], self._header
            return True
        if close >= 0 or (comma == _BAD and close == _BAD):
            self._pending = self._pending[max(close, 0) :]
            self._state, self._after_call = self._text, True
            return True
        return False

    # -- helpers ------------------------------------------------------------------------------------
    def _advance(self, at: int, state: Callable[[bool], bool]) -> bool:
        if at == _MORE:
            return False
        if at == _BAD:
            self._revert()
            return True
        self._raw += self._pending[:at]
        self._pending = self._pending[at:]
        self._state = state
        return True

    def _revert(self) -> None:
        """What looked like a call is content: release the structure read so far, rescan the rest."""
        self._content(self._raw + self._kept)
        self._pending = self._pending[len(self._kept) :]
        self._raw, self._kept, self._state = "", "", self._text

    def _start_call(self, name: str) -> None:
        self._index += 1
        self._call = (self._new_id(), name)
        self._args, self._scanner, self._raw, self._kept = "", _ArgsScanner(), "", ""
        self._events.append(CallStarted(self._index, *self._call))
        self._state = self._args_state

    def _finish_call(self, complete: bool) -> None:
        self._events.append(CallFinished(self._index, *self._call, self._args, complete))

    def _first_opener(self) -> tuple[int, str, bool] | None:
        hits = [(self._pending.find(o), o, False) for o in self._fmt.openers]
        hits += [(self._pending.find(o), o, True) for o in self._fmt.body_openers]
        found = [h for h in hits if h[0] >= 0]
        return min(found, key=lambda h: (h[0], -len(h[1]))) if found else None

    def _partial_opener_len(self) -> int:
        """Length of the longest tail of pending text that is a proper prefix of an opener."""
        best = 0
        for opener in self._fmt.triggers:
            for n in range(min(len(opener) - 1, len(self._pending)), best, -1):
                if self._pending.endswith(opener[:n]):
                    best = n
                    break
        return best

    def _content(self, text: str) -> None:
        if not text:
            return
        last = self._events[-1] if self._events else None
        if isinstance(last, ContentDelta):
            self._events[-1] = ContentDelta(last.text + text)
        else:
            self._events.append(ContentDelta(text))

    def _flush(self) -> list[ToolEvent]:
        events, self._events = self._events, []
        return events
