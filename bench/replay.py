"""Replaying a trace through the systems under test: the strategy interface, built-in strategies, the driver.

A strategy owns one system (its own context) and answers each turn up to its first token. Add one by
subclassing and registering it in strategies.STRATEGIES:

- `exact`      llamanode, segments in the trace's order, ordinary longest-common-prefix reuse
- `assembler`  llamanode, segments ordered by a ContextAssembler learning this trace's volatility
- `prewarm`    llamanode in the trace's order, prewarming each turn's prefix during the think time before it
- `llama`      llama-cpp-python's `Llama`, the same prompt text, its own prefix-match reuse (the baseline)
- `approx-boundary`, `approx-tail`  llamanode with approximate segment reuse (ApproxReuse; the selection
               of recomputed tokens in the name), plus its quality against an exact session on the same turn
               (approx_quality.py: KL over the suffix, greedy agreement of 32 tokens; never timed)
- `exact-fa`   llamanode exact, with flash attention: its quality against exact reuse without it is the
               noise floor of the figures above (same math, other kernels); not run by default
- `llama-server`, `llama-server-reuse64`  llama.cpp's llama-server (`/completion`, `cache_prompt`), plain
               and with `--cache-reuse 64` (llama_server_proc.py); only where the binary is built

The llamanode strategies live here, the `Llama` and llama-server baselines in replay_baselines.py, and the
registry of names (STRATEGIES) in strategies.py.

Hooks for what comes next: `think(index, upcoming, seconds)` runs between two turns with the agent's
think time and may look at the upcoming turn's segments (an agent knows which files changed before it
asks), never its suffix: a pre-warming strategy starts its work there and returns after `seconds`.
`arrange()` is memoised per turn, so think() and turn() see the same order; `detail()` adds a
strategy's own per-turn figures (e.g. what an approximate mode approximated, and its quality).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import llamanode
from llamanode import (
    ApproxReuse,
    Config,
    ContextAssembler,
    DecodeConfig,
    KVSession,
    PrefixInput,
    PrefixStatus,
    PrewarmHandle,
)

from .approx_quality import ExactReference, measure
from .common import now
from .git_trace import Trace, TraceTurn

__all__ = [
    "ApproxPrewarmStrategy",
    "ApproxStrategy",
    "AssemblerPrewarmStrategy",
    "AssemblerStrategy",
    "FlashAttnStrategy",
    "LlamanodeStrategy",
    "PrewarmStrategy",
    "ReplaySetup",
    "Strategy",
    "TurnResult",
    "replay",
]


@dataclass(frozen=True)
class ReplaySetup:
    """What every strategy is built from: the same model and settings for all."""

    model_path: str
    config: Config  # llamanode's; Llama gets the same num_ctx, batch sizes, threads and flash attention
    approx_share: float = 0.1  # ApproxReuse.share of the approximate strategies
    approx_min_run: int = 32  # ApproxReuse.min_run
    shared: dict[str, Any] = field(default_factory=dict, compare=False)  # e.g. one exact reference for all

    def reference(self) -> ExactReference:
        """The exact session approximate strategies are measured against (opened once, on first use)."""
        if "reference" not in self.shared:
            self.shared["reference"] = ExactReference(self.model_path, self.config)
        ref: ExactReference = self.shared["reference"]
        return ref

    def close(self) -> None:
        if "reference" in self.shared:
            self.shared.pop("reference").close()


@dataclass(frozen=True)
class TurnResult:
    strategy: str
    turn: int
    commit: str
    prefix_tokens: int
    reused_tokens: int  # prefix tokens whose KV was kept
    recomputed_tokens: int  # prefix tokens prefilled this turn
    suffix_tokens: int
    ttft_s: float  # from the turn's request to its first token
    first_token: str
    detail: dict[str, Any] = field(default_factory=dict)


class Strategy(Protocol):
    name: str

    def start(self) -> None: ...

    def think(self, index: int, upcoming: TraceTurn, seconds: float) -> None: ...

    def turn(self, index: int, turn: TraceTurn) -> TurnResult: ...

    def close(self) -> None: ...


class LlamanodeStrategy:
    """llamanode with the trace's own segment order: ensure_prefix, prefill_suffix, first token."""

    name = "exact"

    def __init__(self, setup: ReplaySetup) -> None:
        self.setup = setup
        self._session: KVSession | None = None
        self._arranged: dict[int, tuple[tuple[str, str], ...]] = {}

    @property
    def session(self) -> KVSession:
        assert self._session is not None, "start() first"
        return self._session

    def start(self) -> None:
        self._session = llamanode.open_session(self.setup.model_path, self.setup.config)

    def close(self) -> None:
        if self._session is not None:
            self._session.close()

    def arrange(self, index: int, turn: TraceTurn) -> tuple[tuple[str, str], ...]:
        """This turn's segments in the order this strategy sends them (decided once per turn)."""
        if index not in self._arranged:
            self._arranged[index] = self.order(index, turn)
        return self._arranged[index]

    def order(self, index: int, turn: TraceTurn) -> tuple[tuple[str, str], ...]:
        return turn.segments

    def think(self, index: int, upcoming: TraceTurn, seconds: float) -> None:
        """Between turns: nothing to do, and idle time changes nothing for this strategy."""

    def turn(self, index: int, turn: TraceTurn) -> TurnResult:
        segments = self.arrange(index, turn)
        session = self.session
        started = now()
        status = self.ensure(session, session.prefix(segments))
        suffix = session.prefill_suffix(session.suffix(turn.suffix))
        stream = session.decode(DecodeConfig(max_tokens=1))
        first = next(stream)
        ttft = now() - started
        for _ in stream:
            pass
        return TurnResult(
            strategy=self.name,
            turn=index,
            commit=turn.commit,
            prefix_tokens=status.prefix_tokens,
            reused_tokens=status.reused_tokens,
            recomputed_tokens=status.prefilled_tokens,
            suffix_tokens=suffix.suffix_tokens,
            ttft_s=ttft,
            first_token=first.text,
            detail=self.detail(index, status),
        )

    def ensure(self, session: KVSession, prefix: PrefixInput) -> PrefixStatus:
        return session.ensure_prefix(prefix)

    def detail(self, index: int, status: PrefixStatus) -> dict[str, Any]:
        why = status.divergence
        return {"divergence": None if why is None else {"cause": why.cause, "segment": why.segment}}


