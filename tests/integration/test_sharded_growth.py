"""Sharded growth (megababel/engine/sharded_growth.py) equals the unsharded growth bit for bit, weights and Adam moments,
on 1, 2 and 4 ranks, tensor parallel 1 and 2, ZeRO-0 and ZeRO-3 (plus ZeRO-1/2, bf16 and the pieces spilled to a
mapped file): real engines, gloo, CPU."""
from __future__ import annotations


import pytest
import torch

from megababel.parallel.local_ranks import run_local_ranks
from megababel import Llama, grow
from megababel.growth.operators import GrowthTransform

from helpers import HELPERS

WORKER = HELPERS / "growth_worker.py"
SEED = 7       # growth_worker.SEED

LAYOUTS = [(0, 1, 1), (0, 2, 1), (0, 2, 2), (0, 4, 1), (0, 4, 2),
           (3, 1, 1), (3, 2, 1), (3, 2, 2), (3, 4, 1), (3, 4, 2)]
EXTRA = [(1, 2, 1, False, False), (2, 2, 2, False, False), (3, 2, 1, True, False), (3, 2, 2, False, True),
         (0, 2, 1, True, True)]


def run(tmp_path, stage, world, tp, bf16=False, spill=False, head_dim=False, kv_heads=None) -> list:
    out = tmp_path / f"z{stage}_w{world}_tp{tp}{'_bf16' if bf16 else ''}.pt"
    spill_dir = tmp_path / "spill"
    spill_dir.mkdir()
    run_local_ranks(world, [WORKER, stage, tp, out, *(["--bf16"] if bf16 else []),
                            *(["--spill-dir", spill_dir] if spill else []), *(["--head-dim"] if head_dim else []),
                            *(["--kv-heads", kv_heads] if kv_heads else [])])
    assert not list(spill_dir.iterdir())        # the spill files are unlinked as soon as they are mapped
    records = torch.load(out, weights_only=False)
    assert [r["spilled"] for r in records] == ([1, 2] if spill else [0, 0])
    return records


def unsharded_growth(record) -> tuple[Llama, GrowthTransform]:
    before = record["before"]
    model = Llama(before["config"], layout=before["layout"], generation=before["generation"],
                  values=before["values"])
    step = GrowthTransform(model.config, model.block_layout(), model.generation, record["event"], seed=SEED)
    grow(model, record["event"], seed=SEED)
    return model, step


def check_bit_identical(records):
    for number, record in enumerate(records):
        model, step = unsharded_growth(record)
        after = record["after"]
        assert after["layout"] == model.block_layout() == step.layout, number
        for path, tensor in model.growable_layers():
            expected = tensor.full_tensor()
            assert torch.equal(after["values"][path], expected), (number, path)
            for index in range(len(tensor.blocks())):
                source = step.old_block(path, index)
                moments = after["moments"].get((path, index))
                if source is None:          # a new block starts from zero moments
                    assert moments is None or all(not m.any() for m in moments), (number, path, index)
                else:       # moved with their block; rescaled where the growth rescaled the rows (head_dim: q)
                    old, scale = record["before"]["moments"][source], step.moment_scale(path)
                    if scale != 1:
                        old = (old[0] * scale, old[1] * (scale * scale))
                    assert all(torch.equal(a, b) for a, b in zip(moments, old)), (number, path, index)
        # the growth changed something, and the moments that moved are not all zero
        assert any(v.shape != after["values"][p].shape for p, v in record["before"]["values"].items()
                   if p in after["values"])
        assert any(m.abs().max() > 0 for pair in record["before"]["moments"].values() for m in pair)


@pytest.mark.slow
@pytest.mark.parametrize("stage,world,tp", LAYOUTS)
def test_sharded_growth_is_bit_identical_to_the_unsharded_growth(tmp_path, stage, world, tp):
    check_bit_identical(run(tmp_path, stage, world, tp))


@pytest.mark.slow
@pytest.mark.parametrize("stage,world,tp,bf16,spill", EXTRA)
def test_sharded_growth_under_zero_1_2_bf16_and_spilled_to_disk(tmp_path, stage, world, tp, bf16, spill):
    check_bit_identical(run(tmp_path, stage, world, tp, bf16, spill))


@pytest.mark.slow
@pytest.mark.parametrize("stage,world,tp,bf16", [(0, 1, 1, False), (2, 2, 1, False), (3, 2, 1, True),
                                                 (3, 4, 2, False)])
def test_sharded_head_dim_growth_is_bit_identical_to_the_unsharded_growth(tmp_path, stage, world, tp, bf16):
    """head_dim 16 -> 32 with width, FFN, depth and vocabulary, then 32 -> 64 alone: strided blocks and rescaled q
    moments: ZeRO-0, ZeRO-2 and ZeRO-3 (bf16) on 2 ranks, and TP 2 x ZeRO-3 on 4 ranks (each head whole on one
    rank)."""
    records = run(tmp_path, stage, world, tp, bf16=bf16, head_dim=True)
    assert [r["after"]["config"].head_dim for r in records] == [32, 64]
    check_bit_identical(records)


@pytest.mark.slow
def test_head_dim_growth_under_tp4_is_bit_identical(tmp_path):
    """TP 4 (plain multi-head attention, so that 4 divides the key/value heads), ZeRO-0, 4 ranks."""
    records = run(tmp_path, 0, 4, 4, head_dim=True, kv_heads=4)
    assert [r["after"]["config"].head_dim for r in records] == [32, 64]
    check_bit_identical(records)


def test_a_tensor_grows_alike_whatever_else_is_grown():
    """Random values are keyed by tensor: growing one tensor alone gives what the whole-model growth gives."""
    from megababel import GrowthEvent, LlamaConfig
    config = LlamaConfig(hidden_size=64, head_dim=16, num_hidden_layers=2, intermediate_size=96, vocab_size=100)
    model = Llama(config, seed=0)
    event = GrowthEvent(hidden_size=96, intermediate_size=128, num_hidden_layers=3)
    step = GrowthTransform(config, model.block_layout(), model.generation, event, seed=3)
    old = dict(model.growable_layers())
    alone = step.grown("layers.1.mlp.down_proj", lambda path: old[path].full_tensor())
    new_layer = step.grown("layers.2.self_attn.o_proj", lambda path: old[path].full_tensor())
    grow(model, event, seed=3)
    grown = dict(model.growable_layers())
    assert torch.equal(alone, grown["layers.1.mlp.down_proj"].full_tensor())
    assert torch.equal(new_layer, grown["layers.2.self_attn.o_proj"].full_tensor())
    assert new_layer.abs().max() > 0          # an identity layer's output columns cancel, they are not zero
