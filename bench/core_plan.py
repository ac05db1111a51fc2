"""The session-core benchmark's plans (full and quick), its results, and what every phase shares (Setup)."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llamanode import Config

from .common import RunResults, write_json
from .prompts import Tokenize, chatml_suffix
from .raw_loop import RawModel, RawSetting

__all__ = ["FULL", "QUICK", "TARGETS", "Checkpoint", "CorePlan", "CoreResults", "Prompt", "Setup", "Suffixes"]

TARGETS = {
    "warm_ttft_vs_floor_max": 1.05,
    "prefill_vs_raw_min": 0.95,
    "decode_vs_raw_min": 0.95,
    "unchanged_prefix_ms_max": 2.0,
    "warm_ttft_vs_llama_max": 1.0,
}


@dataclass(frozen=True)
class CorePlan:
    name: str
    prefix_tokens: int
    suffix_tokens: int
    n_ctx: int
    settings: tuple[RawSetting, ...]
    threads: tuple[int, ...]  # the first is llamanode's (Config.threads); the others are swept too
    sweep_cold_reps: int  # cold prefills per setting at the most threads
    sweep_cold_other_threads: bool  # also cold-prefill at the other thread counts
    sweep_cold_round_budget_s: float  # skip further cold rounds when one round took longer (busy machine)
    sweep_warm_reps: int
    sweep_decode_tokens: int
    cold_reps: int
    warm_reps: int
    decode_tokens: int
    decode_reps: int
    curve_lengths: tuple[int, ...]
    curve_reps: int
    big_prefix_bytes: int
    big_num_ctx: int
    big_reps: int
    big_trim_reps: int
    num_threads: int = 0  # llamanode's Config.num_threads (0 = all cores, its default)
    contention_prefix: int = 512  # raw-loop subprocesses with and without a CPU-burning competitor
    contention_suffix: int = 92
    contention_reps: int = 1
    other_threads_settings: tuple[RawSetting, ...] = (RawSetting(512, 512, False),)  # swept at the other threads
    contention_variants: str = "all"  # "smoke": no competitor, no active-wait multi-thread run


def _threads() -> tuple[int, ...]:
    n = os.cpu_count() or 1
    return (n, 1) if n > 1 else (1,)


FULL = CorePlan(
    name="full",
    prefix_tokens=4096,
    suffix_tokens=92,
    n_ctx=8192,
    settings=tuple(
        RawSetting(b, u, fa) for fa in (False, True) for b, u in ((256, 256), (512, 512), (1024, 512), (2048, 512))
    ),
    threads=_threads(),
    sweep_cold_reps=2,
    sweep_cold_other_threads=True,
    sweep_cold_round_budget_s=300.0,
    sweep_warm_reps=4,
    sweep_decode_tokens=64,
    cold_reps=2,
    warm_reps=9,
    decode_tokens=128,
    decode_reps=3,
    curve_lengths=(16, 32, 64, 128, 256, 512),
    curve_reps=3,
    big_prefix_bytes=100_000,
    big_num_ctx=32768,
    big_reps=300,
    big_trim_reps=30,
)

QUICK = CorePlan(
    name="quick",
    prefix_tokens=256,
    suffix_tokens=32,
    n_ctx=1024,
    settings=(RawSetting(512, 512, False), RawSetting(256, 256, True)),
    threads=(1,),  # one thread: a smoke test must not collapse when other jobs share the cores
    sweep_cold_reps=1,
    sweep_cold_other_threads=False,
    sweep_cold_round_budget_s=60.0,
    sweep_warm_reps=1,
    sweep_decode_tokens=8,
    cold_reps=1,
    warm_reps=2,
    decode_tokens=16,
    decode_reps=1,
    curve_lengths=(16, 64),
    curve_reps=1,
    big_prefix_bytes=10_000,
    big_num_ctx=8192,
    big_reps=20,
    big_trim_reps=3,
    num_threads=1,
    contention_prefix=128,
    contention_suffix=16,
    contention_reps=1,
    contention_variants="smoke",
)


@dataclass
class CoreResults(RunResults):
    """Every phase's figures; written as bench/out/core.json (the keys the docs cite)."""

    prompt: dict[str, Any] = field(default_factory=dict)
    sweep: list[dict[str, Any]] = field(default_factory=list)
    floor: dict[str, Any] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)
    cold: dict[str, Any] = field(default_factory=dict)
    warm: dict[str, Any] = field(default_factory=dict)
    decode: dict[str, Any] = field(default_factory=dict)
    curve: dict[str, Any] = field(default_factory=dict)
    unchanged: dict[str, Any] = field(default_factory=dict)
    contention: list[dict[str, Any]] = field(default_factory=list)
    targets: dict[str, Any] = field(default_factory=dict)
    loadavg: dict[str, list[float]] = field(default_factory=dict)


@dataclass(frozen=True)
class Checkpoint:
    """After every phase: the load average, and the partial results written to path (when there is one)."""

    path: Path | None = None

    def save(self, results: CoreResults, phase: str) -> None:
        results.loadavg[phase] = list(os.getloadavg())
        if self.path is not None:
            write_json(self.path, {**asdict(results), "partial_after": phase})


class Suffixes:
    """Fresh suffix texts: every call gets a new variant, so no cache can reuse the previous turn."""

    def __init__(self, tokenize: Tokenize) -> None:
        self._tokenize = tokenize
        self._variant = 0

    def new(self, n_tokens: int) -> str:
        self._variant += 1
        return chatml_suffix(self._tokenize, n_tokens, self._variant)

    def batch(self, n_tokens: int, count: int) -> list[str]:
        return [self.new(n_tokens) for _ in range(count)]


@dataclass(frozen=True)
class Prompt:
    """The warm phases' prefix (text, ids, manifest segments) and the decode phase's seed text."""

    text: str
    ids: list[int]
    segments: list[tuple[str, str]]
    decode_seed: str


@dataclass
class Setup:
    """What every phase is given: the plan, the results it fills, the model, llamanode's config, the prompt."""

    plan: CorePlan
    results: CoreResults
    checkpoint: Checkpoint
    model_path: str
    config: Config
    raw_model: RawModel
    prompt: Prompt
    suffixes: Suffixes

    @property
    def tokenize(self) -> Tokenize:
        return self.raw_model.tokenize

    def done(self, phase: str) -> None:
        self.checkpoint.save(self.results, phase)
