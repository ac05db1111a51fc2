"""Workspace-pool benchmark (issue 3): switching between workspaces, restart to first token, snapshot size.

    .venv/bin/python -m bench.pool            # the full run: 4k-token prefixes (about 10 min on 2 cores)
    .venv/bin/python -m bench.pool --quick    # a smoke run: 512-token prefixes, 1 repetition

Phases:
  1. seed     three workspaces A, B, C get their prefix cold (one pool) and are snapshotted; the store is
              copied for each pool below, so every pool starts from the same snapshots.
  2. switch   turns A,B,C,A,B,C... (a new suffix every turn), time to first token, for pools whose memory
              budget keeps 1, 2 or all 3 workspaces live (budget_for(n)), interleaved; then `Llama` (one
              context, its own prefix reuse) on the same turns. A switch = evict + restore + warm turn.
  3. restart  a fresh process to first token on a 4k prefix: restored from the store vs cold.
  4. size     snapshot bytes per token for f16 and q8_0 KV (q8_0 needs flash attention).
  5. forks    N new sessions forked from one live workspace (fork_nearest, as a new session key is served):
              time per fork and first token vs a cold prefill, live and snapshot bytes per fork
              (bench/pool_forks.py; `--forks-only` runs this phase alone).

Writes bench/out/pool[-quick].json and .md (verdicts and tables: pool_report.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llamanode import Config, SessionPool, default_model_path, open_session

from .common import OUT_DIR, RunResults, llama_turn, log, machine_info, now, open_llama, session_turn, write_json
from .pool_forks import fork_sessions, fork_sessions_table
from .pool_report import FROM_DISK, evaluate, report
from .prompts import chatml_prefix, chatml_suffix

NAMES = ("A", "B", "C")


@dataclass(frozen=True)
class PoolPlan:
    name: str
    prefix_tokens: int
    suffix_tokens: int
    reps: int
    llama_rounds: int
    size_tokens: int
    threads: int
    switch_only: bool = False  # seed + switch phases only (for iterating on the switch path)
    forks: int = 8  # new sessions forked in phase 5
    forks_only: bool = False


FULL = PoolPlan("full", 4096, 92, 3, 2, 1024, 2)
QUICK = PoolPlan("quick", 512, 32, 1, 1, 256, 2, forks=3)


@dataclass
class PoolResults(RunResults):
    """Every phase's figures; written as bench/out/pool.json."""

    config: dict[str, Any] = field(default_factory=dict)
    budgets: dict[str, int] = field(default_factory=dict)
    cold_turns: list[dict[str, float]] = field(default_factory=list)
    turns: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    pool_stats: dict[str, dict[str, Any]] = field(default_factory=dict)
    restart: dict[str, dict[str, float]] = field(default_factory=dict)
    forks: list[float] = field(default_factory=list)
    sizes: dict[str, dict[str, float]] = field(default_factory=dict)
    fork_sessions: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)


# -- prompts and turns ---------------------------------------------------------------------------------
def intro(name: str) -> str:
    return (
        f"You are the coding assistant of workspace {name}. Project {name} is a Python runtime; answer with "
        f"short, correct edits. Workspace {name}'s source follows, one file after another.\n\n"
    )


class Prompts:
    def __init__(self, tokenize: Any, plan: PoolPlan) -> None:
        self.prefixes = {n: chatml_prefix(tokenize, plan.prefix_tokens, intro=intro(n)) for n in NAMES}
        self._tokenize = tokenize
        self._n = plan.suffix_tokens
        self._variant = 0

    def suffix(self) -> str:
        """A new suffix of exactly n tokens (a variant that cannot be cut to n tokens is skipped)."""
        for _ in range(16):
            self._variant += 1
            try:
                return chatml_suffix(self._tokenize, self._n, self._variant)
            except ValueError:
                continue
        raise ValueError(f"no suffix variant has exactly {self._n} tokens")


