"""KVSession: the session contract over any KVContext. Its reuse decisions live here, in small steps
(approximate segment reuse, opt-in, in segment_reuse.py)."""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import replace
from types import TracebackType

from . import segment_reuse as approx
from .backends.base import KVContext, Sampler
from .config import ApproxReuse, Config, DecodeConfig
from .decoding import decode_chunks
from .errors import (
    ContextOverflowError,
    InvalidInputError,
    LlamaNodeError,
    ManifestMismatchError,
    SessionClosedError,
    SessionFatalError,
)
from .identity import SnapshotIdentity, require_identity
from .input_checks import check_segments, utf8_of
from .manifest import IDENTITY_FIELDS, ContextManifest, byte_hash, hash_token_ids, join_segments
from .prefix import common_prefix_len
from .prewarm import Gate, Prewarmer, PrewarmHandle
from .residency import explain_divergence, segment_residency, token_byte_offsets
from .resident import ProgressFn, Resident, ResidentKV, chunk_sizes
from .resident_state import base_manifest, resident_from_state, state_from_resident
from .session import (
    ContextReport,
    DecodeStream,
    Divergence,
    ForkOrigin,
    PrefixInput,
    PrefixStatus,
    PrewarmReport,
    SessionState,
    SuffixInput,
    SuffixStatus,
)
from .session_lock import SessionLock

__all__ = ["KVSession", "chunk_sizes", "common_prefix_len"]


