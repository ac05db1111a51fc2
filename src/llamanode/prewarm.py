"""Prewarming: a session's next prefix prefilled in a background thread while its caller is idle.

A prewarm is the session's own ensure_prefix, run by a thread of its own and holding the session like
any call, so its chunks, batch rules and exactness are ensure_prefix's. After each prefill chunk it looks
whether it was asked to stop. Every other call on the session asks it before waiting for the session
(Prewarmer.holding). Asking also interrupts the chunk in flight (KVContext.interrupt): that chunk is
dropped, as if the prewarm had stopped at the boundary before it, so the call waits for one graph node of
llama.cpp, not for a chunk; unless the call needs that chunk: an ensure_prefix (or a newer prewarm) whose
prefix begins with the prewarm's (the same prefix, or the next turn's) would prefill all of it again, so it
waits for the rest of it instead, which is never longer. A carry_on prewarm (approximate: halfway it keeps
nothing) is never interrupted.

- ensure_prefix of the same prefix: the prewarm stops ("joined") and the call takes over where it stood
  (the chunks done are an unfinished prefill, reused token by token: Resident.partial);
- ensure_prefix of another prefix, and every other call: "cancelled" (the call reuses what matches);
- a newer prewarm: "superseded"; close(): "interrupted".

A prewarm that has not got hold of the session yet ends at once, having done nothing. How a prewarm ended
is recorded while it still holds the session, so the call that gets the session next reads a final
report; its done-callbacks run, and waiters wake, once it has let go of the session. A failure is
recorded, never raised into another thread; an unexpected one (not a LlamaNodeError) makes the session
unusable, since its context may no longer match what it believes is resident.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial

from .errors import LlamaNodeError
from .resident import ProgressFn, ResidentKV
from .session import PrefillProgress, PrefixInput, PrefixStatus, PrewarmReport
from .session_lock import SessionLock

__all__ = ["PrewarmHandle", "Prewarmer"]

PrefillFn = Callable[[PrefixInput, ProgressFn], PrefixStatus]  # the session's ensure_prefix
# Waits while foreground work runs (a pool's leases); returns early once its argument says "stop now".
Gate = Callable[[Callable[[], bool]], None]
DoneFn = Callable[[PrewarmReport], None]
_log = logging.getLogger(__name__)


class _Stopped(Exception):
    """Raised in a prewarm's thread to leave ensure_prefix between two chunks (or before the first)."""


@dataclass(eq=False)
class _Run:
    """One prewarm; guarded by its Prewarmer's condition."""

    prefix: PrefixInput
    finish: bool = False  # settle() finishes it instead of stopping it
    carry_on: bool = False  # an ensure_prefix of its prefix waits for its end instead of stopping it
    hurried: bool = False  # such a call is waiting: the gate no longer holds it back
    began: float = field(default_factory=time.perf_counter)
    phase: str = "waiting"  # waiting (for the session) | running (holds it) | ended
    stop: tuple[str, str] | None = None  # (outcome, by) asked for while it runs
    prefix_tokens: int | None = None
    reused_tokens: int | None = None
    prefilled: int = 0
    report: PrewarmReport | None = None  # once ended
    callbacks: list[DoneFn] = field(default_factory=list)
    settled: bool = False  # its callbacks ran (or run now) ...
    done: threading.Event = field(default_factory=threading.Event)  # ... and then this was set

    @property
    def interruptible(self) -> bool:
        """Whether asking it to stop may interrupt its chunk in flight (never a carry_on one)."""
        return not self.carry_on

    def now(self, outcome: str, by: str | None, status: PrefixStatus | None = None) -> PrewarmReport:
        elapsed = time.perf_counter() - self.began
        if status is not None:
            counts = (status.prefix_tokens, status.reused_tokens, status.prefilled_tokens)
            return PrewarmReport(outcome, by, *counts, elapsed, status)
        return PrewarmReport(outcome, by, self.prefix_tokens, self.reused_tokens, self.prefilled, elapsed)


