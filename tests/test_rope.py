"""Long windows: Config.rope_scaling, the plan it makes, and the default model at 32768 tokens."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import GREEDY_32, SEGMENTS, SUFFIX, SUFFIX_2, decode_answer, open_real
from llamanode import Config, ConfigError, KVSession
from llamanode.rope import RopeScaling, plan_rope

LONG = Config(num_ctx=32768, num_threads=1)


def test_auto_keeps_the_models_rope_up_to_the_trained_window_and_yarn_above() -> None:
    assert plan_rope("auto", 8192, 8192) == RopeScaling("none", 1.0, 8192)
    assert plan_rope("auto", 2048, 8192) == RopeScaling("none", 1.0, 8192)
    assert plan_rope("auto", 32768, 8192) == RopeScaling("yarn", 4.0, 8192)
    assert plan_rope("auto", 12288, 8192) == RopeScaling("yarn", 1.5, 8192)


def test_explicit_modes() -> None:
    assert plan_rope("linear", 16384, 8192) == RopeScaling("linear", 2.0, 8192)
    assert plan_rope("yarn", 4096, 8192) == RopeScaling("yarn", 1.0, 8192)  # never shrinks positions
    assert plan_rope("none", 8192, 8192) == RopeScaling("none", 1.0, 8192)
    assert plan_rope("auto", 32768, 0) == RopeScaling("none", 1.0, 0)  # a GGUF without a trained length


def test_a_window_beyond_training_without_scaling_is_refused_with_the_numbers() -> None:
    with pytest.raises(ConfigError) as info:
        plan_rope("none", 8200, 8192)
    assert "8200" in str(info.value) and "8192" in str(info.value)
    with pytest.raises(ConfigError):
        plan_rope("yarn", 4096, 0)


def test_describe_says_how_it_scaled() -> None:
    assert plan_rope("auto", 32768, 8192).describe() == "yarn x4 (trained window 8192)"
    assert plan_rope("auto", 8192, 8192).describe() == "none (trained window 8192)"
    assert not plan_rope("auto", 8192, 8192).scaled and plan_rope("linear", 9000, 8192).scaled


@pytest.mark.parametrize("value", ["dynamic", "", "YARN", None, 4])
def test_config_refuses_unknown_rope_scaling(value: object) -> None:
    with pytest.raises(ConfigError):
        Config.from_mapping({"rope_scaling": value})


def test_scaling_none_beyond_the_trained_window_refuses_to_open(model_keeper: KVSession) -> None:
    with pytest.raises(ConfigError) as info:
        open_real(Config(num_ctx=9216, num_threads=1, rope_scaling="none"))
    assert "9216" in str(info.value) and "8192" in str(info.value)


def test_the_default_model_opens_at_32768_and_says_it_used_yarn(model_keeper: KVSession) -> None:
    with open_real(LONG) as long:
        assert long.num_ctx == 32768
        assert long.identity.rope == RopeScaling("yarn", 4.0, 8192)
        long_digest = long.identity.runtime_digest
    assert model_keeper.identity.rope == RopeScaling("none", 1.0, 8192)
    assert long_digest != model_keeper.identity.runtime_digest  # scaled KV never mixes with unscaled KV
    with open_real(Config(num_ctx=16384, num_threads=1)) as mid:
        assert mid.identity.rope.factor == 2.0 and mid.identity.runtime_digest not in (long_digest,)


def test_a_warm_turn_at_32768_equals_a_cold_one(model_keeper: KVSession) -> None:
    with open_real(LONG) as cold:
        cold.ensure_prefix(cold.prefix(SEGMENTS))
        cold.prefill_suffix(cold.suffix(SUFFIX_2))
        expected = decode_answer(cold, GREEDY_32)
    with open_real(LONG) as warm:
        warm.ensure_prefix(warm.prefix(SEGMENTS))
        warm.prefill_suffix(warm.suffix(SUFFIX))
        decode_answer(warm, GREEDY_32)
        status = warm.ensure_prefix(warm.prefix(SEGMENTS))
        assert status.reused_tokens == status.prefix_tokens > 0
        warm.prefill_suffix(warm.suffix(SUFFIX_2))
        assert decode_answer(warm, GREEDY_32) == expected
    assert expected.generated_tokens > 0


def _cold_logits() -> np.ndarray:
    with open_real() as session:
        session.ensure_prefix(session.prefix(SEGMENTS))
        session.prefill_suffix(session.suffix(SUFFIX))
        return session._ctx.last_logits()  # type: ignore[attr-defined, no-any-return]


def test_a_yarn_context_leaves_unscaled_contexts_of_the_same_model_unchanged(model_keeper: KVSession) -> None:
    """llama.cpp rewrites the shared model's n_ctx_train when a YaRN context opens; nothing else may move."""
    before = _cold_logits()
    with open_real(LONG) as long:
        assert long.identity.rope.scaled
        after_open = _cold_logits()
    assert np.array_equal(before, after_open)
    with open_real() as again:
        assert again.identity.rope == RopeScaling("none", 1.0, 8192)


def test_llamanode_info_says_how_the_window_scaled(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from llamanode.cli import main

    assert main(["info", "--ctx", "32768", "--threads", "1", "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["num_ctx"] == 32768 and facts["rope_scaling"] == "yarn x4 (trained window 8192)"
    assert main(["info", "--ctx", "9216", "--threads", "1", "--rope-scaling", "none"]) == 2
    assert "9216" in capsys.readouterr().err
