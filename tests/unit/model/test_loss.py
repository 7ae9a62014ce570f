"""The output layer fused with cross-entropy (megababel.model.loss) against nn.Linear + F.cross_entropy."""
import pytest
import torch
import torch.nn.functional as F

from megababel.model.loss import linear_cross_entropy


def plain(hidden, weight, targets, reduction="mean", mask=None):
    logits = (hidden @ weight.T).float()
    if mask is not None:
        logits = logits.masked_fill(mask, float("-inf"))
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction=reduction)


def inputs(seed=0, batch=3, seq=11, d=16, vocab=50):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(batch, seq, d, generator=g, requires_grad=True)
    weight = torch.randn(vocab, d, generator=g, requires_grad=True)
    targets = torch.randint(0, vocab, (batch, seq), generator=g)
    targets[0, :4] = targets[2, -1] = -100
    return hidden, weight, targets


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("chunk_rows", [1, 7, 33, None])
def test_equals_the_plain_loss_values_and_gradients_in_fp32(reduction, chunk_rows):
    hidden, weight, targets = inputs()
    expected = plain(hidden, weight, targets, reduction)
    expected_grads = torch.autograd.grad(expected * 0.37, (hidden, weight))
    loss = linear_cross_entropy(hidden, weight, targets, reduction=reduction, chunk_rows=chunk_rows)
    grads = torch.autograd.grad(loss * 0.37, (hidden, weight))    # an incoming gradient other than 1
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=0)
    for got, want in zip(grads, expected_grads):      # fp32 rounding, relative to the gradient's scale
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6 * want.abs().max().item())


def test_a_mask_excludes_logits_and_every_ignored_target_gives_zero():
    hidden, weight, targets = inputs(seed=1)
    mask = torch.zeros(50, dtype=torch.bool)
    mask[30:] = True
    targets = targets.clamp(max=29)
    loss = linear_cross_entropy(hidden, weight, targets, mask=mask, chunk_rows=5)
    torch.testing.assert_close(loss, plain(hidden, weight, targets, mask=mask), rtol=1e-6, atol=0)
    loss.backward()
    assert weight.grad[30:].abs().max() == 0           # masked rows get no gradient
    all_ignored = torch.full_like(targets, -100)
    hidden.grad = None
    loss = linear_cross_entropy(hidden, weight, all_ignored, reduction="sum")
    loss.backward()
    assert loss.item() == 0 and hidden.grad.abs().max() == 0
    assert linear_cross_entropy(hidden, weight, all_ignored).isnan()      # a mean over nothing, as F.cross_entropy


def test_only_the_gradients_asked_for_are_made_and_no_grad_gives_the_value():
    hidden, weight, targets = inputs(seed=2)
    with torch.no_grad():
        value = linear_cross_entropy(hidden, weight, targets, chunk_rows=4)
    torch.testing.assert_close(value, plain(hidden, weight, targets), rtol=1e-6, atol=0)
    frozen = weight.detach()
    loss = linear_cross_entropy(hidden, frozen, targets)
    (grad,) = torch.autograd.grad(loss, hidden)
    (expected,) = torch.autograd.grad(plain(hidden, frozen, targets), hidden)
    torch.testing.assert_close(grad, expected, rtol=1e-5, atol=1e-7)


def test_bf16_autocast_matmuls_stay_within_bf16_rounding_of_the_plain_loss():
    hidden, weight, targets = inputs(seed=3, d=64, vocab=300)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = plain(hidden.bfloat16(), weight.bfloat16(), targets)
        loss = linear_cross_entropy(hidden, weight, targets, chunk_rows=8)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, expected, rtol=1e-3, atol=0)
    grad = torch.autograd.grad(loss, weight)[0]
    assert grad.dtype == weight.dtype
    torch.testing.assert_close(grad, torch.autograd.grad(plain(hidden, weight, targets), weight)[0],
                               rtol=0.05, atol=2e-3)


def test_bad_reduction_is_refused():
    hidden, weight, targets = inputs()
    with pytest.raises(ValueError, match="reduction"):
        linear_cross_entropy(hidden, weight, targets, reduction="none")


VOCAB_PARALLEL_RANK = '''
import sys, torch, torch.distributed as dist
from megababel.model.loss import VocabShard, linear_cross_entropy
sys.path.insert(0, sys.argv[1])
from test_loss import inputs, plain
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
hidden, weight, targets = inputs(seed=4, vocab=48)
rows = torch.arange(rank, 48, world)                   # a strided shard: global row -> local row is not an offset
index = torch.full((48,), -1)
index[rows] = torch.arange(len(rows))
local = weight.detach()[rows].clone().requires_grad_()
x = hidden.detach().clone().requires_grad_()
loss = linear_cross_entropy(x, local, targets, shard=VocabShard(index, dist.group.WORLD), chunk_rows=5)
loss.backward()
dist.all_reduce(x.grad)                                 # what the column-parallel layer's input all-reduce does
expected = plain(hidden, weight, targets)
expected.backward()
torch.testing.assert_close(loss, expected, rtol=1e-6, atol=0)
torch.testing.assert_close(x.grad, hidden.grad, rtol=1e-5, atol=1e-6 * hidden.grad.abs().max().item())
torch.testing.assert_close(local.grad, weight.grad[rows], rtol=1e-5, atol=1e-6 * weight.grad.abs().max().item())
print("ok", rank)
'''


def test_vocabulary_parallel_loss_equals_the_plain_one_on_two_ranks(tmp_path):
    """Two gloo ranks each hold every other vocabulary row: the loss, each rank's weight-shard gradient and the
    all-reduced hidden-state gradient equal the unsharded computation."""
    from pathlib import Path

    from megababel.parallel.local_ranks import run_local_ranks
    script = tmp_path / "rank.py"
    script.write_text(VOCAB_PARALLEL_RANK)
    logs = run_local_ranks(2, [script, Path(__file__).parent], timeout=120)
    assert [log.strip().splitlines()[-1] for log in logs] == ["ok 0", "ok 1"]
