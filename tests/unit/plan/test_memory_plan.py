"""The memory planner (megababel/plan/memory.py, tools/model_size.py --schedule): its activation model against the
tensors autograd really saves, and the tool's checks. Its state model is checked against measured runs in
bench/README.md ("Memory planner")."""
from __future__ import annotations

import pytest
import torch

from megababel import Llama, LlamaConfig
from megababel.plan.memory import activation_bytes, activation_parts, plan_memory, rank_parameters
from megababel.model.counters import config_parameters

CONFIGS = [dict(hidden_size=256, head_dim=64, num_hidden_layers=4, vocab_size=8000),
           dict(hidden_size=512, head_dim=128, num_hidden_layers=2, vocab_size=2000, intermediate_size=2048,
                num_key_value_heads=2),
           # after a head_dim growth: 4 heads of 128 on a 256-wide residual stream (attention width 512)
           dict(hidden_size=256, head_dim=128, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2,
                vocab_size=2000)]


def saved_for_backward(config: LlamaConfig, batch: int, seq: int, dtype, checkpointing: bool) -> int:
    """Bytes of the tensors autograd saves in one forward (distinct storages, parameters excluded)."""
    model = Llama(config, seed=0).to(dtype)
    model.activation_checkpointing = checkpointing
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    ids = torch.randint(0, config.vocab_size, (batch, seq + 1), generator=torch.Generator().manual_seed(0))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(ids[:, :-1], ids[:, 1:])
    return sum(n for ptr, n in seen.items() if ptr not in params)


@pytest.mark.parametrize("spec", CONFIGS)
@pytest.mark.parametrize("bf16", [False, True])
def test_activation_estimate_is_within_20_percent_of_what_autograd_saves(spec, bf16):
    config = LlamaConfig(**spec)
    measured = saved_for_backward(config, 2, 128, torch.bfloat16 if bf16 else torch.float32, checkpointing=False)
    assert activation_bytes(config, 256, bf16) == pytest.approx(measured, rel=0.2)
    # with checkpointing the forward keeps each layer's input and the head (backward recomputes one layer on top)
    kept = saved_for_backward(config, 2, 128, torch.bfloat16 if bf16 else torch.float32, checkpointing=True)
    parts = activation_parts(config, bf16)
    assert 256 * (config.num_hidden_layers * parts["layer_input"] + parts["head"]) + parts["head_fixed"] == \
        pytest.approx(kept, rel=0.2)
    assert activation_bytes(config, 256, bf16, checkpointing=True) == \
        256 * (config.num_hidden_layers * parts["layer_input"] + parts["layer"] + parts["head"]) + parts["head_fixed"]


@pytest.mark.parametrize("spec", CONFIGS)
def test_a_ranks_parameters_without_tensor_parallelism_are_the_models(spec):
    """The planner's and the counters' parameters are the model's, also where the attention is wider than hidden."""
    config = LlamaConfig(**spec)
    assert rank_parameters(config) == config_parameters(config) == sum(p.numel() for p in Llama(config).parameters())


def test_zero3_spreads_the_state_and_tensor_parallelism_splits_it():
    config = LlamaConfig(hidden_size=1024, head_dim=128, num_hidden_layers=8, vocab_size=32000)
    assert rank_parameters(config) == config_parameters(config)
    assert rank_parameters(config, 4) == pytest.approx(config_parameters(config) / 4, rel=0.01)
    one, = plan_memory([config], 1, 1, 3, 1, 128)
    eight, = plan_memory([config], 8, 1, 3, 1, 128)
    assert eight.adam == one.adam // 8 and eight.gradients == one.gradients // 8
    zero0, = plan_memory([config], 8, 1, 0, 1, 128)
    assert zero0.adam == one.adam            # ZeRO-0 replicates everything
    grown = config.replace(hidden_size=1536, num_attention_heads=12, num_key_value_heads=12)
    kept, spilled = (plan_memory([config, grown], 2, 1, 3, 1, 128, growth_spill=s)[1] for s in (False, True))
    assert kept.growth_peak - spilled.growth_peak == 12 * rank_parameters(config) // 2


def test_planner_cli_prints_every_generation_and_refuses_an_indivisible_layout(capsys):
    from megababel.cli import model_size
    rows = model_size.main(["--schedule", "seed_2x", "--world", "2", "--zero-stage", "3", "--micro-batch-size", "1",
                            "--seq-len", "128", "--bf16"])
    out = capsys.readouterr().out
    assert len(rows) == 5 and "growth peak" in out and out.count("\n") >= 7
    assert [r.generation for r in rows] == [0, 1, 2, 3, 4]
    assert rows[0].growth_peak is None and None not in [r.growth_peak for r in rows[1:]]
    assert rows[-1].growth_peak > rows[-1].training - rows[-1].gradients - rows[-1].activations
    with pytest.raises(SystemExit):
        model_size.main(["--schedule", "seed_2x", "--world", "2", "--tp", "2"])
    assert "num_attention_heads=5" in capsys.readouterr().err
