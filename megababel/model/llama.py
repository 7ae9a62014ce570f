"""The Llama-2 decoder, built from growable layers (plain single-device model; parallelism is applied elsewhere).

Parameter paths mirror Hugging Face's LlamaForCausalLM (embed_tokens, layers.N.self_attn.q_proj, ..., norm, lm_head)
without the `model.` prefix; each weight is a GrowableLayer whose blocks are `weight_0`, `weight_1`, ...

Rotary embeddings use the Hugging Face "rotate_half" layout: within a head, dims i and i + head_dim/2 form a rotation
pair (Meta's original checkpoints pair 2i with 2i+1). Because we train in the HF layout, q_proj and k_proj export to
`transformers` unchanged, with no permutation.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from megababel.config import LlamaConfig
from megababel.model.layers import GrowableEmbedding, GrowableLinear, GrowableRMSNorm, growable_layers


def rope_cos_sin(seq_len: int, head_dim: int, theta: float, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables of shape [seq_len, head_dim], fp32, in the rotate_half layout (frequencies repeated)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim))
    angles = torch.outer(torch.arange(seq_len, device=device, dtype=torch.float32), inv_freq)
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [..., seq, head_dim]: (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin) with x1, x2 the two halves."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class Uninitialised:
    """values=UNINITIALISED: allocate every tensor without computing initial values (they are about to be
    overwritten, e.g. by a growth copying the old model in). A type of its own, so no dict can mean it by accident."""

    def get(self, path, default=None):
        return default


UNINITIALISED = Uninitialised()


class Builder:
    """Makes the growable tensors of a model: initial values (Hugging Face's Llama init: normal(0,
    initializer_range) weights, unit norm gains, drawn in construction order from one generator) and, when
    rebuilding a grown model, each tensor's block layout. Values are set inside each layer's __init__, so that
    ZeRO-3's zero.Init, which partitions parameters as soon as a module is built, sees them."""

    def __init__(self, config: LlamaConfig, seed: int | None = None, layout: dict | None = None,
                 values: dict | None = None, tp=None):
        self.config, self.layout, self.tp = config, layout or {}, tp
        self.values = values if isinstance(values, Uninitialised) else (values or {})
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None

    def _normal(self, shape):
        if isinstance(self.values, Uninitialised):
            return torch.empty(shape)
        # on the CPU, where the generator is: under ZeRO-3 zero.Init makes new tensors on the GPU by default
        return torch.randn(shape, generator=self.generator, device="cpu") * self.config.initializer_range

    def linear(self, path: str, in_features: int, out_features: int, axes) -> GrowableLinear:
        init, blocks = self.values.get(path, self._normal), self.layout.get(path)
        if self.tp is not None:     # this rank's shard, with the values of the unsharded model
            unit = self.config.head_dim if "q_heads" in axes or "kv_heads" in axes else 1
            return self.tp.make(GrowableLinear, (out_features, in_features), axes, init, blocks, unit=unit)
        return GrowableLinear(in_features, out_features, axes=axes, init=init, blocks=blocks)

    def embedding(self, path: str, num: int, dim: int) -> GrowableEmbedding:
        init, blocks = self.values.get(path, self._normal), self.layout.get(path)
        if self.tp is not None:
            return self.tp.make(GrowableEmbedding, (num, dim), ("vocab", "hidden"), init, blocks)
        return GrowableEmbedding(num, dim, init=init, blocks=blocks)

    def norm(self, path: str, dim: int) -> GrowableRMSNorm:
        ones = torch.empty if isinstance(self.values, Uninitialised) else torch.ones
        return GrowableRMSNorm(dim, self.config.rms_norm_eps, init=self.values.get(path, ones),
                               blocks=self.layout.get(path))


