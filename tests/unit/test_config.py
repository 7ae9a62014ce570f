from __future__ import annotations

import math

import pytest

from megababel import ConfigError, LlamaConfig
from megababel.config import llama_intermediate_size


def test_defaults_follow_llama():
    config = LlamaConfig(hidden_size=512, head_dim=128)
    assert config.num_attention_heads == 4 and config.num_key_value_heads == 4
    assert config.intermediate_size == 1536                      # 8*512/3 = 1365 -> next multiple of 256
    assert llama_intermediate_size(4096) == 11008                 # Llama 2 7B
    assert LlamaConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize("fields,message", [
    (dict(hidden_size=500), "hidden_size 500 is not a multiple of head_dim 128"),
    (dict(hidden_size=512, num_attention_heads=0), "num_attention_heads must be a positive integer"),
    (dict(hidden_size=512, num_key_value_heads=3), "num_key_value_heads 3"),
    (dict(head_dim=63, hidden_size=126), "head_dim must be even"),
    (dict(vocab_size=0), "vocab_size must be a positive integer"),
    (dict(num_hidden_layers=2.5), "num_hidden_layers must be a positive integer"),
    (dict(rms_norm_eps=0.0), "rms_norm_eps must be a positive number"),
    (dict(intermediate_size=-1), "intermediate_size must be a positive integer"),
    (dict(hidden_size=True), "hidden_size must be a positive integer, got True"),
    (dict(num_key_value_heads=False), "num_key_value_heads must be a positive integer, got False"),
    (dict(rms_norm_eps=True), r"rms_norm_eps must be a positive number, got True \(a boolean"),
    (dict(rope_theta=math.inf), r"rope_theta must be a positive number, got inf \(not finite\)"),
    (dict(initializer_range=math.nan), r"initializer_range must be a positive number, got nan \(not finite\)"),
    (dict(rms_norm_eps="1e-5"), "rms_norm_eps must be a positive number, got '1e-5'"),
])
def test_invalid_configs_name_the_field(fields, message):
    with pytest.raises(ConfigError, match=message):
        LlamaConfig(**fields)


def test_the_attention_width_may_differ_from_hidden_size():
    """As Hugging Face's head_dim allows (and a head_dim growth makes): heads x head_dim is its own width."""
    wide = LlamaConfig(hidden_size=512, head_dim=128, num_attention_heads=8, num_key_value_heads=2)
    assert (wide.attention_width, wide.kv_group_size) == (1024, 4)
    assert LlamaConfig(hidden_size=512, head_dim=128).attention_width == 512     # derived: heads tile hidden_size


def test_unknown_field_in_dict():
    with pytest.raises(ConfigError, match="unknown config field"):
        LlamaConfig.from_dict({"hidden_size": 512, "n_embd": 512})


@pytest.mark.parametrize("value, message", [
    ([("hidden_size", 512)], "a model config must be a mapping of field: value"),
    (None, "a model config must be a mapping of field: value"),
    ({1: 2, "n_embd": 3}, r"unknown config field\(s\) \[1, 'n_embd'\]"),     # keys of mixed types still sort
    ({"hidden_size": "512"}, "hidden_size must be a positive integer, got '512'"),
    ({"rope_theta": True}, "rope_theta must be a positive number"),
])
def test_from_dict_refuses_wrong_types_cleanly(value, message):
    with pytest.raises(ConfigError, match=message):
        LlamaConfig.from_dict(value)


def test_errors_about_one_field_say_which():
    """A schedule places such an error: `schedule model.hidden_size: ...`."""
    with pytest.raises(ConfigError) as refused:
        LlamaConfig(hidden_size=500)
    assert refused.value.field == "hidden_size" and str(refused.value) == f"hidden_size {refused.value.problem}"
