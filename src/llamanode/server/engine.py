"""Runs generations on pooled workspaces: admission, lease, prefix, suffix, decode, metrics.

`Engine.start` does everything that can fail before the first token (and raises); the Job it
returns streams chunks while holding the workspace lease and a compute slot, and gives both
back when it ends or is closed (a client that went away closes it).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass
from typing import Any, Protocol

from ..config import DecodeConfig
from ..errors import ContextOverflowError, LlamaNodeError
from ..kvsession import KVSession
from ..session import DecodeReport, PrefillProgress, PrefixStatus, StreamChunk, SuffixStatus
from .admission import Admission
from .http import ClientGone, Request
from .metrics import TPS_BUCKETS, TTFT_BUCKETS, Metrics

__all__ = ["Engine", "Job", "PoolLike", "Usage"]


class PoolLike(Protocol):
    """The part of llamanode.pool.SessionPool the server uses."""

    def session(self, workspace_id: str) -> AbstractContextManager[KVSession]: ...

    def fork(self, src: str, dst: str) -> None: ...

    def drop(self, workspace_id: str) -> None: ...

    def workspaces(self) -> Sequence[Any]: ...

    def longest_prefix(self, tokens: Sequence[int], min_tokens: int = 32) -> tuple[str | None, int]: ...

    def tokenize(self, text: str) -> list[int]: ...

    def stats(self) -> Any: ...

    def checkpoint(self, workspace_id: str) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int

    def openai(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
        }


class Job:
    """One generation in flight. Iterate for chunks; close() releases the workspace."""

    def __init__(
        self,
        engine: Engine,
        request: Request,
        workspace: str,
        prefix: PrefixStatus | None,
        suffix: SuffixStatus | None,
        chunks: Iterator[StreamChunk],
        stack: ExitStack,
        session: KVSession,
    ) -> None:
        self.engine = engine
        self.session = session
        self.after_success: Callable[[KVSession], None] | None = None
        self.request = request
        self.workspace = workspace
        self.prefix = prefix
        self.suffix = suffix
        self.report: DecodeReport | None = None
        self.finish_reason: str | None = None
        self.generated = 0
        self.cancelled = False
        self.error: LlamaNodeError | None = None
        self._parts: list[str] = []
        self._chunks = chunks
        self._stack = stack
        self._first_at: float | None = None
        self._closed = False

    @property
    def prompt_tokens(self) -> int:
        if self.suffix is not None:
            return self.suffix.resident_tokens
        return self.prefix.resident_tokens if self.prefix is not None else 0

    @property
    def cached_tokens(self) -> int:
        return self.prefix.reused_tokens if self.prefix is not None else 0

    def usage(self) -> Usage:
        return Usage(self.prompt_tokens, self.cached_tokens, self.generated)

    def __iter__(self) -> Iterator[StreamChunk]:
        """Chunks until the final one. An early end (error, client gone) closes the job at once;
        a complete one leaves closing to the owner, after the response is written."""
        try:
            for chunk in self._chunks:
                if self._first_at is None:
                    self._first_at = time.perf_counter()
                self.generated += len(chunk.token_ids)
                self._parts.append(chunk.text)
                if chunk.report is not None:
                    self.report = chunk.report
                    self.generated = chunk.report.generated_tokens
                    self.finish_reason = chunk.finish_reason
                    self.error = chunk.error
                yield chunk
                if chunk.finish_reason is None and self.request.client_gone():
                    raise ClientGone()
        except BaseException:
            if self.report is None:  # closed before the final chunk: the client went away (or a failure)
                self.cancelled = True
                self.request.log["client_gone"] = True
            self.close()
            raise

    @property
    def text(self) -> str:
        return "".join(self._parts)

    @property
    def completed(self) -> bool:
        return self.report is not None and self.error is None and not self.cancelled

    def close(self) -> None:
        """Release the workspace. After a complete generation, run after_success first (still leased)."""
        if self._closed:
            return
        self._closed = True
        try:
            close = getattr(self._chunks, "close", None)
            if close is not None:
                close()
            self.engine.finished(self)
            if self.after_success is not None and self.completed and not self.request.log.get("client_gone"):
                started = time.perf_counter()
                try:
                    self.after_success(self.session)
                except LlamaNodeError as exc:  # only a warm-up: the answer is already out
                    self.request.log["after_error"] = type(exc).__name__
                self.request.log["after_ms"] = round((time.perf_counter() - started) * 1000, 2)
        finally:
            self._stack.close()

    @property
    def ttft_s(self) -> float | None:
        return None if self._first_at is None else self._first_at - self.request.started


def _cancel_when_gone(request: Request) -> Callable[[PrefillProgress], None]:
    """A prefill progress callback that abandons the prefill (after a chunk) once the client is gone."""

    def check(progress: PrefillProgress) -> None:
        if progress.done_tokens < progress.total_tokens and request.client_gone():
            request.log["client_gone"] = True
            request.log["cancelled_in"] = progress.stage
            raise ClientGone()

    return check


class Engine:
    def __init__(self, pool: PoolLike, admission: Admission, metrics: Metrics, num_ctx: int) -> None:
        self.pool = pool
        self.admission = admission
        self.metrics = metrics
        self.num_ctx = num_ctx
        self._lock = threading.Lock()
        m = metrics
        m.describe("llamanode_prompt_tokens_reused_total", "counter", "Prompt tokens reused from a warm prefix")
        m.describe(
            "llamanode_prompt_tokens_prefilled_total", "counter", "Prompt tokens prefilled (prefix tail + suffix)"
        )
        m.describe("llamanode_generated_tokens_total", "counter", "Tokens generated")
        m.describe("llamanode_generations_total", "counter", "Generations by outcome")
        m.describe("llamanode_ttft_seconds", "histogram", "Request arrival to first token", TTFT_BUCKETS)
        m.describe("llamanode_decode_tokens_per_second", "histogram", "Decode speed per generation", TPS_BUCKETS)
        m.describe("llamanode_queue_wait_seconds", "histogram", "Time spent queued before running")

    def lease(self, request: Request, workspace: str) -> tuple[ExitStack, KVSession]:
        """Admission, then the pool's exclusive lease; the caller must close the stack."""
        stack = ExitStack()
        try:
            waited = stack.enter_context(self.admission.slot(workspace))
            self.metrics.observe("llamanode_queue_wait_seconds", waited)
            request.log["queued_ms"] = round(waited * 1000, 2)
            session = stack.enter_context(self.pool.session(workspace))
        except BaseException:
            stack.close()
            raise
        return stack, session

    def start(
        self,
        request: Request,
        workspace: str,
        segments: Sequence[tuple[str, str]],
        suffix: str | None,
        config: DecodeConfig,
        on_leased: Callable[[KVSession], None] | None = None,
    ) -> Job:
        """Prefix, suffix, then open the decode stream; any error raises with nothing leased.

        config.max_tokens None means "up to the end of the context": it becomes the room left.
        """
        request.log["workspace"] = workspace
        stack, session = self.lease(request, workspace)
        try:
            if on_leased is not None:
                on_leased(session)
            cancel = _cancel_when_gone(request)
            prefix = session.ensure_prefix(session.prefix(tuple(segments)), on_progress=cancel)
            self.record_prefix(request, prefix)
            suffix_status = None
            if suffix:
                suffix_status = session.prefill_suffix(session.suffix(suffix), on_progress=cancel)
                self.metrics.inc("llamanode_prompt_tokens_prefilled_total", suffix_status.suffix_tokens)
                request.log["suffix_tokens"] = suffix_status.suffix_tokens
            resident = suffix_status.resident_tokens if suffix_status else prefix.resident_tokens
            available = suffix_status.available_tokens if suffix_status else prefix.available_tokens
            if config.max_tokens is None:
                if available < 1:
                    raise ContextOverflowError("decode", resident, 1, session.num_ctx)
                config = config.replace(max_tokens=available)
            chunks = session.decode(config)
        except BaseException:
            stack.close()
            raise
        return Job(self, request, workspace, prefix, suffix_status, chunks, stack, session)

    def stream_only(self, request: Request, workspace: str, config: DecodeConfig) -> Job:
        """Decode from whatever the workspace holds (the native decode route)."""
        request.log["workspace"] = workspace
        stack, session = self.lease(request, workspace)
        try:
            chunks = session.decode(config)
        except BaseException:
            stack.close()
            raise
        return Job(self, request, workspace, None, None, chunks, stack, session)

    def record_prefix(self, request: Request, prefix: PrefixStatus) -> None:
        self.metrics.inc("llamanode_prompt_tokens_reused_total", prefix.reused_tokens)
        self.metrics.inc("llamanode_prompt_tokens_prefilled_total", prefix.prefilled_tokens)
        request.log.update(
            reused_tokens=prefix.reused_tokens,
            prefilled_tokens=prefix.prefilled_tokens,
            prefix_tokens=prefix.prefix_tokens,
            prefix_prefill_ms=round(prefix.prefill_s * 1000, 2),
        )

    def finished(self, job: Job) -> None:
        m = self.metrics
        outcome = "cancelled" if job.cancelled else (job.finish_reason or "error")
        m.inc("llamanode_generations_total", labels={"outcome": outcome})
        m.inc("llamanode_generated_tokens_total", job.generated)
        log = job.request.log
        log["generated_tokens"] = job.generated
        log["finish"] = outcome
        if job.ttft_s is not None:
            m.observe("llamanode_ttft_seconds", job.ttft_s)
            log["ttft_ms"] = round(job.ttft_s * 1000, 2)
        if job.report is not None and job.report.generated_tokens > 1:
            m.observe("llamanode_decode_tokens_per_second", job.report.tokens_per_s)
            log["decode_tps"] = round(job.report.tokens_per_s, 1)