class KVSession:
    """A persistent session: keeps the prefix's KV hot and prefills only what changed."""

    def __init__(
        self, context: KVContext, config: Config, on_close: Callable[[], None] | None = None, gate: Gate | None = None
    ) -> None:
        """gate: where a prewarm waits before each chunk while foreground work runs (the pool's leases)."""
        self._ctx = context
        self.config = config
        self.identity = context.identity
        self._base = base_manifest(self.identity)
        approx.refuse_at_open(config, context, on_close)
        self._kv = ResidentKV(context, config)
        self._lock = SessionLock()
        self._prewarms = Prewarmer(self._kv, self.ensure_prefix, gate)
        self._closed = False
        self._on_close = on_close
        self._cold_note = ""  # why this session started cold, carried into the first cold divergence

    # -- manifests ---------------------------------------------------------------------
    def manifest(self, segments: tuple[tuple[str, str], ...] = ()) -> ContextManifest:
        return join_segments(self._base, segments)[0]

    def prefix(self, segments: Sequence[tuple[str, str]]) -> PrefixInput:
        manifest, text = join_segments(self._base, segments)
        return PrefixInput(text, manifest)

    def suffix(self, text: str) -> SuffixInput:
        return SuffixInput(text, self._base)

    @property
    def num_ctx(self) -> int:
        return self.identity.n_ctx

    @property
    def _r(self) -> Resident:
        """What is resident (kept equal to the context by self._kv)."""
        return self._kv.r

    def tokenize(self, text: str) -> list[int]:
        """The token ids ensure_prefix would make of text (BOS per the session's policy), e.g. for routing."""
        if self._closed:
            raise SessionClosedError("session is closed")
        return self._ctx.tokenize(text, self._base.add_bos)

    # -- the contract ------------------------------------------------------------------
    def ensure_prefix(
        self,
        prefix: PrefixInput,
        on_progress: ProgressFn | None = None,
        *,
        approximate: ApproxReuse | bool | None = None,
    ) -> PrefixStatus:
        """approximate: None follows Config.approximate_reuse; False is exact; True or ApproxReuse(...) lets
        segments after an edit keep their KV approximately (segment_reuse.py; the status says what was)."""
        policy = approx.approximation_for(self.config, approximate)
        with self._hold("ensure_prefix", prefix):
            self._check_usable()
            if policy is not None:
                approx.require_shift(self._ctx)
            self._check_identity(prefix.manifest)
            raw = utf8_of(prefix.text, "prefix")
            text_hash = byte_hash(raw)
            if self._same_prefix(prefix.manifest, text_hash) and (policy is not None or self._r.approx_from is None):
                return self._keep_prefix()
            check_segments(prefix.manifest, raw)
            add_bos = prefix.manifest.add_bos
            tokens = self._ctx.tokenize(prefix.text, add_bos)
            lcp, limit = self._reusable_len(prefix.manifest, tokens, exact=policy is None)
            if len(tokens) > self.num_ctx:
                raise ContextOverflowError("prefix", lcp, len(tokens) - lcp, self.num_ctx)
            return self._apply_prefix(prefix.manifest, raw, text_hash, tokens, lcp, limit, on_progress, policy)

    def prefill_suffix(self, suffix: SuffixInput, on_progress: ProgressFn | None = None) -> SuffixStatus:
        with self._hold("prefill_suffix"):
            self._check_usable()
            resident = self._r.manifest
            if resident is None:
                raise ManifestMismatchError("no prefix is resident; call ensure_prefix first", "prefix")
            if suffix.manifest.digest != resident.digest:
                field_name = resident.first_difference(suffix.manifest) or "digest"
                reason = f"suffix manifest differs from the resident prefix's in {field_name}"
                raise ManifestMismatchError(reason, field_name)
            utf8_of(suffix.text, "suffix")
            tokens = self._ctx.tokenize(suffix.text, False) if suffix.text else []
            n_res = len(self._r.tokens)
            if n_res + len(tokens) > self.num_ctx:
                raise ContextOverflowError("suffix", n_res, len(tokens), self.num_ctx)
            started = time.perf_counter()
            if tokens:
                self._kv.extend(tokens, "suffix", on_progress)
            return SuffixStatus(
                suffix_tokens=len(tokens),
                prefix_tokens=self._r.prefix_len,
                resident_tokens=len(self._r.tokens),
                available_tokens=self.num_ctx - len(self._r.tokens),
                manifest_digest=resident.digest,
                prefill_s=time.perf_counter() - started,
            )

    def decode(self, config: DecodeConfig | None = None) -> DecodeStream:
        """Validate now (errors raise here), then stream chunks while holding the session."""
        cfg = config or DecodeConfig()
        with self._hold("decode"):
            self._check_usable()
            n_res = len(self._r.tokens)
            if n_res == 0 or self._r.manifest is None:  # None: a prefill was interrupted half-way
                raise InvalidInputError("no complete prefix is resident to decode from; call ensure_prefix first")
            if cfg.max_tokens is not None and n_res + cfg.max_tokens > self.num_ctx:
                raise ContextOverflowError("decode", n_res, cfg.max_tokens, self.num_ctx)
            sampler = self._ctx.new_sampler(cfg)
        stream = self._stream(cfg, sampler)
        weakref.finalize(stream, sampler.close)  # a stream dropped before its first chunk never runs its finally
        return stream

    def explain_context(self) -> ContextReport:
        report = self._r.report(self.num_ctx, self._closed, self._kv.fatal is not None)
        return replace(report, last_prewarm=self._prewarms.report())

    def close(self) -> None:
        if self._closed:
            return
        with self._hold("close"):
            self._closed = True
            self._ctx.close()
            if self._on_close is not None:
                self._on_close()
        self._prewarms.join()

    # -- prewarming (prewarm.py) ---------------------------------------------------------------
    def prewarm(self, prefix: PrefixInput, finish: bool = False) -> PrewarmHandle:
        """Start ensure_prefix(prefix) in a background thread and return at once. The next ensure_prefix of
        this prefix takes over where it stands; any other call stops it (see prewarm.py for when a call waits
        for the chunk in flight).
        finish: settle_prewarm() finishes it rather than stopping it (a short prefix that is nearly sure).
        Under an approximate Config an ensure_prefix of this prefix waits for its end (halfway, it keeps nothing)."""
        self._check_usable()
        self._check_identity(prefix.manifest)
        check_segments(prefix.manifest, utf8_of(prefix.text, "prefix"))
        return self._prewarms.start(prefix, finish, carry_on=self.config.approximation() is not None)

    def cancel_prewarm(self, by: str = "cancel") -> PrewarmReport | None:
        """Stop a running prewarm (its chunk in flight interrupted) and wait for that; the last prewarm's report."""
        return self._prewarms.cancel(by)

    def pause_prewarm(self) -> None:
        """Foreground work begins on the same cores (a pool lease of another workspace): a running prewarm's
        chunk in flight is interrupted, and the prewarm redoes it once its gate lets it go on."""
        self._prewarms.pause()

    def settle_prewarm(self, by: str) -> PrewarmReport | None:
        """Before work that needs a complete state (fork, eviction): finish a finish=True prewarm, else cancel."""
        return self._prewarms.settle(by)

    def stop_prewarm_for_copy(self, by: str) -> PrefixInput | None:
        """Cancel a prewarm so that export_state(unfinished=True) takes what it did so far; the prefix of an
        unfinished finish=True one, to prewarm again after the copy."""
        return self._prewarms.stop_for_copy(by)

    @property
    def prewarming(self) -> bool:
        return self._prewarms.running

    @property
    def prewarm_in_session(self) -> bool:
        return self._prewarms.in_session

    def __enter__(self) -> KVSession:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- state for snapshots and forks ---------------------------------------------------
    def resident_tokens(self) -> tuple[int, ...]:
        return tuple(self._r.tokens)

    def export_state(self, unfinished: bool = False) -> SessionState:
        """The resident KV and everything needed to resume it exactly (for snapshots and forks).
        unfinished: an unfinished prefill (a stopped prewarm) may be exported too (a fork's copy)."""
        with self._hold("export_state"):
            self._check_usable()
            r = self._r
            if r.manifest is None and not (unfinished and r.partial is not None):
                raise InvalidInputError("nothing is resident to export; call ensure_prefix first")
            return state_from_resident(r, self._ctx.state_bytes(), self.identity)

    def import_state(self, state: SessionState) -> None:
        """Replace the resident context with an exported one, or refuse and leave it empty.

        Identity is checked before any byte reaches the context. Logits are not part of a
        state: the next decode re-prefills the last two tokens as one batch.
        """
        with self._hold("import_state"):
            self._check_usable()
            expected = self.state_identity()
            require_identity(SnapshotIdentity.of_state(state, expected.kv_config), state.manifest, expected)
            if len(state.tokens) > self.num_ctx:
                raise ContextOverflowError("restore", 0, len(state.tokens), self.num_ctx)
            self._kv.clear()
            try:
                self._ctx.load_state(state.kv)
            except LlamaNodeError:
                self._ctx.trim(0)
                raise
            self._kv.r = resident_from_state(state, self._ctx.token_bytes)

    def state_identity(self) -> SnapshotIdentity:
        """What the states this session exports belong to, and what a state must match to be imported."""
        return SnapshotIdentity.of(self.identity, self.config)

    def kv_bytes(self) -> int:
        return self._ctx.kv_bytes()

    def reset(self) -> None:
        """Drop everything resident (KV cells and bookkeeping): the session is as good as new, without
        reallocating its context (a pool reuses an evicted workspace's context this way)."""
        with self._hold("reset"):
            self._check_usable()
            self._kv.clear()
            self._cold_note = ""

    def note_cold_start(self, detail: str) -> None:
        """Record why this empty session starts cold (e.g. a refused snapshot): explain_context() shows it
        now, and the next cold prefill's divergence carries it."""
        with self._hold("note_cold_start"):
            if self._r.tokens:
                raise InvalidInputError("note_cold_start needs an empty session")
            self._cold_note = detail
            self._r.divergence = Divergence("cold", 0, None, None, detail)

    def note_fork(self, origin: ForkOrigin, just_forked: bool) -> None:
        """Record that the resident state began as a fork (explain_context().forked_from, until a reset);
        just_forked: it was imported from the source just now, and the last divergence says so."""
        with self._hold("note_fork"):
            self._r.note_fork(origin, just_forked)

    # -- ensure_prefix steps -----------------------------------------------------------------
    def _hold(self, call: str, prefix: PrefixInput | None = None) -> AbstractContextManager[None]:
        """Hold the session for call, once a running prewarm has stopped at its next chunk boundary."""
        return self._prewarms.holding(self._lock, call, prefix)

    def _check_usable(self) -> None:
        if self._closed:
            raise SessionClosedError("session is closed")
        if self._kv.fatal is not None:
            raise SessionFatalError(f"session is unusable after a backend failure: {self._kv.fatal}")

    def _check_identity(self, manifest: ContextManifest) -> None:
        for name in IDENTITY_FIELDS:
            if getattr(manifest, name) != getattr(self._base, name):
                raise ManifestMismatchError(f"{name} belongs to another model or runtime than this session", name)

    def _same_prefix(self, manifest: ContextManifest, text_hash: str) -> bool:
        r = self._r
        return r.manifest is not None and text_hash == r.text_hash and manifest == r.manifest

    def _keep_prefix(self) -> PrefixStatus:
        """The byte-hash path: the prefix is resident as is; drop any suffix and generated tokens."""
        r = self._r
        dropped = len(r.tokens) - r.prefix_len
        if dropped:
            self._kv.trim(r.prefix_len)
        assert r.manifest is not None
        r.segments = segment_residency(r.manifest, r.offsets, r.prefix_len, r.prefix_len)
        r.divergence = None
        status = r.prefix_status(self.num_ctx, r.prefix_len, 0, dropped, True, None, 0.0)
        r.last_prefix = status
        return status

    def _reusable_len(self, manifest: ContextManifest, tokens: list[int], exact: bool) -> tuple[int, int]:
        """(tokens to keep, limit: stable, never approximated for an exact request). Not across manifests."""
        r = self._r
        basis = r.manifest or r.partial  # an unfinished prefill's tokens came from batches too: reusable
        if basis is None or basis.digest != manifest.digest:
            return 0, 0
        limit = r.exact_limit() if exact else r.stable_len
        lcp = common_prefix_len(r.tokens[:limit], tokens)
        if len(tokens) - lcp == 1 and lcp > 0:
            lcp -= 1  # never prefill a single token: batch-of-one KV differs from a cold pass
        return lcp, limit

    def _apply_prefix(
        self,
        manifest: ContextManifest,
        raw: bytes,
        text_hash: str,
        tokens: list[int],
        lcp: int,
        limit: int,
        on_progress: ProgressFn | None,
        policy: ApproxReuse | None = None,
    ) -> PrefixStatus:
        r = self._r
        resumed = r.manifest is None and r.partial is not None
        old_manifest, old_text = r.manifest or r.partial, r.text
        old_prefix = len(r.tokens) if resumed else r.prefix_len
        # reuse stopped only because the next matching resident token came from a decode step (or was approximate)
        blocked = lcp == limit < len(r.tokens) and lcp < len(tokens) and r.tokens[lcp] == tokens[lcp]
        approximated = blocked and policy is None and lcp == r.approx_from
        offsets = token_byte_offsets(tokens, self._ctx.token_bytes, len(raw), manifest.add_bos and bool(tokens))
        plan = None if policy is None else approx.plan_for(r, manifest, text_hash, tokens, offsets, lcp, policy)
        resident_before = len(r.tokens)
        started = time.perf_counter()
        # a failure (or a stopped prewarm) from here on leaves no reusable prefix, only reusable tokens
        r.manifest, r.partial, r.text = None, manifest, raw
        lcp, kept = approx.write_prefix(self._kv, tokens, lcp, plan, on_progress)
        prefill_s = time.perf_counter() - started
        dropped = resident_before - lcp - kept
        r.prefix_len = r.stable_len = len(tokens)
        r.generated = 0
        r.manifest, r.text, r.text_hash, r.token_hash = manifest, raw, text_hash, hash_token_ids(tokens)
        r.offsets = offsets
        r.segments = segment_residency(manifest, offsets, len(tokens), lcp)
        r.divergence = explain_divergence(
            old_manifest,
            old_text,
            old_prefix,
            manifest,
            raw,
            len(tokens),
            lcp,
            limit,
            offsets,
            blocked,
            resumed=resumed,
            approximated_blocked=approximated,
        )
        if self._cold_note and r.divergence is not None and r.divergence.cause == "cold":
            r.divergence = replace(r.divergence, detail=f"{r.divergence.detail} ({self._cold_note})")
        self._cold_note = ""
        reused, prefilled = lcp + kept, len(tokens) - lcp - kept
        status = r.prefix_status(self.num_ctx, reused, prefilled, dropped, False, r.divergence, prefill_s)
        status = approx.report_approximation(r, status, plan, policy)
        r.last_prefix = status
        return status

    # -- decode ------------------------------------------------------------------------------
    def _stream(self, cfg: DecodeConfig, sampler: Sampler) -> DecodeStream:
        with self._hold("decode"):
            try:
                yield from decode_chunks(self._kv, cfg, sampler, self.num_ctx, self._check_usable)
            finally:
                sampler.close()
