"""Session-core benchmark (issue 2): llamanode against the raw llama_decode floor and against `Llama`.

Everything runs side by side in one process, with repetitions interleaved (A, B, C, then C, B, A),
and is reported as medians and ratios: the machine is shared and noisy, absolute times are not.

    .venv/bin/python bench/bench_core.py            # the full run (about 15 min on 2 quiet cores)
    .venv/bin/python bench/bench_core.py --quick    # a smoke test: tiny prefix, 1 repetition

Phases:
  1. sweep   raw loop over n_batch/n_ubatch x flash attention x threads: cold prefill of the prefix,
             warm turn (suffix prefilled at the end of the prefix + first token), decode tok/s.
             The fastest warm setting is the floor.
  2. cold    llamanode vs `Llama` vs raw (llamanode's settings): first token of a fresh context.
  3. warm    llamanode vs raw floor vs raw at llamanode's settings vs `Llama`, a new suffix each turn.
  4. decode  greedy tokens/s, llamanode vs raw at the same settings.
  5. curve   warm time to first token against suffix length (the plot).
  6. prefix  unchanged-prefix ensure_prefix (byte-hash path) on a 100 KB prefix.

Writes bench/out/core.json and bench/out/core.md (tables), and the plot (docs/warm_ttft.png).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import llamanode
from llamanode import Config, DecodeConfig, KVSession, PrefixInput
from llamanode.kvsession import common_prefix_len

from .common import (
    OUT_DIR,
    REPO,
    SYSTEM_INTRO,
    Tokenize,
    chatml_prefix,
    chatml_suffix,
    file_segments,
    fit_text,
    interleaved,
    log,
    machine_info,
    md_table,
    module_cmd,
    now,
    ratio,
    source_text,
    stats,
    verdict,
    write_json,
)
from .raw_loop import RawContext, RawModel, RawSetting

TARGETS = {
    "warm_ttft_vs_floor_max": 1.05,
    "prefill_vs_raw_min": 0.95,
    "decode_vs_raw_min": 0.95,
    "unchanged_prefix_ms_max": 2.0,
    "warm_ttft_vs_llama_max": 1.0,
}


@dataclass(frozen=True)
class Plan:
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


FULL = Plan(
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

QUICK = Plan(
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


# -- the systems under test ------------------------------------------------------------------------


@dataclass
class LlamanodeTurn:
    ensure_s: float
    suffix_s: float
    first_s: float
    byte_hash_hit: bool
    reused: int
    prefilled: int

    @property
    def ttft(self) -> float:
        return self.ensure_s + self.suffix_s + self.first_s


def llamanode_turn(session: KVSession, segments: Sequence[tuple[str, str]], suffix: str) -> LlamanodeTurn:
    """One agent turn up to its first token: build the prefix, ensure it, prefill the suffix, sample."""
    t0 = now()
    status = session.ensure_prefix(session.prefix(segments))
    t1 = now()
    session.prefill_suffix(session.suffix(suffix))
    t2 = now()
    stream = session.decode(DecodeConfig(max_tokens=1))
    next(stream)  # the first chunk carries the first token (max_tokens=1: it is not decoded)
    t3 = now()
    for _ in stream:
        pass
    return LlamanodeTurn(t1 - t0, t2 - t1, t3 - t2, status.byte_hash_hit, status.reused_tokens, status.prefilled_tokens)


def llama_turn(llm: Any, prompt: str) -> float:
    """`Llama`'s own path: full prompt text in, its prefix-match reuse, one greedy token out."""
    t0 = now()
    llm.create_completion(prompt, max_tokens=1, temperature=0.0)
    return now() - t0