def pool_turn(pool: SessionPool, name: str, prefix: str, suffix: str) -> dict[str, float]:
    """A turn on workspace name, its lease (evict + restore when it is not live) included in the TTFT."""
    t0 = now()
    with pool.session(name) as session:
        lease = now() - t0
        turn = session_turn(session, (("prefix", prefix),), suffix)
    return {"ensure": turn.ensure_s, "suffix": turn.suffix_s, "first": turn.first_s, "reused": turn.reused,
            "lease": lease, "ttft": lease + turn.ttft}  # fmt: skip


def llama_row(llm: Any, prompt: str) -> dict[str, float]:
    return {"ttft": llama_turn(llm, prompt)}


# -- phases --------------------------------------------------------------------------------------------
def seed(plan: PoolPlan, config: Config, prompts: Prompts, root: Path, results: PoolResults) -> Path:
    """Cold turns on A, B, C in one pool, then close it: the store holds their snapshots."""
    store = root / "seed"
    with SessionPool(None, config, store_dir=store) as pool:
        for name in NAMES:
            log(f"seed: cold prefill of {name} ({plan.prefix_tokens} tokens)")
            turn = pool_turn(pool, name, prompts.prefixes[name], prompts.suffix())
            results.cold_turns.append(turn)
        results.budgets = {f"fits {n}": pool.budget_for(n) for n in (1, 2, 3)}
        results.config["session_kv_bytes"] = pool.session_kv_bytes
        results.config["transfer_headroom"] = pool.transfer_headroom
    return store


def switch(plan: PoolPlan, config: Config, prompts: Prompts, root: Path, store: Path, results: PoolResults) -> None:
    """Interleaved rounds A,B,C per pool; each pool opens on its own copy of the seeded store."""
    pools: dict[str, SessionPool] = {}
    variants = {label: (budget, True) for label, budget in results.budgets.items()}
    variants[FROM_DISK] = (results.budgets["fits 1"], False)
    for label, (budget, keep) in variants.items():
        copy = root / label.replace(" ", "-").replace(",", "")
        shutil.copytree(store, copy)
        pools[label] = SessionPool(None, config, store_dir=copy, memory_budget_bytes=budget, keep_written_states=keep)
    try:
        for label, pool in pools.items():  # warm-up round: restores everything once, reaches steady state
            log(f"switch: warm-up round for pool {label}")
            for name in NAMES:
                pool_turn(pool, name, prompts.prefixes[name], prompts.suffix())
        labels = list(pools)
        for rep in range(plan.reps):
            for label in labels if rep % 2 == 0 else labels[::-1]:
                for i, name in enumerate(NAMES):
                    if label == FROM_DISK:  # think time: the previous workspace's state reaches the disk
                        pools[label].checkpoint(NAMES[i - 1])
                    turn = pool_turn(pools[label], name, prompts.prefixes[name], prompts.suffix())
                    results.turns.setdefault(f"pool, {label}", []).append(turn)
                    ms = turn["ttft"] * 1e3, turn["lease"] * 1e3
                    log(f"switch rep {rep} pool {label} {name}: ttft {ms[0]:.0f} ms (lease {ms[1]:.0f})")
        fork(pools["fits 3"], results)
        for label, pool in pools.items():
            results.pool_stats[label] = _plain(asdict(pool.stats()))
    finally:
        for pool in pools.values():
            pool.close()
    if not plan.switch_only:
        llama(plan, config, prompts, results)


def fork(pool: SessionPool, results: PoolResults) -> None:
    """Fork the live workspace A (export + import into a reused or new context) vs re-prefilling it."""
    for i in range(3):
        t0 = now()
        pool.fork("A", f"A-fork-{i}")
        results.forks.append(now() - t0)
        pool.drop(f"A-fork-{i}")
    log(f"fork of A: {min(results.forks) * 1e3:.0f} ms (best of 3)")


