"""Declarative mapping between megababel's Llama and Hugging Face's LlamaForCausalLM.

Our parameter paths are HF's minus the `model.` prefix, and each weight is assembled from its generation blocks
(`GrowableLayer.full_tensor()`), so the mapping is a rename. RoPE needs no permutation: both use rotate_half.
"""
from __future__ import annotations

import torch

from megababel.config import ConfigError, LlamaConfig
from megababel.model.llama import Llama


class UnsupportedHFConfigError(ConfigError):
    """A Hugging Face config asks for something megababel's Llama cannot represent exactly (importing it would
    silently change the model); the message is one line naming the field, its value and what to do."""


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


def check_hf_config_is_representable(hf_config) -> None:
    """Raise UnsupportedHFConfigError for the first field megababel's Llama (no biases, untied lm_head, plain RoPE,
    SiLU SwiGLU, no dropout) cannot reproduce exactly."""
    def refuse(field, value, why_and_fix):
        raise UnsupportedHFConfigError(f"{field} = {value!r}: {why_and_fix}")

    model_type = getattr(hf_config, "model_type", None)
    if model_type != "llama":     # checked first: other architectures name their fields differently
        refuse("model_type", model_type, "only Llama (LlamaForCausalLM) models can be imported; "
               "convert it to a Llama checkpoint first or import a Llama model")
    # transformers >= 5 folds a legacy `rope_scaling` into `rope_parameters` (and aliases the two); older versions
    # keep `rope_scaling` alone, with the type under "rope_type" or the older "type"
    for field in ("rope_parameters", "rope_scaling"):
        rope = getattr(hf_config, field, None) or {}
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type != "default":
            refuse(f"{field}['rope_type']", rope_type, "RoPE scaling (`rope_scaling` in older config.json files) "
                   "is not supported, megababel's RoPE is plain (rope_theta only); import a model with rope_type "
                   "'default' (dropping the scaling would change what the model computes)")
    for field in ("attention_bias", "mlp_bias"):
        if getattr(hf_config, field, False):
            refuse(field, getattr(hf_config, field), "megababel's linear layers have no bias; "
                   "import a model trained with " + field + " false")
    if getattr(hf_config, "tie_word_embeddings", False):
        refuse("tie_word_embeddings", True, "megababel's lm_head is a separate matrix; untie the model first (save "
               "lm_head.weight as a copy of embed_tokens.weight and set tie_word_embeddings false)")
    hidden_act = getattr(hf_config, "hidden_act", "silu")
    if hidden_act not in ("silu", "swish"):     # transformers maps both names to SiLU
        refuse("hidden_act", hidden_act, "megababel's MLP is SwiGLU with SiLU; import a model with hidden_act 'silu'")
    pretraining_tp = getattr(hf_config, "pretraining_tp", None)
    if pretraining_tp not in (None, 1):
        refuse("pretraining_tp", pretraining_tp, "megababel computes each projection as one matmul; "
               "set pretraining_tp to 1 in config.json")
    attention_dropout = getattr(hf_config, "attention_dropout", 0.0) or 0.0
    if attention_dropout != 0:
        refuse("attention_dropout", attention_dropout, "megababel's attention has no dropout; "
               "set attention_dropout to 0.0 in config.json")


def from_hf_config(hf_config) -> LlamaConfig:
    """megababel's config for a Hugging Face Llama config; UnsupportedHFConfigError if the model cannot be
    represented exactly."""
    check_hf_config_is_representable(hf_config)
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
    return {hf_key(path): tensor.full_tensor() for path, tensor in model.growable_layers()}


@torch.no_grad()
def from_hf_state_dict(state_dict: dict[str, torch.Tensor], config: LlamaConfig) -> Llama:
    """A single-generation megababel model holding the given Hugging Face weights."""
    model = Llama(config)
    expected = {hf_key(path): tensor for path, tensor in model.growable_layers()}
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
