"""Forks: a new workspace holding another's resident state, copied without a prefill (exact: the same KV).

fork() copies a named source. fork_nearest() picks the source itself, for a new session that should start
warm: the live or stored workspace whose reusable tokens share the longest prefix with its prompt
(routing.longest_prefix). Both lease the source first, then the target (the one lock order of the pool's
forks), refuse or skip a target that exists, and give the target a ForkOrigin.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Sequence

from ..errors import InvalidInputError, LlamaNodeError
from ..session import ForkOrigin, PrefixInput
from .restore import StateMover
from .room import Room
from .routing import longest_prefix, shared_prefix
from .stats import StatsRecorder
from .workspace import Workspace, Workspaces
from .writer import SnapshotWriter

__all__ = ["Forks"]


class Forks:
    """Forking leased workspaces. release(ws) is the pool's end of a lease (remember, touch, unlease)."""

    def __init__(
        self,
        cv: threading.Condition,
        workspaces: Workspaces,
        room: Room,
        mover: StateMover,
        writer: SnapshotWriter,
        stats: StatsRecorder,
        release: Callable[[Workspace], None],
    ) -> None:
        self._cv = cv
        self._workspaces = workspaces
        self._room = room
        self._mover = mover
        self._writer = writer
        self._stats = stats
        self._release = release

    def fork(self, src: str, dst: str) -> ForkOrigin:
        """dst, new, with src's resident state; InvalidInputError if dst exists or src does not."""
        if src == dst:
            raise InvalidInputError("fork needs two different workspace ids")
        source = self._workspaces.lease(src, create=False)
        try:
            target = self._workspaces.lease(dst, create=True)
            try:
                if self.exists(target):
                    raise InvalidInputError(f"workspace {dst!r} already exists")
                return self._copy(source, target, shared=None)
            finally:
                self._release(target)
        finally:
            self._release(source)

    def fork_nearest(self, dst: str, tokens: Sequence[int], min_tokens: int, identity_key: str) -> ForkOrigin | None:
        """Make dst a fork of the workspace sharing the longest reusable prefix with tokens, at least
        min_tokens of it. None, and nothing changed, when dst exists (say, made meanwhile by a request with
        the same key) or nothing shares enough. Waits for the source's lease if a turn holds it."""
        with self._cv:
            if self._workspaces.get(dst) is not None:
                return None
            candidates = [(w, w.session is not None) for w in self._workspaces if w.id != dst]
        src, _ = longest_prefix(tokens, candidates, identity_key, min_tokens)
        if src is None:
            return None
        source = self._workspaces.lease(src, create=False)
        try:
            shared = shared_prefix(tokens, source, identity_key)  # again: a turn may have changed it meanwhile
            if shared < min_tokens:
                return None
            target = self._workspaces.lease(dst, create=True)
            try:
                return None if self.exists(target) else self._copy(source, target, shared)
            finally:
                self._release(target)
        finally:
            self._release(source)

    @staticmethod
    def _settle_source(source: Workspace, partial: bool) -> PrefixInput | None:
        """Stop (partial) or finish the source's prewarm; the prefix to prewarm again after the copy."""
        if source.session is None:
            return None
        if partial:
            return source.session.stop_prewarm_for_copy("fork")
        source.session.settle_prewarm("fork")
        if source.session.explain_context().manifest is None and source.session.resident_tokens():
            raise InvalidInputError(f"workspace {source.id!r} holds an unfinished prefill: nothing to fork")
        return None

    def exists(self, ws: Workspace) -> bool:
        """Whether ws holds a state: live, on its way to disk, or stored."""
        return ws.session is not None or ws.snapshot is not None or ws.id in self._writer

    def _copy(self, source: Workspace, target: Workspace, shared: int | None) -> ForkOrigin:
        goes_first = self._room.source_goes_first(source)
        # a new session (fork_nearest) needs no more than the source's prewarm has done: it need not wait for
        # the rest, which the source prewarms again after the copy; an eviction needs a complete state
        partial = shared is not None and not goes_first
        resume = self._settle_source(source, partial)
        try:
            if goes_first:
                self._room.evict(source)  # the fork goes through the evicted state, still in memory
            session = self._room.admit(target)
            try:
                with self._stats.timed("fork"):
                    self._mover.copy(source, session, unfinished=partial)
            except BaseException:
                self._room.discard(target)
                raise
        finally:
            if resume is not None and source.session is not None:
                # a source that cannot prewarm (now unusable) reports that to its next request, not to the fork
                with contextlib.suppress(LlamaNodeError):
                    source.session.prewarm(resume, finish=True)
        copied = len(session.resident_tokens())
        origin = ForkOrigin(source.id, copied, copied if shared is None else min(shared, copied), time.time())
        session.note_fork(origin, just_forked=True)
        target.origin = origin
        target.remember(session)
        source.uses += 1
        self._stats.count("forks")
        return origin
