"""The replay strategies by name (`python -m bench.trace --strategies ...`), and which can run here."""

from __future__ import annotations

from collections.abc import Callable

from .llama_server_proc import llama_server_missing
from .replay import (
    ApproxPrewarmStrategy,
    ApproxStrategy,
    ApproxTailStrategy,
    AssemblerPrewarmStrategy,
    AssemblerStrategy,
    FlashAttnStrategy,
    LlamanodeStrategy,
    PrewarmStrategy,
    ReplaySetup,
    Strategy,
)
from .replay_baselines import LlamaServerReuseStrategy, LlamaServerStrategy, LlamaStrategy

__all__ = ["NOT_BY_DEFAULT", "STRATEGIES", "unavailable"]

StrategyFactory = Callable[[ReplaySetup], Strategy]
STRATEGIES: dict[str, StrategyFactory] = {
    "llama": LlamaStrategy,
    "exact": LlamanodeStrategy,
    "assembler": AssemblerStrategy,
    "prewarm": PrewarmStrategy,
    "assembler+prewarm": AssemblerPrewarmStrategy,
    "approx-boundary": ApproxStrategy,
    "approx-tail": ApproxTailStrategy,
    "approx+prewarm": ApproxPrewarmStrategy,
    "exact-fa": FlashAttnStrategy,
    "llama-server": LlamaServerStrategy,
    "llama-server-reuse64": LlamaServerReuseStrategy,
}


NOT_BY_DEFAULT = ("exact-fa",)


def unavailable(name: str) -> str | None:
    """Why a strategy cannot run on this machine, or None."""
    return llama_server_missing() if name.startswith("llama-server") else None
