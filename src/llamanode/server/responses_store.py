"""Stored responses (`store: true`): what `previous_response_id` continues and `GET /v1/responses/{id}` returns.

In memory only (a restart forgets them), bounded: the most recent MAX_RESPONSES responses whose
conversations hold at most MAX_TEXT_BYTES of text together; the least recently used goes first.
Used on the event loop only, so it needs no lock.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from ..chat import ChatMessage
from .responses_events import ResponseObject

__all__ = ["MAX_RESPONSES", "MAX_TEXT_BYTES", "ResponseStore", "StoredResponse"]

MAX_RESPONSES = 256
MAX_TEXT_BYTES = 64 << 20


@dataclass(frozen=True)
class StoredResponse:
    """A response, the workspace that holds its conversation, and that conversation (instructions aside:
    they are not carried over), ending with the response's own assistant turn."""

    workspace: str
    messages: tuple[ChatMessage, ...]
    response: ResponseObject

    @property
    def text_bytes(self) -> int:
        calls = sum(len(c.arguments) + len(c.name) for m in self.messages for c in m.tool_calls)
        return sum(len(m.content.encode()) for m in self.messages) + calls


class ResponseStore:
    def __init__(self, max_responses: int = MAX_RESPONSES, max_text_bytes: int = MAX_TEXT_BYTES) -> None:
        self.max_responses = max_responses
        self.max_text_bytes = max_text_bytes
        self._items: OrderedDict[str, StoredResponse] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    def put(self, response_id: str, stored: StoredResponse) -> None:
        self._drop(response_id)
        self._items[response_id] = stored
        self._bytes += stored.text_bytes
        while self._items and (len(self._items) > self.max_responses or self._bytes > self.max_text_bytes):
            self._drop(next(iter(self._items)))

    def get(self, response_id: str) -> StoredResponse | None:
        stored = self._items.get(response_id)
        if stored is not None:
            self._items.move_to_end(response_id)
        return stored

    def _drop(self, response_id: str) -> None:
        stored = self._items.pop(response_id, None)
        if stored is not None:
            self._bytes -= stored.text_bytes
