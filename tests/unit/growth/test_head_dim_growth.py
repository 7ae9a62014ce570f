"""head_dim growth (growth/operators.py, HeadDimPlan): every head k times wider, RoPE exact, alone or with any other
growth; old rows keep their blocks (strided), new ones train."""
from __future__ import annotations

import math

import pytest
import torch

from helpers import tiny_config, train_grown
from megababel import ConfigError, GrowthEvent, Llama, grow
from megababel.growth import GrowthTransform

# name -> (config overrides, event); hidden 64 = 4 heads of 16 (MHA) or 4 query heads on 2 kv heads (GQA)
KINDS = {
    "mha_alone": ({}, GrowthEvent(head_dim=32)),
    "gqa_alone": (dict(num_key_value_heads=2), GrowthEvent(head_dim=32)),
    "mha_x3": ({}, GrowthEvent(head_dim=48)),
    "gqa_with_width": (dict(num_key_value_heads=2), GrowthEvent(head_dim=32, hidden_size=128)),
    "gqa_with_width_and_heads": (dict(num_key_value_heads=2), GrowthEvent(head_dim=32, hidden_size=256)),
    "mha_combined": ({}, GrowthEvent(head_dim=32, hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                                     layer_positions="interleave", vocab_size="x2")),
    "gqa_combined": (dict(num_key_value_heads=2), GrowthEvent(head_dim=32, hidden_size=192, intermediate_size=320,
                                                              num_hidden_layers=3, vocab_size="x2")),
    # the narrow start of a 3-generation plan: 4 heads of 16 on 64 -> 4 heads of 32 on 96 (attention 128 wide)
    "gqa_explicit_heads": (dict(num_key_value_heads=2), GrowthEvent(head_dim=32, hidden_size=96,
                                                                    num_attention_heads=4)),
    "explicit_heads_only": ({}, GrowthEvent(num_attention_heads=6)),
}


def _setup(kind, text_batch, seed=0, dtype=torch.float32):
    ids, vocab = text_batch
    overrides, event = KINDS[kind]
    if event.vocab_size == "x2":
        event = GrowthEvent(**{**vars(event), "vocab_size": vocab})
        vocab //= 2
    model = Llama(tiny_config(vocab_size=vocab, **overrides), seed=seed).to(dtype)
    return model, event, ids.clamp(max=vocab - 1)


def _logits(model, ids):
    with torch.no_grad():
        return model(ids)[0].float()


@pytest.mark.parametrize("kind", list(KINDS))
def test_head_dim_growth_is_exact_in_fp32(kind, text_batch):
    model, event, ids = _setup(kind, text_batch)
    before = _logits(model, ids)
    grow(model, event)
    assert model.config.head_dim == (event.head_dim or 16)
    after = _logits(model, ids)[..., : before.shape[-1]]
    assert (after - before).abs().max().item() <= 1e-5


@pytest.mark.parametrize("kind", ["mha_alone", "gqa_with_width"])
def test_head_dim_growth_in_bf16_changes_logits_by_bf16_rounding_only(kind, text_batch):
    """The grown bf16 model differs from the bf16 original only by rounding (the q rows' sqrt(2) and the noise do
    not round exactly in bf16): far below what any real change of the function does."""
    model, event, ids = _setup(kind, text_batch, dtype=torch.bfloat16)
    before = _logits(model, ids)
    grow(model, event)
    after = _logits(model, ids)
    assert (after - before).abs().max().item() <= 0.05 * before.abs().max().item()
    assert torch.equal(after.argmax(-1), before.argmax(-1)) or (after - before).abs().mean() < 1e-2


def test_rope_frequencies_of_the_old_dims_are_kept():
    """The fact the map rests on: pair k*i of a k*d-wide head turns at pair i's frequency of a d-wide head."""
    theta, d, k = 10000.0, 16, 3
    old = 1.0 / theta ** (torch.arange(0, d, 2).double() / d)
    new = 1.0 / theta ** (torch.arange(0, k * d, 2).double() / (k * d))
    assert torch.allclose(new[::k], old, rtol=0, atol=1e-15)


@pytest.mark.parametrize("kind", ["mha_alone", "gqa_with_width_and_heads"])
def test_new_parameters_train(kind, text_batch):
    """Every new block gets gradient in the first backward, but the new k rows: a new rotary pair stays exact only
    with its q side or its k side zero, and the k side's gradient is proportional to the q side. They get
    gradient in the second, once the q rows have moved."""
    model, event, ids = _setup(kind, text_batch)
    grow(model, event)
    losses, (first, second) = train_grown(model, ids)
    assert first and all(".k_proj." in n for n in first), first
    assert not second, second
    assert losses[-1] < losses[0] - 0.1, losses


