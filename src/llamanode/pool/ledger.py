"""The memory ledger: live session KV and state buffers against the budget, buffers held as reservations."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Literal

from ..session import SessionState

__all__ = ["Kind", "MemoryLedger", "Reservation", "Sizes", "state_size"]

_STATE_SLACK_PER_TOKEN = 64  # token ids, prefix text and cell metadata, per token (generous)
_STATE_SLACK = 1 << 20
Kind = Literal["session", "buffer"]  # a session's KV allocation, or a state buffer (export, restore, write)


@dataclass(frozen=True)
class Sizes:
    """KV sizes of one model and config: per token, per session (its padded n_ctx), per exported state."""

    per_token: float
    n_ctx: int  # as the backend pads it
    session_bytes: int  # kv_bytes() of one session

    @classmethod
    def of(cls, per_token: float, n_ctx: int) -> Sizes:
        return cls(per_token, n_ctx, int(per_token * n_ctx))

    def state_estimate(self, n_tokens: int) -> int:
        """An upper bound on the exported state of n_tokens resident tokens."""
        return int(n_tokens * (self.per_token + _STATE_SLACK_PER_TOKEN)) + _STATE_SLACK

    @property
    def headroom(self) -> int:
        """Bytes admission keeps free: two full-context states on their way to disk plus one restore."""
        return 3 * self.state_estimate(self.n_ctx)

    def budget_for(self, live_sessions: int) -> int:
        """The smallest memory budget that keeps live_sessions sessions live at once."""
        return live_sessions * self.session_bytes + self.headroom


def state_size(state: SessionState) -> int:
    return len(state.kv) + len(state.prefix_text) + 4 * len(state.tokens)


class MemoryLedger:
    """Bytes accounted against the budget: live session KV and state buffers. Guarded by the pool's
    condition (re-entrant), which it notifies whenever bytes are freed."""

    def __init__(self, cv: threading.Condition, sizes: Sizes, budget: int | None) -> None:
        self._cv = cv
        self.sizes = sizes
        self.budget = budget
        self.kv_live = 0
        self.buffers = 0
        self.peak = 0

    def live_bytes(self) -> int:
        return self.kv_live + self.buffers

    def fits(self, nbytes: int, kind: Kind) -> bool:
        """Whether nbytes more fit; a session must also leave the transfer headroom (or the buffers in use) free."""
        if self.budget is None:
            return True
        if kind == "session":
            return self.kv_live + nbytes + max(self.sizes.headroom, self.buffers) <= self.budget
        return self.kv_live + self.buffers + nbytes <= self.budget

    def account(self, nbytes: int, kind: Kind) -> Reservation | None:
        """Account nbytes now (the caller checked fits() under the lock): a buffer becomes a reservation."""
        with self._cv:
            if kind == "session":
                self.kv_live += nbytes
                self._note_peak()
                return None
            self.buffers += nbytes
            self._note_peak()
            return Reservation(self, nbytes)

    def correct_session(self, accounted: int, actual: int) -> None:
        """A session turned out to hold actual bytes where accounted were booked."""
        with self._cv:
            self.kv_live += actual - accounted
            self._note_peak()

    def free_session(self, nbytes: int) -> None:
        with self._cv:
            self.kv_live -= nbytes
            self._cv.notify_all()

    def resize(self, reservation: Reservation, nbytes: int) -> None:
        with self._cv:
            self.buffers += nbytes - reservation.nbytes
            reservation.nbytes = nbytes
            self._note_peak()
            self._cv.notify_all()

    def _note_peak(self) -> None:
        self.peak = max(self.peak, self.live_bytes())


class Reservation:
    """Buffer bytes held in the ledger: resize() once the real size is known, release() when freed."""

    def __init__(self, ledger: MemoryLedger, nbytes: int) -> None:
        self._ledger = ledger
        self.nbytes = nbytes

    def resize(self, nbytes: int) -> None:
        self._ledger.resize(self, nbytes)

    def release(self) -> None:
        self.resize(0)
