from __future__ import annotations

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
    (dict(hidden_size=512, num_attention_heads=8), "num_attention_heads"),
    (dict(hidden_size=512, num_key_value_heads=3), "num_key_value_heads 3"),
    (dict(head_dim=63, hidden_size=126), "head_dim must be even"),
    (dict(vocab_size=0), "vocab_size must be a positive integer"),
    (dict(num_hidden_layers=2.5), "num_hidden_layers must be a positive integer"),
    (dict(rms_norm_eps=0.0), "rms_norm_eps must be a positive number"),
    (dict(intermediate_size=-1), "intermediate_size must be a positive integer"),
])
def test_invalid_configs_name_the_field(fields, message):
    with pytest.raises(ConfigError, match=message):
        LlamaConfig(**fields)


def test_unknown_field_in_dict():
    with pytest.raises(ConfigError, match="unknown config field"):
        LlamaConfig.from_dict({"hidden_size": 512, "n_embd": 512})
