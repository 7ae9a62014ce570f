"""The planner's wall-clock estimate (megababel/plan/wall_clock.py), reproduced by hand on a small table."""
import json
import math

import pytest

from megababel.config import ConfigError, LlamaConfig
from megababel.model.counters import config_parameters, flops_per_token
from megababel.plan.planner import plan_growth
from megababel.plan.wall_clock import ThroughputTable, wall_clock

TABLE = json.dumps({"devices": {"toy": {"label": "a toy device", "rows": [     # FLOP/s = 1000 x parameters
    {"parameters": 1e8, "flops_per_s": 1e11}, {"parameters": 1e4, "flops_per_s": 1e7}]}}})


def test_throughput_is_interpolated_in_log_log_and_clamped_outside():
    table = ThroughputTable.load("toy", TABLE)
    assert table.flops_per_s(1e6) == pytest.approx(1e9)            # halfway in log size: halfway in log FLOP/s
    assert table.flops_per_s(1e4 * 10 ** 0.5) == pytest.approx(1e7 * 10 ** 0.5)
    assert table.flops_per_s(1e3) == 1e7 and table.flops_per_s(1e12) == 1e11     # clamped outside
    assert table.covers(1.2e8) and not table.covers(1e9)


def test_a_two_generation_plan_is_priced_by_hand():
    small = LlamaConfig(hidden_size=64, head_dim=16, num_hidden_layers=2, vocab_size=1000, multiple_of=32)
    final = LlamaConfig(hidden_size=128, head_dim=16, num_hidden_layers=2, vocab_size=1000, multiple_of=32)
    seq, tokens_per_step = 64, 512
    schedule = dict(model=small.to_dict(), training=dict(steps=300, lr=1e-3),
                    growths=[dict(at_step=100, hidden_size=128, intermediate_size=final.intermediate_size)])
    table = ThroughputTable.load("toy", TABLE)
    clock = wall_clock(schedule, final, seq, tokens_per_step, scratch_steps=250, table=table)

    def rate(config):            # by hand: the table's log-log line is FLOP/s = 1000 x parameters
        assert 1e4 < config_parameters(config) < 1e8
        return 1000 * config_parameters(config)

    flops = [100 * 512 * flops_per_token(small, seq), 200 * 512 * flops_per_token(final, seq)]
    seconds = [flops[0] / rate(small), flops[1] / rate(final)]
    scratch_flops = 250 * 512 * flops_per_token(final, seq)
    scratch_seconds = scratch_flops / rate(final)
    assert [g[1] for g in clock.generations] == pytest.approx(flops)
    assert [g[2] for g in clock.generations] == pytest.approx(seconds)
    assert clock.scratch_seconds == pytest.approx(scratch_seconds)
    # a 20% FLOP saving: scratch's loss after 0.8 x scratch's FLOPs, which the plan spends in its first generation
    # and part of the second
    target = 0.8 * scratch_flops
    assert target > flops[0]
    by_hand = 1 - (seconds[0] + (target - flops[0]) / rate(final)) / scratch_seconds
    assert clock.saving(0.2) == pytest.approx(by_hand)
    assert clock.saving(0.2) < 0.2             # the small generation runs slower per FLOP: less saved in time
    assert clock.saving(None) is None
    assert clock.relative_speeds() == pytest.approx([rate(small) / rate(final), 1.0])


def test_the_planner_reports_the_wall_clock_saving_and_refuses_an_unknown_device():
    final = LlamaConfig(hidden_size=128, head_dim=32, num_hidden_layers=4, intermediate_size=352, vocab_size=2000)
    plan = plan_growth(final, tokens=5 * config_parameters(final), seq_len=256, tokens_per_step=2048, device="cpu")
    savings = [plan.wall.saving(v) for v in plan.measured.flop_savings]
    text = plan.explain()
    assert "wall-clock on cpu" in text
    assert ", ".join(f"{100 * v:.0f}%" for v in savings) in text
    assert all(math.isfinite(v) and v < 1 for v in savings)
    assert plan_growth(final, tokens=5 * config_parameters(final), seq_len=256, tokens_per_step=2048,
                       device=None).wall is None
    with pytest.raises(ConfigError, match="device"):
        plan_growth(final, tokens=5 * config_parameters(final), seq_len=256, tokens_per_step=2048, device="tpu")
