"""The model is a real Llama: parity with transformers.LlamaForCausalLM, before and after growth."""
from __future__ import annotations

import pytest
import torch
from transformers import LlamaForCausalLM

from helpers import tiny_config
from megababel import GrowthEvent, Llama, grow
from megababel.model.counters import count_parameters
from megababel.hf.adapter import from_hf_config, from_hf_state_dict, to_hf_config, to_hf_state_dict


def _hf_twin(model: Llama) -> LlamaForCausalLM:
    hf = LlamaForCausalLM(to_hf_config(model.config)).eval()
    hf.load_state_dict(to_hf_state_dict(model), strict=True)
    return hf


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_logits_match_transformers(kv_heads):
    model = Llama(tiny_config(num_key_value_heads=kv_heads, rope_theta=500.0), seed=0)
    hf = _hf_twin(model)
    ids = torch.randint(0, model.config.vocab_size, (3, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(ids)[0], hf(ids).logits, rtol=0, atol=1e-5)
    assert count_parameters(model).total == hf.num_parameters()


def test_grown_model_is_still_a_llama():
    model = Llama(tiny_config(num_key_value_heads=2), seed=0)
    grow(model, GrowthEvent(hidden_size=128, intermediate_size=256, num_hidden_layers=3, vocab_size=200))
    hf = _hf_twin(model)
    ids = torch.randint(0, 200, (2, 33), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model(ids)[0], hf(ids).logits, rtol=0, atol=1e-5)
    assert count_parameters(model).total == hf.num_parameters()


def test_hf_round_trip_is_bit_exact():
    hf = LlamaForCausalLM(to_hf_config(tiny_config(num_key_value_heads=2))).eval()
    model = from_hf_state_dict(hf.state_dict(), from_hf_config(hf.config))
    for key, value in to_hf_state_dict(model).items():
        assert torch.equal(value, hf.state_dict()[key]), key


def test_loss_is_next_token_cross_entropy():
    model = Llama(tiny_config(), seed=0)
    ids = torch.randint(0, 128, (2, 17))
    logits, _ = model(ids[:, :-1])
    no_logits, loss = model(ids[:, :-1], ids[:, 1:])
    assert no_logits is None         # with targets the [tokens, vocabulary] logits are never made
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, 128), ids[:, 1:].reshape(-1))
    torch.testing.assert_close(loss, expected)


def test_bf16_autocast_runs_and_stays_close():
    model = Llama(tiny_config(), seed=0)
    ids = torch.randint(0, 128, (2, 17))
    with torch.no_grad():
        full = model(ids)[0]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(ids)[0]
    assert low.dtype == torch.bfloat16
    assert (low.float() - full).abs().max().item() < 0.05


def test_too_long_sequence_is_refused():
    model = Llama(tiny_config(max_position_embeddings=16), seed=0)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_activation_checkpointing_gives_the_same_gradients():
    """Recomputing each decoder layer in backward changes memory, not math: same loss and gradients, also for a
    grown model whose weights are several generation blocks."""
    model = Llama(tiny_config(num_hidden_layers=3), seed=0)
    grow(model, GrowthEvent(hidden_size=96, intermediate_size=256, num_hidden_layers=4, layer_positions="interleave"))
    ids = torch.randint(0, model.config.vocab_size, (2, 17), generator=torch.Generator().manual_seed(0))
    grads = []
    for checkpointing in (False, True):
        model.zero_grad(set_to_none=True)
        model.activation_checkpointing = checkpointing
        _, loss = model(ids[:, :-1], ids[:, 1:])
        loss.backward()
        grads.append((loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (loss_plain, plain), (loss_ckpt, ckpt) = grads
    assert loss_plain == loss_ckpt and plain.keys() == ckpt.keys() and len(plain) > 20
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], rtol=1e-6, atol=1e-7, msg=name)