class PrewarmHandle:
    """A prewarm started by KVSession.prewarm or SessionPool.prewarm."""

    def __init__(self, run: _Run, owner: Prewarmer) -> None:
        self._run = run
        self._owner = owner

    def report(self) -> PrewarmReport:
        """What it did so far (outcome "running" while it runs), or how it ended."""
        return self._owner.report_of(self._run)

    @property
    def done(self) -> bool:
        return self._run.done.is_set()

    def wait(self, timeout: float | None = None) -> PrewarmReport:
        """Its final report, once it has ended and let go of the session (TimeoutError after timeout s)."""
        if not self._run.done.wait(timeout):
            raise TimeoutError(f"the prewarm is still running after {timeout} s")
        assert self._run.report is not None
        return self._run.report

    def cancel(self) -> PrewarmReport:
        """Stop it (unless it has ended) and wait for that: its chunk in flight is interrupted (dropped), or
        finished first if it is carry_on."""
        return self._owner.cancel_run(self._run, "cancel")

    def add_done_callback(self, fn: DoneFn) -> None:
        """Call fn with the final report when it ends, before wait() returns (at once if it has ended)."""
        self._owner.add_done_callback(self._run, fn)


class Prewarmer:
    """A session's prewarms: at most one runs; a newer one supersedes it between chunks."""

    def __init__(self, kv: ResidentKV, prefill: PrefillFn, gate: Gate | None = None) -> None:
        self._kv = kv
        self._prefill = prefill
        self._gate = gate
        self._cv = threading.Condition(threading.RLock())
        self._last: _Run | None = None
        self._threads: list[threading.Thread] = []
        self._mine = threading.local()  # .run: set in a prewarm's own thread
        self._waiting_calls = 0  # calls that asked for the session and do not hold it yet

    # -- asked by the session's callers ------------------------------------------------------------
    def start(self, prefix: PrefixInput, finish: bool = False, carry_on: bool = False) -> PrewarmHandle:
        run = _Run(prefix, finish, carry_on)
        thread = threading.Thread(target=self._main, args=(run,), name="llamanode-prewarm", daemon=True)
        with self._cv:
            last = self._last
            ended = self._ask(last, "superseded", "prewarm", last is not None and _reuses_all(prefix, last))
            self._last = run
            self._threads = [t for t in self._threads if t.ident is None or t.is_alive()] + [thread]
        self._settle(ended)
        thread.start()
        return PrewarmHandle(run, self)

    def _yield_to(self, call: str, prefix: PrefixInput | None) -> None:
        """Before call waits for the session: a running prewarm stops now (its chunk in flight interrupted), or
        at its next chunk boundary if call needs that chunk (_reuses_all)."""
        with self._cv:
            self._waiting_calls += 1
            run = self._last
            same = run is not None and call == "ensure_prefix" and prefix == run.prefix
            if same and run is not None and run.carry_on and run.phase == "running":
                run.hurried = True  # an approximate prefill stopped halfway keeps nothing: let it end
                ended = None
            else:
                outcome = "joined" if same else "interrupted" if call == "close" else "cancelled"
                needs_chunk = run is not None and call == "ensure_prefix" and _reuses_all(prefix, run)
                ended = self._ask(run, outcome, call, needs_chunk)
        self._settle(ended)

    def _served(self) -> bool:
        """A waiting call holds the session now (or gave up): prewarms started meanwhile may go on."""
        with self._cv:
            self._waiting_calls -= 1
            self._cv.notify_all()
        return True

    def cancel(self, by: str) -> PrewarmReport | None:
        """Stop the latest prewarm at its next chunk boundary and wait for that; its report, if any."""
        with self._cv:
            run = self._last
        return None if run is None else self.cancel_run(run, by)

    def pause(self) -> None:
        """Foreground work begins elsewhere (a pool lease): interrupt the chunk in flight of a running prewarm,
        which then waits at its gate and prefills that chunk again (only the interrupted part is lost). Without
        a gate, or for a prewarm that is not interruptible, nothing happens."""
        with self._cv:
            run = self._last
            if self._gate is not None and run is not None and run.phase == "running" and run.interruptible:
                self._kv.ctx.interrupt()

    def settle(self, by: str) -> PrewarmReport | None:
        """Before work that needs a complete state: a running prewarm started with finish=True is finished in
        this thread (its prefix's ensure_prefix joins it); any other is cancelled. The latest report, if any."""
        with self._cv:
            run = self._last
            finish = run is not None and run.finish and run.phase != "ended"
        if run is None or not finish:
            return self.cancel(by)
        with contextlib.suppress(LlamaNodeError):  # a failed prefill is reported by the session like any other
            self._prefill(run.prefix, lambda _: None)
        return self.report_of(run)

    def stop_for_copy(self, by: str) -> PrefixInput | None:
        """Cancel the latest prewarm so a copy can take what it has done so far; the prefix of a finish=True
        one that had not completed, for the caller to start again after the copy (it resumes where it stood)."""
        with self._cv:
            run = self._last
            if run is None or run.phase == "ended":
                return None
        report = self.cancel_run(run, by)
        return run.prefix if run.finish and (report.outcome, report.by) == ("cancelled", by) else None

    def cancel_run(self, run: _Run, by: str) -> PrewarmReport:
        with self._cv:
            ended = self._ask(run, "cancelled", by)
        self._settle(ended)
        with self._cv:
            self._cv.wait_for(lambda: run.phase == "ended")
            assert run.report is not None
            return run.report

    def report(self) -> PrewarmReport | None:
        """The latest prewarm's report (explain_context().last_prewarm)."""
        with self._cv:
            return None if self._last is None else self.report_of(self._last)

    def add_done_callback(self, run: _Run, fn: DoneFn) -> None:
        with self._cv:
            if not run.settled:
                run.callbacks.append(fn)
                return
        _call(fn, run)

    def report_of(self, run: _Run) -> PrewarmReport:
        with self._cv:  # while it runs, `by` names a call that asked it to stop (or waits for its end)
            waiting_call = "ensure_prefix" if run.hurried else None
            return run.report or run.now("running", run.stop[1] if run.stop else waiting_call)

    @property
    def running(self) -> bool:
        with self._cv:
            return self._last is not None and self._last.phase != "ended"

    @property
    def in_session(self) -> bool:
        """A prewarm holds the session (in a chunk or between two); a waiting one has changed nothing yet."""
        with self._cv:
            return self._last is not None and self._last.phase == "running"

    def join(self) -> None:
        """Wait for every prewarm thread to end (after close(): they end without touching the context)."""
        with self._cv:
            threads, self._threads = self._threads, []
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join()

    # -- every call that holds the session goes through here ---------------------------------------------
    @contextmanager
    def holding(self, lock: SessionLock, call: str, prefix: PrefixInput | None) -> Iterator[None]:
        """Hold the session for call. A caller first asks a running prewarm to stop at its next chunk
        boundary, and counts as waiting until it holds the session (a prewarm started meanwhile waits
        for it). A prewarm's own ensure_prefix begins here, and records how it ended."""
        run: _Run | None = getattr(self._mine, "run", None)
        if run is not None:
            with lock.hold(), self._recorded(run):
                yield
            return
        self._yield_to(call, prefix)
        served = False
        try:
            with lock.hold():
                served = self._served()
                yield
        finally:
            if not served:  # it never got the session (e.g. SessionBusyError)
                self._served()

    @contextmanager
    def _recorded(self, run: _Run) -> Iterator[None]:
        """Begin run (or leave at once if it was stopped while it waited), and record how it ended while
        it still holds the session."""
        with self._cv:
            if run.phase == "ended":
                raise _Stopped
            run.phase = "running"
        try:
            with self._kv.background_chunks(partial(self._interrupted, run) if run.interruptible else None):
                with self._cv:  # armed now: a stop asked before (its interrupt did nothing) ends it before its
                    # first chunk; no chunk is in flight yet, so none is lost even if the asker needs it
                    if run.stop is not None:
                        self._kv.ctx.interrupt()
                yield
        except _Stopped:
            raise
        except LlamaNodeError as exc:
            self._end(run, "failed", _describe(exc))
            raise
        except BaseException as exc:
            self._kv.fatal = f"a prewarm failed unexpectedly: {_describe(exc)}"
            self._end(run, "failed", _describe(exc))
            raise
        else:
            self._end(run, "completed", "ensure_prefix" if run.hurried else None, self._kv.r.last_prefix)

    # -- the prewarm's own thread ------------------------------------------------------------------------
    def _main(self, run: _Run) -> None:
        self._mine.run = run
        try:
            with self._cv:  # calls that asked for the session before this prewarm began go first
                self._cv.wait_for(lambda: self._waiting_calls == 0 or run.phase == "ended")
                stopped = run.phase == "ended"
            self._wait_turn(run)
            if not stopped:
                with contextlib.suppress(Exception):  # recorded by turn(): never raised into another thread
                    self._prefill(run.prefix, partial(self._progress, run))
        finally:
            with self._cv:
                if run.phase != "ended":  # it never got to turn() (nothing was touched)
                    self._end(run, "failed", "the prewarm thread ended before it held the session")
            self._mine.run = None  # callbacks that use the session from here are ordinary calls
            self._settle(run)  # the session is free again: callbacks and waiters may use it

    def _progress(self, run: _Run, progress: PrefillProgress) -> None:
        """After each chunk of the prewarm's prefill: count it, let foreground work go first, stop here if asked."""
        with self._cv:
            run.prefilled = progress.done_tokens
            run.reused_tokens = len(self._kv.r.tokens) - progress.done_tokens
            run.prefix_tokens = run.reused_tokens + progress.total_tokens
        self._wait_turn(run)
        self._stop_if_asked(run)

    def _interrupted(self, run: _Run) -> None:
        """A chunk was interrupted (nothing of it is resident): stop as at the boundary before it if asked,
        else (a pause) wait for the gate and prefill it again."""
        self._stop_if_asked(run)
        self._wait_turn(run)
        self._stop_if_asked(run)

    def _stop_if_asked(self, run: _Run) -> None:
        with self._cv:
            stop = run.stop
        if stop is not None:
            self._end(run, *stop)
            raise _Stopped

    def _wait_turn(self, run: _Run) -> None:
        """Before the next chunk: wait while the gate says foreground work runs, unless run is asked to stop."""
        if self._gate is not None:
            self._gate(lambda: run.stop is not None or run.phase == "ended" or run.hurried)

    # -- ending a run (recorded under the condition), then settling it (callbacks, waiters) outside -------
    def _ask(self, run: _Run | None, outcome: str, by: str, needs_chunk: bool = False) -> _Run | None:
        """Ask run to stop: a waiting one ends now (returned, to settle); a running one at once (its chunk in
        flight interrupted), or at its next chunk boundary if the asker needs that chunk or it is carry_on."""
        if run is None or run.phase == "ended":
            return None
        if run.phase == "waiting":
            self._end(run, outcome, by)
            return run
        if run.stop is None:
            run.stop = (outcome, by)
        if run.interruptible and not needs_chunk:  # under the condition: once armed, _recorded looks at run.stop
            self._kv.ctx.interrupt()
        return None

    def _end(self, run: _Run, outcome: str, by: str | None, status: PrefixStatus | None = None) -> None:
        with self._cv:  # re-entrant here: _ask ends a waiting run with the condition held
            run.report = run.now(outcome, by, status)
            run.phase = "ended"
            self._cv.notify_all()

    def _settle(self, run: _Run | None) -> None:
        if run is None:
            return
        with self._cv:
            if run.settled or run.report is None:
                return
            run.settled, callbacks = True, list(run.callbacks)
        for fn in callbacks:
            _call(fn, run)
        run.done.set()


def _reuses_all(prefix: PrefixInput | None, run: _Run) -> bool:
    """Whether prefilling prefix reuses every token run prefills: rendered alike, and its text begins with
    run's. Interrupting run's chunk in flight would then cost the asker the whole chunk, waiting only its rest."""
    if prefix is None or prefix.manifest.digest != run.prefix.manifest.digest:
        return False
    return prefix.text.startswith(run.prefix.text)


def _call(fn: DoneFn, run: _Run) -> None:
    assert run.report is not None
    try:
        fn(run.report)
    except Exception:  # a callback's bug is logged, never raised into the prewarm's thread
        _log.exception("a prewarm done-callback failed")


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
