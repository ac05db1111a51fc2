"""`llamanode workspaces`: list, summarise or drop the workspaces whose snapshots are in the store."""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from dataclasses import asdict
from typing import Any

from ..store import SnapshotEntry, SnapshotStore, default_store_dir


def add_store_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store", default=None, help=f"snapshot store directory (default: $LLAMANODE_HOME or {default_store_dir()})"
    )


def configure(parser: argparse.ArgumentParser) -> None:
    add_store_option(parser)
    parser.add_argument("--json", action="store_true", help="print JSON")
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    sub.add_parser("list", help="one line per stored workspace (the default)")
    sub.add_parser("stats", help="totals: workspaces, tokens, bytes, models")
    drop = sub.add_parser("drop", help="delete workspaces' snapshots (not while a server holds the store)")
    drop.add_argument("workspace_ids", nargs="+", metavar="ID")


def run(args: argparse.Namespace) -> int:
    action = args.action or "list"
    if action == "drop":
        return _drop(args)
    with SnapshotStore(args.store, exclusive=False) as store:
        entries = store.entries()
        root = str(store.root)
    data: Any = _stats(entries, root) if action == "stats" else [_row(e) for e in entries]
    if args.json:
        print(json.dumps(data, indent=2))
    elif action == "stats":
        for key, value in data.items():
            print(f"{key:>16}: {value}")
    else:
        _print_table(data, root)
    return 0


def _row(entry: SnapshotEntry) -> dict[str, Any]:
    row = asdict(entry)
    del row["tokens"], row["chain"]
    row["kv_config"] = json.loads(entry.kv_config)
    return row


def _stats(entries: list[SnapshotEntry], root: str) -> dict[str, Any]:
    models = Counter(e.model_digest[:12] for e in entries)
    return {
        "store": root,
        "workspaces": len(entries),
        "tokens": sum(e.n_tokens for e in entries),
        "snapshot_bytes": sum(e.size_bytes for e in entries),
        "bytes_per_token": round(sum(e.size_bytes for e in entries) / max(1, sum(e.n_tokens for e in entries)), 1),
        "models": dict(models),
        "oldest_use": _when(min((e.last_used for e in entries), default=0.0)),
    }


def _print_table(rows: list[dict[str, Any]], root: str) -> None:
    print(f"{len(rows)} workspace(s) in {root}")
    if not rows:
        return
    print(f"{'ID':<32} {'TOKENS':>7} {'BYTES':>12} {'LAST USED':<19} {'MODEL':<12} KV")
    for r in rows:
        kv = r["kv_config"]
        print(
            f"{r['workspace_id']:<32} {r['n_tokens']:>7} {r['size_bytes']:>12} {_when(r['last_used']):<19}"
            f" {r['model_digest'][:12]:<12} {kv.get('kv_cache_type')} fa={kv.get('flash_attn')} n_ctx={kv.get('n_ctx')}"
        )


def _drop(args: argparse.Namespace) -> int:
    missing = []
    with SnapshotStore(args.store) as store:
        for workspace_id in args.workspace_ids:
            if not store.remove(workspace_id):
                missing.append(workspace_id)
    for workspace_id in missing:
        print(f"no workspace {workspace_id!r}")
    print(f"dropped {len(args.workspace_ids) - len(missing)} workspace(s)")
    return 1 if missing else 0


def _when(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp)) if timestamp else "-"
