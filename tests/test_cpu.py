"""Weight repacking per CPU: the pure decision, the knob, its place in the runtime identity,
and a long prefill in a child process (the crash on AMX machines kills the process, not a test)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

import llamanode
from conftest import SEGMENTS
from llamanode import Config, ConfigError, KVSession, SnapshotMismatchError
from llamanode.backends.llamacpp.cpu import CpuFeatures, decide_weight_repack, weight_repack_for
from llamanode.backends.llamacpp.native import system_info

# llama.cpp's system info on an AMD EPYC with AVX-512 and no AMX (the machine these tests were written on)
EPYC = (
    "CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX_VNNI = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | AVX512 = 1 | "
    "AVX512_VBMI = 1 | AVX512_VNNI = 1 | AVX512_BF16 = 1 | LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 |"
)
# ... and on a Sapphire Rapids class Xeon (docs/benchmarks.md, "AMX machines crash")
XEON_AMX = (
    "CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX_VNNI = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | AVX512 = 1 | "
    "AVX512_VBMI = 1 | AVX512_VNNI = 1 | AVX512_BF16 = 1 | AMX_INT8 = 1 | LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 |"
)
ARM = "CPU : NEON = 1 | ARM_FMA = 1 | FP16_VA = 1 | DOTPROD = 1 | LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 |"
OLD_X86 = "CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | OPENMP = 1 |"


def test_features_are_the_flags_llama_cpp_reports_as_set() -> None:
    cpu = CpuFeatures.parse(XEON_AMX)
    assert cpu.has("AMX_INT8") and cpu.has("AVX512") and cpu.has("REPACK")
    assert cpu.flags[0] == "SSE3" and "CPU" not in cpu.flags
    assert not CpuFeatures.parse("CPU : AMX_INT8 = 0 | AVX2 = 1 |").has("AMX_INT8")
    assert CpuFeatures.parse("CUDA : ARCHS = 500,610 | USE_GRAPHS = 1 | CPU : AVX2 = 1 |").has("AVX2")


def test_auto_turns_repacking_off_on_amx_and_says_why() -> None:
    decision = decide_weight_repack(XEON_AMX, "auto")
    assert decision.enabled is False and decision.label == "off"
    assert "AMX_INT8" in decision.reason and "llama.cpp#20824" in decision.reason


@pytest.mark.parametrize("info", [EPYC, ARM, OLD_X86], ids=["avx512-no-amx", "arm", "avx2-no-repack"])
def test_auto_keeps_repacking_where_there_is_no_amx(info: str) -> None:
    decision = decide_weight_repack(info, "auto")
    assert decision.enabled is True and "no AMX_INT8" in decision.reason


@pytest.mark.parametrize("info", [EPYC, XEON_AMX])
def test_the_knob_forces_either_way(info: str) -> None:
    assert decide_weight_repack(info, "on").enabled is True
    assert decide_weight_repack(info, "off").enabled is False
    assert "'off'" in decide_weight_repack(info, "off").reason


def test_forcing_repacking_on_an_amx_cpu_warns_in_the_reason() -> None:
    assert "20824" in decide_weight_repack(XEON_AMX, "on").reason
    assert "20824" not in decide_weight_repack(EPYC, "on").reason


def test_the_knob_is_validated_like_every_config_field() -> None:
    assert Config().weight_repack == "auto"
    with pytest.raises(ConfigError, match="weight_repack"):
        Config(weight_repack="maybe")
    with pytest.raises(ConfigError, match="weight_repack"):
        decide_weight_repack(EPYC, "yes")


# -- on the real model ------------------------------------------------------------------------


def _session(repack: str) -> KVSession:
    session = llamanode.open_session(None, Config(num_ctx=512, num_threads=1, weight_repack=repack))
    assert isinstance(session, KVSession)
    return session


def test_the_effective_repack_choice_is_part_of_the_runtime_identity(model_keeper: KVSession) -> None:
    with _session("on") as on, _session("off") as off, _session("auto") as auto:
        assert on.identity.runtime_digest != off.identity.runtime_digest
        assert on.identity.model_digest == off.identity.model_digest
        same_as = on if weight_repack_for("auto").enabled else off
        assert auto.identity.runtime_digest == same_as.identity.runtime_digest


def test_a_state_made_with_repacking_is_refused_by_a_session_without(model_keeper: KVSession) -> None:
    with _session("on") as on, _session("off") as off:
        on.ensure_prefix(on.prefix(SEGMENTS[:2]))
        state = on.export_state()
        before = off.explain_context()
        with pytest.raises(SnapshotMismatchError, match="runtime_digest"):
            off.import_state(state)
        assert off.explain_context() == before


_CHILD = textwrap.dedent(
    """
    import llamanode
    from llamanode import Config
    words = " ".join(f"item{i}" for i in range(100))
    with llamanode.open_session(None, Config(num_ctx=1024, num_threads=1)) as s:
        status = s.ensure_prefix(s.prefix([("long", "<|im_start|>user\\n" + words)]))
        print(status.prefilled_tokens, flush=True)
    """
)


def test_long_prefill_survives_this_cpu() -> None:
    """On AMX CPUs llama.cpp#20824 segfaults any decode past ~100 tokens unless repacking is off."""
    proc = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True, timeout=600, env=os.environ)
    decision = weight_repack_for(Config().weight_repack)
    where = f"weight repack {decision.label} ({decision.reason}); llama.cpp sees: {system_info()}"
    if proc.returncode < 0:
        name = signal.Signals(-proc.returncode).name
        pytest.fail(f"a long prefill killed the process with {name}: llama.cpp crashed on this CPU; {where}")
    assert proc.returncode == 0, f"child failed ({where}):\n{proc.stderr[-3000:]}"
    assert int(proc.stdout.split()[-1]) > 100
