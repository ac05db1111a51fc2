"""Approximate segment reuse (opt-in): applying a ReusePlan to the resident KV, and reporting what it did.

The KV operations, in this order: drop the cells no piece keeps, move the kept pieces to their new
positions (KVContext.shift), then prefill every computed range in position order, gaps included. The
kept cells were computed under other text before them, so their KV is approximate: the resident
bookkeeping marks everything from the plan's exact prefix on, and an exact request re-prefills it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace

from .backends.base import KVContext
from .config import ApproxReuse, Config
from .errors import ApproximationUnavailableError, InvalidInputError
from .manifest import ContextManifest
from .resident import ProgressFn, Resident, ResidentKV, chunk_sizes
from .segment_plan import Piece, ReusePlan, plan_reuse, segment_spans
from .session import ApproximatedSpan, Approximation, PrefillProgress, PrefixStatus, SegmentResidency

__all__ = [
    "apply_plan",
    "approximation_for",
    "approximation_report",
    "plan_for",
    "refuse_at_open",
    "report_approximation",
    "require_shift",
    "residency_with",
    "write_prefix",
]


def approximation_for(config: Config, approximate: ApproxReuse | bool | None) -> ApproxReuse | None:
    """What one ensure_prefix asked for: None (the session's Config decides), False (exact), True, or options."""
    if approximate is None:
        return config.approximation()
    if isinstance(approximate, bool):
        return (config.approximation() or ApproxReuse()) if approximate else None
    if isinstance(approximate, ApproxReuse):
        return approximate
    raise InvalidInputError(f"approximate must be an ApproxReuse, a bool or None, got {type(approximate).__name__}")


def require_shift(ctx: KVContext) -> None:
    """Refuse approximate reuse, naming the reason, on a context that cannot move KV cells."""
    why = ctx.shift_unsupported()
    if why is not None:
        raise ApproximationUnavailableError(why)


def refuse_at_open(config: Config, ctx: KVContext, on_close: Callable[[], None] | None) -> None:
    """A session whose Config asks for approximate reuse is refused at once on a context that cannot do it
    (the context is closed, and the owner told, before the error)."""
    if config.approximation() is None or ctx.shift_unsupported() is None:
        return
    ctx.close()
    if on_close is not None:
        on_close()
    require_shift(ctx)


def plan_for(
    r: Resident,
    manifest: ContextManifest,
    text_hash: str,
    tokens: Sequence[int],
    offsets: Sequence[int] | None,
    lcp: int,
    policy: ApproxReuse,
) -> ReusePlan:
    """The plan for tokens over what is resident; a plan without pieces (and a note why) when nothing can be kept."""
    if r.manifest is None or r.manifest.digest != manifest.digest:
        return ReusePlan(lcp, len(tokens), (), (), ((lcp, len(tokens)),), "nothing resident under this manifest")
    if (r.offsets is None and r.manifest.segments) or (offsets is None and manifest.segments):
        return ReusePlan(lcp, len(tokens), (), (), ((lcp, len(tokens)),), "token pieces do not map back to segments")
    usable = min(r.prefix_len, r.stable_len)  # decode-step KV is never kept, approximately or not
    old_spans = segment_spans(r.manifest, r.offsets, r.prefix_len, r.text_hash)
    new_spans = segment_spans(manifest, offsets, len(tokens), text_hash)
    return plan_reuse(
        r.tokens[:usable], old_spans, tokens, new_spans, lcp, policy.selection, policy.share, policy.min_run
    )


def write_prefix(
    kv: ResidentKV, tokens: Sequence[int], lcp: int, plan: ReusePlan | None, on_progress: ProgressFn | None
) -> tuple[int, int]:
    """Make the context hold tokens, approximately as planned or exactly (keep lcp, prefill the rest).
    Returns (exactly kept, approximately kept) tokens."""
    if plan is not None and plan.pieces:
        apply_plan(kv, plan, tokens, on_progress)
        return plan.lcp, sum(p.length for p in plan.pieces)
    kv.trim(lcp)
    if len(tokens) > lcp:
        kv.extend(tokens[lcp:], "prefix", on_progress)
    return lcp, 0


def apply_plan(kv: ResidentKV, plan: ReusePlan, tokens: Sequence[int], on_progress: ProgressFn | None) -> None:
    """Make the context hold tokens as planned. On any failure only the exact prefix [0, plan.lcp) stays."""
    r, ctx = kv.r, kv.ctx
    try:
        _drop_unkept(kv, plan)
        for piece in _move_order(plan.pieces):
            kv.native(ctx.shift, piece.old_start, piece.old_start + piece.length, piece.shift)
        _prefill_ranges(kv, plan, tokens, on_progress)
    except BaseException:
        kv.native(ctx.trim, plan.lcp)  # moved cells included: nothing half-made stays
        _settle(r, list(tokens[: plan.lcp]), plan.lcp, -1)
        raise
    ends_at_last = bool(plan.computed) and plan.computed[-1][1] == len(tokens)
    _settle(r, list(tokens), plan.lcp, len(tokens) if ends_at_last else -1)


def _settle(r: Resident, tokens: list[int], lcp: int, logits_for: int) -> None:
    r.tokens = tokens
    r.prefix_len = min(r.prefix_len, len(tokens))
    r.stable_len = len(tokens)
    r.generated = 0
    r.logits_for = logits_for
    if len(tokens) > lcp and (r.approx_from is None or r.approx_from > lcp):
        r.approx_from = lcp
    elif r.approx_from is not None and r.approx_from >= len(tokens):
        r.approx_from = None


def _drop_unkept(kv: ResidentKV, plan: ReusePlan) -> None:
    at = plan.lcp
    for piece in sorted(plan.pieces, key=lambda p: p.old_start):
        if at < piece.old_start:
            kv.native(kv.ctx.remove, at, piece.old_start)
        at = piece.old_start + piece.length
    kv.native(kv.ctx.trim, at)


def _move_order(pieces: Sequence[Piece]) -> list[Piece]:
    """Pieces moving left go first, from the left; then those moving right, from the right: no target is occupied."""
    left = sorted((p for p in pieces if p.shift < 0), key=lambda p: p.old_start)
    right = sorted((p for p in pieces if p.shift > 0), key=lambda p: -p.old_start)
    return left + right


def _prefill_ranges(kv: ResidentKV, plan: ReusePlan, tokens: Sequence[int], on_progress: ProgressFn | None) -> None:
    total = sum(end - start for start, end in plan.computed)
    began, done = time.perf_counter(), 0
    for start, end in plan.computed:
        at = start
        for size in chunk_sizes(end - start, kv.batch_size):
            kv.native(kv.ctx.prefill, tokens[at : at + size], at)
            at += size
            done += size
            if on_progress is not None:
                on_progress(PrefillProgress("prefix", done, total, time.perf_counter() - began))


def approximation_report(plan: ReusePlan, policy: ApproxReuse, approx_from: int | None) -> Approximation:
    spans = []
    for run in plan.runs:
        kept = plan.kept_in(run.new_start, run.new_end)
        if kept:
            spans.append(ApproximatedSpan(run.segment, run.new_start, run.new_end, run.shift, kept, run.length - kept))
    kept_total = sum(p.length for p in plan.pieces)
    recomputed = sum(s.recomputed_tokens for s in spans)
    return Approximation(
        selection=policy.selection,
        share=policy.share,
        spans=tuple(spans),
        reused_tokens=kept_total,
        shifted_tokens=sum(p.length for p in plan.pieces if p.shift),
        recomputed_tokens=recomputed,
        prefilled_tokens=plan.n_tokens - plan.lcp - kept_total - recomputed,
        approximate_from=approx_from,
        note=plan.note,
    )


def report_approximation(
    r: Resident, status: PrefixStatus, plan: ReusePlan | None, policy: ApproxReuse | None
) -> PrefixStatus:
    """The status (and the resident segment rows) with what approximate reuse did, when it was asked for."""
    if policy is None or plan is None:
        return status
    r.segments = residency_with(r.segments, plan)
    return replace(status, approximation=approximation_report(plan, policy, r.approx_from))


def residency_with(rows: Sequence[SegmentResidency], plan: ReusePlan) -> tuple[SegmentResidency, ...]:
    """Segment rows with the approximately kept tokens counted, and their state "approximated"."""
    out = []
    for row in rows:
        kept = 0 if row.token_start is None or row.token_end is None else plan.kept_in(row.token_start, row.token_end)
        out.append(replace(row, reused_tokens=row.reused_tokens + kept, state="approximated") if kept else row)
    return tuple(out)
