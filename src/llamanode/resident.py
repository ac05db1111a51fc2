"""What a context holds, position by position, and the KV operations that keep the two equal.

The batch rule lives here: a prefill never decodes a batch of one token after position 0 (a one-token
batch takes another kernel path and gives KV that differs from a cold batched prefill; see
docs/benchmarks.md, exactness), so chunks never end in one token and a lone new token takes its
predecessor along.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from .backends.base import KVContext
from .config import Config
from .errors import LlamaNodeError, PrefillInterruptedError, SessionFatalError
from .manifest import ContextManifest
from .session import ContextReport, Divergence, ForkOrigin, PrefillProgress, PrefixStatus, SegmentResidency

__all__ = ["InterruptFn", "ProgressFn", "Resident", "ResidentKV", "chunk_sizes"]

ProgressFn = Callable[[PrefillProgress], None]
# Called in the prefilling thread when a chunk was interrupted (nothing of it is resident): raises to stop
# there, as a progress callback stops a prefill between chunks, or returns to prefill the chunk again.
InterruptFn = Callable[[], None]


def chunk_sizes(n: int, batch: int) -> list[int]:
    """Split n tokens into chunks of at most batch, never leaving a chunk of one (the last two go together)."""
    sizes = [batch] * (n // batch) + ([n % batch] if n % batch else [])
    if len(sizes) > 1 and sizes[-1] == 1:
        sizes[-2] -= 1
        sizes[-1] = 2
    return sizes


@dataclass
class Resident:
    """What the context holds, position by position, and the prefix it came from."""

    tokens: list[int] = field(default_factory=list)
    prefix_len: int = 0
    stable_len: int = 0  # tokens before this came from batched prefill; after it, decode steps may lie
    approx_from: int | None = None  # KV from here on was reused approximately (segment reuse); None: exact
    generated: int = 0
    logits_for: int = -1  # the context's last logits belong to tokens[:logits_for]
    manifest: ContextManifest | None = None
    # an unfinished prefill's manifest (manifest is None): tokens[:stable_len] are reusable under it, token by
    # token, but never as a prefix; text is that prefill's target
    partial: ContextManifest | None = None
    text: bytes = b""
    text_hash: str = ""
    token_hash: str = ""
    offsets: list[int] | None = None  # byte offset of each prefix token, when pieces add up
    segments: tuple[SegmentResidency, ...] = ()
    divergence: Divergence | None = None
    last_prefix: PrefixStatus | None = None
    origin: ForkOrigin | None = None  # kept until the context is cleared

    def note_fork(self, origin: ForkOrigin, just_forked: bool) -> None:
        self.origin = origin
        if just_forked:
            detail = f"forked from workspace {origin.source!r} ({origin.shared_tokens} prompt tokens shared)"
            self.divergence = Divergence("forked", len(self.tokens), None, None, detail)

    def report(self, num_ctx: int, closed: bool, fatal: bool) -> ContextReport:
        n_res = len(self.tokens)
        prefix = self.prefix_len if self.manifest is not None else n_res - self.generated  # unfinished: all prefix
        return ContextReport(
            resident_tokens=n_res,
            prefix_tokens=prefix,
            suffix_tokens=n_res - prefix - self.generated,
            generated_tokens=self.generated,
            num_ctx=num_ctx,
            available_tokens=num_ctx - n_res,
            stable_byte_hash=self.text_hash,
            stable_token_hash=self.token_hash,
            manifest_digest=self.manifest.digest if self.manifest else "",
            manifest=self.manifest,
            closed=closed,
            fatal=fatal,
            segments=self.segments,
            last_divergence=self.divergence,
            last_prefix=self.last_prefix,
            forked_from=self.origin,
            approximate_from=self.approx_from,
        )

    def prefix_status(
        self, num_ctx: int, reused: int, prefilled: int, dropped: int, hit: bool, div: Divergence | None, secs: float
    ) -> PrefixStatus:
        """What ensure_prefix returns once this complete prefix is resident."""
        assert self.manifest is not None
        return PrefixStatus(
            reused_tokens=reused,
            prefilled_tokens=prefilled,
            dropped_tokens=dropped,
            prefix_tokens=self.prefix_len,
            resident_tokens=len(self.tokens),
            available_tokens=num_ctx - len(self.tokens),
            stable_byte_hash=self.text_hash,
            stable_token_hash=self.token_hash,
            manifest_digest=self.manifest.digest,
            byte_hash_hit=hit,
            divergence=div,
            prefill_s=secs,
            approximate_from=self.approx_from,
        )

    def exact_limit(self) -> int:
        """How many leading tokens an exact request may reuse: batched prefill, never approximated."""
        return self.stable_len if self.approx_from is None else min(self.stable_len, self.approx_from)


class ResidentKV:
    """A context and its Resident bookkeeping, kept equal by every operation here. A native failure
    leaves them unequal: `fatal` then says why, and the owner must refuse further use."""

    def __init__(self, ctx: KVContext, config: Config) -> None:
        self.ctx = ctx
        self.r = Resident()
        self.fatal: str | None = None
        # never more than one ubatch a chunk: llama.cpp would split a longer one (and an interrupted chunk
        # would leave its earlier ubatches behind)
        self.batch_size = min(config.num_batch, config.num_ubatch)
        self.background_batch = min(self.batch_size, config.prewarm_batch)
        self._on_interrupt: InterruptFn | None = None

    @contextmanager
    def background_chunks(self, on_interrupt: InterruptFn | None = None) -> Iterator[None]:
        """Prefill in chunks of background_batch meanwhile (a prewarm). With on_interrupt, the context's
        interrupts are armed meanwhile: ctx.interrupt() stops the chunk in flight (or the next one) and
        on_interrupt decides (see InterruptFn); without it, whoever stops the prewarm waits for a chunk."""
        foreground, self.batch_size = self.batch_size, self.background_batch
        if on_interrupt is not None:
            self.ctx.arm_interrupts(True)
            self._on_interrupt = on_interrupt
        try:
            yield
        finally:
            self.batch_size = foreground
            if on_interrupt is not None:
                self._on_interrupt = None
                self.ctx.arm_interrupts(False)

    def clear(self) -> None:
        """Drop every cell and all bookkeeping."""
        self.trim(0)
        self.r = Resident()

    def trim(self, keep: int) -> None:
        r = self.r
        if keep >= len(r.tokens):
            return
        first_generated = len(r.tokens) - r.generated  # generated tokens are the last ones (after any suffix)
        self.native(self.ctx.trim, keep)
        del r.tokens[keep:]
        r.prefix_len = min(r.prefix_len, keep)
        r.stable_len = min(r.stable_len, keep)
        if r.approx_from is not None and r.approx_from >= keep:
            r.approx_from = None  # every approximated token is gone
        r.generated = max(0, keep - first_generated)
        if r.logits_for > keep:
            r.logits_for = -1

    def extend(self, tokens: Sequence[int], stage: str, on_progress: ProgressFn | None, rewind: int = 0) -> None:
        """Prefill tokens after the resident ones in batches of >= 2, reporting progress.

        rewind re-prefills that many resident tokens in the same batch (a lone new token
        takes its predecessor along, so no batch of one is ever decoded after position 0).
        """
        r = self.r
        if len(tokens) + rewind == 1 and r.tokens:
            rewind = 1
        start = len(r.tokens) - min(rewind, len(r.tokens))
        batch = [*r.tokens[start:], *tokens]
        was_stable = r.stable_len >= start
        if start < len(r.tokens):
            self.native(self.ctx.trim, start)
            del r.tokens[start:]
        began, done = time.perf_counter(), 0
        for size in chunk_sizes(len(batch), self.batch_size):
            chunk = batch[done : done + size]
            self._prefill_chunk(chunk)
            r.tokens.extend(chunk)
            if was_stable:  # kept true after every chunk: a prefill stopped between chunks stays reusable
                r.stable_len = len(r.tokens)
            r.logits_for = len(r.tokens)
            done += size
            if on_progress is not None:
                on_progress(PrefillProgress(stage, done, len(batch), time.perf_counter() - began))

    def _prefill_chunk(self, chunk: Sequence[int]) -> None:
        """Prefill one chunk after the resident tokens. An interrupted one left the context as before it
        (Resident is unchanged but for its logits, which are gone): on_interrupt stops here or retries it."""
        while True:
            try:
                self.native(self.ctx.prefill, chunk, len(self.r.tokens))
                return
            except PrefillInterruptedError:
                self.r.logits_for = -1  # llama.cpp drops the last logits when a decode begins
                if self._on_interrupt is None:
                    raise
                self._on_interrupt()

    def refresh_logits(self) -> None:
        """Make the last token's logits live again, re-prefilling the last two as one batch."""
        if self.r.logits_for != len(self.r.tokens):
            self.extend([], "refresh", None, rewind=2)

    def step(self, token: int) -> None:
        """Decode one generated token after the resident ones (a decode step: its KV is not stable)."""
        r = self.r
        self.native(self.ctx.step, token, len(r.tokens))
        r.tokens.append(token)
        r.generated += 1
        r.logits_for = len(r.tokens)

    def native(self, op: Callable[..., None], *args: object) -> None:
        """Run a context operation; a backend failure marks this KV fatal."""
        try:
            op(*args)
        except PrefillInterruptedError:
            raise  # asked for: the context is as before the prefill, nothing is lost
        except LlamaNodeError as exc:
            self.fatal = str(exc)
            raise SessionFatalError(f"backend failed; the session is unusable: {exc}") from exc
