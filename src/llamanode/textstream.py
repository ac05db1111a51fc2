"""Token bytes -> text deltas: UTF-8 safe, with stop strings held back until decided."""

from __future__ import annotations

import codecs
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["TextAssembler", "TextDelta"]


@dataclass(frozen=True)
class TextDelta:
    text: str
    stopped: bool  # a stop string was found; text is everything before it
    stop_string: str | None = None  # which one


class TextAssembler:
    """Feed token bytes, get text that is safe to emit.

    A multi-byte character split across tokens is held until complete; text that could
    still become a stop string is held until it cannot.
    """

    def __init__(self, stop: Sequence[str] = ()) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stop = tuple(stop)
        self._pending = ""

    def feed(self, data: bytes) -> TextDelta:
        self._pending += self._decoder.decode(data)
        return self._release(final=False)

    def finish(self) -> TextDelta:
        self._pending += self._decoder.decode(b"", final=True)
        return self._release(final=True)

    def _release(self, final: bool) -> TextDelta:
        hit = self._first_stop()
        if hit is not None:
            at, stop = hit
            text, self._pending = self._pending[:at], ""
            return TextDelta(text, stopped=True, stop_string=stop)
        keep = 0 if final else self._partial_stop_len()
        cut = len(self._pending) - keep
        text, self._pending = self._pending[:cut], self._pending[cut:]
        return TextDelta(text, stopped=False)

    def _first_stop(self) -> tuple[int, str] | None:
        """Start and text of the stop string that completes first (the longer one on a tie).

        Earliest end, not earliest start: a stream stops as soon as one stop string is
        complete, so the answer must not depend on how the bytes were split into tokens.
        """
        found = [(i + len(s), i, s) for s in self._stop if (i := self._pending.find(s)) >= 0]
        return min(found)[1:] if found else None

    def _partial_stop_len(self) -> int:
        """Length of the longest tail of pending text that is a proper prefix of a stop string."""
        best = 0
        for stop in self._stop:
            for n in range(min(len(stop) - 1, len(self._pending)), best, -1):
                if self._pending.endswith(stop[:n]):
                    best = n
                    break
        return best
