"""Per-rank memory of a run, generation by generation (the model between two growths), before launching it
(tools/model_size.py --schedule prints it).

Bytes per parameter follow what DeepSpeed 0.19 allocates (checked against measured runs in bench/README.md,
"Memory planner"); P is the parameters a rank computes with (its tensor-parallel shard: heads, FFN units and
vocabulary rows split over TP, norm gains replicated), dp the data-parallel ranks, w the weight width (2 bf16, 4
fp32):
  ZeRO-3    weights w*P/dp + fp32 master 4*P/dp, gradients w*P/dp (the reduced partitions), Adam 8*P/dp,
            plus two decoder layers gathered at a time (w bytes each); in bf16 the optimizer step adds fp32 copies
            of the gradients (4*P/dp)
  ZeRO-1/2  weights w*P + fp32 master 4*P/dp, gradients w*P (ZeRO-1) or 4*P/dp (ZeRO-2), Adam 8*P/dp
  ZeRO-0    weights 4*P (fp32) or w*P + 4*P (bf16: separate fp32 masters), gradients w*P, Adam 8*P
  (DeepSpeed keeps an fp32 master next to fp32 weights under ZeRO-1/2/3: measured, data_ptr-checked on CPU.)
Activations saved for backward, per token (measured with saved-tensor hooks, tests/unit/plan/test_memory_plan.py): per
decoder layer w*(2h + (3a + 2kv)/tp + 4f/tp) (a: the attention width, heads x head_dim, h unless a head_dim growth
widened the heads) plus the fp32 inputs of its two norms, plus the head: a few hidden-sized tensors, among them
the gradient of the final hidden states, and once per micro-batch the fp32 gradient of lm_head's shard (4*V*h/tp):
the fused loss (megababel/model/loss.py) computes both in the forward pass instead of keeping logits. Activation
checkpointing keeps each layer's input (w*h per token and layer) and recomputes one layer at a time in backward.
A growth (sharded_growth.py) peaks while the grown engine is built: its weights, masters and Adam state (no
gradients yet) plus the defragmentation copy of ZeRO-3's weights, plus this rank's pieces of the old state (not
counted with --growth-spill-dir: they are evictable file pages), plus one full tensor in flight (measured: about 8
fp32 copies of the largest tensor: the gathered old tensor, the grown one and its noise, moments).
A training step's transient workspace: one loss chunk's fp32 logits, log-probabilities and gradient (the fused
loss's chunks hold CHUNK_ELEMENTS logits at most), under ZeRO-3 the gathered
embedding / lm_head and their whole gradients, and ZeRO-2/3 reduce buckets; the optimizer step's: DeepSpeed takes
the gradient norm through an fp64 copy of one optimizer sub-group's gradients (8 bytes per element), and in bf16
steps with fp32 copies of the gradients.
`runtime`: a process with torch and DeepSpeed loaded and its process group started (measured on CPU; a GPU
process also holds the CUDA context, ~0.5 GiB of device memory).
"""
from __future__ import annotations

from dataclasses import dataclass

from megababel.config import LlamaConfig
from megababel.model.loss import CHUNK_ELEMENTS

RUNTIME_BYTES = int(0.3 * 2**30)
GIB = 2**30


def rank_parameters(config: LlamaConfig, tp: int = 1) -> int:
    """Parameters one tensor-parallel rank holds: split tensors / tp, norm gains whole."""
    h, L, f, V = config.hidden_size, config.num_hidden_layers, config.intermediate_size, config.vocab_size
    a, kv = config.attention_width, config.num_key_value_heads * config.head_dim
    split = 2 * V * h + L * (2 * a * h + 2 * kv * h + 3 * f * h)
    return split // tp + (2 * L + 1) * h


def largest_tensor(config: LlamaConfig) -> int:
    """Elements of the largest single weight (unsharded)."""
    h, f, V = config.hidden_size, config.intermediate_size, config.vocab_size
    return max(V * h, f * h, config.attention_width * h)


