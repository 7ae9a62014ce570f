"""Growable layers: blocks assemble into one weight, gradients reach every block, consolidation is exact."""
from __future__ import annotations

import pytest
import torch

from megababel.model.layers import GrowableLinear


def _grown_linear() -> GrowableLinear:
    torch.manual_seed(0)
    layer = GrowableLinear(5, 3, axes=("out", "in"))
    layer.weight_0.data.normal_()
    for generation, shape in enumerate([(4, 7), (6, 7), (9, 10)], start=1):
        layer.grow_to(torch.cat([torch.cat([layer.full_tensor(), torch.randn(layer.full_shape[0], shape[1] - layer.in_features)], 1),
                                 torch.randn(shape[0] - layer.out_features, shape[1])], 0), generation)
    return layer


def test_grow_to_keeps_old_parameters_and_adds_an_l_shape():
    layer = GrowableLinear(5, 3)
    first = layer.weight_0
    layer.grow_to(torch.randn(4, 7), generation=1)
    assert layer.weight_0 is first
    shapes = [(tuple(p.shape), p.block_meta.offset, p.block_meta.generation) for p in layer.blocks()]
    assert shapes == [((3, 5), (0, 0), 0), ((1, 7), (3, 0), 1), ((3, 2), (0, 5), 1)]
    layer.grow_to(torch.randn(4, 9), generation=2)      # only the input grows: one new block, no empty one
    assert [tuple(p.shape) for p in layer.blocks()][-1] == (4, 2) and len(layer.blocks()) == 4
    with pytest.raises(ValueError, match="may only grow"):
        layer.grow_to(torch.randn(3, 9), generation=3)


def test_gradients_of_blocks_are_slices_of_the_dense_gradient():
    layer = _grown_linear()
    dense = torch.nn.Parameter(layer.full_tensor())
    x = torch.randn(8, layer.in_features)
    torch.testing.assert_close(layer(x), x @ dense.T)
    (layer(x) ** 2).sum().backward()
    (x @ dense.T).pow(2).sum().backward()
    for block in layer.blocks():
        torch.testing.assert_close(block.grad, dense.grad[block.block_meta.slices])


def test_consolidate_all_and_a_prefix_of_generations():
    layer = _grown_linear()
    x = torch.randn(8, layer.in_features)
    expected = layer(x).detach()
    n_blocks = len(layer.blocks())
    layer.consolidate(generations=[0, 1])
    assert len(layer.blocks()) == n_blocks - 2       # gen 0 (1 block) + gen 1 (2 blocks) -> 1 block
    assert layer.blocks()[0].block_meta.generation == 0 and tuple(layer.blocks()[0].shape) == (4, 7)
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=0)
    layer.consolidate()
    assert len(layer.blocks()) == 1
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=0)


def test_consolidate_refuses_a_non_rectangle():
    layer = _grown_linear()
    with pytest.raises(ValueError, match="rectangle"):
        layer.consolidate(generations=[0, 2])


def test_autocast_assembles_in_bf16_with_the_same_result_as_one_block():
    layer = _grown_linear()
    twin = GrowableLinear(layer.in_features, layer.out_features, init=layer.full_tensor())
    x = torch.randn(8, layer.in_features)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, y_twin = layer(x), twin(x)
    assert y.dtype == torch.bfloat16 and torch.equal(y, y_twin)
    y.float().pow(2).sum().backward()
    y_twin.float().pow(2).sum().backward()
    for block in layer.blocks():
        assert block.grad.dtype == torch.float32
        torch.testing.assert_close(block.grad, twin.weight_0.grad[block.block_meta.slices])
