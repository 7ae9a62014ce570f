"""Growth operators: exact, trainable, composable, validated."""
from __future__ import annotations

import pytest
import torch

from helpers import tiny_config, train_grown
from megababel import ConfigError, GrowthEvent, Llama, grow

# name -> (config overrides, event); vocab sizes are filled in from the text batch
KINDS = {
    "hidden": ({}, GrowthEvent(hidden_size=96)),
    "hidden_x2": ({}, GrowthEvent(hidden_size=128)),
    "hidden_gqa": (dict(num_key_value_heads=2), GrowthEvent(hidden_size=128)),
    "hidden_one_new_head": ({}, GrowthEvent(hidden_size=80)),
    "hidden_gqa_group_of_3": (dict(hidden_size=48, num_key_value_heads=1), GrowthEvent(hidden_size=96)),
    "hidden_zero_init": ({}, GrowthEvent(hidden_size=96, width_init="zero", heads_init="zero")),
    "ffn": ({}, GrowthEvent(intermediate_size=256)),
    "ffn_odd": ({}, GrowthEvent(intermediate_size=197)),
    "ffn_one_new_unit": ({}, GrowthEvent(intermediate_size=193)),
    "ffn_zero_init": ({}, GrowthEvent(intermediate_size=256, ffn_init="zero")),
    "depth_append": ({}, GrowthEvent(num_hidden_layers=4)),
    "depth_interleave": ({}, GrowthEvent(num_hidden_layers=4, layer_positions="interleave")),
    "depth_positions": ({}, GrowthEvent(num_hidden_layers=3, layer_positions=[0])),
    "depth_zero_init": ({}, GrowthEvent(num_hidden_layers=3, depth_init="zero")),
    "vocab": ({}, "vocab"),
    "combined": (dict(num_key_value_heads=2), "combined"),
}
# inits that zero one side of a new path: exact, but the other side waits one update for its gradient
ZERO_INITS = {"hidden_zero_init", "ffn_zero_init", "depth_zero_init"}