def activation_parts(config: LlamaConfig, bf16: bool, tp: int = 1) -> dict:
    """Bytes per token that one rank keeps for backward: `layer` (one decoder layer's activations), `layer_input`
    (what activation checkpointing keeps of a layer) and `head` (final norm, lm_head, loss); and `head_fixed`,
    bytes per micro-batch whatever its tokens (the fused loss's fp32 gradient of lm_head)."""
    w = 2 if bf16 else 4
    h, f, V = config.hidden_size, config.intermediate_size, config.vocab_size
    a, kv = config.attention_width, config.num_key_value_heads * config.head_dim
    return dict(layer=w * (2 * h + (3 * a + 2 * kv) // tp + 4 * f // tp) + (8 * h if bf16 else 4 * h),
                layer_input=w * h, head=(4 * w + 4) * h, head_fixed=4 * V * h // tp)


def activation_bytes(config: LlamaConfig, tokens: int, bf16: bool, tp: int = 1, checkpointing: bool = False) -> int:
    """Activations one rank keeps for backward for `tokens` tokens (micro batch x sequence length); with
    checkpointing, at the peak of backward (every layer's input, one recomputed layer and the head)."""
    parts, L = activation_parts(config, bf16, tp), config.num_hidden_layers
    if checkpointing:
        return tokens * (L * parts["layer_input"] + parts["layer"] + parts["head"]) + parts["head_fixed"]
    return tokens * (L * parts["layer"] + parts["head"]) + parts["head_fixed"]


@dataclass
class GenerationMemory:
    """Bytes per rank for one generation of a schedule (0: the initial model, then one per growth)."""
    generation: int
    config: LlamaConfig
    parameters: int
    weights: int
    gradients: int
    adam: int
    activations: int
    activations_checkpointed: int
    workspace: int               # transient in a step: logits and loss work, whole vocabulary tensors, buckets
    optimizer_transient: int     # transient in the optimizer step: DeepSpeed's fp64 copy of a sub-group's gradients
    runtime: int
    growth_peak: int | None      # building this generation from the previous one (None for the first)
    gradients_kept: bool = True  # ZeRO-1/2/3 keep their gradient partitions between steps, ZeRO-0 frees them

    @property
    def state(self) -> int:
        """Between steps: weights, masters, Adam, kept gradients and the runtime."""
        return self.weights + self.adam + self.runtime + (self.gradients if self.gradients_kept else 0)

    def _training(self, activations: int) -> int:
        held = self.weights + self.gradients + self.adam + self.runtime
        return held + max(activations + self.workspace, self.optimizer_transient)

    @property
    def training(self) -> int:
        """Peak while training without checkpointing: weights, masters, gradients and Adam, plus the larger of
        backward's (activations and workspace) and the optimizer step's transient."""
        return self._training(self.activations)

    @property
    def training_checkpointed(self) -> int:
        return self._training(self.activations_checkpointed)


def _state(config: LlamaConfig, dp: int, tp: int, zero_stage: int, bf16: bool) -> tuple[int, int, int]:
    """(weights incl. masters and gathered layers, gradients, Adam) bytes per rank."""
    w = 2 if bf16 else 4
    P = rank_parameters(config, tp)
    if zero_stage == 3:
        layer = rank_parameters(config.replace(num_hidden_layers=1, vocab_size=1), tp)
        return (w + 4) * P // dp + 2 * layer * w, w * P // dp, 8 * P // dp
    if zero_stage in (1, 2):
        gradients = w * P if zero_stage == 1 else 4 * P // dp
        return w * P + 4 * P // dp, gradients, 8 * P // dp
    return (w + 4 if bf16 else 4) * P, w * P, 8 * P


def plan_memory(configs: list[LlamaConfig], world: int, tp: int, zero_stage: int, micro_batch_size: int,
                seq_len: int, bf16: bool = False, growth_spill: bool = False) -> list[GenerationMemory]:
    """Per-rank memory of each generation (configs[0] the initial model, then one per growth)."""
    dp, w = world // tp, 2 if bf16 else 4
    tokens = micro_batch_size * seq_len
    rows = []
    for generation, config in enumerate(configs):
        weights, gradients, adam = _state(config, dp, tp, zero_stage, bf16)
        largest = largest_tensor(config)
        # a step's transient: one loss chunk's fp32 logits, log-probabilities and gradient; under ZeRO-3 the gathered
        # embedding and lm_head and their whole gradients; ZeRO-2/3 reduce buckets (megababel's "auto": max(h^2,
        # 1e7) elements)
        workspace = 3 * 4 * min(tokens * config.vocab_size // tp, CHUNK_ELEMENTS)
        if zero_stage == 3:
            workspace += 4 * w * largest // tp
        if zero_stage >= 2:
            workspace += 2 * 4 * max(config.hidden_size ** 2, 10**7)
        # the gradient norm copies one optimizer sub-group's gradients to fp64 (megababel's "auto" sub-groups: one
        # decoder layer under ZeRO-3; ZeRO-1/2 take the rank's whole partition)
        layer = rank_parameters(config.replace(num_hidden_layers=1, vocab_size=1), tp)
        if zero_stage == 3:
            optimizer_transient = 8 * min(max(layer, 10**7), rank_parameters(config, tp) // dp)
            if bf16:              # the fp32 gradients the optimizer steps with, next to the bf16 partitions
                optimizer_transient += 4 * rank_parameters(config, tp) // dp
        else:
            optimizer_transient = 8 * rank_parameters(config, tp) // dp if zero_stage else 0
        growth_peak = None
        if generation:
            old = rank_parameters(configs[generation - 1], tp)
            # ZeRO-0 keeps the old weights' fp32 values (its moments become the new Adam state as they are)
            pieces = 0 if growth_spill else (12 * old // dp if zero_stage else 4 * old)
            build_copy = w * rank_parameters(config, tp) // dp if zero_stage == 3 else 0
            # one tensor in flight: measured ~8 fp32 copies of the largest tensor (gathered old tensor and its
            # gather buffer, grown tensor and its noise, moments); ZeRO-0 gathers nothing over data parallelism
            copies = 8 if zero_stage else 6
            growth_peak = weights + adam + build_copy + pieces + copies * 4 * largest + RUNTIME_BYTES
        rows.append(GenerationMemory(generation, config, rank_parameters(config, tp), weights, gradients, adam,
                                activation_bytes(config, tokens, bf16, tp),
                                activation_bytes(config, tokens, bf16, tp, checkpointing=True), workspace,
                                optimizer_transient, RUNTIME_BYTES, growth_peak, gradients_kept=zero_stage > 0))
    return rows
