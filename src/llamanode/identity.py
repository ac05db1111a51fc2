"""What a KV state belongs to, as a plain value, and the one check that a stored state fits a context."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from .backends.base import BackendIdentity
from .config import Config
from .errors import SnapshotMismatchError
from .manifest import ContextManifest, byte_hash
from .session import SessionState

__all__ = ["SnapshotIdentity", "require_identity"]


@dataclass(frozen=True)
class SnapshotIdentity:
    """What a state must match to be loaded: the build, the model, the KV-shaping config."""

    build_id: str
    model_digest: str
    tokenizer_digest: str
    runtime_digest: str
    kv_config: Mapping[str, Any]  # kv_cache_type, flash_attn, num_gpu_layers, tensor_split, n_ctx

    def key(self) -> str:
        """A digest of every field: equal keys, interchangeable snapshots."""
        return byte_hash(json.dumps(asdict(self), sort_keys=True, default=str))

    @classmethod
    def of(cls, backend: BackendIdentity, config: Config) -> SnapshotIdentity:
        """The identity of states made by a context of this backend identity and config."""
        return cls(
            build_id=backend.build_id,
            model_digest=backend.model_digest,
            tokenizer_digest=backend.tokenizer_digest,
            runtime_digest=backend.runtime_digest,
            kv_config={**config.kv_shaping(), "n_ctx": backend.n_ctx},
        )

    @classmethod
    def of_state(cls, state: SessionState, kv_config: Mapping[str, Any]) -> SnapshotIdentity:
        """The identity a state claims. A state carries no KV config of its own (its runtime digest
        covers the KV-shaping fields), so the caller says which one it was made or stored under."""
        return cls(state.build_id, state.model_digest, state.manifest.tokenizer_digest, state.runtime_digest, kv_config)


def require_identity(stored: SnapshotIdentity, manifest: ContextManifest, expected: SnapshotIdentity) -> None:
    """Raise SnapshotMismatchError naming the first field of a stored state that differs from expected:
    build, model, tokenizer, KV-shaping config, runtime, then the digests in the state's manifest."""
    for name in ("build_id", "model_digest", "tokenizer_digest"):
        _same(name, getattr(stored, name), getattr(expected, name))
    for key in sorted(set(stored.kv_config) | set(expected.kv_config)):
        _same(f"kv_config.{key}", stored.kv_config.get(key), expected.kv_config.get(key))
    _same("runtime_digest", stored.runtime_digest, expected.runtime_digest)
    for name in ("model_digest", "tokenizer_digest", "runtime_digest"):
        _same(f"manifest.{name}", getattr(manifest, name), getattr(expected, name))


def _same(field: str, stored: object, mine: object) -> None:
    if stored != mine:
        raise SnapshotMismatchError(field, str(stored), str(mine))
