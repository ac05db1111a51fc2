"""`llamanode snapshot verify`: check every stored snapshot (checksums, sizes, token chains; identity too
with --identity), and optionally remove the damaged ones."""

from __future__ import annotations

import argparse
import json
from contextlib import closing
from dataclasses import asdict

from ..registry import load_backend
from ..snapshot import SnapshotIdentity
from ..store import SnapshotStore
from .common import add_model_options, config_from_args
from .workspaces import add_store_option


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    verify = sub.add_parser("verify", help="check every stored snapshot; exit 1 if any is bad")
    add_store_option(verify)
    add_model_options(verify)
    verify.add_argument(
        "--identity", action="store_true", help="also refuse snapshots of another model/build/KV config than these"
    )
    verify.add_argument("--remove", action="store_true", help="remove corrupt or missing snapshots")
    verify.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    expected = _identity(args) if args.identity else None
    with SnapshotStore(args.store, exclusive=args.remove) as store:
        results = store.verify_all(expected, remove_bad=args.remove)
    bad = [r for r in results if r.status != "ok"]
    if args.json:
        print(json.dumps([asdict(r) for r in results], indent=2))
    else:
        for r in results:
            print(f"{r.status:<8} {r.workspace_id:<32} {r.size_bytes:>12} {r.file}  {r.detail}".rstrip())
        removed = " (corrupt and missing ones removed)" if args.remove and bad else ""
        print(f"{len(results) - len(bad)} ok, {len(bad)} bad of {len(results)} snapshot(s){removed}")
    return 1 if bad else 0


def _identity(args: argparse.Namespace) -> SnapshotIdentity:
    config = config_from_args(args)
    with closing(load_backend(args.model, config)) as backend:
        return SnapshotIdentity.of(backend.identity(config), config)
