"""Workspace-pool benchmark (issue 3): switching between workspaces, restart to first token, snapshot size.

    .venv/bin/python bench/bench_pool.py            # the full run: 4k-token prefixes (about 10 min on 2 cores)
    .venv/bin/python bench/bench_pool.py --quick    # a smoke run: 512-token prefixes, 1 repetition

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

Writes bench/out/pool[-quick].json and .md.
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

from llamanode import Config, DecodeConfig, KVSession, SessionPool, default_model_path, open_session

from .common import OUT_DIR, log, machine_info, md_table, now, ratio, stats, verdict, write_json
from .pool_forks import fork_sessions, fork_sessions_table
from .prompts import chatml_prefix, chatml_suffix

TARGETS = {"switch_vs_warm_max": 1.5, "switch_vs_cold_max": 0.05, "restart_warm_vs_prefill_min": 20.0}
NAMES = ("A", "B", "C")
# fits 1 without kept states, the evicted state written before the next turn: every switch reads and
# verifies a snapshot file (an agent that pauses between turns; the pool's slowest switch path)
FROM_DISK = "fits 1, from disk"


@dataclass(frozen=True)
class Plan:
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


FULL = Plan("full", 4096, 92, 3, 2, 1024, 2)
QUICK = Plan("quick", 512, 32, 1, 1, 256, 2, forks=3)


@dataclass
class Results:
    plan: dict[str, Any]
    machine: dict[str, Any]
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
    def __init__(self, tokenize: Any, plan: Plan) -> None:
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


def session_turn(session: KVSession, prefix: str, suffix: str) -> dict[str, float]:
    t0 = now()
    status = session.ensure_prefix(session.prefix((("prefix", prefix),)))
    t1 = now()
    session.prefill_suffix(session.suffix(suffix))
    t2 = now()
    stream = session.decode(DecodeConfig(max_tokens=1))
    next(stream)
    t3 = now()
    for _ in stream:
        pass
    return {"ensure": t1 - t0, "suffix": t2 - t1, "first": t3 - t2, "reused": status.reused_tokens}


def pool_turn(pool: SessionPool, name: str, prefix: str, suffix: str) -> dict[str, float]:
    t0 = now()
    with pool.session(name) as session:
        lease = now() - t0
        turn = session_turn(session, prefix, suffix)
    turn.update(lease=lease, ttft=lease + turn["ensure"] + turn["suffix"] + turn["first"])
    return turn


def llama_turn(llm: Any, prompt: str) -> dict[str, float]:
    t0 = now()
    llm.create_completion(prompt, max_tokens=1, temperature=0.0)
    return {"ttft": now() - t0}


# -- phases --------------------------------------------------------------------------------------------
def seed(plan: Plan, config: Config, prompts: Prompts, root: Path, results: Results) -> Path:
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


def switch(plan: Plan, config: Config, prompts: Prompts, root: Path, store: Path, results: Results) -> None:
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


def fork(pool: SessionPool, results: Results) -> None:
    """Fork the live workspace A (export + import into a reused or new context) vs re-prefilling it."""
    for i in range(3):
        t0 = now()
        pool.fork("A", f"A-fork-{i}")
        results.forks.append(now() - t0)
        pool.drop(f"A-fork-{i}")
    log(f"fork of A: {min(results.forks) * 1e3:.0f} ms (best of 3)")


def llama(plan: Plan, config: Config, prompts: Prompts, results: Results) -> None:
    from llama_cpp import Llama

    llm = Llama(
        model_path=str(default_model_path()),
        n_ctx=config.num_ctx,
        n_batch=config.num_batch,
        n_ubatch=config.num_ubatch,
        n_threads=config.threads,
        n_threads_batch=config.threads,
        flash_attn=config.flash_attn,
        verbose=False,
    )
    try:
        same = prompts.prefixes["A"]
        llama_turn(llm, same + prompts.suffix())  # warm-up, then the same workspace again: its warm turn
        results.turns.setdefault("Llama, same workspace", []).append(llama_turn(llm, same + prompts.suffix()))
        for rnd in range(plan.llama_rounds):
            for name in NAMES:
                turn = llama_turn(llm, prompts.prefixes[name] + prompts.suffix())
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


def restart(plan: Plan, config: Config, prompts: Prompts, root: Path, store: Path, results: Results) -> None:
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


def sizes(plan: Plan, root: Path, store: Path, results: Results) -> None:
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


# -- evaluation and report --------------------------------------------------------------------------------
def evaluate(results: Results) -> None:
    med = {label: stats([t["ttft"] for t in turns]).median for label, turns in results.turns.items()}
    cold = stats([t["ensure"] + t["suffix"] + t["first"] for t in results.cold_turns]).median
    warm = med.get("pool, fits 3", float("nan"))
    s = results.summary
    s["cold_turn_s"], s["warm_turn_s"] = cold, warm
    for label in ("fits 1", "fits 2"):
        switch = med.get(f"pool, {label}", float("nan"))
        s[f"switch_{label}_s"] = switch
        s[f"switch_{label}_vs_warm"] = ratio(switch, warm)
        s[f"switch_{label}_vs_cold"] = ratio(switch, cold)
    s["fork_s"] = stats(results.forks).median
    s["prefix_prefill_s"] = stats([t["ensure"] for t in results.cold_turns]).median
    s["fork_vs_prefill"] = ratio(s["prefix_prefill_s"], s["fork_s"])
    s["llama_switch_s"] = med.get("Llama, one context", float("nan"))
    s["llama_same_workspace_s"] = med.get("Llama, same workspace", float("nan"))
    restored, cold_restart = results.restart.get("restored"), results.restart.get("cold")
    if restored and cold_restart:
        s["restart_spawn_speedup"] = ratio(cold_restart["spawn_to_first_token"], restored["spawn_to_first_token"])
        s["restart_warm_vs_prefill"] = ratio(cold_restart["warm_prefix"], restored["warm_prefix"])
    disk = med.get(f"pool, {FROM_DISK}", float("nan"))
    s["switch_from_disk_s"], s["switch_from_disk_vs_warm"] = disk, ratio(disk, warm)
    worst = max(s["switch_fits 1_vs_warm"], s["switch_fits 2_vs_warm"])
    s["verdicts"] = {
        "switch <= 1.5x warm": verdict(worst <= TARGETS["switch_vs_warm_max"]),
        "switch <= 0.05x cold": verdict(max(s["switch_fits 1_vs_cold"], s["switch_fits 2_vs_cold"]) <= 0.05),
        "restart-to-warm >= 20x re-prefill": (
            verdict(s["restart_warm_vs_prefill"] >= 20) if "restart_warm_vs_prefill" in s else "not run"
        ),
    }


def report(results: Results) -> str:
    plan, machine = results.plan, results.machine
    budgets = ", ".join(f"{k} = {v / 1e6:.0f} MB" for k, v in results.budgets.items())
    lines = [
        f"# Workspace pool benchmark ({plan['name']}): {plan['prefix_tokens']}-token prefixes,"
        f" {plan['suffix_tokens']}-token suffixes, {plan['threads']} threads",
        "",
        f"Machine: {machine['cpu']}, {machine['nproc']} cores, load {machine['loadavg']} -> "
        f"{machine.get('loadavg_end')}, commit {machine['git_commit']}.",
        f"Session KV {results.config['session_kv_bytes'] / 1e6:.1f} MB (n_ctx {results.config['num_ctx']}),"
        f" transfer headroom {results.config['transfer_headroom'] / 1e6:.0f} MB; memory budgets: {budgets}.",
        "",
        "## Switching workspaces A,B,C,A,B,C (time to first token, a new suffix every turn)",
        "",
        _switch_table(results),
        "",
        "Where the switch time goes (pool.stats().transfer_seconds over the whole run, warm-up round included):",
        "",
        _transfer_table(results),
        "",
        "## Process restart to first token (workspace A)",
        "",
        _restart_table(results),
        "",
        "## Fork (live workspace A into a new workspace)",
        "",
        _fork_table(results.summary),
        "",
        f"## {results.plan['forks']} new sessions forked from one workspace (fork_nearest; no memory budget)",
        "",
        fork_sessions_table(results.fork_sessions) if results.fork_sessions else "not run",
        "",
        "## Snapshot size",
        "",
        md_table(
            ["KV", "tokens", "MB", "bytes/token"],
            [[k, int(v["tokens"]), v["bytes"] / 1e6, v["bytes_per_token"]] for k, v in results.sizes.items()],
        ),
        "",
        "## Targets",
        "",
        _target_table(results.summary),
    ]
    return "\n".join(lines) + "\n"


def _switch_table(results: Results) -> str:
    s = results.summary
    warm, cold = s["warm_turn_s"], s["cold_turn_s"]
    rows: list[list[object]] = []
    for label, turns in results.turns.items():
        ttft = stats([t["ttft"] for t in turns])
        lease = stats([t["lease"] for t in turns]).median * 1e3 if "lease" in turns[0] else float("nan")
        rows.append([label, ttft.n, ttft.median * 1e3, ttft.p90 * 1e3, lease])
        rows[-1] += [ratio(ttft.median, warm), ratio(ttft.median, cold)]
    n_cold = len(results.cold_turns)
    rows.append(["cold turn (prefix prefill + suffix)", n_cold, cold * 1e3, "", "", ratio(cold, warm), 1.0])
    headers = ["system", "n", "median ms", "p90 ms", "lease ms (evict + restore)", "x warm", "x cold"]
    return md_table(headers, rows)


def _transfer_table(results: Results) -> str:
    rows: list[list[object]] = []
    for label, st in results.pool_stats.items():
        sec = st.get("transfer_seconds", {})
        disk = st["restores"] - st["restores_from_memory"]
        rows.append([
            label, st["evictions"], st["restores_from_memory"], disk, st["snapshots_written"],
            st.get("writes_cancelled", 0),
            _per(sec.get("export", 0.0), st["evictions"]), _per(sec.get("read", 0.0), disk),
            _per(sec.get("import", 0.0), st["restores"]), sec.get("wait", 0.0) * 1e3,
            _per(sec.get("write", 0.0), st["snapshots_written"]),
        ])  # fmt: skip
    headers = ["pool", "evictions", "restores from memory", "from disk", "written", "writes cancelled"]
    headers += ["export ms each", "read+verify ms each", "import ms each", "waited ms total", "write ms each"]
    return md_table(headers, rows)


def _per(seconds: float, n: int) -> float:
    return seconds * 1e3 / n if n else float("nan")


def _restart_table(results: Results) -> str:
    rows: list[list[object]] = []
    for kind in ("restored", "cold"):
        r = results.restart.get(kind)
        if r:
            rows.append([kind, r["spawn_to_first_token"], r["import"], r["pool_open"], r["warm_prefix"],
                         r["suffix_and_first"], int(r["reused"])])  # fmt: skip
    headers = ["start", "spawn to 1st token s", "import s", "pool open s", "prefix warm s", "suffix + 1st s", "reused"]
    return md_table(headers, rows)


def _fork_table(s: dict[str, Any]) -> str:
    row = [s["fork_s"] * 1e3, s["prefix_prefill_s"] * 1e3, f"{s['fork_vs_prefill']:.0f}x"]
    return md_table(["fork median ms", "prefix prefill median ms", "fork is faster by"], [row])


def _target_table(s: dict[str, Any]) -> str:
    v = s["verdicts"]
    switch_warm = f"fits 1: {s['switch_fits 1_vs_warm']:.2f}x, fits 2: {s['switch_fits 2_vs_warm']:.2f}x"
    switch_cold = f"fits 1: {s['switch_fits 1_vs_cold']:.3f}x, fits 2: {s['switch_fits 2_vs_cold']:.3f}x"
    restart = (
        f"prefix warm {s.get('restart_warm_vs_prefill', float('nan')):.1f}x faster"
        f" (spawn to first token: {s.get('restart_spawn_speedup', float('nan')):.1f}x)"
    )
    return md_table(
        ["target", "measured", "verdict"],
        [
            ["switch <= 1.5x in-memory warm turn", switch_warm, v["switch <= 1.5x warm"]],
            [f"(info) {FROM_DISK}", f"{s['switch_from_disk_vs_warm']:.2f}x warm", ""],
            ["switch <= 0.05x cold turn", switch_cold, v["switch <= 0.05x cold"]],
            ["restart-to-warm >= 20x faster than re-prefill", restart, v["restart-to-warm >= 20x re-prefill"]],
        ],
    )


def run(plan: Plan) -> Results:
    config = Config(num_ctx=plan.prefix_tokens + 512, num_threads=plan.threads)
    results = Results(plan=asdict(plan), machine=machine_info())
    results.config = {"num_ctx": config.num_ctx, "threads": config.threads, "kv": config.kv_shaping()}
    with tempfile.TemporaryDirectory(prefix="bench_pool-", dir=os.environ.get("BENCH_TMP")) as tmp:
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
    results.machine["loadavg_end"] = list(os.getloadavg())
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
