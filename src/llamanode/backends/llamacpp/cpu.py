"""What the CPU backend of llama.cpp reports, and whether weight repacking is safe on it.

llama.cpp's "extra buffer types" (`llama_model_params.use_extra_bufts`) repack weights into
CPU-specific layouts (CPU_REPACK, and the AMX buffer type when built for AMX). On CPUs with
AMX_INT8 the AMX kernel segfaults (`ggml_backend_amx_mul_mat`, at `ldtilecfg`) on the first
decode of more than about 100 tokens: ggml-org/llama.cpp#20824, fix pending in #26954.
The decision below is pure so it can be tested with the system-info strings of any CPU.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ...config import WEIGHT_REPACK_SETTINGS
from ...errors import ConfigError

__all__ = [
    "CpuFeatures",
    "RepackDecision",
    "decide_weight_repack",
    "weight_repack_for",
]

AMX_ISSUE = "ggml-org/llama.cpp#20824"
_FEATURE = re.compile(r"([A-Za-z0-9_]+)\s*=\s*([^|\s]+)")


@dataclass(frozen=True)
class CpuFeatures:
    """The `NAME = value` flags of llama.cpp's system info (e.g. `AVX512 = 1 | AMX_INT8 = 1`)."""

    flags: tuple[str, ...]  # names whose value is not "0", in the order llama.cpp prints them

    @classmethod
    def parse(cls, system_info: str) -> CpuFeatures:
        return cls(tuple(name for name, value in _FEATURE.findall(system_info) if value != "0"))

    def has(self, name: str) -> bool:
        return name in self.flags


@dataclass(frozen=True)
class RepackDecision:
    """Whether models load with llama.cpp's extra buffer types (weight repacking), and why."""

    enabled: bool
    reason: str

    @property
    def label(self) -> str:
        return "on" if self.enabled else "off"


def decide_weight_repack(system_info: str, setting: str = "auto") -> RepackDecision:
    """The repack choice for a CPU (llama.cpp's system info) and the `Config.weight_repack` setting."""
    if setting not in WEIGHT_REPACK_SETTINGS:
        raise ConfigError(f"weight_repack must be one of {WEIGHT_REPACK_SETTINGS}, got {setting!r}")
    cpu = CpuFeatures.parse(system_info)
    amx = cpu.has("AMX_INT8")
    if setting == "off":
        return RepackDecision(False, "weight_repack='off' in the config; extra buffer types off")
    if setting == "on":
        warning = f" (AMX_INT8 present: expect the {AMX_ISSUE} crash on long prefills)" if amx else ""
        return RepackDecision(True, f"weight_repack='on' in the config; extra buffer types on{warning}")
    if amx:
        return RepackDecision(False, f"AMX_INT8 present: {AMX_ISSUE} crashes in the AMX kernel; extra buffer types off")
    if not cpu.has("REPACK"):
        return RepackDecision(True, "no AMX_INT8; llama.cpp reports no REPACK: the extra buffer types change nothing")
    return RepackDecision(True, "no AMX_INT8 among llama.cpp's CPU features: weight repacking is safe")


def weight_repack_for(setting: str) -> RepackDecision:
    """The decision for this process's llama.cpp build and CPU."""
    from .native import system_info

    return decide_weight_repack(system_info(), setting)
