"""Parameter and FLOP counters, used by logging, schedules and benchmarks.

Conventions (stated once, here):
- "embedding" parameters are the two vocabulary-sized matrices, embed_tokens and the (untied) lm_head;
  non_embedding is everything else (Kaplan et al. count the same way for an untied head).
- FLOPs count every matmul as 2*m*n*k: the q/k/v/o, gate/up/down and lm_head projections, plus attention scores
  (Q K^T) and the weighted sum (A V). Elementwise work (norms, RoPE, SiLU, softmax, the loss) is left out, and the
  embedding lookup is free. A training step costs 3x the forward (backward = grad wrt inputs + grad wrt weights).
  By default attention is counted over the full sequence as the dense kernels compute it (the PaLM / Chinchilla
  convention, 6N + 12*L*H*hd*T per token); causal=True counts only the unmasked half, (T+1)/2 keys per query.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

from megababel.config import LlamaConfig


@dataclass(frozen=True)
class ParameterCounts:
    total: int
    embedding: int
    non_embedding: int
    by_generation: dict[int, int]


def count_parameters(model) -> ParameterCounts:
    """Count a model's parameters from its blocks (any number of generations; under tensor parallelism, the whole
    model's, not this rank's shard)."""
    by_generation: Counter[int] = Counter()
    embedding = 0
    for path, tensor in model.growable_layers():
        for block in tensor.blocks():
            n = math.prod(block.block_meta.shape)     # not numel(): a ZeRO-3 partitioned parameter holds no data
            if tensor.tp_split is not None:       # each rank holds an equal piece of every block
                n *= tensor.tp_split.size
            by_generation[block.block_meta.generation] += n
            if "vocab" in block.block_meta.axes:
                embedding += n
    total = sum(by_generation.values())
    return ParameterCounts(total, embedding, total - embedding, dict(sorted(by_generation.items())))


def matmul_parameters(config: LlamaConfig) -> int:
    """Weights that take part in a matmul per token: every layer projection and lm_head (not the embedding)."""
    d, hd, f = config.hidden_size, config.head_dim, config.intermediate_size
    attention = d * hd * (2 * config.num_attention_heads + 2 * config.num_key_value_heads)
    return config.num_hidden_layers * (attention + 3 * d * f) + config.vocab_size * d


def config_parameters(config: LlamaConfig) -> int:
    """Total parameters of a model with this config (matmul weights + embedding + norm gains)."""
    norms = (2 * config.num_hidden_layers + 1) * config.hidden_size
    return matmul_parameters(config) + config.vocab_size * config.hidden_size + norms


def flops_per_token(config: LlamaConfig, seq_len: int, training: bool = True, causal: bool = False) -> int:
    """FLOPs per token of one forward (training=False) or forward+backward (training=True) pass."""
    if seq_len <= 0:
        raise ValueError(f"seq_len must be positive, got {seq_len}")
    # QK^T and AV: 2 matmuls x 2 FLOPs x heads x head_dim x keys, per query token and layer.
    # Written as (2 x keys) so the causal average (T+1)/2 stays an integer.
    twice_keys = seq_len + 1 if causal else 2 * seq_len
    attention = 2 * config.num_hidden_layers * config.num_attention_heads * config.head_dim * twice_keys
    forward = 2 * matmul_parameters(config) + attention
    return 3 * forward if training else forward
