"""Schedules: validation errors, learning-rate curves (per generation vs global), Adam state kept vs reset."""
from __future__ import annotations

import pytest
import torch

from megababel.config import ConfigError
from megababel.schedule import PRESETS, parse_schedule

MODEL = dict(hidden_size=64, head_dim=16, num_hidden_layers=2, multiple_of=32, vocab_size=96)


def schedule(training=None, growths=None):
    return parse_schedule(dict(model=MODEL, training=dict(steps=40, lr=1e-3, warmup_steps=4, **(training or {})),
                               growths=growths or []), tokens_per_step=128)


@pytest.mark.parametrize("training, growths, message", [
    (dict(lr_schedule="cosine"), [], "training.lr_schedule"),
    ({}, [dict(at_step=5, hidden_size=96, optimizer_state="fresh")], "growth 0.optimizer_state"),
    (dict(lr_schedule="global"), [dict(at_step=5, hidden_size=96, lr=1e-2)], "lr_schedule: per_generation"),
    ({}, [dict(at_step=5, hidden_size=96), dict(at_step=5, num_hidden_layers=4)], "growth 1.at_step"),
    ({}, [dict(at_step=40, hidden_size=96)], "end of training"),
])
def test_bad_schedules_name_the_field(training, growths, message):
    with pytest.raises(ConfigError, match=message):
        schedule(training, growths)


def test_every_preset_parses():
    for name, spec in PRESETS.items():
        assert parse_schedule(spec, tokens_per_step=2048).steps > 0, name


def test_per_generation_curves_restart_at_birth_and_global_ignores_it():
    per_gen = schedule()
    one = schedule(dict(lr_schedule="global"))
    # a generation born at step 20 warms up from there under per_generation ...
    assert per_gen.group_lr(20, born=20, peak=1e-3, warmup=4) == pytest.approx(1e-3 / 4)
    # ... and follows the same curve as the generation born at 0 under global
    assert one.group_lr(20, born=20, peak=5e-3, warmup=4) == pytest.approx(one.group_lr(20, 0, 1e-3, 4))
    assert one.group_lr(20, 0, 1e-3, 4) == pytest.approx(per_gen.lr_at(20, 0, 1e-3, 4))
    # both decay to min_lr_ratio at the end
    assert per_gen.group_lr(39, 20, 1e-3, 4) == pytest.approx(1e-4, rel=0.1)


@pytest.mark.parametrize("reset", [False, True])
def test_growth_keeps_or_resets_the_adam_state(reset, monkeypatch):
    from megababel.deepspeed_config import load_ds_config
    from megababel.engine import GrowingEngine
    from megababel.parallel import free_port, init_distributed
    # set here, so that they are removed afterwards: subprocesses of later tests must not inherit this port
    for key, value in dict(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                           MASTER_PORT=str(free_port()), DS_ACCELERATOR="cpu").items():
        monkeypatch.setenv(key, value)
    init_distributed()
    sched = schedule(growths=[dict(at_step=3, hidden_size=96, optimizer_state="reset" if reset else "keep")])
    engine = GrowingEngine(sched.model, load_ds_config(0, 2, 1, 1, bf16=False), sched, seed=0)
    g = torch.Generator().manual_seed(0)
    batch = torch.randint(0, 96, (2, 17), generator=g)
    x, y = batch[:, :-1], batch[:, 1:]
    for step in range(3):
        engine.train_step(x, y, step)
    before = engine.evaluate([(x, y)])
    growth = sched.growths[0]
    engine.grow(growth.event, 3, reset_optimizer=growth.optimizer_state == "reset")
    assert engine.evaluate([(x, y)]) == pytest.approx(before, abs=1e-5)      # the function is kept either way
    _, moments, steps = engine.gather()
    old_steps = [s for (generation, _), s in steps.items() if generation == 0]
    new_steps = [s for (generation, _), s in steps.items() if generation == 1]
    assert new_steps == [0.0, 0.0]
    assert old_steps == ([0.0, 0.0] if reset else [3.0, 3.0])
    largest = max(m.abs().max().item() for pair in moments.values() for m in pair)
    assert (largest == 0.0) if reset else (largest > 0.0)
    engine.train_step(x, y, 3)        # and it trains on
    _, moments, steps = engine.gather()
    assert all(m.abs().max() > 0 for (path, _), (m, _) in moments.items() if "norm" not in path)
