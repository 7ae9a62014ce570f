"""The output layer fused with cross-entropy, a chunk of tokens at a time, so that the whole batch's fp32 logits
never exist. At 8 x 2048 tokens and a vocabulary of 32000 they are 2 GiB, 4 GiB with their gradient, plus the bf16
copies; here the peak is one chunk's (CHUNK_ELEMENTS fp32 values, 64 MiB).

With gradients wanted, each chunk's gradient is computed during the forward pass (softmax minus one-hot, times the
weight and times the hidden states) and only two gradients are kept: the hidden states' (the size of the hidden
states) and the weight's (fp32, the size of the weight). Backward only scales them by the incoming gradient. No
logits are kept for backward and none are recomputed, so the saving costs no FLOPs.

Under tensor parallelism each rank holds a vocabulary shard of the weight; per chunk only each token's max, sum of
exponentials and target logit cross ranks. Each rank's hidden-state gradient is then a partial sum, which the
column-parallel layer's input all-reduce completes.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

CHUNK_ELEMENTS = 2**24     # fp32 logits per chunk


class VocabShard:
    """This rank's part of a vocabulary-parallel output layer: `index` maps a global token id to its row in the
    local weight shard (-1 where another rank holds it); `group` is the tensor-parallel process group."""

    def __init__(self, index: torch.Tensor, group):
        self.index, self.group = index, group


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *,
                         reduction: str = "mean", shard: VocabShard | None = None,
                         mask: torch.Tensor | None = None, chunk_rows: int | None = None) -> torch.Tensor:
    """Cross-entropy of logits = hidden @ weight.T against `targets` (ignored where -100), computed in fp32.

    `hidden` [..., d] and `targets` [...]; `weight` [vocabulary (shard), d]. `reduction`: "mean" over the targets
    that count, or "sum". `mask` (bool, [vocabulary]): logits excluded from the softmax (out-of-stage tokens). Under
    autocast the matmuls run in its dtype, as nn.Linear's would."""
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    device = hidden.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
    rows = chunk_rows or max(1, CHUNK_ELEMENTS // weight.shape[0])
    return _LinearCrossEntropy.apply(hidden.reshape(-1, hidden.shape[-1]), weight, targets.reshape(-1), shard, mask,
                                     reduction, rows, dtype)


def _target_log_probs(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor, shard: VocabShard | None,
                      want_grad: bool):
    """One chunk's fp32 logits -> (log-probability of each target [rows, 1], d loss / d logits unscaled or None):
    softmax minus one-hot, zero on ignored rows. Without TP through log_softmax, so that the loss has the bits of
    F.cross_entropy on the same logits."""
    if shard is None:
        column = targets.clamp(min=0)
        log_probs = torch.log_softmax(logits, dim=-1)
        picked = log_probs.gather(1, column[:, None])
        grad = log_probs.exp_() if want_grad else None
    else:
        top = logits.max(dim=-1).values
        dist.all_reduce(top, op=dist.ReduceOp.MAX, group=shard.group)
        total = (logits - top[:, None]).exp().sum(dim=-1)
        dist.all_reduce(total, group=shard.group)
        lse = top + total.log()
        column = shard.index[targets.clamp(min=0)]
        picked = torch.where(column >= 0, logits.gather(1, column.clamp(min=0)[:, None]).squeeze(1), 0.0)
        dist.all_reduce(picked, group=shard.group)
        picked = (picked - lse)[:, None]
        grad = logits.sub_(lse[:, None]).exp_() if want_grad else None
    if grad is not None:
        here = (valid & (column >= 0)).nonzero().squeeze(1)
        grad[here, column[here]] -= 1.0
        grad[~valid] = 0.0
    return picked, grad


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, shard, mask, reduction, rows, dtype):
        want_hidden, want_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        h, w = hidden.to(dtype), weight.to(dtype)
        valid = targets != -100
        scale = 1.0 / valid.sum().clamp(min=1).float() if reduction == "mean" else 1.0
        grad_hidden = torch.empty_like(h) if want_hidden else None
        grad_weight = torch.zeros(w.shape, dtype=torch.float32, device=w.device) if want_weight else None
        picked = []
        with torch.autocast(hidden.device.type, enabled=False):
            for first in range(0, h.shape[0], rows):
                part = slice(first, first + rows)
                logits = (h[part] @ w.T).float()
                if mask is not None:
                    logits.masked_fill_(mask, float("-inf"))
                log_prob, grad = _target_log_probs(logits, targets[part], valid[part], shard,
                                                   want_hidden or want_weight)
                picked.append(log_prob)
                if grad is not None:
                    grad = (grad * scale).to(dtype)
                    if want_hidden:
                        grad_hidden[part] = grad @ w
                    if want_weight:
                        grad_weight += grad.T @ h[part]
            # F.cross_entropy's own last step (nll_loss over [tokens, 1]), so that mean and sum are its bits
            loss = F.nll_loss(torch.cat(picked), torch.where(valid, 0, -100), ignore_index=-100, reduction=reduction)
        ctx.save_for_backward(*(g for g in (grad_hidden, grad_weight) if g is not None))
        ctx.want, ctx.dtypes = (want_hidden, want_weight), (hidden.dtype, weight.dtype)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        saved = list(ctx.saved_tensors)
        grads = [(saved.pop(0) * grad_loss).to(dtype) if want else None for want, dtype in zip(ctx.want, ctx.dtypes)]
        return (*grads, None, None, None, None, None, None)
