"""Routing by shared prefix: which workspace (live, evicted, or stored under this pool's identity) holds
the longest reusable prefix of a token sequence."""

from __future__ import annotations

from collections.abc import Sequence

from ..prefix import common_prefix_len
from ..snapshot import TOKEN_BLOCK, token_chain
from .workspace import Workspace

__all__ = ["longest_prefix", "shared_prefix"]

Candidate = tuple[Workspace, bool]  # a workspace, and whether it is live (a tie goes to a live one)


def longest_prefix(
    tokens: Sequence[int], candidates: Sequence[Candidate], identity_key: str, min_tokens: int
) -> tuple[str | None, int]:
    """(workspace id, shared reusable tokens) of the best candidate; (None, 0) below min_tokens."""
    query = tuple(tokens)
    query_chain = token_chain(query)
    best: tuple[int, bool, int, str] | None = None
    for ws, live in candidates:
        mine, chain, stable = _routing_view(ws, identity_key)
        n = min(_chained_prefix_len(query, query_chain, mine, chain), stable)
        rank = (n, live, ws.tick, ws.id)
        if n >= min_tokens and (best is None or rank[:3] > best[:3]):
            best = rank
    return (best[3], best[0]) if best is not None else (None, 0)


def shared_prefix(tokens: Sequence[int], ws: Workspace, identity_key: str) -> int:
    """Reusable tokens ws shares with tokens (what longest_prefix ranks it by)."""
    mine, chain, stable = _routing_view(ws, identity_key)
    query = tuple(tokens)
    return min(_chained_prefix_len(query, token_chain(query), mine, chain), stable)


def _routing_view(ws: Workspace, identity_key: str) -> tuple[tuple[int, ...], tuple[str, ...], int]:
    """(tokens, their chain, reusable length): remembered at the last release, else from the snapshot
    index, if the snapshot belongs to this pool's identity."""
    entry = ws.snapshot
    if ws.tokens or entry is None:
        return ws.tokens, ws.chain, ws.stable
    if entry.identity_key != identity_key:
        return (), (), 0
    return entry.tokens, entry.chain, min(entry.stable_len, entry.n_tokens)


def _chained_prefix_len(a: Sequence[int], chain_a: Sequence[str], b: Sequence[int], chain_b: Sequence[str]) -> int:
    """Common prefix length of a and b: whole blocks by their chained hashes, then token by token."""
    full = min(len(a), len(b)) // TOKEN_BLOCK
    k = 0
    while k < full and k < len(chain_a) and k < len(chain_b) and chain_a[k] == chain_b[k]:
        k += 1
    start = k * TOKEN_BLOCK
    end = min(len(a), len(b), start + TOKEN_BLOCK)
    return start + common_prefix_len(a[start:end], b[start:end])
