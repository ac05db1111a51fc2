"""RoPE scaling: how a context larger than the model's trained window is served.

`plan_rope` turns `Config.rope_scaling` and the model's n_ctx_train into one explicit decision.
The decision changes KV contents, so backends put `RopeScaling.key()` into the runtime digest
(only when it scales: an unscaled context keeps the digest it always had).
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigError

__all__ = ["UNSCALED", "RopeScaling", "plan_rope"]


@dataclass(frozen=True)
class RopeScaling:
    """The effective RoPE: `none` is the model's own (as trained); yarn/linear stretch it by factor."""

    kind: str  # none | yarn | linear
    factor: float  # num_ctx / n_ctx_train when scaled, else 1.0
    n_ctx_train: int  # the model's trained window (YaRN's original context)

    @property
    def scaled(self) -> bool:
        return self.kind != "none"

    def key(self) -> dict[str, object]:
        """What enters the runtime digest."""
        return {"kind": self.kind, "factor": self.factor, "n_ctx_train": self.n_ctx_train}

    def describe(self) -> str:
        if not self.scaled:
            return f"none (trained window {self.n_ctx_train})"
        return f"{self.kind} x{self.factor:g} (trained window {self.n_ctx_train})"


UNSCALED = RopeScaling("none", 1.0, 0)  # for backends that know no trained window


def plan_rope(mode: str, num_ctx: int, n_ctx_train: int) -> RopeScaling:
    """The scaling for `num_ctx` tokens on a model trained on `n_ctx_train`; ConfigError if none fits.

    auto: the model's own RoPE up to n_ctx_train, YaRN by num_ctx / n_ctx_train above it.
    none: never stretch; a num_ctx above n_ctx_train is refused rather than silently degraded.
    yarn / linear: stretch by num_ctx / n_ctx_train (at least 1, which leaves positions unchanged).
    """
    if n_ctx_train <= 0:  # the GGUF does not say: nothing to scale against
        if mode in ("yarn", "linear"):
            raise ConfigError(f"rope_scaling={mode!r} needs the model's trained context length, which it lacks")
        return UNSCALED
    factor = num_ctx / n_ctx_train
    if mode == "auto":
        mode = "yarn" if factor > 1 else "none"
    if mode == "none":
        if factor > 1:
            raise ConfigError(
                f"num_ctx {num_ctx} exceeds the model's trained context {n_ctx_train} and rope_scaling is 'none';"
                " use rope_scaling='auto' or 'yarn' to extend it, or a num_ctx <= the trained context"
            )
        return RopeScaling("none", 1.0, n_ctx_train)
    if mode not in ("yarn", "linear"):
        raise ConfigError(f"unknown rope_scaling {mode!r}")
    return RopeScaling(mode, max(factor, 1.0), n_ctx_train)
