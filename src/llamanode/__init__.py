"""llamanode: persistent, workspace-scoped KV sessions that keep a coding agent's prefix hot."""

from __future__ import annotations

from .assembler import AssemblerPolicy, Assembly, AssemblyReport, ContextAssembler, SegmentMove, SegmentVolatility
from .backends.base import Backend, ModelInfo
from .backends.llamacpp import register as _register_llamacpp
from .config import ApproxReuse, Config, DecodeConfig
from .errors import (
    ApproximationUnavailableError,
    ConfigError,
    ContextOverflowError,
    GrammarError,
    InvalidInputError,
    LlamaNodeError,
    ManifestMismatchError,
    MemoryBudgetError,
    SessionBusyError,
    SessionClosedError,
    SessionFatalError,
    SessionUnavailableError,
    SnapshotCorruptError,
    SnapshotError,
    SnapshotMismatchError,
    ToolError,
    UnsupportedFeatureError,
)
from .kvsession import KVSession
from .manifest import ContextManifest, ManifestSegment, hash_token_ids
from .manifest import join_segments as _join_segments
from .pool import PoolStats, SessionPool, WorkspaceInfo
from .prewarm import PrewarmHandle
from .registry import embed, embed_available, load_backend, open_session, session_available, set_backend
from .session import (
    ApproximatedSpan,
    Approximation,
    ContextReport,
    DecodeReport,
    DecodeStream,
    Divergence,
    ForkOrigin,
    PrefillProgress,
    PrefixInput,
    PrefixStatus,
    PrewarmReport,
    SegmentResidency,
    Session,
    SessionState,
    StreamChunk,
    SuffixInput,
    SuffixStatus,
    default_model_path,
)

__version__ = "0.1.0"

__all__ = [
    "ApproxReuse",
    "ApproximatedSpan",
    "Approximation",
    "ApproximationUnavailableError",
    "AssemblerPolicy",
    "Assembly",
    "AssemblyReport",
    "Backend",
    "Config",
    "ConfigError",
    "ContextAssembler",
    "ContextManifest",
    "ContextOverflowError",
    "ContextReport",
    "DecodeConfig",
    "DecodeReport",
    "DecodeStream",
    "Divergence",
    "ForkOrigin",
    "GrammarError",
    "InvalidInputError",
    "KVSession",
    "LlamaNodeError",
    "ManifestMismatchError",
    "ManifestSegment",
    "MemoryBudgetError",
    "ModelInfo",
    "PoolStats",
    "PrefillProgress",
    "PrefixInput",
    "PrefixStatus",
    "PrewarmHandle",
    "PrewarmReport",
    "SegmentMove",
    "SegmentResidency",
    "SegmentVolatility",
    "Session",
    "SessionBusyError",
    "SessionClosedError",
    "SessionFatalError",
    "SessionPool",
    "SessionState",
    "SessionUnavailableError",
    "SnapshotCorruptError",
    "SnapshotError",
    "SnapshotMismatchError",
    "StreamChunk",
    "SuffixInput",
    "SuffixStatus",
    "ToolError",
    "UnsupportedFeatureError",
    "WorkspaceInfo",
    "__version__",
    "build_manifest",
    "default_model_path",
    "embed",
    "embed_available",
    "hash_token_ids",
    "load_backend",
    "open_session",
    "session_available",
    "set_backend",
]

build_manifest = _join_segments

_register_llamacpp()