class Attention(nn.Module):
    def __init__(self, config: LlamaConfig, build: Builder, prefix: str):
        super().__init__()
        d, hd = config.hidden_size, config.head_dim
        self.head_dim = hd
        self.q_proj = build.linear(f"{prefix}.q_proj", d, config.num_attention_heads * hd, ("q_heads", "hidden"))
        self.k_proj = build.linear(f"{prefix}.k_proj", d, config.num_key_value_heads * hd, ("kv_heads", "hidden"))
        self.v_proj = build.linear(f"{prefix}.v_proj", d, config.num_key_value_heads * hd, ("kv_heads", "hidden"))
        self.o_proj = build.linear(f"{prefix}.o_proj", config.num_attention_heads * hd, d, ("hidden", "q_heads"))

    # head counts follow the weights, so growth only has to change the weights
    @property
    def num_heads(self) -> int:
        return self.q_proj.out_features // self.head_dim

    @property
    def num_kv_heads(self) -> int:
        return self.k_proj.out_features // self.head_dim

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        batch, seq, _ = x.shape
        h, kvh, hd = self.num_heads, self.num_kv_heads, self.head_dim
        q = self.q_proj(x).view(batch, seq, h, hd).transpose(1, 2)
        k = self.k_proj(x).view(batch, seq, kvh, hd).transpose(1, 2)
        v = self.v_proj(x).view(batch, seq, kvh, hd).transpose(1, 2)
        cos, sin = cos.to(q.dtype), sin.to(q.dtype)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=kvh != h)
        return self.o_proj(y.transpose(1, 2).reshape(batch, seq, h * hd))


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: LlamaConfig, build: Builder, prefix: str):
        super().__init__()
        d, f = config.hidden_size, config.intermediate_size
        self.gate_proj = build.linear(f"{prefix}.gate_proj", d, f, ("ffn", "hidden"))
        self.up_proj = build.linear(f"{prefix}.up_proj", d, f, ("ffn", "hidden"))
        self.down_proj = build.linear(f"{prefix}.down_proj", f, d, ("hidden", "ffn"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, config: LlamaConfig, build: Builder | None = None, prefix: str = ""):
        super().__init__()
        build = build or Builder(config)
        self.input_layernorm = build.norm(f"{prefix}.input_layernorm", config.hidden_size)
        self.self_attn = Attention(config, build, f"{prefix}.self_attn")
        self.post_attention_layernorm = build.norm(f"{prefix}.post_attention_layernorm", config.hidden_size)
        self.mlp = MLP(config, build, f"{prefix}.mlp")

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class Llama(nn.Module):
    """Llama-2 causal language model. `generation` counts the growth events applied so far.

    `layout` (from `block_layout()` of another model, with `generation`) rebuilds a grown model's block structure;
    `values` ({path: full tensor}) gives the weights, else they are freshly initialised. `tp`
    (tensor_parallel.TensorParallel): build this rank's tensor-parallel shard of the same model; `config`, `layout`
    and `values` stay those of the unsharded model, and the logits it returns are this rank's vocabulary shard."""

    def __init__(self, config: LlamaConfig, seed: int | None = None, layout: dict | None = None,
                 generation: int = 0, values: dict | None = None, tp=None):
        super().__init__()
        self.config = config
        self.generation = generation
        build = Builder(config, seed, layout, values, tp)
        self.embed_tokens = build.embedding("embed_tokens", config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, build, f"layers.{i}") for i in range(config.num_hidden_layers))
        self.norm = build.norm("norm", config.hidden_size)
        self.lm_head = build.linear("lm_head", config.hidden_size, config.vocab_size, ("vocab", "hidden"))
        # recompute each decoder layer's activations in backward instead of keeping them (a runtime choice, not part
        # of the config; the engine sets it). Non-reentrant checkpointing re-enters the layer as a module, so
        # ZeRO-3's hooks gather its weights again for the recomputation and TP's collectives run again in order.
        self.activation_checkpointing = False

    def block_layout(self) -> dict:
        """{path: [(offset, shape, generation), ...]} for every growable tensor (unsharded, also under TP)."""
        return {path: tensor.global_layout() for path, tensor in self.growable_layers()}

    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor | None = None, reduction: str = "mean"):
        """(logits, None) without `targets`; with them (None, loss): the next-token cross-entropy over targets !=
        -100 ("mean", or "sum"), computed by lm_head chunk by chunk so that no [tokens, vocabulary] logits exist.
        Under TP the logits are this rank's vocabulary shard and the loss is the whole vocabulary's."""
        seq = input_ids.shape[1]
        if seq > self.config.max_position_embeddings:
            raise ValueError(f"sequence length {seq} exceeds max_position_embeddings "
                             f"{self.config.max_position_embeddings}")
        cos, sin = rope_cos_sin(seq, self.config.head_dim, self.config.rope_theta, input_ids.device)
        x = self.embed_tokens(input_ids)
        checkpointing = self.activation_checkpointing and torch.is_grad_enabled()
        for layer in self.layers:
            x = checkpoint(layer, x, cos, sin, use_reentrant=False) if checkpointing else layer(x, cos, sin)
        if targets is None:
            return self.lm_head(self.norm(x)), None
        return None, self.lm_head(self.norm(x), targets, reduction=reduction)

    def growable_layers(self):
        """(path, GrowableLayer) for every weight, paths in Hugging Face order without the `model.` prefix."""
        return growable_layers(self)

    def consolidate(self):
        """Fold every weight's generations into one block each (function unchanged)."""
        for _, tensor in self.growable_layers():
            tensor.consolidate()
        return self
