"""Runs work on pooled workspaces: admission, then the blocking part on the compute executor.

`Engine.generation(call, plan)` queues a generation (429 at once when the queue is full) and returns
a `Generation`: iterating it waits for admission, then streams prefill progress and decoded chunks
from a worker thread that holds the workspace's lease. `Engine.run(call, workspace, fn)` does the
same for one short blocking call (the native session routes, embeddings).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import Executor
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from ..config import DecodeConfig
from ..errors import ContextOverflowError, LlamaNodeError
from ..kvsession import KVSession
from ..prewarm import PrewarmHandle
from ..session import (
    DecodeReport,
    ForkOrigin,
    PrefillProgress,
    PrefixInput,
    PrefixStatus,
    PrewarmReport,
    StreamChunk,
    SuffixStatus,
)
from .admission import Admission, Ticket
from .bridge import Bridge
from .call import Call, Cancelled
from .metrics import Metrics

__all__ = ["Engine", "Generation", "Plan", "PoolLike", "Queued", "Usage"]

T = TypeVar("T")
KEEPALIVE_S = 10.0  # while queued, a generation reports it this often (streams send an SSE comment)


class PoolLike(Protocol):
    """The part of llamanode.pool.SessionPool the server uses."""

    def session(self, workspace_id: str) -> AbstractContextManager[KVSession]: ...

    def fork(self, src: str, dst: str) -> ForkOrigin: ...

    def fork_nearest(self, dst: str, tokens: Sequence[int], min_tokens: int) -> ForkOrigin | None: ...

    def has_workspace(self, workspace_id: str) -> bool: ...

    def drop(self, workspace_id: str) -> None: ...

    def workspaces(self) -> Sequence[Any]: ...

    def longest_prefix(self, tokens: Sequence[int], min_tokens: int = 32) -> tuple[str | None, int]: ...

    def tokenize(self, text: str) -> list[int]: ...

    def stats(self) -> Any: ...

    def checkpoint(self, workspace_id: str) -> None: ...

    def prewarm(self, workspace_id: str, prefix: Sequence[tuple[str, str]]) -> PrewarmHandle: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class Queued:
    """Still waiting for the workspace or a compute slot."""

    waited_s: float


@dataclass(frozen=True)
class Plan:
    """What to generate. segments None: decode from whatever the workspace holds (native decode).

    config.max_tokens None means "up to the end of the context": it becomes the room left. With
    max_tokens_is_cap (agent APIs, which ask for far more than any window), a larger max_tokens is cut to
    the room left too, and Generation.window_capped says so (the API reports the window as the stop).
    after(session, answer) runs once the whole answer reached the client, still holding the lease; the
    prefix it returns (the next request's, as far as it can be told) is prewarmed in the background from
    the lease's end: any request comes first, and one for this workspace joins or stops it between chunks.
    """

    workspace: str
    segments: tuple[tuple[str, str], ...] | None
    suffix: str | None
    config: DecodeConfig
    after: Callable[[KVSession, str], PrefixInput | None] | None = None
    max_tokens_is_cap: bool = False


Event = PrefillProgress | StreamChunk | Queued


class Generation:
    """One generation: iterate events(); the Call closes it when the request ends."""

    def __init__(self, engine: Engine, call: Call, plan: Plan, ticket: Ticket) -> None:
        self.engine = engine
        self.call = call
        self.plan = plan
        self.workspace = plan.workspace
        self.prefix: PrefixStatus | None = None
        self.suffix: SuffixStatus | None = None
        self.report: DecodeReport | None = None
        self.finish_reason: str | None = None
        self.error: LlamaNodeError | None = None
        self.generated = 0
        self.window_capped = False  # max_tokens was cut to the room left in the window
        self._parts: list[str] = []
        self._first_at: float | None = None
        self._ticket = ticket
        self._bridge: Bridge[Event] = Bridge(engine.executor, call.cancel)
        call.on_close(self.close)

    @property
    def text(self) -> str:
        return "".join(self._parts)

    def usage(self) -> Usage:
        if self.suffix is not None:
            prompt = self.suffix.resident_tokens
        else:
            prompt = self.prefix.resident_tokens if self.prefix is not None else 0
        cached = self.prefix.reused_tokens if self.prefix is not None else 0
        return Usage(prompt, cached, self.generated)

    async def events(self) -> AsyncIterator[Event]:
        """Queued ticks, then prefill progress and chunks; raises what stopped it (Cancelled, typed errors)."""
        waiting = asyncio.ensure_future(self._ticket.acquire(self.call.cancel))
        try:
            while not waiting.done():
                done, _ = await asyncio.wait({waiting}, timeout=KEEPALIVE_S)
                if not done:
                    yield Queued(time.perf_counter() - self.call.started)
        finally:
            if not waiting.done():
                waiting.cancel()
        self.engine.record_wait(self.call, waiting.result())
        self._bridge.start(self._work)
        while (event := await self._bridge.get()) is not None:
            yield event
            if isinstance(event, StreamChunk) and event.finish_reason is not None:
                return  # the worker now waits for the response to be delivered (see close())

    async def close(self) -> None:
        """Wait for the worker (it runs `after` first if the answer was delivered) and free the slot."""
        try:
            await self._bridge.finish(delivered=self.call.response_complete and self.report is not None)
        finally:
            self._ticket.release()

    # -- the worker thread ---------------------------------------------------------------------
    def _work(self, bridge: Bridge[Event]) -> None:
        plan = self.plan
        try:
            with self.engine.pool.session(plan.workspace) as session:
                config = plan.config
                if plan.segments is not None:
                    config = self._prefill(bridge, session, plan.segments, plan.suffix, config)
                chunks = session.decode(config)
                try:
                    for chunk in chunks:
                        self._count(chunk)
                        bridge.emit(chunk)
                finally:
                    chunks.close()
                # Idle (without the GIL) until the answer is out; releasing the lease is Python work
                # that would otherwise compete with the event loop writing the response.
                delivered = bridge.delivered()
                if plan.after is not None and self.error is None and delivered:
                    self._after(plan.after, session)
        finally:
            self.engine.finished(self)

    def _prefill(
        self,
        bridge: Bridge[Event],
        session: KVSession,
        segments: tuple[tuple[str, str], ...],
        suffix: str | None,
        config: DecodeConfig,
    ) -> DecodeConfig:
        def progress(report: PrefillProgress) -> None:
            if report.done_tokens < report.total_tokens:
                try:
                    bridge.emit(report)
                except Cancelled:
                    self.call.log["cancelled_in"] = report.stage
                    raise

        self.prefix = session.ensure_prefix(session.prefix(segments), on_progress=progress)
        self.engine.record_prefix(self.call, self.prefix)
        resident, available = self.prefix.resident_tokens, self.prefix.available_tokens
        if suffix:
            self.suffix = session.prefill_suffix(session.suffix(suffix), on_progress=progress)
            self.engine.record_suffix(self.call, self.suffix)
            resident, available = self.suffix.resident_tokens, self.suffix.available_tokens
        bridge.check()
        capped = self.plan.max_tokens_is_cap and config.max_tokens is not None and config.max_tokens > available
        if config.max_tokens is None or capped:
            if available < 1:
                raise ContextOverflowError("decode", resident, 1, session.num_ctx)
            config = config.replace(max_tokens=available)
            self.window_capped = capped
        return config

    def _count(self, chunk: StreamChunk) -> None:
        if self._first_at is None:
            self._first_at = time.perf_counter()
        self.generated += len(chunk.token_ids)
        self._parts.append(chunk.text)
        if chunk.report is not None:
            self.report = chunk.report
            self.generated = chunk.report.generated_tokens
            self.finish_reason = chunk.finish_reason
            self.error = chunk.error

    def _after(self, after: Callable[[KVSession, str], PrefixInput | None], session: KVSession) -> None:
        try:
            prefix = after(session, self.text)
            if prefix is not None:
                handle = session.prewarm(prefix, finish=True)
                self.engine.metrics.warm_next_started.inc()  # before its end can be counted
                handle.add_done_callback(self.engine.warm_next_ended)
                self.call.log["warm_next"] = "started"
        except LlamaNodeError as exc:  # only a warm-up: the answer is already out
            self.call.log["after_error"] = type(exc).__name__

    @property
    def ttft_s(self) -> float | None:
        return None if self._first_at is None else self._first_at - self.call.started


class Engine:
    def __init__(self, pool: PoolLike, admission: Admission, metrics: Metrics, executor: Executor) -> None:
        self.pool = pool
        self.admission = admission
        self.metrics = metrics
        self.executor = executor

    def generation(self, call: Call, plan: Plan) -> Generation:
        """Queue a generation (429 at once when the queue is full); iterate its events() to run it."""
        call.log["workspace"] = plan.workspace
        return Generation(self, call, plan, self.admission.enter(plan.workspace))

    async def run(self, call: Call, workspace: str | None, fn: Callable[[], T]) -> T:
        """fn() on the compute executor, once admitted for the workspace (None: any slot)."""
        ticket = self.admission.enter(workspace)
        try:
            self.record_wait(call, await ticket.acquire(call.cancel))
            return await asyncio.get_running_loop().run_in_executor(self.executor, fn)
        finally:
            ticket.release()

    async def with_session(self, call: Call, workspace: str, fn: Callable[[KVSession], T]) -> T:
        """fn(session) on the compute executor, holding the workspace's lease."""

        def leased() -> T:
            with self.pool.session(workspace) as session:
                return fn(session)

        call.log["workspace"] = workspace
        return await self.run(call, workspace, leased)

    def warm_next_ended(self, report: PrewarmReport) -> None:
        """A warm-next prewarm ended (in its own thread): completed, joined by the next request, or stopped."""
        self.metrics.warm_next.labels(outcome=report.outcome).inc()
        self.metrics.warm_next_tokens.inc(report.prefilled_tokens or 0)

    def record_wait(self, call: Call, waited_s: float) -> None:
        self.metrics.queue_wait.observe(waited_s)
        call.log["queued_ms"] = round(waited_s * 1000, 2)

    def record_prefix(self, call: Call, prefix: PrefixStatus) -> None:
        self.metrics.prompt_tokens_reused.inc(prefix.reused_tokens)
        self.metrics.prompt_tokens_prefilled.inc(prefix.prefilled_tokens)
        call.log.update(
            reused_tokens=prefix.reused_tokens,
            prefilled_tokens=prefix.prefilled_tokens,
            prefix_tokens=prefix.prefix_tokens,
            prefix_prefill_ms=round(prefix.prefill_s * 1000, 2),
        )
        if prefix.divergence is not None:  # where reuse stopped: the segment (message) and why
            d = prefix.divergence
            call.log["divergence"] = {"cause": d.cause, "segment": d.segment, "token": d.token_index}

    def record_suffix(self, call: Call, suffix: SuffixStatus) -> None:
        self.metrics.prompt_tokens_prefilled.inc(suffix.suffix_tokens)
        call.log["suffix_tokens"] = suffix.suffix_tokens

    def finished(self, generation: Generation) -> None:
        m = self.metrics
        cancelled = generation.report is None and generation.call.cancel.reason is not None
        outcome = "cancelled" if cancelled else (generation.finish_reason or "error")
        m.generations.labels(outcome=outcome).inc()
        m.generated_tokens.inc(generation.generated)
        log = generation.call.log
        log["generated_tokens"] = generation.generated
        log["finish"] = outcome
        if generation.ttft_s is not None:
            m.ttft.observe(generation.ttft_s)
            log["ttft_ms"] = round(generation.ttft_s * 1000, 2)
        report = generation.report
        if report is not None and report.generated_tokens > 1:
            m.decode_tps.observe(report.tokens_per_s)
            log["decode_tps"] = round(report.tokens_per_s, 1)