class _SkipKV:
    """Wraps a real LlamaCppContext but skips llama_decode: for timing ensure_prefix's byte-hash path on a
    prefix whose real prefill would take minutes. Tokenization, offsets, hashing and seq_rm stay real."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.identity = inner.identity

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def prefill(self, tokens: Sequence[int], start: int) -> None:
        return None

    def step(self, token: int, position: int) -> None:
        return None


# -- phases ----------------------------------------------------------------------------------------


@dataclass
class Results:
    plan: dict[str, Any]
    machine: dict[str, Any]
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


_CHECKPOINT: Path | None = None  # partial results are written here after every phase


def _load(results: Results, phase: str) -> None:
    results.loadavg[phase] = list(os.getloadavg())
    if _CHECKPOINT is not None:
        write_json(_CHECKPOINT, {**asdict(results), "partial_after": phase})


def run_sweep(
    plan: Plan,
    model: RawModel,
    prefix_ids: list[int],
    warm_suffixes: list[list[int]],
    decode_seed: list[int],
    results: Results,
) -> dict[RawSetting, RawContext]:
    top = plan.threads[0]  # llamanode's threads: every setting is cold-prefilled at these
    contexts = {s: RawContext(model, s, plan.n_ctx, top) for s in plan.settings}
    swept = [(s, t) for t in plan.threads for s in plan.settings if t == top or s in plan.other_threads_settings]
    rows: dict[tuple[RawSetting, int], dict[str, Any]] = {
        (s, t): {"setting": s.label, **asdict(s), "threads": t} for s, t in swept
    }
    cold: dict[tuple[RawSetting, int], list[float]] = {key: [] for key in rows}
    n_prefix = len(prefix_ids)

    def cold_case(s: RawSetting, t: int) -> Callable[[int], float]:
        def run(rep: int) -> float:
            ctx = contexts[s]
            ctx.set_threads(t)
            secs = ctx.cold_prefill(prefix_ids)
            ctx.set_threads(top)
            log(f"sweep cold {s.label} t{t}: {n_prefix / secs:.0f} tok/s")
            return secs

        return run

    def name(s: RawSetting, t: int) -> str:
        return f"{s.label} t{t}"

    rounds_done: dict[int, int] = {}
    for t in plan.threads:
        if t != top and not plan.sweep_cold_other_threads:
            continue
        chosen = [s for s, u in swept if u == t]
        rounds = plan.sweep_cold_reps if t == top else 1
        for rnd in range(rounds):
            began = now()
            order = chosen if rnd % 2 == 0 else chosen[::-1]
            for s in order:
                cold[(s, t)].append(cold_case(s, t)(rnd))
            rounds_done[t] = rnd + 1
            if now() - began > plan.sweep_cold_round_budget_s:
                log(f"sweep cold round took {now() - began:.0f} s: no further rounds (busy machine)")
                break
    results.plan["sweep_cold_rounds_done"] = rounds_done
    _load(results, "sweep_cold")

    def warm_case(s: RawSetting, t: int) -> Callable[[int], float]:
        def run(rep: int) -> float:
            ctx = contexts[s]
            ctx.set_threads(t)
            ttft, _, _ = ctx.warm_turn(warm_suffixes[rep], n_prefix)
            return ttft

        return run

    keys = list(rows)
    warm = interleaved(plan.sweep_warm_reps, {name(s, t): warm_case(s, t) for s, t in keys})
    log("sweep warm done")
    _load(results, "sweep_warm")

    def decode_case(s: RawSetting, t: int) -> Callable[[int], float]:
        def run(rep: int) -> float:
            ctx = contexts[s]
            ctx.set_threads(t)
            ctx.trim(n_prefix)
            ctx.prefill(decode_seed, n_prefix)
            tps, _ = ctx.decode(plan.sweep_decode_tokens, n_prefix + len(decode_seed))
            return tps

        return run

    dec = interleaved(1, {name(s, t): decode_case(s, t) for s, t in keys})
    log("sweep decode done")
    _load(results, "sweep_decode")
    for s, t in keys:
        c = [n_prefix / x for x in cold[(s, t)]]
        rows[(s, t)].update(
            cold_prefill_tok_s=stats(c).median if c else None,
            cold_prefill_samples_s=cold[(s, t)],
            warm_ttft_ms=stats(warm[name(s, t)]).median * 1e3,
            warm_ttft_samples_ms=[x * 1e3 for x in warm[name(s, t)]],
            decode_tok_s=stats(dec[name(s, t)]).median,
        )
        contexts[s].set_threads(top)
    results.sweep = list(rows.values())
    return contexts


def pick_floor(results: Results) -> tuple[RawSetting, int]:
    best = min(results.sweep, key=lambda r: r["warm_ttft_ms"])
    setting = RawSetting(best["n_batch"], best["n_ubatch"], best["flash_attn"])
    results.floor = {"setting": setting.label, "threads": best["threads"], "sweep_warm_ttft_ms": best["warm_ttft_ms"]}
    cold_rows = [r for r in results.sweep if r["cold_prefill_tok_s"]]
    fastest_cold = max(cold_rows, key=lambda r: r["cold_prefill_tok_s"])
    fastest_decode = max(results.sweep, key=lambda r: r["decode_tok_s"])
    results.defaults = {
        "fastest_warm": {"setting": best["setting"], "threads": best["threads"], "warm_ttft_ms": best["warm_ttft_ms"]},
        "fastest_cold": {
            "setting": fastest_cold["setting"],
            "threads": fastest_cold["threads"],
            "cold_prefill_tok_s": fastest_cold["cold_prefill_tok_s"],
        },
        "fastest_decode": {
            "setting": fastest_decode["setting"],
            "threads": fastest_decode["threads"],
            "decode_tok_s": fastest_decode["decode_tok_s"],
        },
    }
    return setting, best["threads"]


def main_phases(
    plan: Plan,
    model_path: str,
    config: Config,
    prefix_text: str,
    prefix_ids: list[int],
    suffixes: Suffixes,
    decode_seed_text: str,
    raw_default: RawContext,
    raw_floor: RawContext,
    floor_threads: int,
    results: Results,
) -> None:
    from llama_cpp import Llama

    tokenize = raw_default.model.tokenize
    segments = file_segments(prefix_text)
    n_prefix = len(prefix_ids)
    threads = config.threads
    same_as_floor = raw_floor is raw_default and floor_threads == threads
    llm = Llama(
        model_path=model_path,
        n_ctx=plan.n_ctx,
        n_batch=config.num_batch,
        n_ubatch=config.num_ubatch,
        n_threads=threads,
        n_threads_batch=threads,
        flash_attn=config.flash_attn,
        verbose=False,
    )
    node = llamanode.open_session(model_path, config)

    # -- cold ------------------------------------------------------------------------------------
    # Every system keeps its warmed-up context; a cold turn gets a prefix that shares only
    # `<|im_start|>system\n` (3 tokens) with the one before, so nothing else can be reused. The
    # last cold prefix is the warm phases' prefix.
    cold_prefixes = [
        chatml_prefix(tokenize, n_prefix, intro=f"[take {k}] {SYSTEM_INTRO}") for k in range(1, plan.cold_reps)
    ] + [prefix_text]
    cold_suffixes = suffixes.batch(plan.suffix_tokens, plan.cold_reps)
    # untimed warm-up on another short prefix: first decodes settle buffers, and every system
    # then starts the cold phase from the same unrelated state
    warmup = chatml_prefix(tokenize, min(512, n_prefix), intro="[warm-up] ")
    llamanode_turn(node, file_segments(warmup), cold_suffixes[0])
    llama_turn(llm, warmup + cold_suffixes[0])
    raw_resident = tokenize(warmup)
    raw_default.set_threads(threads)
    raw_default.clear()
    raw_default.prefill(raw_resident, 0)
    node_prefill: list[tuple[int, float]] = []
    raw_prefill: list[tuple[int, float]] = []

    def node_cold(rep: int) -> float:
        turn = llamanode_turn(node, file_segments(cold_prefixes[rep]), cold_suffixes[rep])
        assert not turn.byte_hash_hit and turn.reused < 16, turn  # only the ChatML header (and "[") is shared
        node_prefill.append((turn.prefilled, turn.ensure_s))
        log(f"cold llamanode {turn.ttft:.2f} s (reused {turn.reused} tokens)")
        return turn.ttft

    def llama_cold(rep: int) -> float:
        secs = llama_turn(llm, cold_prefixes[rep] + cold_suffixes[rep])
        log(f"cold Llama {secs:.2f} s")
        return secs

    def raw_cold(rep: int) -> float:
        nonlocal raw_resident
        ids = tokenize(cold_prefixes[rep])
        raw_default.set_threads(threads)
        keep = common_prefix_len(raw_resident, ids)
        t0 = now()
        raw_default.trim(keep)
        raw_default.prefill(ids[keep:], keep)
        secs = now() - t0
        raw_resident = ids
        raw_prefill.append((len(ids) - keep, secs))
        ttft, _, _ = raw_default.warm_turn(tokenize(cold_suffixes[rep]), len(ids))
        log(f"cold raw {secs + ttft:.2f} s")
        return secs + ttft

    cold = interleaved(plan.cold_reps, {"llamanode": node_cold, "Llama": llama_cold, "raw": raw_cold})
    _load(results, "cold")
    results.cold = {
        "ttft_s": {k: stats(v).as_dict() for k, v in cold.items()},
        "samples_s": cold,
        "prefill_tok_s": {
            "llamanode": stats([n / x for n, x in node_prefill]).as_dict(),
            "raw": stats([n / x for n, x in raw_prefill]).as_dict(),
        },
        "llamanode_prefill_samples": node_prefill,
        "raw_prefill_samples": raw_prefill,
    }

    # -- warm ------------------------------------------------------------------------------------
    warm_suffixes = suffixes.batch(plan.suffix_tokens, plan.warm_reps)
    warm_ids = [tokenize(s) for s in warm_suffixes]
    turns: list[LlamanodeTurn] = []
    raw_default_ttft: list[float] = []

    def node_warm(rep: int) -> float:
        turn = llamanode_turn(node, segments, warm_suffixes[rep])
        assert turn.byte_hash_hit and turn.reused == n_prefix, turn
        turns.append(turn)
        return turn.ttft

    def floor_warm(rep: int) -> float:
        raw_floor.set_threads(floor_threads)
        return raw_floor.warm_turn(warm_ids[rep], n_prefix)[0]

    def default_warm(rep: int) -> float:
        raw_default.set_threads(threads)
        return raw_default.warm_turn(warm_ids[rep], n_prefix)[0]

    def llama_warm(rep: int) -> float:
        return llama_turn(llm, prefix_text + warm_suffixes[rep])

    cases: dict[str, Callable[[int], float]] = {"raw floor": floor_warm}
    if not same_as_floor:
        cases["raw, llamanode settings"] = default_warm
    cases |= {"llamanode": node_warm, "Llama": llama_warm}
    warm = interleaved(plan.warm_reps, cases)
    if same_as_floor:
        warm["raw, llamanode settings"] = warm["raw floor"]
    raw_default_ttft = warm["raw, llamanode settings"]
    log("warm: " + ", ".join(f"{k} {stats(v).median * 1e3:.0f} ms" for k, v in warm.items()))
    _load(results, "warm")
    paired = [a / b for a, b in zip(warm["llamanode"], warm["raw floor"], strict=True)]
    paired_llama = [a / b for a, b in zip(warm["llamanode"], warm["Llama"], strict=True)]
    results.warm = {
        "suffix_tokens": plan.suffix_tokens,
        "ttft_ms": {k: stats([x * 1e3 for x in v]).as_dict() for k, v in warm.items()},
        "samples_ms": {k: [x * 1e3 for x in v] for k, v in warm.items()},
        "llamanode_parts_ms": {
            "ensure_prefix": stats([t.ensure_s * 1e3 for t in turns]).as_dict(),
            "prefill_suffix": stats([t.suffix_s * 1e3 for t in turns]).as_dict(),
            "first_token": stats([t.first_s * 1e3 for t in turns]).as_dict(),
        },
        "paired_ratio_vs_floor": stats(paired).as_dict(),
        "paired_ratio_vs_llama": stats(paired_llama).as_dict(),
        "suffix_prefill_tok_s": {
            "llamanode": stats([plan.suffix_tokens / t.suffix_s for t in turns]).as_dict(),
            "raw": stats([plan.suffix_tokens / x for x in raw_default_ttft]).as_dict(),
        },
    }

    # -- decode ----------------------------------------------------------------------------------
    seed_ids = tokenize(decode_seed_text)
    node_decode_meta: list[dict[str, Any]] = []
    raw_eog: list[int] = []
    raw_tokens: list[list[int]] = []

    def node_decode(rep: int) -> float:
        node.ensure_prefix(node.prefix(segments))
        node.prefill_suffix(node.suffix(decode_seed_text))
        report = None
        produced: list[int] = []
        for chunk in node.decode(DecodeConfig(max_tokens=plan.decode_tokens)):
            report = chunk.report or report
            produced.extend(chunk.token_ids)
        assert report is not None
        node_decode_meta.append(
            {
                "generated": report.generated_tokens,
                "stop_reason": report.stop_reason,
                "same_tokens_as_raw": [produced == r[: len(produced)] for r in raw_tokens],
            }
        )
        return report.tokens_per_s

    def raw_decode(rep: int) -> float:
        raw_default.set_threads(threads)
        raw_default.trim(n_prefix)
        raw_default.prefill(seed_ids, n_prefix)
        tps, toks = raw_default.decode(plan.decode_tokens, n_prefix + len(seed_ids))
        raw_eog.append(next((i for i, t in enumerate(toks) if raw_default.model.is_eog(t)), -1))
        raw_tokens.append(toks)
        return tps

    dec = interleaved(plan.decode_reps, {"llamanode": node_decode, "raw": raw_decode})
    log("decode: " + ", ".join(f"{k} {stats(v).median:.1f} tok/s" for k, v in dec.items()))
    _load(results, "decode")
    results.decode = {
        "tokens": plan.decode_tokens,
        "tok_s": {k: stats(v).as_dict() for k, v in dec.items()},
        "samples": dec,
        "llamanode_reports": node_decode_meta,
        "raw_first_eog_index": raw_eog,
    }

    # -- curve -----------------------------------------------------------------------------------
    curve: dict[str, dict[int, list[float]]] = {}
    for n in plan.curve_lengths:
        texts = suffixes.batch(n, plan.curve_reps)
        ids = [tokenize(t) for t in texts]
        cases = {
            "raw floor": _raw_turn(raw_floor, floor_threads, ids, n_prefix),
            "llamanode": _node_turn(node, segments, texts),
            "Llama": _llama_turn(llm, prefix_text, texts),
        }
        for k, v in interleaved(plan.curve_reps, cases).items():
            curve.setdefault(k, {})[n] = [x * 1e3 for x in v]
        log(f"curve {n}: " + ", ".join(f"{k} {stats(v[n]).median:.0f} ms" for k, v in curve.items()))
    _load(results, "curve")
    results.curve = {
        "prefix_tokens": n_prefix,
        "lengths": list(plan.curve_lengths),
        "median_ms": {k: [stats(v[n]).median for n in plan.curve_lengths] for k, v in curve.items()},
        "samples_ms": {k: {str(n): v[n] for n in plan.curve_lengths} for k, v in curve.items()},
    }
    node.close()
    llm.close()


def _raw_turn(ctx: RawContext, threads: int, ids: list[list[int]], at: int) -> Callable[[int], float]:
    def run(rep: int) -> float:
        ctx.set_threads(threads)
        return ctx.warm_turn(ids[rep], at)[0]

    return run


def _node_turn(session: KVSession, segments: Sequence[tuple[str, str]], texts: list[str]) -> Callable[[int], float]:
    return lambda rep: llamanode_turn(session, segments, texts[rep]).ttft


def _llama_turn(llm: Any, prefix_text: str, texts: list[str]) -> Callable[[int], float]:
    return lambda rep: llama_turn(llm, prefix_text + texts[rep])


def unchanged_prefix(plan: Plan, model_path: str, tokenize: Tokenize, results: Results) -> None:
    """ensure_prefix with the same text again: the byte-hash path, on a 100 KB prefix."""
    from llamanode.backends.llamacpp.context import LlamaCppContext
    from llamanode.backends.llamacpp.model import acquire_model, release_model

    body = source_text()
    while len(body.encode()) < plan.big_prefix_bytes:
        body += body

    def make(b: str) -> str:
        intro = "You are a coding assistant. The repository follows.\n\n"
        return f"<|im_start|>system\n{intro}{b}<|im_end|>\n<|im_start|>user\n"

    frame = len(make("").encode())
    text = make(body.encode()[: plan.big_prefix_bytes - frame].decode("utf-8", "ignore"))
    config = Config(num_ctx=plan.big_num_ctx)
    model = acquire_model(model_path)
    try:
        inner = LlamaCppContext(model, config)  # owns the reference from here: close() releases it
    except BaseException:
        release_model(model)
        raise
    session = KVSession(_SkipKV(inner), config)  # type: ignore[arg-type]
    out: dict[str, Any] = {"bytes": len(text.encode()), "num_ctx": plan.big_num_ctx, "kv": "prefill skipped (_SkipKV)"}
    per_file = file_segments(text)
    one = [("prompt", text)]
    with session:
        for label, segments in (("per-file segments", per_file), ("one segment", one)):
            prefix: PrefixInput = session.prefix(segments)
            t0 = now()
            status = session.ensure_prefix(prefix)
            first_s = now() - t0
            tokens = status.prefix_tokens
            hits: list[float] = []
            for _ in range(plan.big_reps):
                t0 = now()
                st = session.ensure_prefix(prefix)
                hits.append((now() - t0) * 1e3)
                assert st.byte_hash_hit
            rebuilt: list[float] = []
            for _ in range(plan.big_reps):
                t0 = now()
                st = session.ensure_prefix(session.prefix(segments))
                rebuilt.append((now() - t0) * 1e3)
                assert st.byte_hash_hit
            trimmed: list[float] = []
            for _ in range(plan.big_trim_reps):
                session.prefill_suffix(session.suffix("Explain the manifest module, briefly.<|im_end|>\n"))
                t0 = now()
                st = session.ensure_prefix(prefix)
                trimmed.append((now() - t0) * 1e3)
                assert st.byte_hash_hit and st.dropped_tokens > 0
            out[label] = {
                "segments": len(segments),
                "tokens": tokens,
                "first_ensure_s": first_s,
                "hit_ms": stats(hits).as_dict(),
                "hit_with_prefix_build_ms": stats(rebuilt).as_dict(),
                "hit_after_suffix_ms": stats(trimmed).as_dict(),
            }
            log(f"unchanged prefix ({label}, {tokens} tokens): median {stats(hits).median:.3f} ms")
    _load(results, "unchanged")
    results.unchanged = out


def contention(plan: Plan, results: Results) -> None:
    """Threads when another process wants a core: the raw loop (in fresh processes, since libgomp reads
    OMP_WAIT_POLICY once) at 1 thread, at all cores, and at all cores with OMP_WAIT_POLICY=passive,
    each alone and next to one CPU-burning competitor process."""
    n = os.cpu_count() or 1
    if n == 1 or plan.contention_reps == 0:
        return
    variants = [("1 thread", 1, ""), (f"{n} threads", n, ""), (f"{n} threads, OMP_WAIT_POLICY=passive", n, "passive")]
    competitor: tuple[bool, ...] = (False, True)
    if plan.contention_variants == "smoke":  # the code path only: an active-wait run next to a busy core is slow
        variants, competitor = [variants[0], variants[2]], (False,)
    samples: dict[tuple[bool, str], list[dict[str, Any]]] = {}
    for busy in competitor:
        burner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
        try:
            for rep in range(plan.contention_reps):
                for label, threads, policy in variants if rep % 2 == 0 else variants[::-1]:
                    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
                    if policy:
                        env["OMP_WAIT_POLICY"] = policy
                    args = ["--prefix", str(plan.contention_prefix), "--suffix", str(plan.contention_suffix)]
                    args += ["--reps", "3", "--decode", "32", "--threads", str(threads), "--json"]
                    proc = subprocess.run(
                        module_cmd("raw_loop", *args), env=env, cwd=REPO, capture_output=True, text=True, timeout=1800
                    )
                    if proc.returncode != 0:
                        raise RuntimeError(f"bench.raw_loop {' '.join(args)} failed:\n{proc.stderr[-2000:]}")
                    samples.setdefault((busy, label), []).append(json.loads(proc.stdout.strip().splitlines()[-1]))
                    log(f"contention busy={busy} {label}: {samples[(busy, label)][-1]['warm_ttft_ms']}")
        finally:
            if burner is not None:
                burner.kill()
                burner.wait()
    for (busy, label), runs in samples.items():
        results.contention.append(
            {
                "competitor": busy,
                "variant": label,
                "cold_prefill_tok_s": stats([r["cold_prefill_tok_s"] for r in runs]).median,
                "warm_ttft_ms": stats([x for r in runs for x in r["warm_ttft_ms"]]).median,
                "decode_tok_s": stats([r["decode_tok_s"] for r in runs]).median,
                "runs": runs,
            }
        )
    _load(results, "contention")


# -- report ----------------------------------------------------------------------------------------


def evaluate(results: Results) -> None:
    w = results.warm["ttft_ms"]
    node, floor, llama = w["llamanode"]["median"], w["raw floor"]["median"], w["Llama"]["median"]
    pf = results.cold["prefill_tok_s"]
    dec = results.decode["tok_s"]
    unchanged = results.unchanged["per-file segments"]["hit_ms"]
    rows = {
        "warm TTFT vs floor": (ratio(node, floor), TARGETS["warm_ttft_vs_floor_max"], "<="),
        "prefill tok/s vs raw": (
            ratio(pf["llamanode"]["median"], pf["raw"]["median"]),
            TARGETS["prefill_vs_raw_min"],
            ">=",
        ),
        "decode tok/s vs raw": (
            ratio(dec["llamanode"]["median"], dec["raw"]["median"]),
            TARGETS["decode_vs_raw_min"],
            ">=",
        ),
        "unchanged prefix ms (100 KB)": (unchanged["median"], TARGETS["unchanged_prefix_ms_max"], "<="),
        "warm TTFT vs Llama": (ratio(node, llama), TARGETS["warm_ttft_vs_llama_max"], "<="),
    }

    def paired(a: list[float], b: list[float]) -> float:
        return stats([x / y for x, y in zip(a, b, strict=True)]).median

    samples_w, samples_d = results.warm["samples_ms"], results.decode["samples"]
    pairs = {
        "warm TTFT vs floor": paired(samples_w["llamanode"], samples_w["raw floor"]),
        "prefill tok/s vs raw": paired(
            [n / x for n, x in results.cold["llamanode_prefill_samples"]],
            [n / x for n, x in results.cold["raw_prefill_samples"]],
        ),
        "decode tok/s vs raw": paired(samples_d["llamanode"], samples_d["raw"]),
        "warm TTFT vs Llama": paired(samples_w["llamanode"], samples_w["Llama"]),
    }
    results.targets = {
        k: {
            "value": v,
            "paired": pairs.get(k, math.nan),
            "target": t,
            "op": op,
            "verdict": verdict(v <= t if op == "<=" else v >= t),
        }
        for k, (v, t, op) in rows.items()
    }


def report(results: Results) -> str:
    m = results.machine
    cfg = results.plan["llamanode_config"]
    parts = [
        f"## llamanode session core ({results.plan['name']} run)",
        f"{m['date_utc']}; {m['nproc']} CPUs, {m['cpu']}; llama-cpp-python {m['llama_cpp_python']}; "
        f"load average at start {m['loadavg'][0]:.2f}. Absolute times are noisy; read the ratios.",
        f"Prompt: {results.prompt['prefix_tokens']}-token prefix ({results.prompt['prefix_bytes']} bytes, "
        f"{results.prompt['segments']} segments), {results.prompt['suffix_tokens']}-token suffixes. "
        f"llamanode: num_batch {cfg['num_batch']}, num_ubatch {cfg['num_ubatch']}, "
        f"flash_attn {cfg['flash_attn']}, {cfg['kv_type'] if 'kv_type' in cfg else cfg['kv_cache_type']} KV, "
        f"{cfg['threads']} threads (`Llama` the same).",
        "",
        "### Sweep (raw loop)",
    ]
    rows = []
    for r in results.sweep:
        rows.append(
            [
                r["setting"],
                r["threads"],
                r["cold_prefill_tok_s"] if r["cold_prefill_tok_s"] else "-",
                r["warm_ttft_ms"],
                r["decode_tok_s"],
            ]
        )
    parts.append(
        md_table(
            ["n_batch/n_ubatch, flash attn", "threads", "cold prefill tok/s", "warm TTFT ms", "decode tok/s"], rows
        )
    )
    d = results.defaults
    parts.append(
        f"\nFastest warm turn: {d['fastest_warm']['setting']} t{d['fastest_warm']['threads']}; "
        f"fastest cold prefill: {d['fastest_cold']['setting']} t{d['fastest_cold']['threads']}; "
        f"fastest decode: {d['fastest_decode']['setting']} t{d['fastest_decode']['threads']}."
    )
    parts.append(
        f"\n### Warm turn (same prefix, new {results.warm['suffix_tokens']}-token suffix); "
        f"floor = {results.floor['setting']} t{results.floor['threads']}"
    )
    w = results.warm["ttft_ms"]
    floor = w["raw floor"]["median"]
    parts.append(
        md_table(
            ["system", "median ms", "p10 ms", "p90 ms", "x floor"],
            [[k, v["median"], v["p10"], v["p90"], ratio(v["median"], floor)] for k, v in w.items()],
        )
    )
    pm = results.warm["llamanode_parts_ms"]
    parts.append(
        f"\nllamanode parts (median ms): ensure_prefix {pm['ensure_prefix']['median']:.2f}, "
        f"prefill_suffix {pm['prefill_suffix']['median']:.1f}, first token {pm['first_token']['median']:.2f}. "
        "Paired ratio vs floor (median of per-repetition ratios): "
        f"{results.warm['paired_ratio_vs_floor']['median']:.3f}."
    )
    c = results.cold["ttft_s"]
    parts.append("\n### Cold turn (fresh context, prefix + suffix + first token)")
    parts.append(
        md_table(
            ["system", "median s", "x llamanode"],
            [[k, v["median"], ratio(v["median"], c["llamanode"]["median"])] for k, v in c.items()],
        )
    )
    pf, sp, dec = results.cold["prefill_tok_s"], results.warm["suffix_prefill_tok_s"], results.decode["tok_s"]
    parts.append("\n### Throughput, llamanode vs raw loop at llamanode's settings")
    parts.append(
        md_table(
            ["measure", "llamanode", "raw", "ratio"],
            [
                [
                    f"cold prefill tok/s ({results.prompt['prefix_tokens']} tokens, whole ensure_prefix)",
                    pf["llamanode"]["median"],
                    pf["raw"]["median"],
                    ratio(pf["llamanode"]["median"], pf["raw"]["median"]),
                ],
                [
                    f"warm suffix prefill tok/s ({results.warm['suffix_tokens']} tokens)",
                    sp["llamanode"]["median"],
                    sp["raw"]["median"],
                    ratio(sp["llamanode"]["median"], sp["raw"]["median"]),
                ],
                [
                    f"decode tok/s ({results.decode['tokens']} tokens greedy)",
                    dec["llamanode"]["median"],
                    dec["raw"]["median"],
                    ratio(dec["llamanode"]["median"], dec["raw"]["median"]),
                ],
            ],
        )
    )
    u = results.unchanged
    parts.append(f"\n### Unchanged prefix: ensure_prefix on the same {u['bytes']}-byte prefix (byte-hash path)")
    urows = []
    for label in ("per-file segments", "one segment"):
        x = u[label]
        urows.append(
            [
                label,
                x["segments"],
                x["tokens"],
                x["hit_ms"]["median"],
                x["hit_ms"]["p99"],
                x["hit_with_prefix_build_ms"]["median"],
                x["hit_after_suffix_ms"]["median"],
            ]
        )
    parts.append(
        md_table(
            ["prefix", "segments", "tokens", "median ms", "p99 ms", "with session.prefix() ms", "after a suffix ms"],
            urows,
        )
    )
    cv = results.curve
    parts.append(f"\n### Warm TTFT against suffix length (prefix {cv['prefix_tokens']} tokens), median ms")
    names = list(cv["median_ms"])
    parts.append(
        md_table(
            ["suffix tokens", *names],
            [[n, *(cv["median_ms"][k][i] for k in names)] for i, n in enumerate(cv["lengths"])],
        )
    )
    if results.contention:
        parts.append(
            f"\n### Threads when another process wants a core (raw loop, {results.plan['contention_prefix']}-token "
            f"prefix, {results.plan['contention_suffix']}-token warm suffix)"
        )
        by = {(r["competitor"], r["variant"]): r for r in results.contention}
        labels = list(dict.fromkeys(r["variant"] for r in results.contention))
        crows = []
        for label in labels:
            q, b = by.get((False, label), {}), by.get((True, label), {})
            crows.append(
                [
                    label,
                    q.get("cold_prefill_tok_s", float("nan")),
                    q.get("warm_ttft_ms", float("nan")),
                    q.get("decode_tok_s", float("nan")),
                    b.get("cold_prefill_tok_s", float("nan")),
                    b.get("warm_ttft_ms", float("nan")),
                    b.get("decode_tok_s", float("nan")),
                ]
            )
        heads = ["threads", "alone: prefill tok/s", "warm ms", "decode tok/s"]
        heads += ["+1 busy process: prefill tok/s", "warm ms", "decode tok/s"]
        parts.append(md_table(heads, crows))
    parts.append("\n### Targets")
    parts.append(
        md_table(
            ["target", "measured (ratio of medians)", "median of paired ratios", "goal", "verdict"],
            [
                [k, v["value"], v.get("paired", math.nan), f"{v['op']} {v['target']}", v["verdict"]]
                for k, v in results.targets.items()
            ],
        )
    )
    return "\n".join(parts) + "\n"


def plot(results: Results, path: Path) -> bool:
    """Render warm TTFT against suffix length; False (and a note) when matplotlib is missing."""
    try:
        import matplotlib
    except ImportError:
        log("matplotlib is not installed (pip install -e '.[bench]'): no plot")
        return False

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cv = results.curve
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    styles = {"raw floor": ("k", "--", "s"), "llamanode": ("tab:blue", "-", "o"), "Llama": ("tab:orange", "-", "^")}
    for name, med in cv["median_ms"].items():
        color, ls, marker = styles.get(name, ("gray", ":", "x"))
        samples = cv["samples_ms"][name]
        lo = [min(samples[str(n)]) for n in cv["lengths"]]
        hi = [max(samples[str(n)]) for n in cv["lengths"]]
        ax.plot(cv["lengths"], med, color=color, linestyle=ls, marker=marker, label=name)
        ax.fill_between(cv["lengths"], lo, hi, color=color, alpha=0.12)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(cv["lengths"], [str(n) for n in cv["lengths"]])
    ax.set_xlabel(f"suffix tokens (prefilled after a {cv['prefix_tokens']}-token resident prefix)")
    ax.set_ylabel("warm time to first token (ms)")
    m = results.machine
    threads = results.plan.get("llamanode_config", {}).get("threads", "?")
    ax.set_title(
        f"Warm turn, SmolLM2-135M Q4_1, {threads} thread(s) on {m['nproc']} CPUs ({m['date_utc'][:10]}); "
        "median, band = min..max",
        fontsize=9,
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return True


# -- main ------------------------------------------------------------------------------------------


def run(plan: Plan) -> Results:
    results = Results(plan={**asdict(plan), "settings": [s.label for s in plan.settings]}, machine=machine_info())
    model_path = str(llamanode.default_model_path())
    config = Config().replace(num_ctx=plan.n_ctx, num_threads=plan.num_threads)
    results.plan["llamanode_config"] = {**asdict(config), "threads": config.threads}
    raw_model = RawModel(model_path)
    tokenize = raw_model.tokenize
    prefix_text = chatml_prefix(tokenize, plan.prefix_tokens)
    prefix_ids = tokenize(prefix_text)
    suffixes = Suffixes(tokenize)
    probe = suffixes.new(plan.suffix_tokens)
    if tokenize(prefix_text + probe) != prefix_ids + tokenize(probe):
        raise RuntimeError("prefix and suffix do not tokenize independently; the comparison would be unfair")
    decode_seed_text = fit_text(
        tokenize,
        lambda b: f"Write a Python function that {b}<|im_end|>\n<|im_start|>assistant\n```python\ndef ",
        "parses a llamanode manifest file and returns its segments as a list of named tuples, "
        "with a docstring and type hints",
        min(plan.suffix_tokens, 40),
    )
    results.prompt = {
        "prefix_tokens": len(prefix_ids),
        "prefix_bytes": len(prefix_text.encode()),
        "segments": len(file_segments(prefix_text)),
        "suffix_tokens": plan.suffix_tokens,
        "example_suffix": probe,
        "decode_seed": decode_seed_text,
    }
    log(f"plan {plan.name}: prefix {len(prefix_ids)} tokens, {len(plan.settings)} settings x threads {plan.threads}")
    sweep_suffixes = [tokenize(s) for s in suffixes.batch(plan.suffix_tokens, plan.sweep_warm_reps)]
    contexts = run_sweep(plan, raw_model, prefix_ids, sweep_suffixes, tokenize(decode_seed_text), results)
    floor_setting, floor_threads = pick_floor(results)
    default_setting = RawSetting(config.num_batch, config.num_ubatch, config.flash_attn)
    if default_setting not in contexts:
        contexts[default_setting] = RawContext(raw_model, default_setting, plan.n_ctx, config.threads)
        contexts[default_setting].cold_prefill(prefix_ids)
    for s in list(contexts):
        if s not in (floor_setting, default_setting):
            contexts.pop(s).close()
    log(f"floor: {floor_setting.label} t{floor_threads}; llamanode: {default_setting.label} t{config.threads}")
    main_phases(
        plan,
        model_path,
        config,
        prefix_text,
        prefix_ids,
        suffixes,
        decode_seed_text,
        contexts[default_setting],
        contexts[floor_setting],
        floor_threads,
        results,
    )
    for ctx in contexts.values():
        ctx.close()
    unchanged_prefix(plan, model_path, tokenize, results)
    raw_model.close()
    contention(plan, results)
    evaluate(results)
    results.machine["loadavg_end"] = list(os.getloadavg())
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="llamanode session-core benchmark (issue 2)")
    parser.add_argument("--quick", action="store_true", help="tiny smoke run (short prefix, 1 repetition), < 60 s")
    parser.add_argument("--out", type=Path, default=None, help="JSON results (default bench/out/core[-quick].json)")
    parser.add_argument("--plot", type=Path, default=None, help="PNG (default docs/warm_ttft.png; quick: bench/out/)")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="llamanode's (and Llama's) threads; the sweep also tries all cores and 1 (default: all cores)",
    )
    parser.add_argument("--replot", type=Path, default=None, help="only re-render the plot from a results JSON")
    parser.add_argument("--report", type=Path, default=None, help="only re-print the tables from a results JSON")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.threads:
        others = tuple(t for t in (os.cpu_count() or 1, 1) if t != args.threads)
        plan = dataclasses.replace(plan, num_threads=args.threads, threads=(args.threads, *others))
    suffix = "-quick" if args.quick else ""
    out = args.out or OUT_DIR / f"core{suffix}.json"
    png = args.plot or (OUT_DIR / "warm_ttft-quick.png" if args.quick else REPO / "docs" / "warm_ttft.png")
    if args.report is not None:
        saved = Results(**json.loads(args.report.read_text()))
        evaluate(saved)
        print(report(saved))
        return 0
    if args.replot is not None:
        plot(Results(**json.loads(args.replot.read_text())), png)
        print(png)
        return 0
    global _CHECKPOINT
    _CHECKPOINT = out.with_name(out.stem + ".partial.json")
    results = run(plan)
    write_json(out, asdict(results))
    text = report(results)
    out.with_suffix(".md").write_text(text, encoding="utf-8")
    print(text)
    log(f"wrote {out} and {out.with_suffix('.md')}")
    if not args.no_plot and plot(results, png):
        log(f"wrote {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
