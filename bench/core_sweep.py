"""The session-core benchmark's raw-loop phases: the settings sweep (whose fastest warm turn is the floor)
and the thread-contention runs in fresh processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from .common import REPO, interleaved, log, now, stats
from .core_plan import CorePlan, CoreResults, Setup
from .processes import module_cmd
from .raw_loop import RawContext, RawSetting

__all__ = ["contention", "pick_floor", "sweep"]

Key = tuple[RawSetting, int]  # a setting at a thread count


def _name(key: Key) -> str:
    return f"{key[0].label} t{key[1]}"


def sweep(setup: Setup) -> dict[RawSetting, RawContext]:
    """Phase 1: every setting x thread count, cold prefill, warm turn and decode; returns the contexts."""
    plan, prefix_ids = setup.plan, setup.prompt.ids
    top = plan.threads[0]  # llamanode's threads: every setting is cold-prefilled at these
    contexts = {s: RawContext(setup.raw_model, s, plan.n_ctx, top) for s in plan.settings}
    swept = [(s, t) for t in plan.threads for s in plan.settings if t == top or s in plan.other_threads_settings]
    rows: dict[Key, dict[str, Any]] = {(s, t): {"setting": s.label, **asdict(s), "threads": t} for s, t in swept}
    cold = _sweep_cold(setup, contexts, swept)
    warm_suffixes = [setup.tokenize(s) for s in setup.suffixes.batch(plan.suffix_tokens, plan.sweep_warm_reps)]
    warm = interleaved(
        plan.sweep_warm_reps, {_name(k): _warm_case(contexts, k, warm_suffixes, len(prefix_ids)) for k in rows}
    )
    log("sweep warm done")
    setup.done("sweep_warm")
    seed = setup.tokenize(setup.prompt.decode_seed)
    dec = interleaved(1, {_name(k): _decode_case(contexts, k, seed, len(prefix_ids), plan) for k in rows})
    log("sweep decode done")
    setup.done("sweep_decode")
    for key, row in rows.items():
        c = [len(prefix_ids) / x for x in cold[key]]
        row.update(
            cold_prefill_tok_s=stats(c).median if c else None,
            cold_prefill_samples_s=cold[key],
            warm_ttft_ms=stats(warm[_name(key)]).median * 1e3,
            warm_ttft_samples_ms=[x * 1e3 for x in warm[_name(key)]],
            decode_tok_s=stats(dec[_name(key)]).median,
        )
        contexts[key[0]].set_threads(top)
    setup.results.sweep = list(rows.values())
    return contexts


def _sweep_cold(setup: Setup, contexts: dict[RawSetting, RawContext], swept: list[Key]) -> dict[Key, list[float]]:
    """Cold prefills: rounds at llamanode's threads (one at the others), cut short on a busy machine."""
    plan, prefix_ids = setup.plan, setup.prompt.ids
    top = plan.threads[0]
    cold: dict[Key, list[float]] = {key: [] for key in swept}
    rounds_done: dict[int, int] = {}
    for t in plan.threads:
        if t != top and not plan.sweep_cold_other_threads:
            continue
        chosen = [s for s, u in swept if u == t]
        for rnd in range(plan.sweep_cold_reps if t == top else 1):
            began = now()
            for s in chosen if rnd % 2 == 0 else chosen[::-1]:
                ctx = contexts[s]
                ctx.set_threads(t)
                secs = ctx.cold_prefill(prefix_ids)
                ctx.set_threads(top)
                log(f"sweep cold {s.label} t{t}: {len(prefix_ids) / secs:.0f} tok/s")
                cold[(s, t)].append(secs)
            rounds_done[t] = rnd + 1
            if now() - began > plan.sweep_cold_round_budget_s:
                log(f"sweep cold round took {now() - began:.0f} s: no further rounds (busy machine)")
                break
    setup.results.plan["sweep_cold_rounds_done"] = rounds_done
    setup.done("sweep_cold")
    return cold


def _warm_case(
    contexts: dict[RawSetting, RawContext], key: Key, suffixes: list[list[int]], n_prefix: int
) -> Callable[[int], float]:
    def run(rep: int) -> float:
        ctx = contexts[key[0]]
        ctx.set_threads(key[1])
        ttft, _, _ = ctx.warm_turn(suffixes[rep], n_prefix)
        return ttft

    return run


def _decode_case(
    contexts: dict[RawSetting, RawContext], key: Key, seed: list[int], n_prefix: int, plan: CorePlan
) -> Callable[[int], float]:
    def run(rep: int) -> float:
        ctx = contexts[key[0]]
        ctx.set_threads(key[1])
        ctx.trim(n_prefix)
        ctx.prefill(seed, n_prefix)
        tps, _ = ctx.decode(plan.sweep_decode_tokens, n_prefix + len(seed))
        return tps

    return run


def pick_floor(results: CoreResults) -> tuple[RawSetting, int]:
    """The fastest warm setting of the sweep is the floor; also record the fastest cold and decode ones."""
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


def contention(setup: Setup) -> None:
    """Threads when another process wants a core: the raw loop (in fresh processes, since libgomp reads
    OMP_WAIT_POLICY once) at 1 thread, at all cores, and at all cores with OMP_WAIT_POLICY=passive,
    each alone and next to one CPU-burning competitor process."""
    plan = setup.plan
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
                    samples.setdefault((busy, label), []).append(_raw_loop_run(plan, threads, policy))
                    log(f"contention busy={busy} {label}: {samples[(busy, label)][-1]['warm_ttft_ms']}")
        finally:
            if burner is not None:
                burner.kill()
                burner.wait()
    for (busy, label), runs in samples.items():
        setup.results.contention.append(
            {
                "competitor": busy,
                "variant": label,
                "cold_prefill_tok_s": stats([r["cold_prefill_tok_s"] for r in runs]).median,
                "warm_ttft_ms": stats([x for r in runs for x in r["warm_ttft_ms"]]).median,
                "decode_tok_s": stats([r["decode_tok_s"] for r in runs]).median,
                "runs": runs,
            }
        )
    setup.done("contention")


def _raw_loop_run(plan: CorePlan, threads: int, policy: str) -> dict[str, Any]:
    """One `python -m bench.raw_loop --json` run in a fresh process, with OMP_WAIT_POLICY set or unset."""
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
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result
