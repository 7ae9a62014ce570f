"""Declarative mapping between megababel's Llama and Hugging Face's LlamaForCausalLM.

Our parameter paths are HF's minus the `model.` prefix, and each weight is assembled from its generation blocks
(`GrowableTensor.full_tensor()`), so the mapping is a rename. RoPE needs no permutation: both use rotate_half.
"""
from __future__ import annotations

import torch

from .config import LlamaConfig
from .model import Llama


def hf_key(path: str) -> str:
    """megababel module path -> Hugging Face state-dict key."""
    return "lm_head.weight" if path == "lm_head" else f"model.{path}.weight"


def to_hf_config(config: LlamaConfig):
    """A `transformers.LlamaConfig` built by the installed transformers (it knows its own rope field names)."""
    from transformers import LlamaConfig as HFLlamaConfig

    return HFLlamaConfig(
        hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers, num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads, head_dim=config.head_dim, vocab_size=config.vocab_size,
        rms_norm_eps=config.rms_norm_eps, rope_theta=config.rope_theta,
        max_position_embeddings=config.max_position_embeddings, initializer_range=config.initializer_range,
        hidden_act="silu", attention_bias=False, mlp_bias=False, tie_word_embeddings=False)


def from_hf_config(hf_config) -> LlamaConfig:
    rope_theta = getattr(hf_config, "rope_theta", None)
    if rope_theta is None:  # transformers >= 5 keeps it in rope_parameters
        rope_theta = hf_config.rope_parameters["rope_theta"]
    head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // hf_config.num_attention_heads
    return LlamaConfig(
        hidden_size=hf_config.hidden_size, intermediate_size=hf_config.intermediate_size,
        num_hidden_layers=hf_config.num_hidden_layers, num_attention_heads=hf_config.num_attention_heads,
        num_key_value_heads=hf_config.num_key_value_heads, head_dim=head_dim, vocab_size=hf_config.vocab_size,
        rms_norm_eps=hf_config.rms_norm_eps, rope_theta=float(rope_theta),
        max_position_embeddings=hf_config.max_position_embeddings, initializer_range=hf_config.initializer_range)


def to_hf_state_dict(model: Llama) -> dict[str, torch.Tensor]:
    """Full (generation-merged) weights under Hugging Face keys."""
    return {hf_key(path): tensor.full_tensor() for path, tensor in model.growable_tensors()}


@torch.no_grad()
def from_hf_state_dict(state_dict: dict[str, torch.Tensor], config: LlamaConfig) -> Llama:
    """A single-generation megababel model holding the given Hugging Face weights."""
    model = Llama(config)
    expected = {hf_key(path): tensor for path, tensor in model.growable_tensors()}
    missing = sorted(set(expected) - set(state_dict))
    if missing:
        raise KeyError(f"Hugging Face state dict lacks {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    for key, tensor in expected.items():
        value = state_dict[key]
        if tuple(value.shape) != tensor.full_shape:
            raise ValueError(f"{key}: shape {tuple(value.shape)} does not match the config's {tensor.full_shape}")
        (block,) = tensor.blocks()
        block.copy_(value)
    return model