class ApproxStrategy(LlamanodeStrategy):
    """llamanode with approximate segment reuse (one selection per strategy); quality measured after the turn."""

    name = "approx-boundary"
    selection = "boundary"

    def __init__(self, setup: ReplaySetup) -> None:
        super().__init__(setup)
        self.policy = ApproxReuse(selection=self.selection, share=setup.approx_share, min_run=setup.approx_min_run)

    def ensure(self, session: KVSession, prefix: PrefixInput) -> PrefixStatus:
        return session.ensure_prefix(prefix, approximate=self.policy)

    def turn(self, index: int, turn: TraceTurn) -> TurnResult:
        result = super().turn(index, turn)
        segments = self.arrange(index, turn)
        reference = self.setup.reference().get(index, segments, turn.suffix)
        quality = measure(self.session, segments, turn.suffix, reference, self.policy)
        result.detail.update(quality.as_dict())
        return result

    def detail(self, index: int, status: PrefixStatus) -> dict[str, Any]:
        approx = status.approximation  # None when the prefix was unchanged (the byte-hash path)
        figures = {
            "approx_reused": approx.reused_tokens if approx else 0,
            "approx_recomputed": approx.recomputed_tokens if approx else 0,
            "approx_segments": list(approx.segments) if approx else [],
            "approx_note": approx.note if approx else "prefix unchanged",
        }
        return {**super().detail(index, status), **figures}


class ApproxTailStrategy(ApproxStrategy):
    name = "approx-tail"
    selection = "tail"


