"""bench/growth_vs_scratch.py: the saving / bump arithmetic, equal-FLOP schedules, and a real smoke run."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from helpers import ROOT, SHARED_DATA

sys.path.insert(0, str(ROOT / "bench"))
import growth_report  # noqa: E402
import growth_vs_scratch  # noqa: E402
from megababel.model.counters import flops_per_token  # noqa: E402
from megababel.plan.schedule import parse_schedule  # noqa: E402


def test_crossing_interpolates_between_evaluations():
    xs, ys = [0, 10, 20, 30], [3.0, 2.0, 1.5, 1.0]
    assert growth_report.crossing(xs, ys, 1.75) == pytest.approx(15.0)
    assert growth_report.crossing(xs, ys, 2.0) == 10
    assert growth_report.crossing(xs, ys, 0.9) is None
    assert growth_report.crossing(xs, [1.0, 2.0], 1.5) == 0


def test_saving_bump_and_recovery_of_a_run():
    scratch = dict(final_bpb=1.5, flops=100.0, wall=50.0, evals=[], growths=[])
    evals = [dict(step=s, flops=f, wall=w, bpb=b) for s, f, w, b in
             [(0, 0, 0, 3.0), (10, 20, 10, 2.0), (10, 20, 10, 2.3), (11, 22, 11, 2.4), (12, 24, 12, 2.1),
              (14, 28, 14, 1.9), (20, 40, 20, 1.6), (30, 60, 30, 1.4), (40, 100, 60, 1.2)]]
    run = dict(final_bpb=1.2, evals=evals, growths=[dict(step=10, before=2.0, after=2.3)], wall=60.0)
    s = growth_report.summarise(run, scratch)
    assert s["saving"] == pytest.approx(1 - 50 / 100)          # 1.5 reached halfway between flops 40 and 60
    assert s["wall_saving"] == pytest.approx(1 - 25 / 50)
    assert s["d_bpb"] == pytest.approx(1.2 - 1.5)
    (bump, recovery), = s["effects"]
    assert bump == pytest.approx(0.4) and recovery == 4          # peak 2.4 at step 11, back under 2.0 at step 14


@pytest.mark.parametrize("name", ["width", "depth-vocab", "both", "both-vocab", "both/stack", "both/global-lr"])
def test_progressive_schedules_spend_the_scratch_flops(name):
    steps = 150
    spec = growth_vs_scratch.schedule_spec(name, 1e-3, steps)
    schedule = parse_schedule(spec, growth_vs_scratch.TOKENS_PER_STEP)
    assert schedule.final_config == parse_schedule(growth_vs_scratch.schedule_spec("scratch", 1e-3, steps),
                                                   growth_vs_scratch.TOKENS_PER_STEP).model
    bounds = [0] + [s.at_step for s in schedule.growths] + [schedule.steps]
    configs = [schedule.model] + [s.config for s in schedule.growths]
    flops = sum((b - a) * flops_per_token(c, growth_vs_scratch.SEQ) for a, b, c in zip(bounds, bounds[1:], configs))
    scratch = steps * flops_per_token(schedule.final_config, growth_vs_scratch.SEQ)
    assert schedule.steps > steps and flops == pytest.approx(scratch, rel=0.02)


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_DATA / "tinystories" / "train.txt").is_file(), reason="needs ../shared/data")
def test_quick_run_writes_runs_table_and_plot(tmp_path):
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "growth_vs_scratch.py"), "--quick", "--out", str(out),
                           "--data", str(tmp_path / "data"), "--only", "scratch", "both-vocab", "both/adam-reset"],
                          env=dict(env, DS_ACCELERATOR="cpu"), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "tuned scratch learning rate" in done.stdout and "bits/byte" in done.stdout     # progress is shown
    runs = {json.loads(p.read_text())["name"]: json.loads(p.read_text()) for p in (out / "runs").glob("*.json")}
    assert set(runs) == {"scratch", "both-vocab", "both/adam-reset"}
    grown = runs["both-vocab"]
    assert [g["vocab"] for g in grown["growths"]] == [4000, 8000]
    assert grown["flops"] == pytest.approx(runs["scratch"]["flops"], rel=0.03)
    assert grown["evals"][-1]["step"] == grown["steps"] and grown["final_bpb"] < grown["evals"][0]["bpb"]
    # width growth (no vocabulary change in "both/adam-reset") keeps the function: no bump at the growth itself
    first = runs["both/adam-reset"]["growths"][0]
    assert abs(first["after"] - first["before"]) < 0.01
    table = (out / "table.md").read_text()
    assert "both-vocab" in table and "adam-reset" in table and (out / "curves.png").stat().st_size > 10_000
    # the quick run's cache holds fewer validation paragraphs: a full run on it is refused before training
    with pytest.raises(SystemExit, match="holds 40 validation paragraphs, not 160"):
        growth_vs_scratch.prepare_data(tmp_path / "data")
