"""Config and DecodeConfig: unknown keys and bad values are refused with ConfigError."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest

from llamanode import Config, ConfigError, DecodeConfig


def test_defaults_are_valid_and_round_trip_through_a_mapping() -> None:
    assert Config.from_mapping({}) == Config()
    assert Config.from_mapping(dataclasses.asdict(Config())) == Config()
    assert DecodeConfig.from_mapping({}) == DecodeConfig()
    assert DecodeConfig().greedy and DecodeConfig().max_tokens == 256


@pytest.mark.parametrize("cls", [Config, DecodeConfig])
def test_unknown_keys_are_refused_by_name(cls: type[Config] | type[DecodeConfig]) -> None:
    with pytest.raises(ConfigError) as info:
        cls.from_mapping({"n_ctx": 4096, "temprature": 0.2})
    assert "n_ctx" in str(info.value) and "temprature" in str(info.value)
    with pytest.raises(ConfigError):
        cls().replace(bogus=1)


BAD_CONFIG: list[dict[str, Any]] = [
    {"num_ctx": 15},
    {"num_ctx": 0},
    {"num_ctx": "8192"},
    {"num_ctx": True},
    {"num_ctx": 1024.0},
    {"num_batch": 2},  # a 2-token chunk size cannot tile odd lengths without a chunk of one
    {"num_batch": 0},
    {"num_ubatch": 2, "num_batch": 2},
    {"num_ubatch": 1024, "num_batch": 512},
    {"num_threads": -1},
    {"num_threads": 1025},
    {"num_gpu_layers": -2},
    {"tensor_split": (0.5, -0.1)},
    {"tensor_split": ("fast",)},
    {"tensor_split": 3},
    {"flash_attn": "yes"},
    {"flash_attn": 1},
    {"kv_cache_type": "q5_1"},
    {"kv_cache_type": "q8_0"},  # a quantized V cache needs flash attention
    {"kv_cache_type": "q4_0", "flash_attn": False},
    {"prompt_format": ""},
    {"prompt_format": "chatml"},  # accepted once, never rendered: refused now
    {"prompt_format": "llama3"},
    {"disable_bos": 1},
    {"weight_repack": "sometimes"},
    {"weight_repack": True},
]


@pytest.mark.parametrize("values", BAD_CONFIG, ids=[str(v) for v in BAD_CONFIG])
def test_bad_config_values_are_refused(values: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        Config.from_mapping(values)
    with pytest.raises(ConfigError):
        Config().replace(**values)


def test_prompt_format_names_who_renders_the_prompt() -> None:
    assert Config().prompt_format == "model"
    assert Config(prompt_format="caller", prompt_template_digest="abc").prompt_format == "caller"


def test_quantized_kv_is_accepted_with_flash_attention() -> None:
    for kv in ("q8_0", "q4_0"):
        config = Config(kv_cache_type=kv, flash_attn=True)
        assert config.kv_shaping()["kv_cache_type"] == kv
    assert Config(kv_cache_type="").kv_type == "f16"


def test_config_is_frozen_and_normalised() -> None:
    config = Config(tensor_split=[1, 2])  # type: ignore[arg-type]
    assert config.tensor_split == (1.0, 2.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.num_ctx = 1  # type: ignore[misc]
    assert Config(num_threads=3).threads == 3 and Config().threads >= 1
    assert set(Config().kv_shaping()) == {"kv_cache_type", "flash_attn", "num_gpu_layers", "tensor_split"}


BAD_DECODE: list[dict[str, Any]] = [
    {"max_tokens": 0},
    {"max_tokens": -5},
    {"max_tokens": "10"},
    {"max_tokens": True},
    {"temperature": -0.1},
    {"temperature": "hot"},
    {"temperature": math.nan},
    {"top_k": -1},
    {"top_p": 0},
    {"top_p": 1.5},
    {"top_p": math.nan},
    {"min_p": -0.1},
    {"min_p": 1.1},
    {"repeat_penalty": 0},
    {"seed": -1},
    {"seed": 2**32 - 1},
    {"seed": "1"},
    {"stop": ("",)},
    {"stop": ("ok", 3)},
    {"stop": None},
    {"grammar": 5},
    {"json_schema": "{}"},
    {"grammar": 'root ::= "a"', "json_schema": {"type": "string"}},
    {"json_schema": {"type": "object"}, "stop": ("}",)},  # a stop string could cut the JSON short
    {"grammar": 'root ::= "a"', "grammar_triggers": ("",)},
    {"grammar": 'root ::= "a"', "grammar_triggers": (3,)},
    {"grammar_triggers": ("a",)},  # a trigger needs a grammar
    {"json_schema": {"type": "object"}, "grammar_triggers": ("{",)},
]


@pytest.mark.parametrize("values", BAD_DECODE, ids=[str(v) for v in BAD_DECODE])
def test_bad_decode_values_are_refused(values: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        DecodeConfig.from_mapping(values)


def test_decode_config_normalises_stop_and_accepts_edges() -> None:
    assert DecodeConfig(stop="END").stop == ("END",)  # type: ignore[arg-type]
    assert DecodeConfig(stop=["a", "b"]).stop == ("a", "b")  # type: ignore[arg-type]
    assert DecodeConfig(max_tokens=None).max_tokens is None
    assert DecodeConfig(seed=0).seed == 0 and DecodeConfig(seed=2**32 - 2).seed == 2**32 - 2
    assert DecodeConfig(top_p=1, min_p=0, top_k=0).top_p == 1
    assert not DecodeConfig(temperature=0.5).greedy
    assert DecodeConfig(json_schema={"type": "object"}).replace(max_tokens=3).json_schema == {"type": "object"}
    lazy = DecodeConfig(grammar='root ::= "a"', grammar_triggers="a")  # type: ignore[arg-type]
    assert lazy.grammar_triggers == ("a",) and lazy.replace(max_tokens=3).grammar_triggers == ("a",)
