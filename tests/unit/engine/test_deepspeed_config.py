"""DeepSpeed configs: ZeRO buffer sizes derived from the model (and again at every growth), explicit values win."""
from __future__ import annotations

import pytest

from megababel import LlamaConfig
from megababel.engine.deepspeed_config import load_ds_config, model_sized


def test_auto_sizes_follow_the_model_and_explicit_numbers_win(tmp_path):
    config = LlamaConfig(hidden_size=512, head_dim=128, num_hidden_layers=8, vocab_size=32000)
    zero = model_sized(load_ds_config(3, 2, 1, 1, bf16=False), config)["zero_optimization"]
    layer = 4 * 512 * 512 + 3 * 512 * config.intermediate_size + 2 * 512
    assert zero["reduce_bucket_size"] == 10_000_000           # hidden^2 = 262144, under the floor
    assert zero["stage3_prefetch_bucket_size"] == int(0.9 * 512 * 512)
    assert zero["stage3_param_persistence_threshold"] == 5120
    big = LlamaConfig(hidden_size=4096, head_dim=128, num_hidden_layers=2, vocab_size=32000)
    big_zero = model_sized(load_ds_config(3, 2, 1, 1, bf16=False), big)["zero_optimization"]
    assert big_zero["reduce_bucket_size"] == 4096**2
    # optimizer sub-groups: one decoder layer (DeepSpeed's gradient norm copies a whole sub-group to fp64)
    assert big_zero["sub_group_size"] == 4 * 4096 * 4096 + 3 * 4096 * big.intermediate_size + 2 * 4096
    assert zero["sub_group_size"] == 10_000_000
    assert zero["stage3_max_live_parameters"] == zero["stage3_max_reuse_distance"] == 2 * layer
    # a user's config: a number stays, an absent field is derived, "auto" where megababel derives nothing is refused
    user = tmp_path / "ds.json"
    user.write_text('{"zero_optimization": {"stage": 3, "reduce_bucket_size": 12345}, "gradient_clipping": 1.0, '
                    '"optimizer": {"type": "AdamW", "params": {"lr": 0.001}}}')
    zero = model_sized(load_ds_config(3, 2, 1, 1, bf16=False, path=str(user)), config)["zero_optimization"]
    assert zero["reduce_bucket_size"] == 12345 and zero["stage3_prefetch_bucket_size"] == int(0.9 * 512 * 512)
    with pytest.raises(ValueError, match=r"\['allgather_bucket_size'\] cannot be 'auto'"):
        model_sized(dict(zero_optimization=dict(stage=3, allgather_bucket_size="auto")), config)
    assert model_sized(load_ds_config(0, 2, 1, 1, bf16=False), config)["zero_optimization"] == {"stage": 0}


def test_a_growth_re_derives_the_zero3_sizes(distributed_env):
    from megababel.engine.growing_engine import GrowingEngine
    from megababel.engine import init_distributed
    from megababel.plan.schedule import parse_schedule
    init_distributed()
    schedule = parse_schedule(dict(model=dict(hidden_size=64, head_dim=16, num_hidden_layers=2, vocab_size=96,
                                              multiple_of=32), training=dict(steps=20),
                                   growths=[dict(at_step=3, hidden_size=128, intermediate_size=256)]), 64)
    engine = GrowingEngine(schedule.model, load_ds_config(3, 2, 1, 1, bf16=False), schedule, seed=0)
    assert engine._ds.zero_prefetch_bucket_size() == int(0.9 * 64 * 64)
    assert engine._ds.zero_param_persistence_threshold() == 640
    engine.grow(schedule.growths[0], 3)
    assert engine._ds.zero_prefetch_bucket_size() == int(0.9 * 128 * 128)
    assert engine._ds.zero_param_persistence_threshold() == 1280
    engine.close()


def test_a_module_engine_trains_any_module_and_closes(distributed_env):
    """ModuleEngine (bench/gpu_speed.py's transformers reference) steps a plain module in a DeepSpeed engine of our
    config, without the caller importing DeepSpeed, and close() releases it."""
    import torch
    from megababel.engine import init_distributed
    from megababel.engine.module_engine import ModuleEngine
    init_distributed()
    torch.manual_seed(0)
    module = torch.nn.Linear(8, 1)
    engine = ModuleEngine(module, load_ds_config(0, 4, 1, 1, bf16=False))
    x = torch.randn(4, 8)
    losses = []
    for _ in range(3):
        loss = engine(x.to(engine.device)).pow(2).mean()
        engine.backward_step(loss)
        losses.append(loss.item())
    assert losses[2] < losses[0]                       # the optimizer stepped
    engine.close()
    assert engine._ds is None
    engine.close()                                     # idempotent
