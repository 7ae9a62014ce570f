"""Counters agree with Hugging Face (parameters) and with torch's FLOP counter (an independent measurement)."""
from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode
from transformers import LlamaForCausalLM

from helpers import tiny_config
from megababel import GrowthEvent, Llama, LlamaConfig, grow
from megababel.model.counters import config_parameters, count_parameters, flops_per_token
from megababel.hf.adapter import to_hf_config


@pytest.mark.parametrize("config", [tiny_config(), tiny_config(num_key_value_heads=1, num_hidden_layers=3),
                                    LlamaConfig(hidden_size=512, num_hidden_layers=8, vocab_size=32000)])
def test_parameter_count_equals_transformers(config):
    with torch.device("meta"):
        hf = LlamaForCausalLM(to_hf_config(config))
    expected = hf.num_parameters()
    assert config_parameters(config) == expected
    if config.hidden_size <= 64:
        counts = count_parameters(Llama(config))
        assert counts.total == expected
        assert counts.embedding == 2 * config.vocab_size * config.hidden_size
        assert counts.non_embedding == expected - counts.embedding


def test_per_generation_counts():
    model = Llama(tiny_config(), seed=0)
    before = count_parameters(model).total
    grow(model, GrowthEvent(intermediate_size=256, num_hidden_layers=3))
    counts = count_parameters(model)
    assert counts.by_generation[0] == before
    assert sum(counts.by_generation.values()) == counts.total == config_parameters(model.config)


@pytest.mark.parametrize("kv_heads,seq", [(4, 32), (2, 48)])
def test_training_flops_match_torch_flop_counter(kv_heads, seq):
    """FlopCounterMode counts the matmuls torch actually runs in forward + backward (math SDPA so attention is
    counted as plain matmuls)."""
    model = Llama(tiny_config(num_key_value_heads=kv_heads), seed=0)
    ids = torch.randint(0, 128, (2, seq + 1))
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(ids[:, :-1], ids[:, 1:])[1].backward()
    assert counter.get_total_flops() == flops_per_token(model.config, seq) * ids[:, :-1].numel()


def test_flops_closed_form():
    """6N + 12*L*H*hd*T per token (PaLM), N the matmul weights; causal attention counts (T+1)/2 keys."""
    config = LlamaConfig(hidden_size=512, num_hidden_layers=8, vocab_size=32000)
    d, f, L, V, T = 512, 1536, 8, 32000, 256
    n = L * (4 * d * d + 3 * d * f) + V * d
    assert flops_per_token(config, T) == 6 * n + 12 * L * d * T
    assert flops_per_token(config, T, training=False) == 2 * n + 4 * L * d * T
    assert flops_per_token(config, T, causal=True) == 6 * n + 6 * L * d * (T + 1)


def test_model_size_tool_reports_each_stage(capsys):
    from megababel.cli import model_size as tool
    rows = tool.main(["--hidden-size", "512", "768", "--num-hidden-layers", "8", "--seq-len", "256"])
    assert [r["config"].hidden_size for r in rows] == [512, 768]
    assert rows[0]["parameters"] == config_parameters(LlamaConfig(hidden_size=512, num_hidden_layers=8))
    assert rows[1]["flops_per_token"] == flops_per_token(rows[1]["config"], 256)
    with pytest.raises(SystemExit):
        tool.main(["--hidden-size", "512", "700"])
    assert "generation 1: hidden_size 700 is not a multiple of head_dim" in capsys.readouterr().err
