"""Resident bookkeeping to and from a SessionState (what snapshots and forks carry): two conversions
kept apart from KVSession so its file holds only the contract and its reuse decisions."""

from __future__ import annotations

from collections.abc import Callable

from .backends.base import BackendIdentity
from .manifest import ContextManifest, byte_hash, hash_token_ids
from .residency import segment_residency, token_byte_offsets
from .resident import Resident
from .session import Divergence, SessionState

__all__ = ["base_manifest", "resident_from_state", "state_from_resident"]


def base_manifest(identity: BackendIdentity) -> ContextManifest:
    """The manifest fields a context fixes (model, tokenizer, runtime, template, BOS), no segments yet."""
    return ContextManifest(
        model_digest=identity.model_digest,
        tokenizer_digest=identity.tokenizer_digest,
        runtime_digest=identity.runtime_digest,
        template_digest=identity.template_digest,
        add_bos=identity.add_bos,
    )


def state_from_resident(r: Resident, kv: bytes, identity: BackendIdentity) -> SessionState:
    """A state of r's complete prefix, or of its unfinished prefill (the caller checked one of them is
    resident), and the context's KV bytes."""
    manifest = r.manifest or r.partial
    assert manifest is not None
    return SessionState(
        kv=kv,
        tokens=tuple(r.tokens),
        prefix_len=r.prefix_len,
        stable_len=r.stable_len,
        generated=r.generated,
        manifest=manifest,
        prefix_text=r.text,
        model_digest=identity.model_digest,
        runtime_digest=identity.runtime_digest,
        build_id=identity.build_id,
        approximate_from=r.approx_from,
        unfinished=r.manifest is None,
    )


def resident_from_state(state: SessionState, token_bytes: Callable[[int], bytes]) -> Resident:
    """The bookkeeping of an imported state; its last divergence says it was restored."""
    r = Resident(
        tokens=list(state.tokens),
        prefix_len=state.prefix_len,
        stable_len=state.stable_len,
        approx_from=state.approximate_from,
        generated=state.generated,
        text=state.prefix_text,
    )
    if state.unfinished:  # reusable token by token under its target's manifest (Resident.partial), never as a prefix
        r.partial = state.manifest
        r.divergence = Divergence("restored", len(state.tokens), None, None, "an unfinished prefill was copied")
        return r
    prefix_tokens = list(state.tokens[: state.prefix_len])
    r.offsets = token_byte_offsets(prefix_tokens, token_bytes, len(r.text), state.manifest.add_bos)
    r.manifest, r.text_hash, r.token_hash = state.manifest, byte_hash(r.text), hash_token_ids(prefix_tokens)
    r.segments = segment_residency(state.manifest, r.offsets, state.prefix_len, state.prefix_len)
    r.divergence = Divergence("restored", state.prefix_len, None, None, "resident state was restored")
    return r