def _setup(kind, text_batch, seed=0):
    ids, vocab = text_batch
    overrides, event = KINDS[kind]
    if event == "vocab":
        return Llama(tiny_config(vocab_size=vocab // 2, **overrides), seed=seed), GrowthEvent(vocab_size=vocab)
    if event == "combined":
        event = GrowthEvent(hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                            layer_positions="interleave", vocab_size=vocab)
        return Llama(tiny_config(vocab_size=vocab // 2, **overrides), seed=seed), event
    return Llama(tiny_config(vocab_size=vocab, **overrides), seed=seed), event


def _logits(model, ids):
    with torch.no_grad():
        return model(ids)[0]


@pytest.mark.parametrize("kind", list(KINDS))
def test_growth_is_exact(kind, text_batch):
    model, event = _setup(kind, text_batch)
    ids = text_batch[0].clamp(max=model.config.vocab_size - 1)   # tokens the old model knows
    before = _logits(model, ids)
    grow(model, event)
    after = _logits(model, ids)[..., : before.shape[-1]]        # vocabulary growth: the old tokens' logits
    assert (after - before).abs().max().item() <= 1e-5


def _new_params(model):
    return {n: p for n, p in model.named_parameters() if p.block_meta.generation == model.generation}


def _new_layer_norm(name, model):
    """Gains of RMSNorms in inserted layers: the layer's branches are exactly zero for ALL inputs (that is what
    function preservation means), so their derivative w.r.t. the normalised input, hence the gain, is zero too."""
    return "layernorm" in name and all(p.block_meta.generation == model.generation
                                       for p in model.layers[int(name.split(".")[1])].parameters())


@pytest.mark.parametrize("kind", [k for k in KINDS if k not in ZERO_INITS])
def test_every_new_tensor_gets_gradient_and_training_lowers_loss(kind, text_batch):
    ids, _ = text_batch
    model, event = _setup(kind, text_batch)
    grow(model, event)
    losses, (first, second) = train_grown(model, ids)
    assert all(_new_layer_norm(n, model) for n in first), f"no gradient in first backward: {first}"
    assert not second, f"no gradient in second backward: {second}"
    assert losses[-1] < losses[0] - 0.1, losses


@pytest.mark.parametrize("kind", sorted(ZERO_INITS))
def test_zero_inits_revive_after_one_update(kind, text_batch):
    ids, _ = text_batch
    model, event = _setup(kind, text_batch)
    grow(model, event)
    new = _new_params(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(2):
        optimizer.zero_grad(set_to_none=True)
        model(ids[:, :-1], ids[:, 1:])[1].backward()
        optimizer.step()
    dead = [n for n, p in new.items() if p.grad is None or p.grad.abs().max() == 0]
    assert not dead


def test_three_growths_compose_and_consolidate(text_batch):
    ids, vocab = text_batch
    model = Llama(tiny_config(vocab_size=vocab // 2, num_key_value_heads=2), seed=1)
    small_ids = ids.clamp(max=vocab // 2 - 1)
    reference = _logits(model, small_ids)
    events = [GrowthEvent(hidden_size=96, num_hidden_layers=3),
              GrowthEvent(intermediate_size=320, vocab_size=vocab),
              GrowthEvent(hidden_size=160, num_hidden_layers=5, layer_positions=[1, 3])]
    previous = reference
    for k, event in enumerate(events, start=1):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # growth must also work on a model in training
        grow(model, event, seed=k)
        current = _logits(model, small_ids)[..., : reference.shape[-1]]
        assert (current - previous).abs().max().item() <= 1e-5
        assert (current - reference).abs().max().item() <= 1e-5
        previous = current
        del optimizer
    assert model.generation == 3
    assert {p.block_meta.generation for p in model.parameters()} == {0, 1, 2, 3}
    full = _logits(model, ids)
    model.consolidate()
    assert all(len(t.blocks()) == 1 for _, t in model.growable_layers())
    assert (_logits(model, ids) - full).abs().max().item() <= 1e-6


def test_blocks_tile_the_full_tensor_and_carry_metadata(text_batch):
    model, event = _setup("combined", text_batch)
    grow(model, event)
    for path, tensor in model.growable_layers():
        covered = torch.zeros(tensor.full_shape, dtype=torch.int32)
        for block in tensor.blocks():
            meta = block.block_meta
            assert meta.full_shape == tensor.full_shape and meta.axes == tensor.axes
            assert tuple(block.shape) == meta.shape
            covered[meta.slices] += 1
            assert torch.equal(tensor.full_tensor()[meta.slices], block.detach())
        assert bool((covered == 1).all()), f"{path}: blocks overlap or leave holes"


def test_depth_copy_stacks_layers():
    model = Llama(tiny_config(), seed=0)
    grow(model, GrowthEvent(num_hidden_layers=4, depth_init="copy"))
    for new, old in ((2, 0), (3, 1)):
        for (_, a), (_, b) in zip(model.layers[new].named_modules(), model.layers[old].named_modules()):
            if hasattr(a, "full_tensor"):
                assert torch.equal(a.full_tensor(), b.full_tensor())


@pytest.mark.parametrize("config_overrides,event,message", [
    ({}, GrowthEvent(hidden_size=32), "would shrink"),
    ({}, GrowthEvent(hidden_size=72), "not a multiple of head_dim"),
    (dict(num_key_value_heads=1), GrowthEvent(hidden_size=80), "key/value group size"),
    ({}, GrowthEvent(num_hidden_layers=4, layer_positions=[0, 0]), "layer_positions"),
    ({}, GrowthEvent(num_hidden_layers=3, layer_positions=[5]), "layer_positions"),
    ({}, GrowthEvent(layer_positions=[0], vocab_size=200), "num_hidden_layers does not grow"),
    ({}, GrowthEvent(vocab_size=200, width_init="magic"), "width_init"),
    ({}, GrowthEvent(), "changes nothing"),
    ({}, GrowthEvent(num_hidden_layers=3, depth_init="copy", copy_from=[7]), "copy_from"),
    (dict(hidden_size=16, intermediate_size=64), GrowthEvent(num_hidden_layers=3), "depth_init='identity'"),
])
def test_invalid_growth_is_refused_before_any_change(config_overrides, event, message):
    model = Llama(tiny_config(**config_overrides), seed=0)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError, match=message):
        grow(model, event)
    assert model.generation == 0
    assert state.keys() == model.state_dict().keys()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_a_grown_model_can_be_rebuilt_from_its_layout(text_batch):
    """What checkpoints and ZeRO-3 growth rely on: same blocks, same names, same function."""
    model, event = _setup("combined", text_batch)
    grow(model, event)
    grow(model, GrowthEvent(intermediate_size=320))
    model.layers[0].mlp.up_proj.consolidate(generations=[0, 1])
    twin = Llama(model.config, layout=model.block_layout(), generation=model.generation)
    assert twin.block_layout() == model.block_layout()
    twin.load_state_dict(model.state_dict(), strict=True)
    assert [p.block_meta for p in twin.parameters()] == [p.block_meta for p in model.parameters()]
    ids = text_batch[0]
    assert torch.equal(_logits(twin, ids), _logits(model, ids))
