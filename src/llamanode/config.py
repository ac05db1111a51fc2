"""Validated, frozen configuration. Unknown keys are rejected, never swallowed."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .errors import ConfigError

__all__ = [
    "APPROX_SELECTIONS",
    "KV_CACHE_TYPES",
    "PROMPT_FORMATS",
    "ROPE_SCALINGS",
    "WEIGHT_REPACK_SETTINGS",
    "ApproxReuse",
    "Config",
    "DecodeConfig",
]

KV_CACHE_TYPES = ("", "f16", "q8_0", "q4_0")
WEIGHT_REPACK_SETTINGS = ("auto", "on", "off")
ROPE_SCALINGS = ("auto", "none", "yarn", "linear")
# Who renders prompts: "model" = the GGUF's own chat template (the server does, via chat.py); "caller" =
# the caller sends rendered text and names its template with prompt_template_digest. llamanode renders
# no other format, so it accepts no other name (the template digest keeps KV of one apart from another).
PROMPT_FORMATS = ("model", "caller")
# Which approximately reused tokens are prefilled again: the first ones after each change (boundary),
# or the last ones before the suffix (tail). See segment_reuse.py.
APPROX_SELECTIONS = ("boundary", "tail")
_T = TypeVar("_T", bound="_Options")


class _Options:
    """Shared constructors: from a mapping (unknown keys rejected) and validated replace."""

    @classmethod
    def from_mapping(cls: type[_T], values: Mapping[str, Any]) -> _T:
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(values) - known)
        if unknown:
            listed = ", ".join(sorted(known))
            raise ConfigError(f"unknown {cls.__name__} option(s): {', '.join(unknown)}; known: {listed}")
        try:
            return cls(**values)
        except TypeError as exc:
            raise ConfigError(f"{cls.__name__}: {exc}") from exc

    def replace(self: _T, **changes: Any) -> _T:
        return type(self).from_mapping({**dataclasses.asdict(self), **changes})  # type: ignore[call-overload]


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _require_int(name: str, value: object, low: int, high: int | None = None) -> None:
    _require(isinstance(value, int) and not isinstance(value, bool), f"{name} must be an integer, got {value!r}")
    assert isinstance(value, int)
    _require(value >= low, f"{name} must be >= {low}, got {value}")
    _require(high is None or value <= high, f"{name} must be <= {high}, got {value}")


def _require_share(name: str, value: object) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1
    _require(ok, f"{name} must be a number in [0, 1], got {value!r}")


@dataclass(frozen=True)
class ApproxReuse(_Options):
    """Approximate segment reuse (opt-in): after an edit, keep the KV of the unchanged tokens after it,
    moved to their new positions, and prefill only what changed plus a share of the kept tokens.

    The answer may differ from an exact prefill; every report says what was approximated.
    """

    selection: str = "boundary"  # one of APPROX_SELECTIONS
    share: float = 0.1  # of the approximately kept tokens, this share is prefilled again
    min_run: int = 32  # a shorter run of matching tokens is prefilled, not kept

    def __post_init__(self) -> None:
        _require(self.selection in APPROX_SELECTIONS, f"selection must be one of {APPROX_SELECTIONS}")
        _require_share("share", self.share)
        _require_int("min_run", self.min_run, 2)


@dataclass(frozen=True)
class Config(_Options):
    """Runtime configuration of a session. Defaults are measured (docs/benchmarks.md).

    Fields that change KV contents (kv_cache_type, flash_attn, num_gpu_layers, tensor_split, and
    the effective weight_repack choice) are part of the manifest's runtime digest; the rest only
    change speed.
    """

    num_ctx: int = 8192  # the default model's n_ctx_train; f16 KV costs ~23 KB/token (188 MB)
    num_batch: int = 512  # prefill chunk; measured fastest for cold prefill on 2 cores
    num_ubatch: int = 512  # physical batch; = num_batch measured fastest
    # a background prewarm's chunk: a call that needs the chunk in flight waits for its rest (64: 3.5 % slower
    # than 512 here); any other call interrupts it
    prewarm_batch: int = 64
    num_threads: int = 0  # 0 = all cores (os.cpu_count())
    num_gpu_layers: int = 0  # CPU only unless asked
    tensor_split: tuple[float, ...] = ()
    flash_attn: bool = False  # off: warm suffixes 1.6x faster on CPU and chunked prefill stays bit-exact
    kv_cache_type: str = "f16"  # "" means f16; q8_0/q4_0 need flash_attn=True
    prompt_format: str = "model"  # one of PROMPT_FORMATS
    prompt_template_digest: str = ""  # digest of the caller's template, when prompt_format is "caller"
    disable_bos: bool = False  # True: never add BOS, whatever the vocabulary says
    # llama.cpp's weight repacking (extra buffer types): "auto" = on unless the CPU has AMX_INT8,
    # whose kernel crashes on long prefills (llama.cpp#20824); "on"/"off" force it.
    weight_repack: str = "auto"
    # RoPE beyond the trained window (llamanode.rope): auto = the model's own RoPE up to n_ctx_train,
    # YaRN by num_ctx / n_ctx_train above it; none = never extend (a larger num_ctx is refused)
    rope_scaling: str = "auto"
    # "off" (exact reuse only) or a selection of APPROX_SELECTIONS: ensure_prefix reuses segments after an
    # edit approximately unless a call says approximate=False. Not part of the runtime digest: approximated
    # KV is marked as such in the session and its snapshots.
    approximate_reuse: str = "off"
    approximate_share: float = 0.1  # ApproxReuse.share of the session default

    def __post_init__(self) -> None:
        _require_int("num_ctx", self.num_ctx, 16)
        # >= 3: a chunk of one token is never exact, and odd lengths cannot be tiled by 2s
        _require_int("num_batch", self.num_batch, 3)
        _require_int("num_ubatch", self.num_ubatch, 3, self.num_batch)
        _require_int("prewarm_batch", self.prewarm_batch, 3)
        _require_int("num_threads", self.num_threads, 0, 1024)
        _require_int("num_gpu_layers", self.num_gpu_layers, -1)
        try:
            split = tuple(float(x) for x in self.tensor_split)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"tensor_split must be a sequence of numbers, got {self.tensor_split!r}") from exc
        object.__setattr__(self, "tensor_split", split)
        _require(all(x >= 0 for x in self.tensor_split), "tensor_split entries must be >= 0")
        _require(isinstance(self.flash_attn, bool), "flash_attn must be a bool")
        _require(self.kv_cache_type in KV_CACHE_TYPES, f"kv_cache_type must be one of {KV_CACHE_TYPES}")
        _require(
            self.flash_attn or self.kv_type in ("f16",),
            f"kv_cache_type {self.kv_cache_type!r} needs flash_attn=True"
            " (llama.cpp refuses a quantized V cache without it)",
        )
        _require(
            self.prompt_format in PROMPT_FORMATS,
            f"prompt_format must be one of {PROMPT_FORMATS} (llamanode renders no other), got {self.prompt_format!r}",
        )
        _require(isinstance(self.disable_bos, bool), "disable_bos must be a bool")
        _require(
            self.weight_repack in WEIGHT_REPACK_SETTINGS,
            f"weight_repack must be one of {WEIGHT_REPACK_SETTINGS}, got {self.weight_repack!r}",
        )
        _require(self.rope_scaling in ROPE_SCALINGS, f"rope_scaling must be one of {ROPE_SCALINGS}")
        approx = ("off", *APPROX_SELECTIONS)
        _require(self.approximate_reuse in approx, f"approximate_reuse must be one of {approx}")
        _require_share("approximate_share", self.approximate_share)

    def approximation(self) -> ApproxReuse | None:
        """The session's default for ensure_prefix: None is exact reuse."""
        if self.approximate_reuse == "off":
            return None
        return ApproxReuse(selection=self.approximate_reuse, share=self.approximate_share)

    @property
    def kv_type(self) -> str:
        return self.kv_cache_type or "f16"

    @property
    def threads(self) -> int:
        return self.num_threads or (os.cpu_count() or 1)

    def kv_shaping(self) -> dict[str, object]:
        """The fields that change KV contents; two sessions may share KV only if these match."""
        return {
            "kv_cache_type": self.kv_type,
            "flash_attn": self.flash_attn,
            "num_gpu_layers": self.num_gpu_layers,
            "tensor_split": list(self.tensor_split),
        }


