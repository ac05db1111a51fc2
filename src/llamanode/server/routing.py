"""Routing requests that name no workspace to the one whose resident prompt they continue.

First a byte-level check against the last prompt sent to each workspace (a conversation's next
request starts with its previous prompt: no tokenization needed), then the remembered prompt that
shares the longest text (an edit in the middle: aider re-sends a changed file), then the pool's
token-level longest shared prefix (workspaces the router does not remember: restored ones). The
text rules also see a workspace still busy with its last request, whose tokens the pool learns only
at its release. A stale entry only costs warmth, never correctness: ensure_prefix always
reuses exactly the tokens that match.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .engine import PoolLike

__all__ = ["PromptRouter", "shared_text_len"]

BYTES_PER_TOKEN = 4  # the shared-text rule asks min_tokens * this many bytes (code averages 3-4 bytes a token)


class PromptRouter:
    def __init__(self, pool: PoolLike, min_tokens: int, capacity: int = 256) -> None:
        self._pool = pool
        self._min_tokens = min_tokens
        self._capacity = capacity
        self._texts: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    def find(self, text: str) -> tuple[str | None, str]:
        """(workspace or None, how): "continues" (byte check), "shared_text", "prefix" (token check) or "none"."""
        with self._lock:
            entries = list(self._texts.items())
        best: str | None = None
        best_len = 0
        for workspace, known in entries:
            if len(known) > best_len and text.startswith(known):
                best, best_len = workspace, len(known)
        if best is not None:
            return best, "continues"
        for workspace, known in entries:
            shared = shared_text_len(known, text)
            if shared > best_len:
                best, best_len = workspace, shared
        if best is not None and best_len >= self._min_tokens * BYTES_PER_TOKEN:
            return best, "shared_text"
        found, _ = self._pool.longest_prefix(self._pool.tokenize(text), self._min_tokens)
        return (found, "prefix") if found is not None else (None, "none")

    def remember(self, workspace: str, text: str) -> None:
        with self._lock:
            self._texts.pop(workspace, None)
            self._texts[workspace] = text
            while len(self._texts) > self._capacity:
                self._texts.popitem(last=False)

    def forget(self, workspace: str) -> None:
        with self._lock:
            self._texts.pop(workspace, None)


def shared_text_len(a: str, b: str) -> int:
    """Length of the common prefix of a and b: block by block (C-speed compares, each char of a copied
    once), then a bisection inside the first block that differs."""
    n = min(len(a), len(b))
    at = 0
    while at < n:
        end = min(at + _BLOCK, n)
        if not b.startswith(a[at:end], at):
            low, high = at, end - 1  # b[at:] does not start with a[at:end]: the answer is below end
            while low < high:
                mid = (low + high + 1) // 2
                if b.startswith(a[at:mid], at):
                    low = mid
                else:
                    high = mid - 1
            return low
        at = end
    return n


_BLOCK = 4096