class FlashAttnStrategy(LlamanodeStrategy):
    """Exact reuse with flash attention, measured like the approximate strategies: the numerical noise floor."""

    name = "exact-fa"

    def start(self) -> None:
        self._session = llamanode.open_session(self.setup.model_path, self.setup.config.replace(flash_attn=True))

    def turn(self, index: int, turn: TraceTurn) -> TurnResult:
        result = super().turn(index, turn)
        segments = self.arrange(index, turn)
        reference = self.setup.reference().get(index, segments, turn.suffix)
        result.detail.update(measure(self.session, segments, turn.suffix, reference, False).as_dict())
        return result


class AssemblerStrategy(LlamanodeStrategy):
    """llamanode with a ContextAssembler choosing the order (the trace's pins lead)."""

    name = "assembler"

    def __init__(self, setup: ReplaySetup) -> None:
        super().__init__(setup)
        self.assembler = ContextAssembler()
        self._reports: dict[int, llamanode.AssemblyReport] = {}

    def order(self, index: int, turn: TraceTurn) -> tuple[tuple[str, str], ...]:
        assembly = self.assembler.assemble(turn.segments, turn.pinned)
        self._reports[index] = assembly.report
        return assembly.segments

    def detail(self, index: int, status: PrefixStatus) -> dict[str, Any]:
        report = self._reports[index]
        moves = [{"name": m.name, "reason": m.reason, "detail": m.detail} for m in report.moves]
        return {**super().detail(index, status), "order": list(report.order), "moves": moves}


class PrewarmStrategy(LlamanodeStrategy):
    """llamanode in the trace's order; while the agent thinks it prewarms the upcoming turn's prefix (known
    before the question: the files as they stand), and the turn's ensure_prefix joins what it did."""

    name = "prewarm"

    def __init__(self, setup: ReplaySetup) -> None:
        super().__init__(setup)
        self._prewarms: dict[int, PrewarmHandle] = {}

    def think(self, index: int, upcoming: TraceTurn, seconds: float) -> None:
        session = self.session
        self._prewarms[index] = session.prewarm(session.prefix(self.arrange(index, upcoming)))
        time.sleep(seconds)

    def detail(self, index: int, status: PrefixStatus) -> dict[str, Any]:
        handle = self._prewarms.get(index)
        if handle is None:
            return super().detail(index, status)
        report = handle.wait()  # ended: the turn's ensure_prefix joined it, or it had completed
        prewarm = {"outcome": report.outcome, "prefilled_tokens": report.prefilled_tokens, "s": report.elapsed_s}
        return {**super().detail(index, status), "prewarm": prewarm}


class AssemblerPrewarmStrategy(PrewarmStrategy, AssemblerStrategy):
    """Both exact strategies: the assembler orders the upcoming turn, prewarmed while the agent thinks."""

    name = "assembler+prewarm"


class ApproxPrewarmStrategy(PrewarmStrategy, ApproxStrategy):
    """Approximate reuse as the session's default, so the prewarm in the think time reuses approximately too."""

    name = "approx+prewarm"

    def __init__(self, setup: ReplaySetup) -> None:
        super().__init__(setup)
        self.config = setup.config.replace(approximate_reuse=self.selection, approximate_share=setup.approx_share)
        approximation = self.config.approximation()
        assert approximation is not None
        self.policy = approximation  # the prewarm's and the turn's: the same, so the turn finds the prewarm's work

    def start(self) -> None:
        self._session = llamanode.open_session(self.setup.model_path, self.config)


def replay(
    trace: Trace, strategies: Sequence[Strategy], think_s: float, on_result: Callable[[TurnResult], None]
) -> list[TurnResult]:
    """Every strategy answers every turn; the order alternates per turn (A, B, C, then C, B, A) against drift."""
    results: list[TurnResult] = []
    started: list[Strategy] = []
    try:
        for strategy in strategies:
            strategy.start()
            started.append(strategy)
        for index, turn in enumerate(trace.turns):
            for strategy in strategies if index % 2 == 0 else strategies[::-1]:
                if index:
                    strategy.think(index, turn, think_s)
                result = strategy.turn(index, turn)
                results.append(result)
                on_result(result)
    finally:
        for strategy in started:
            strategy.close()
    return results
