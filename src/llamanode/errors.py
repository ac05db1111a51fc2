"""One exception tree for llamanode.

LlamaNodeError
├── SessionUnavailableError     no backend registered / native library missing
├── SessionClosedError          the session was closed
├── SessionBusyError            re-entrant call while a decode stream is open
│   └── MemoryBudgetError       the pool cannot make room: live workspaces are all leased
├── SessionFatalError           the backend marked the session unusable
├── PrefillInterruptedError     a background prefill was interrupted on request (never fatal; internal)
├── ContextOverflowError        prefix, suffix or decode would exceed num_ctx
├── ManifestMismatchError       manifest refused (names the field)
├── UnsupportedFeatureError     a deliberately unsupported surface
│   └── ApproximationUnavailableError  approximate reuse asked for where it cannot be done
├── InvalidInputError (ValueError)
│   ├── ConfigError             bad or unknown option
│   ├── GrammarError            GBNF / JSON schema rejected
│   └── ToolError               a tool, tool choice or tool call is malformed
└── SnapshotError
    ├── SnapshotCorruptError    checksum, truncation, bad header
    └── SnapshotMismatchError   snapshot of another model / build / config
"""

from __future__ import annotations

__all__ = [
    "ApproximationUnavailableError",
    "ConfigError",
    "ContextOverflowError",
    "GrammarError",
    "InvalidInputError",
    "LlamaNodeError",
    "ManifestMismatchError",
    "MemoryBudgetError",
    "PrefillInterruptedError",
    "SessionBusyError",
    "SessionClosedError",
    "SessionFatalError",
    "SessionUnavailableError",
    "SnapshotCorruptError",
    "SnapshotError",
    "SnapshotMismatchError",
    "ToolError",
    "UnsupportedFeatureError",
]


class LlamaNodeError(Exception):
    """Base of every error llamanode raises on purpose."""


class SessionUnavailableError(LlamaNodeError):
    """No session backend is available in this process."""


class SessionClosedError(LlamaNodeError):
    """The session was closed; open a new one."""


class SessionBusyError(LlamaNodeError):
    """A call re-entered a session that is busy in the same thread."""


class MemoryBudgetError(SessionBusyError):
    """The memory budget is full of leased workspaces; retry when one is released."""


class SessionFatalError(LlamaNodeError):
    """The backend failed; the session must be discarded, not reused."""


class PrefillInterruptedError(LlamaNodeError):
    """KVContext.prefill stopped because interrupt() was called while interrupts were armed: the context
    holds exactly what it held before that prefill (no logits are live). Not a failure: the prewarm that
    armed it catches it and stops, or resumes with the same chunk; it never reaches an API caller."""


class ContextOverflowError(LlamaNodeError):
    """A stage would push the resident context past num_ctx."""

    def __init__(self, stage: str, resident_tokens: int, additional_tokens: int, num_ctx: int) -> None:
        self.stage = stage
        self.resident_tokens = resident_tokens
        self.additional_tokens = additional_tokens
        self.num_ctx = num_ctx
        total = resident_tokens + additional_tokens
        super().__init__(
            f"context overflow at {stage}: {resident_tokens} resident + {additional_tokens} new"
            f" = {total} tokens > num_ctx {num_ctx}"
        )


class ManifestMismatchError(LlamaNodeError):
    """The manifest does not describe this session (another model, config or text)."""

    def __init__(self, reason: str, field: str = "") -> None:
        self.reason = reason
        self.field = field
        super().__init__(f"manifest mismatch: {reason}")


class UnsupportedFeatureError(LlamaNodeError):
    """A feature llamanode deliberately does not offer (yet)."""

    def __init__(self, feature: str) -> None:
        self.feature = feature
        super().__init__(f"unsupported feature: {feature}")


class ApproximationUnavailableError(UnsupportedFeatureError):
    """Approximate segment reuse was asked for on a context that cannot do it; reason says why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"approximate segment reuse ({reason})")


class InvalidInputError(LlamaNodeError, ValueError):
    """The caller's input is malformed; nothing was changed."""


class ConfigError(InvalidInputError):
    """An option is unknown or out of range."""


class GrammarError(InvalidInputError):
    """A GBNF grammar or JSON schema could not be compiled."""


class ToolError(InvalidInputError):
    """A tool definition, tool choice or tool call (or message) is malformed."""


class SnapshotError(LlamaNodeError):
    """A snapshot could not be written or was refused on load."""


class SnapshotCorruptError(SnapshotError):
    """The snapshot's bytes fail their checksum or header checks."""


class SnapshotMismatchError(SnapshotError):
    """The snapshot belongs to another model, build or KV configuration."""

    def __init__(self, field: str, stored: str, expected: str) -> None:
        self.field = field
        self.stored = stored
        self.expected = expected
        super().__init__(f"snapshot refused: {field} is {stored!r}, this session has {expected!r}")