def llama(plan: PoolPlan, config: Config, prompts: Prompts, results: PoolResults) -> None:
    llm = open_llama(str(default_model_path()), config)
    try:
        same = prompts.prefixes["A"]
        llama_row(llm, same + prompts.suffix())  # warm-up, then the same workspace again: its warm turn
        results.turns.setdefault("Llama, same workspace", []).append(llama_row(llm, same + prompts.suffix()))
        for rnd in range(plan.llama_rounds):
            for name in NAMES:
                turn = llama_row(llm, prompts.prefixes[name] + prompts.suffix())
                results.turns.setdefault("Llama, one context", []).append(turn)
                log(f"llama round {rnd} {name}: ttft {turn['ttft'] * 1e3:.0f} ms")
    finally:
        llm.close()


RESTART_CHILD = """
import sys, time
t_start = float(sys.argv[1])
from llamanode import Config, DecodeConfig, SessionPool
store, prefix_file, suffix_file, ctx, threads = sys.argv[2:7]
prefix, suffix = open(prefix_file).read(), open(suffix_file).read()
t_import = time.time()
with SessionPool(None, Config(num_ctx=int(ctx), num_threads=int(threads)), store_dir=store) as pool:
    t_open = time.time()
    with pool.session("A") as s:
        t_lease = time.time()
        status = s.ensure_prefix(s.prefix((("prefix", prefix),)))
        t_prefix = time.time()
        s.prefill_suffix(s.suffix(suffix))
        stream = s.decode(DecodeConfig(max_tokens=1))
        next(stream)
        t_first = time.time()
        for _ in stream:
            pass
        print(t_import - t_start, t_open - t_start, t_lease - t_start, t_prefix - t_start, t_first - t_start,
              status.reused_tokens, flush=True)
"""


def restart(plan: PoolPlan, config: Config, prompts: Prompts, root: Path, store: Path, results: PoolResults) -> None:
    """A new process to first token on workspace A: restored from a copy of the seed store vs an empty store."""
    prefix_file, suffix_file = root / "prefix.txt", root / "suffix.txt"
    prefix_file.write_text(prompts.prefixes["A"])
    suffix_file.write_text(prompts.suffix())
    for kind in ("restored", "cold", "restored", "cold")[: 4 if plan.reps > 1 else 2]:
        target = root / f"restart-{kind}-{time.monotonic_ns()}"
        if kind == "restored":
            shutil.copytree(store, target)
        args = [str(target), str(prefix_file), str(suffix_file), str(config.num_ctx), str(config.threads)]
        t0 = time.time()
        out = subprocess.run(
            [sys.executable, "-c", RESTART_CHILD, str(t0), *args], capture_output=True, text=True, check=True
        ).stdout.split()
        imported, opened, leased, prefixed, first = (float(x) for x in out[:5])
        row = {
            "spawn_to_first_token": first,
            "import": imported,
            "pool_open": opened - imported,
            "lease": leased - opened,
            "ensure_prefix": prefixed - leased,
            "warm_prefix": prefixed - opened,  # restore (lease) or re-prefill (ensure_prefix)
            "suffix_and_first": first - prefixed,
            "reused": float(out[5]),
        }
        log(f"restart {kind}: first token {first:.2f} s after spawn, prefix warm after {row['warm_prefix']:.2f} s")
        previous = results.restart.get(kind)
        if previous is None or row["spawn_to_first_token"] < previous["spawn_to_first_token"]:
            results.restart[kind] = row  # best of the runs: the machine is shared
        shutil.rmtree(target)


