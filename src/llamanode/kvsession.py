"""KVSession: the session contract over any KVContext. All reuse logic lives here, in small steps."""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from types import TracebackType

from .backends.base import KVContext, Sampler
from .config import Config, DecodeConfig
from .errors import (
    ContextOverflowError,
    InvalidInputError,
    LlamaNodeError,
    ManifestMismatchError,
    SessionBusyError,
    SessionClosedError,
    SessionFatalError,
)
from .identity import SnapshotIdentity, require_identity
from .manifest import IDENTITY_FIELDS, ContextManifest, byte_hash, hash_token_ids, join_segments
from .prefix import common_prefix_len
from .residency import explain_divergence, segment_residency, token_byte_offsets
from .session import (
    ContextReport,
    DecodeReport,
    DecodeStream,
    Divergence,
    PrefillProgress,
    PrefixInput,
    PrefixStatus,
    SegmentResidency,
    SessionState,
    StreamChunk,
    SuffixInput,
    SuffixStatus,
)
from .textstream import TextAssembler

__all__ = ["KVSession", "chunk_sizes", "common_prefix_len"]

ProgressFn = Callable[[PrefillProgress], None]


def chunk_sizes(n: int, batch: int) -> list[int]:
    """Split n tokens into chunks of at most batch, never leaving a chunk of one.

    A one-token batch takes another kernel path and gives KV that differs from a cold
    batched prefill (docs/benchmarks.md, exactness), so the last two tokens go together.
    """
    sizes = [batch] * (n // batch) + ([n % batch] if n % batch else [])
    if len(sizes) > 1 and sizes[-1] == 1:
        sizes[-2] -= 1
        sizes[-1] = 2
    return sizes


@dataclass
class _Resident:
    """What the context holds, position by position."""

    tokens: list[int] = field(default_factory=list)
    prefix_len: int = 0
    stable_len: int = 0  # tokens before this came from batched prefill; after it, decode steps may lie
    generated: int = 0
    logits_for: int = -1  # the context's last logits belong to tokens[:logits_for]
    manifest: ContextManifest | None = None
    text: bytes = b""
    text_hash: str = ""
    token_hash: str = ""
    offsets: list[int] | None = None  # byte offset of each prefix token, when pieces add up
    segments: tuple[SegmentResidency, ...] = ()
    divergence: Divergence | None = None
    last_prefix: PrefixStatus | None = None


class _OwnedLock:
    """Serializes calls across threads; refuses re-entry from the thread that holds it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owner: int | None = None

    @contextmanager
    def hold(self) -> Iterator[None]:
        me = threading.get_ident()
        if self._owner == me:
            raise SessionBusyError("this thread still holds an open decode stream of the session; close it first")
        with self._lock:
            self._owner = me
            try:
                yield
            finally:
                self._owner = None


class KVSession:
    """A persistent session: keeps the prefix's KV hot and prefills only what changed."""

    def __init__(self, context: KVContext, config: Config, on_close: Callable[[], None] | None = None) -> None:
        self._ctx = context
        self.config = config
        self.identity = context.identity
        self._base = ContextManifest(
            model_digest=self.identity.model_digest,
            tokenizer_digest=self.identity.tokenizer_digest,
            runtime_digest=self.identity.runtime_digest,
            template_digest=self.identity.template_digest,
            add_bos=self.identity.add_bos,
        )
        self._r = _Resident()
        self._lock = _OwnedLock()
        self._closed = False
        self._fatal: str | None = None
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

    def tokenize(self, text: str) -> list[int]:
        """The token ids ensure_prefix would make of text (BOS per the session's policy), e.g. for routing."""
        if self._closed:
            raise SessionClosedError("session is closed")
        return self._ctx.tokenize(text, self._base.add_bos)

    # -- the contract ------------------------------------------------------------------
    def ensure_prefix(self, prefix: PrefixInput, on_progress: ProgressFn | None = None) -> PrefixStatus:
        with self._lock.hold():
            self._check_usable()
            self._check_identity(prefix.manifest)
            raw = _utf8(prefix.text, "prefix")
            text_hash = byte_hash(raw)
            if self._same_prefix(prefix.manifest, text_hash):
                return self._keep_prefix()
            _check_segments(prefix.manifest, raw)
            add_bos = prefix.manifest.add_bos
            tokens = self._ctx.tokenize(prefix.text, add_bos)
            lcp, limit = self._reusable_len(prefix.manifest, tokens)
            if len(tokens) > self.num_ctx:
                raise ContextOverflowError("prefix", lcp, len(tokens) - lcp, self.num_ctx)
            return self._apply_prefix(prefix.manifest, raw, text_hash, tokens, lcp, limit, on_progress)

    def prefill_suffix(self, suffix: SuffixInput, on_progress: ProgressFn | None = None) -> SuffixStatus:
        with self._lock.hold():
            self._check_usable()
            resident = self._r.manifest
            if resident is None:
                raise ManifestMismatchError("no prefix is resident; call ensure_prefix first", "prefix")
            if suffix.manifest.digest != resident.digest:
                field_name = resident.first_difference(suffix.manifest) or "digest"
                reason = f"suffix manifest differs from the resident prefix's in {field_name}"
                raise ManifestMismatchError(reason, field_name)
            _utf8(suffix.text, "suffix")
            tokens = self._ctx.tokenize(suffix.text, False) if suffix.text else []
            n_res = len(self._r.tokens)
            if n_res + len(tokens) > self.num_ctx:
                raise ContextOverflowError("suffix", n_res, len(tokens), self.num_ctx)
            started = time.perf_counter()
            if tokens:
                self._extend(tokens, "suffix", on_progress)
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
        with self._lock.hold():
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
        r = self._r
        n_res = len(r.tokens)
        return ContextReport(
            resident_tokens=n_res,
            prefix_tokens=r.prefix_len,
            suffix_tokens=n_res - r.prefix_len - r.generated,
            generated_tokens=r.generated,
            num_ctx=self.num_ctx,
            available_tokens=self.num_ctx - n_res,
            stable_byte_hash=r.text_hash,
            stable_token_hash=r.token_hash,
            manifest_digest=r.manifest.digest if r.manifest else "",
            manifest=r.manifest,
            closed=self._closed,
            fatal=self._fatal is not None,
            segments=r.segments,
            last_divergence=r.divergence,
            last_prefix=r.last_prefix,
        )

    def close(self) -> None:
        if self._closed:
            return
        with self._lock.hold():
            self._closed = True
            self._ctx.close()
            if self._on_close is not None:
                self._on_close()

    def __enter__(self) -> KVSession:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- state for snapshots and forks ---------------------------------------------------
    def resident_tokens(self) -> tuple[int, ...]:
        return tuple(self._r.tokens)

    def export_state(self) -> SessionState:
        """The resident KV and everything needed to resume it exactly (for snapshots and forks)."""
        with self._lock.hold():
            self._check_usable()
            r = self._r
            if r.manifest is None:
                raise InvalidInputError("nothing is resident to export; call ensure_prefix first")
            kv = self._ctx.state_bytes()
            return SessionState(
                kv=kv,
                tokens=tuple(r.tokens),
                prefix_len=r.prefix_len,
                stable_len=r.stable_len,
                generated=r.generated,
                manifest=r.manifest,
                prefix_text=r.text,
                model_digest=self.identity.model_digest,
                runtime_digest=self.identity.runtime_digest,
                build_id=self.identity.build_id,
            )

    def import_state(self, state: SessionState) -> None:
        """Replace the resident context with an exported one, or refuse and leave it empty.

        Identity is checked before any byte reaches the context. Logits are not part of a
        state: the next decode re-prefills the last two tokens as one batch.
        """
        with self._lock.hold():
            self._check_usable()
            expected = self.state_identity()
            require_identity(SnapshotIdentity.of_state(state, expected.kv_config), state.manifest, expected)
            if len(state.tokens) > self.num_ctx:
                raise ContextOverflowError("restore", 0, len(state.tokens), self.num_ctx)
            self._trim(0)
            self._r = _Resident()
            try:
                self._ctx.load_state(state.kv)
            except LlamaNodeError:
                self._ctx.trim(0)
                raise
            self._adopt(state)

    def _adopt(self, state: SessionState) -> None:
        raw = state.prefix_text
        prefix_tokens = list(state.tokens[: state.prefix_len])
        offsets = token_byte_offsets(prefix_tokens, self._ctx.token_bytes, len(raw), state.manifest.add_bos)
        self._r = _Resident(
            tokens=list(state.tokens),
            prefix_len=state.prefix_len,
            stable_len=state.stable_len,
            generated=state.generated,
            manifest=state.manifest,
            text=raw,
            text_hash=byte_hash(raw),
            token_hash=hash_token_ids(prefix_tokens),
            offsets=offsets,
            segments=segment_residency(state.manifest, offsets, state.prefix_len, state.prefix_len),
            divergence=Divergence("restored", state.prefix_len, None, None, "resident state was restored"),
        )

    def state_identity(self) -> SnapshotIdentity:
        """What the states this session exports belong to, and what a state must match to be imported."""
        return SnapshotIdentity.of(self.identity, self.config)

    def kv_bytes(self) -> int:
        return self._ctx.kv_bytes()

    def reset(self) -> None:
        """Drop everything resident (KV cells and bookkeeping): the session is as good as new, without
        reallocating its context (a pool reuses an evicted workspace's context this way)."""
        with self._lock.hold():
            self._check_usable()
            self._trim(0)
            self._r = _Resident()
            self._cold_note = ""

    def note_cold_start(self, detail: str) -> None:
        """Record why this empty session starts cold (e.g. a refused snapshot): explain_context() shows it
        now, and the next cold prefill's divergence carries it."""
        with self._lock.hold():
            if self._r.tokens:
                raise InvalidInputError("note_cold_start needs an empty session")
            self._cold_note = detail
            self._r.divergence = Divergence("cold", 0, None, None, detail)

    # -- ensure_prefix steps -----------------------------------------------------------------
    def _check_usable(self) -> None:
        if self._closed:
            raise SessionClosedError("session is closed")
        if self._fatal is not None:
            raise SessionFatalError(f"session is unusable after a backend failure: {self._fatal}")

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
            self._trim(r.prefix_len)
        assert r.manifest is not None
        r.segments = segment_residency(r.manifest, r.offsets, r.prefix_len, r.prefix_len)
        r.divergence = None
        status = self._prefix_status(r.prefix_len, 0, dropped, True, None, 0.0)
        r.last_prefix = status
        return status

    def _reusable_len(self, manifest: ContextManifest, tokens: list[int]) -> tuple[int, int]:
        """(tokens to keep, stable limit). Nothing is reused across a manifest change."""
        r = self._r
        if r.manifest is None or r.manifest.digest != manifest.digest:
            return 0, 0
        limit = r.stable_len
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
    ) -> PrefixStatus:
        r = self._r
        old_manifest, old_text, old_prefix = r.manifest, r.text, r.prefix_len
        # reuse stopped only because the next matching resident token came from a decode step
        blocked = lcp == limit < len(r.tokens) and lcp < len(tokens) and r.tokens[lcp] == tokens[lcp]
        dropped = len(r.tokens) - lcp
        started = time.perf_counter()
        r.manifest = None  # a failure from here on must not leave a reusable half-prefix
        self._trim(lcp)
        if len(tokens) > lcp:
            self._extend(tokens[lcp:], "prefix", on_progress)
        prefill_s = time.perf_counter() - started
        offsets = token_byte_offsets(tokens, self._ctx.token_bytes, len(raw), manifest.add_bos and bool(tokens))
        r.prefix_len = r.stable_len = len(tokens)
        r.generated = 0
        r.manifest, r.text, r.text_hash, r.token_hash = manifest, raw, text_hash, hash_token_ids(tokens)
        r.offsets = offsets
        r.segments = segment_residency(manifest, offsets, len(tokens), lcp)
        r.divergence = explain_divergence(
            old_manifest, old_text, old_prefix, manifest, raw, len(tokens), lcp, limit, offsets, blocked
        )
        if self._cold_note and r.divergence is not None and r.divergence.cause == "cold":
            r.divergence = replace(r.divergence, detail=f"{r.divergence.detail} ({self._cold_note})")
        self._cold_note = ""
        status = self._prefix_status(lcp, len(tokens) - lcp, dropped, False, r.divergence, prefill_s)
        r.last_prefix = status
        return status

    def _prefix_status(
        self, reused: int, prefilled: int, dropped: int, hit: bool, div: Divergence | None, secs: float
    ) -> PrefixStatus:
        r = self._r
        assert r.manifest is not None
        return PrefixStatus(
            reused_tokens=reused,
            prefilled_tokens=prefilled,
            dropped_tokens=dropped,
            prefix_tokens=r.prefix_len,
            resident_tokens=len(r.tokens),
            available_tokens=self.num_ctx - len(r.tokens),
            stable_byte_hash=r.text_hash,
            stable_token_hash=r.token_hash,
            manifest_digest=r.manifest.digest,
            byte_hash_hit=hit,
            divergence=div,
            prefill_s=secs,
        )

    # -- KV operations (each keeps _Resident equal to the context) ---------------------------
    def _trim(self, keep: int) -> None:
        r = self._r
        if keep >= len(r.tokens):
            return
        self._native(self._ctx.trim, keep)
        del r.tokens[keep:]
        r.prefix_len = min(r.prefix_len, keep)
        r.stable_len = min(r.stable_len, keep)
        r.generated = max(0, min(r.generated, keep - r.prefix_len))
        if r.logits_for > keep:
            r.logits_for = -1

    def _extend(self, tokens: Sequence[int], stage: str, on_progress: ProgressFn | None, rewind: int = 0) -> None:
        """Prefill tokens after the resident ones in batches of >= 2, reporting progress.

        rewind re-prefills that many resident tokens in the same batch (a lone new token
        takes its predecessor along, so no batch of one is ever decoded after position 0).
        """
        r = self._r
        if len(tokens) + rewind == 1 and r.tokens:
            rewind = 1
        start = len(r.tokens) - min(rewind, len(r.tokens))
        batch = [*r.tokens[start:], *tokens]
        was_stable = r.stable_len >= start
        if start < len(r.tokens):
            self._native(self._ctx.trim, start)
            del r.tokens[start:]
        began, done = time.perf_counter(), 0
        # chunk by the micro-batch too: llama.cpp would split a longer chunk into n_ubatch pieces
        for size in chunk_sizes(len(batch), min(self.config.num_batch, self.config.num_ubatch)):
            chunk = batch[done : done + size]
            position = len(r.tokens)
            self._native(self._ctx.prefill, chunk, position)
            r.tokens.extend(chunk)
            done += size
            if on_progress is not None:
                on_progress(PrefillProgress(stage, done, len(batch), time.perf_counter() - began))
        if was_stable:
            r.stable_len = len(r.tokens)
        r.logits_for = len(r.tokens)

    def _refresh_logits(self) -> None:
        """Make the last token's logits live again, re-prefilling the last two as one batch."""
        if self._r.logits_for != len(self._r.tokens):
            self._extend([], "refresh", None, rewind=2)

    def _native(self, op: Callable[..., None], *args: object) -> None:
        try:
            op(*args)
        except LlamaNodeError as exc:
            self._fatal = str(exc)
            raise SessionFatalError(f"backend failed; the session is unusable: {exc}") from exc

    # -- decode ------------------------------------------------------------------------------
    def _stream(self, cfg: DecodeConfig, sampler: Sampler) -> DecodeStream:
        with self._lock.hold():
            try:
                yield from self._decode_loop(cfg, sampler)
            finally:
                sampler.close()

    def _decode_loop(self, cfg: DecodeConfig, sampler: Sampler) -> Iterator[StreamChunk]:
        r = self._r
        started = time.perf_counter()
        first_token_s = 0.0
        text = TextAssembler(cfg.stop)
        produced = 0
        held: list[int] = []  # ids whose bytes produced no text yet (half a character, a possible stop)
        reason = "max_tokens"
        error: LlamaNodeError | None = None
        try:
            self._check_usable()
            self._refresh_logits()
            limit = cfg.max_tokens if cfg.max_tokens is not None else self.num_ctx
            while produced < limit:
                token = sampler.sample()
                if produced == 0:
                    first_token_s = time.perf_counter() - started
                if self._ctx.is_eog(token):
                    reason = "eog"
                    break
                produced += 1
                held.append(token)
                delta = text.feed(self._ctx.token_bytes(token))
                if delta.text or delta.stopped:
                    yield StreamChunk(delta.text, tuple(held))
                    held.clear()
                if delta.stopped:
                    reason = "stop_string"
                    break
                if produced == limit:
                    break
                if len(r.tokens) >= self.num_ctx:
                    reason = "context_full"
                    error = ContextOverflowError("decode", len(r.tokens), 1, self.num_ctx)
                    break
                position = len(r.tokens)
                self._native(self._ctx.step, token, position)
                r.tokens.append(token)
                r.generated += 1
                r.logits_for = len(r.tokens)
        except SessionFatalError as exc:
            reason, error = "error", exc
        tail = text.finish() if reason != "stop_string" else None
        elapsed = time.perf_counter() - started
        decode_s = max(elapsed - first_token_s, 1e-9)
        report = DecodeReport(produced, reason, first_token_s, elapsed, max(produced - 1, 0) / decode_s)
        finish = "error" if error else ("length" if reason == "max_tokens" else "stop")
        yield StreamChunk(tail.text if tail else "", tuple(held), finish, error, report)


def _utf8(text: str, what: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInputError(f"{what} is not valid UTF-8 (lone surrogate at {exc.start})") from exc


def _check_segments(manifest: ContextManifest, raw: bytes) -> None:
    """Segments, when given, must tile the text exactly: same lengths, same hashes."""
    if not manifest.segments:
        return
    at = 0
    for seg in manifest.segments:
        if byte_hash(raw[at : at + seg.byte_len]) != seg.byte_hash:
            raise ManifestMismatchError(f"segment {seg.name!r} does not match the text at byte {at}", "segments")
        at += seg.byte_len
    if at != len(raw):
        raise ManifestMismatchError(f"segments cover {at} bytes, the text has {len(raw)}", "segments")