@dataclass(frozen=True)
class DecodeConfig(_Options):
    """Controls one decode pass. temperature 0 is greedy (the default: reproducible code edits)."""

    max_tokens: int | None = 256  # None: until EOG, a stop string, or the context is full (an error chunk)
    temperature: float = 0.0
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0  # 1.0 = off
    seed: int | None = None  # None: a fresh random seed per call
    stop: tuple[str, ...] = ()
    grammar: str | None = None  # GBNF text
    # Lazy grammar: free text until one of these literals appears, then `grammar` applies from its
    # first byte (so the grammar's root must begin with it). Empty: the grammar applies from the start.
    grammar_triggers: tuple[str, ...] = ()
    json_schema: Mapping[str, Any] | None = field(default=None, hash=False)

    def __post_init__(self) -> None:
        if self.max_tokens is not None:
            _require_int("max_tokens", self.max_tokens, 1)
        _require(isinstance(self.temperature, (int, float)) and self.temperature >= 0, "temperature must be >= 0")
        _require_int("top_k", self.top_k, 0)
        _require(isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1, "top_p must be in (0, 1]")
        _require(isinstance(self.min_p, (int, float)) and 0 <= self.min_p <= 1, "min_p must be in [0, 1]")
        penalty_ok = isinstance(self.repeat_penalty, (int, float)) and self.repeat_penalty > 0
        _require(penalty_ok, "repeat_penalty must be > 0")
        if self.seed is not None:
            _require_int("seed", self.seed, 0, 2**32 - 2)
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        _require(all(isinstance(s, str) and s for s in stop), "stop entries must be non-empty strings")
        object.__setattr__(self, "stop", stop)
        _require(self.grammar is None or isinstance(self.grammar, str), "grammar must be GBNF text")
        _require(self.json_schema is None or isinstance(self.json_schema, Mapping), "json_schema must be a mapping")
        _require(not (self.grammar and self.json_schema is not None), "give grammar or json_schema, not both")
        _require(
            self.json_schema is None or not stop,
            "stop strings cannot be combined with json_schema: a stop string inside the JSON would cut it short",
        )
        triggers = (self.grammar_triggers,) if isinstance(self.grammar_triggers, str) else tuple(self.grammar_triggers)
        _require(all(isinstance(t, str) and t for t in triggers), "grammar_triggers must be non-empty strings")
        _require(not triggers or bool(self.grammar), "grammar_triggers need a grammar to trigger")
        object.__setattr__(self, "grammar_triggers", triggers)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0
