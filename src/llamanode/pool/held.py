"""An exported state held in memory, and the signature that says which state it is."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from ..identity import SnapshotIdentity
from ..session import SessionState
from .ledger import Reservation

__all__ = ["HeldState", "Signature"]

Signature = tuple[tuple[int, ...], int, int]  # resident tokens, prefix tokens, generated tokens


@dataclass(eq=False)
class HeldState:
    """A state in memory with its ledger reservation: waiting for the writer, being written, failed
    (kept and retried), or kept after its write for a quick switch back."""

    state: SessionState
    identity: SnapshotIdentity
    reservation: Reservation
    signature: Signature
    writing: bool = False
    error: str = ""
    queued_at: float = field(default_factory=time.monotonic)

    @property
    def nbytes(self) -> int:
        return self.reservation.nbytes