def sizes(plan: PoolPlan, root: Path, store: Path, results: PoolResults) -> None:
    """Bytes per token of snapshots: the seeded f16 ones, and f16 vs q8_0 (flash attention) on a shorter prefix."""
    from llamanode.store import SnapshotStore

    with SnapshotStore(store, exclusive=False) as s:
        seeded = s.entries()
    results.sizes["f16, seeded"] = _size_row(sum(e.size_bytes for e in seeded), sum(e.n_tokens for e in seeded))
    base = Config(num_ctx=plan.size_tokens + 256, flash_attn=True, num_threads=plan.threads)
    for label, cfg in (("f16, flash attn", base), ("q8_0, flash attn", base.replace(kv_cache_type="q8_0"))):
        with SessionPool(None, cfg, store_dir=root / f"size-{label[:4]}") as pool:
            text = chatml_prefix(pool.tokenize, plan.size_tokens, intro=intro("S"))
            with pool.session("S") as session:
                session.ensure_prefix(session.prefix((("prefix", text),)))
            pool.checkpoint("S")
            (info,) = pool.workspaces()
            results.sizes[label] = _size_row(info.snapshot_bytes, info.resident_tokens)
            log(f"size {label}: {results.sizes[label]['bytes_per_token']:.0f} B/token")


def _size_row(size: int, n_tokens: int) -> dict[str, float]:
    return {"bytes": float(size), "tokens": float(n_tokens), "bytes_per_token": size / max(1, n_tokens)}


def _plain(data: dict[str, Any]) -> dict[str, Any]:
    data["recent_misses"] = [dict(m) for m in data["recent_misses"]]
    return data


def run(plan: PoolPlan) -> PoolResults:
    config = Config(num_ctx=plan.prefix_tokens + 512, num_threads=plan.threads)
    results = PoolResults(plan=asdict(plan), machine=machine_info())
    results.config = {"num_ctx": config.num_ctx, "threads": config.threads, "kv": config.kv_shaping()}
    with tempfile.TemporaryDirectory(prefix="bench-pool-", dir=os.environ.get("BENCH_TMP")) as tmp:
        root = Path(tmp)
        with open_session(None, Config(num_ctx=256)) as probe:  # open all along: Prompts tokenizes with it
            prompts = Prompts(probe.tokenize, plan)
            if not plan.forks_only:
                store = seed(plan, config, prompts, root, results)
                switch(plan, config, prompts, root, store, results)
            if not plan.switch_only and not plan.forks_only:
                restart(plan, config, prompts, root, store, results)
                sizes(plan, root, store, results)
            if not plan.switch_only:
                log(f"forks: {plan.forks} new sessions forked from one {plan.prefix_tokens}-token workspace")
                results.fork_sessions = fork_sessions(config, prompts.prefixes["A"], prompts.suffix, plan.forks, root)
    if not plan.forks_only:
        evaluate(results)
    results.finish()
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="llamanode workspace-pool benchmark (issue 3)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 512-token prefixes, 1 repetition")
    parser.add_argument("--out", type=Path, default=None, help="JSON results (default bench/out/pool[-quick].json)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: 2)")
    parser.add_argument("--switch-only", action="store_true", help="only seed and switch (no Llama, restart, size)")
    parser.add_argument("--forks-only", action="store_true", help="only phase 5: new sessions forked from one")
    parser.add_argument("--forks", type=int, default=None, help="new sessions forked in phase 5 (default: 8, quick 3)")
    args = parser.parse_args(argv)
    plan = dataclasses.replace(QUICK if args.quick else FULL, switch_only=args.switch_only, forks_only=args.forks_only)
    if args.forks:
        plan = dataclasses.replace(plan, forks=args.forks)
    if args.threads:
        plan = dataclasses.replace(plan, threads=args.threads)
    name = "pool-forks" if args.forks_only else "pool"
    out = args.out or OUT_DIR / f"{name}{'-quick' if args.quick else ''}.json"
    results = run(plan)
    write_json(out, asdict(results))
    text = fork_sessions_table(results.fork_sessions) if plan.forks_only else report(results)
    out.with_suffix(".md").write_text(text, encoding="utf-8")
    print(text)
    log(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
