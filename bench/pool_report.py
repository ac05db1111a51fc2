"""The workspace-pool benchmark's summary against its targets, and its markdown tables."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .common import md_table, ratio, stats, verdict
from .pool_forks import fork_sessions_table

if TYPE_CHECKING:
    from .pool import PoolResults

__all__ = ["FROM_DISK", "TARGETS", "evaluate", "report"]

TARGETS = {"switch_vs_warm_max": 1.5, "switch_vs_cold_max": 0.05, "restart_warm_vs_prefill_min": 20.0}
# fits 1 without kept states, the evicted state written before the next turn: every switch reads and
# verifies a snapshot file (an agent that pauses between turns; the pool's slowest switch path)
FROM_DISK = "fits 1, from disk"


def evaluate(results: PoolResults) -> None:
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


def report(results: PoolResults) -> str:
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


def _switch_table(results: PoolResults) -> str:
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


def _transfer_table(results: PoolResults) -> str:
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


def _restart_table(results: PoolResults) -> str:
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
