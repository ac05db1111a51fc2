"""bench.pool's fork phase: N new sessions started from one long-lived workspace, as the server starts a new
session key (SessionPool.fork_nearest), against the cold prefill each would cost without it.

Per fork: the time of fork_nearest (tokenize, route, export from the live base, import) and of the forked
session's first turn (its own suffix, first token); what it adds to live memory (pool.stats().live_bytes:
each fork holds a full context of its own, the shared prefix included) and to disk (its snapshot, written by
checkpoint(): the shared prefix is stored again in each). No memory budget: every fork stays live.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from llamanode import Config, KVSession, SessionPool

from .common import md_table, now, ratio, session_turn, stats

__all__ = ["fork_sessions", "fork_sessions_table"]

MIN_SHARED = 256  # the server's --fork-min-tokens default


def _turn(session: KVSession, prefix: str, suffix: str) -> tuple[float, int]:
    """(seconds to the first token, prefix tokens reused)."""
    turn = session_turn(session, (("prefix", prefix),), suffix)
    return turn.ttft, turn.reused


def fork_sessions(config: Config, prefix: str, suffix: Callable[[], str], n: int, root: Path) -> dict[str, Any]:
    """Fork n new sessions from a live workspace holding prefix; measure each (see the module docstring)."""
    with SessionPool(None, config, store_dir=root / "fork-sessions") as pool:
        with pool.session("base") as session:
            cold_s, _ = _turn(session, prefix, suffix())
            prefix_tokens = session.explain_context().prefix_tokens
        live_before = pool.stats().live_bytes
        forks: list[float] = []
        turns: list[float] = []
        reused: list[int] = []
        for i in range(n):
            text = suffix()
            t0 = now()
            origin = pool.fork_nearest(f"fork-{i}", pool.tokenize(prefix + text), MIN_SHARED)
            forks.append(now() - t0)
            assert origin is not None and origin.source in ("base", f"fork-{i - 1}")
            with pool.session(f"fork-{i}") as session:
                first_s, n_reused = _turn(session, prefix, text)
            turns.append(first_s)
            reused.append(n_reused)
        live_after = pool.stats().live_bytes
        for i in range(n):
            pool.checkpoint(f"fork-{i}")
        snapshots = [w.snapshot_bytes for w in pool.workspaces() if w.id.startswith("fork-")]
        return {
            "n": n,
            "prefix_tokens": prefix_tokens,
            "cold_first_token_s": cold_s,
            "fork_s": stats(forks).median,
            "fork_first_token_s": stats(turns).median,
            "reused_tokens": stats([float(r) for r in reused]).median,
            "live_bytes_per_fork": (live_after - live_before) / n,
            "session_kv_bytes": pool.session_kv_bytes,
            "snapshot_bytes_per_fork": sum(snapshots) / max(1, len(snapshots)),
            "forks_counted": pool.stats().forks,
        }


def fork_sessions_table(r: dict[str, Any]) -> str:
    headers = ["forks", "prefix tokens", "fork ms", "forked 1st token ms", "cold 1st token ms", "x faster"]
    headers += ["live MB per fork", "snapshot MB per fork"]
    row = [
        r["n"], r["prefix_tokens"], r["fork_s"] * 1e3, r["fork_first_token_s"] * 1e3, r["cold_first_token_s"] * 1e3,
        ratio(r["cold_first_token_s"], r["fork_s"] + r["fork_first_token_s"]),
        r["live_bytes_per_fork"] / 1e6, r["snapshot_bytes_per_fork"] / 1e6,
    ]  # fmt: skip
    return md_table(headers, [row])