def test_old_rows_become_strided_blocks_and_blocks_tile(text_batch):
    model, event, _ = _setup("gqa_with_width_and_heads", text_batch)
    grow(model, event)
    q = model.layers[0].self_attn.q_proj
    old_block = q.blocks()[0].block_meta
    assert (old_block.offset, old_block.stride, old_block.generation) == ((0, 0), (2, 1), 0)
    for path, tensor in model.growable_layers():
        covered = torch.zeros(tensor.full_shape, dtype=torch.int32)
        for block in tensor.blocks():
            covered[block.block_meta.slices] += 1
            assert torch.equal(tensor.full_tensor()[block.block_meta.slices], block.detach())
        assert bool((covered == 1).all()), f"{path}: blocks overlap or leave holes"


def test_a_narrow_start_reaches_the_final_heads_through_a_generation_whose_attention_is_wider(text_batch):
    """64 = 4 heads of 16 -> 96 with 4 heads of 32 (attention 128 wide) -> 128 with the same 4 heads: the final model
    is the one a 2-head-of-32 start reaches, and every step is exact."""
    model, _, ids = _setup("gqa_alone", text_batch)
    reference = _logits(model, ids)
    grow(model, GrowthEvent(head_dim=32, hidden_size=96, num_attention_heads=4), seed=1)
    assert (model.config.hidden_size, model.config.attention_width) == (96, 128)
    grow(model, GrowthEvent(hidden_size=128, num_attention_heads=4), seed=2)
    assert (model.config.hidden_size, model.config.num_attention_heads, model.config.head_dim) == (128, 4, 32)
    assert (_logits(model, ids) - reference).abs().max().item() <= 1e-5


def test_grown_twice_and_rebuilt_from_its_layout(text_batch):
    """A second head_dim growth multiplies the strides again; a head-count growth after one appends heads; the
    layout rebuilds the same model (what checkpoints and ZeRO-3 growth rely on)."""
    model, _, ids = _setup("gqa_alone", text_batch)
    reference = _logits(model, ids)
    for seed, event in enumerate([GrowthEvent(head_dim=32), GrowthEvent(hidden_size=128),
                                  GrowthEvent(head_dim=64, intermediate_size=256)], start=1):
        grow(model, event, seed=seed)
        assert (_logits(model, ids) - reference).abs().max().item() <= 1e-5
    assert model.layers[0].self_attn.q_proj.blocks()[0].block_meta.stride == (4, 1)
    twin = Llama(model.config, layout=model.block_layout(), generation=model.generation)
    twin.load_state_dict(model.state_dict(), strict=True)
    assert torch.equal(_logits(twin, ids), _logits(model, ids))
    model.consolidate()
    assert (_logits(model, ids) - reference).abs().max().item() <= 1e-5


def test_the_q_rows_moments_are_rescaled_like_their_gradients():
    config = tiny_config()
    model = Llama(config, seed=0)
    transform = GrowthTransform(config, model.block_layout(), 0, GrowthEvent(head_dim=64))
    assert transform.moment_scale("layers.0.self_attn.q_proj") == pytest.approx(1 / math.sqrt(4))
    assert transform.moment_scale("layers.0.self_attn.k_proj") == 1.0
    assert transform.moment_scale("layers.0.mlp.up_proj") == 1.0


def test_the_hugging_face_model_of_a_grown_model_has_its_logits(text_batch):
    from transformers import LlamaForCausalLM

    from megababel.hf.adapter import to_hf_config, to_hf_state_dict
    model, event, ids = _setup("gqa_with_width", text_batch)
    grow(model, GrowthEvent(head_dim=32))
    hf = LlamaForCausalLM(to_hf_config(model.config)).eval()
    hf.load_state_dict(to_hf_state_dict(model), strict=True)
    assert hf.config.head_dim == 32 and hf.config.num_attention_heads * 32 != hf.config.hidden_size
    with torch.no_grad():
        assert torch.allclose(hf(ids).logits, _logits(model, ids), atol=1e-5)


@pytest.mark.parametrize("config_overrides,event,message", [
    ({}, GrowthEvent(head_dim=24), "not a whole multiple"),
    ({}, GrowthEvent(head_dim=8), "would shrink"),
    ({}, GrowthEvent(head_dim=32, hidden_size=80), "not a multiple of head_dim 32"),
    ({}, GrowthEvent(head_dim=32, hidden_size=96), "gives 3 heads of head_dim 32, fewer than the 4"),
    (dict(num_key_value_heads=1), GrowthEvent(head_dim=32, hidden_size=160), "key/value group size 4"),
    (dict(num_key_value_heads=2), GrowthEvent(num_attention_heads=5), "num_attention_heads 5 is not a multiple"),
    ({}, GrowthEvent(num_attention_heads=2), "would shrink"),
])
def test_invalid_head_dim_growth_is_refused(config_overrides, event, message):
    model = Llama(tiny_config(**config_overrides), seed=0)
    with pytest.raises(ConfigError, match=message):
        grow(model, event)
    assert model.generation == 0 and model.config.head_dim == 16 and model.config.num_attention_heads == 4
