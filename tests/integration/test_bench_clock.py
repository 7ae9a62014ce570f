"""bench/clock.py: the compute-equivalent saving on a synthetic scratch curve, the confidence interval, per-article
validation losses that add up to the packed loss, and clock_report.py on synthetic saved runs."""
from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest

from helpers import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import budget_report  # noqa: E402
import clock  # noqa: E402
import clock_report  # noqa: E402
import scratch_curve  # noqa: E402
from megababel.plan.planner import Measured  # noqa: E402


def synthetic_curve(flops):
    """A loss curve of the usual form, bits/byte = 1.5 + 40 * FLOPs^-0.1 (falls forever, ever more slowly)."""
    return 1.5 + 40 * flops ** -0.1


def test_the_compute_equivalent_saving_reads_the_flops_scratch_needs_off_its_curve():
    budgets = [1e14, 2e14, 4e14, 8e14]
    curve = scratch_curve.lower_curve([(f, synthetic_curve(f)) for f in budgets])
    # a run at 2e14 FLOPs that reaches what scratch reaches at 4e14 saved exactly half
    saving, bound = scratch_curve.compute_equivalent_saving(2e14, synthetic_curve(4e14), curve)
    assert saving == pytest.approx(0.5) and bound == ""
    # between budgets: log-linear interpolation, close to the true curve's answer
    target = synthetic_curve(3e14)
    needed, _ = scratch_curve.flops_to_reach(curve, target)
    assert needed == pytest.approx(3e14, rel=0.01)
    assert scratch_curve.compute_equivalent_saving(2e14, target, curve)[0] == pytest.approx(1 - 2 / 3, abs=0.01)
    # worse than scratch at its own FLOPs: a negative saving
    worse = scratch_curve.compute_equivalent_saving(2e14, synthetic_curve(1.5e14), curve)[0]
    assert worse == pytest.approx(-1 / 3, abs=0.01)
    # beyond the largest budget only a bound: at least what reaching the largest would have saved
    assert scratch_curve.compute_equivalent_saving(2e14, synthetic_curve(1e15), curve) == (None, "> 75%")
    assert scratch_curve.compute_equivalent_saving(2e14, synthetic_curve(5e13), curve) == (None, "< -100%")
    # a run at the largest budget's FLOPs (within rounding) that beats it: "> 0%", never "> -0%"
    assert scratch_curve.compute_equivalent_saving(8e14 * (1 + 1e-15), 1.0, curve) == (None, "> 0%")


def test_on_a_convex_curve_the_bounds_hold_the_flops_scratch_truly_needs():
    """synthetic_curve is convex in log FLOPs: between budgets the chord is the most scratch can need and the
    neighbouring pairs' lines, extended, the least; past the largest budget only the least is known."""
    curve = scratch_curve.lower_curve([(f, synthetic_curve(f)) for f in (1e14, 2e14, 4e14, 8e14)])
    for true in (1.2e14, 3e14, 5e14, 7.9e14, 1.6e15, 5e15):
        least, most = scratch_curve.needed_flops_bounds(curve, synthetic_curve(true))
        assert least <= true and (most is None or true <= most)
        if true < 8e14:
            assert most == pytest.approx(scratch_curve.flops_to_reach(curve, synthetic_curve(true))[0])
        else:
            assert most is None and least > 8e14     # the last pair's line reaches further than the last budget
    # the bounds of a saving: 2e14 FLOPs that end where scratch needs 3e14 saved about a third
    low, high = scratch_curve.compute_equivalent_bounds(2e14, synthetic_curve(3e14), curve)
    assert low <= 1 / 3 <= high and high - low < 0.05
    # a rising pair (noise) bounds nothing: only the budget itself
    noisy = scratch_curve.lower_curve([(1e14, 2.0), (2e14, 1.9), (4e14, 1.95)])
    assert scratch_curve.needed_flops_bounds(noisy, 1.85) == (pytest.approx(4e14), None)


def test_a_noisy_larger_budget_does_not_make_the_curve_rise():
    curve = scratch_curve.lower_curve([(1e14, 2.0), (2e14, 1.90), (4e14, 1.91), (8e14, 1.80)])
    assert [b for _, b in curve] == [2.0, 1.90, 1.90, 1.80]
    assert scratch_curve.flops_to_reach(curve, 1.90)[0] == 2e14          # the first budget that reached it


def test_the_interval_is_students_t_over_seeds():
    mean, low, high = clock.interval([0.1, 0.2, 0.3])
    assert mean == pytest.approx(0.2) and high - mean == pytest.approx(4.303 * 0.1 / math.sqrt(3), rel=1e-4)
    assert math.isnan(clock.interval([0.2])[1])


class PackedOnly:
    """An engine stand-in for ArticleValidation: next-token logits that favour token 5 (a fixed function, so the
    per-article split can be checked against one loss over all targets)."""

    def forward(self, x, y=None):
        import torch
        logits = torch.zeros(*x.shape, 1000)
        logits[..., 5] = 2.0
        logits += (x.unsqueeze(-1) % 7).float() * 0.01
        return logits, None


def test_per_article_losses_add_up_to_the_loss_of_every_target(tmp_path):
    import torch
    import torch.nn.functional as F
    from megababel.data.embedded import build_embedded_dataset
    shared = ROOT / ".." / "shared" / "data" / "wikipedia" / "valid.txt"
    if not shared.is_file():
        pytest.skip("../shared/data/wikipedia is absent")
    text = tmp_path / "valid.txt"
    text.write_text("\n\n".join(shared.read_text().split("\n\n")[:6]))
    data = build_embedded_dataset()          # a tokenizer.model and ranking.json with vocabulary stage 1000
    validation = clock.ArticleValidation(data, 1000, text=text)
    assert validation.n_articles == 6 and validation.n_bytes.sum() == sum(
        len(d.encode()) for d in text.read_text().split("\n\n") if d.strip())
    nats = validation.nats(PackedOnly(), batch=3)
    logits = PackedOnly().forward(validation.inputs, None)[0]
    total = F.cross_entropy(logits.reshape(-1, 1000), validation.targets.reshape(-1), reduction="sum",
                            ignore_index=-100)
    assert nats.sum() == pytest.approx(total.item(), rel=1e-6) and (nats > 0).all()
    assert int((validation.targets != -100).sum()) == validation.n_tokens - 1     # every token but the first


def _saved(runs, budget, name, lr, seed, figure, flops, wiggle=0.0, articles=10, growths=(), precision=None):
    """A saved run whose final evaluations all give `figure` (plus a +-wiggle alternating between them), growing at
    the steps `growths`, trained in `precision` (None: no field, as the runs saved before it existed)."""
    n_bytes = [100] * articles
    final = [dict(step=10 - j, flops=flops, vocab=2000, bpb=figure + wiggle * (-1) ** j,
                  nats=[(figure + wiggle * (-1) ** j) * math.log(2) * 100] * articles, n_bytes=n_bytes)
             for j in range(clock.FINAL_POINTS)]
    evals = [dict(step=k, flops=flops * k / 10, wall=flops * k / 20, bpb=3.0 - (3.0 - figure) * k / 10, load=2.0)
             for k in range(11)]
    run = dict(name=name, seed=seed, lr=lr, budget=budget, evals=evals, growths=[dict(step=g) for g in growths],
               final_bpb=evals[-1]["bpb"], **({} if precision is None else dict(precision=f"deepspeed-{precision}")),
               flops=flops, wall=flops / 2, steps=10, final_evals=final, threads=1, processes=2)
    suffix = "" if precision in (None, "bf16") else f"-{precision}"
    (runs / f"b{budget:g}-{name}-lr{lr:g}-seed{seed}{suffix}.json").write_text(json.dumps(run))


def test_the_final_figure_reads_a_falling_and_flattening_curve_at_its_end_and_a_flat_one_near_its_mean():
    def run(values):
        return dict(final_evals=[dict(step=98 + j, bpb=v, nats=[v * math.log(2) * 50] * 2, n_bytes=[50, 50])
                                 for j, v in enumerate(values)])
    falling = run([1.920, 1.915, 1.910, 1.905, 1.900])           # a straight fall: -0.005 per step
    assert clock.final_figure(falling) == pytest.approx(1.900) and clock.final_mean(falling) == pytest.approx(1.910)
    flattening = run([1.9 + 0.004 * (4 - j) ** 2 / 4 for j in range(5)])     # a parabola, flat at the last step
    assert clock.final_figure(flattening) == pytest.approx(1.900)
    wiggling = run([1.890, 1.893, 1.890, 1.893, 1.890])            # flat, wiggling: the fit's end is near the mean
    assert abs(clock.final_figure(wiggling) - clock.final_mean(wiggling)) < 0.002
    assert clock.final_figure(run([1.9, 1.8])) == pytest.approx(1.85)                   # two points: their mean
    assert clock.final_figure(falling, articles=[0]) == pytest.approx(1.900)


def test_the_report_builds_the_curve_and_the_plan_savings_with_intervals(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    flops = {5: 1e14, 20: 4e14, 40: 8e14}
    for budget, f in flops.items():
        _saved(runs, budget, "scratch", 1e-3, 0, synthetic_curve(f), f)
        _saved(runs, budget, "scratch", 2e-3, 0, synthetic_curve(f) + 0.01, f)       # a worse LR
    _saved(runs, 20, "scratch+wsd", 1e-3, 0, synthetic_curve(f := 4e14) - 0.001, f)  # wsd wins at 20 by a hair
    for seed in (1, 2):
        _saved(runs, 20, "scratch", 1e-3, seed, synthetic_curve(4e14), 4e14)
    for seed, reach in ((0, 6e14), (1, 5e14), (2, 7e14)):        # the plan reaches what scratch reaches at 5-7e14
        _saved(runs, 20, "g3@2-vocab+copy", 1e-3, seed, synthetic_curve(reach), 4e14)
    table = clock_report.write_report(tmp_path)
    points = clock_report.curve_points(clock.load_runs(tmp_path))
    assert points[20]["scratch"][0] == 1e-3 and points[20]["scratch"][3] == [1e-3, 2e-3]
    curve = clock_report.scratch_curve(points)
    assert curve[1] == pytest.approx((4e14, synthetic_curve(4e14) - 0.001))       # the lower schedule at 20
    rows = {r["name"]: r for r in clock_report.plan_rows(clock.load_runs(tmp_path), curve, 20)}
    assert rows["g3@2-vocab+copy"]["seeds"] == [0, 1, 2]
    expected = [1 - 4e14 / scratch_curve.flops_to_reach(curve, synthetic_curve(r))[0] for r in (6e14, 5e14, 7e14)]
    assert rows["g3@2-vocab+copy"]["equivalent"] == pytest.approx(expected)
    assert all(0.15 < e < 0.45 for e in expected)
    assert "| g3@2-vocab+copy | 0,1,2 |" in table and "[" in table.split("g3@2-vocab+copy")[1]
    # wall time: the plan at seed 0 ran 1.2x as long as scratch for its FLOPs; scratch needs 1 / (1 - saving) x them
    # and read twice scratch's tokens (10 steps of TOKENS_PER_STEP), its cheaper generations' doing
    path = runs / "b20-g3@2-vocab+copy-lr0.001-seed0.json"
    run = dict(json.loads(path.read_text()), wall=1.2 * 4e14 / 2)
    run["evals"][-1]["tokens"] = 20 * budget_report.TOKENS_PER_STEP
    path.write_text(json.dumps(run))
    rows = {r["name"]: r for r in clock_report.plan_rows(clock.load_runs(tmp_path), curve, 20)}
    assert rows["g3@2-vocab+copy"]["wall"] == pytest.approx([-0.2, 0, 0])
    assert rows["g3@2-vocab+copy"]["tokens"] == pytest.approx([2, 1, 1])
    assert rows["g3@2-vocab+copy"]["wall_equivalent"] == pytest.approx(
        [1 - 1.2 * (1 - expected[0])] + expected[1:])
    assert (tmp_path / "clock.md").read_text().startswith("Scratch curve")
    assert np.isclose(rows["scratch"]["d_bpb"], 0).all()


def test_each_seed_reads_the_curve_shifted_by_its_own_scratchs_offset(tmp_path):
    """Scratch at three budgets on seed 0 only; at 20, seed 1's scratch ends 0.01 above seed 0's, and so does its
    plan: the plan saves the same on both seeds (compared pairwise), where the unshifted curve would give seed 1
    less."""
    runs = tmp_path / "runs"
    runs.mkdir()
    for budget, f in {5: 1e14, 20: 4e14, 40: 8e14}.items():
        _saved(runs, budget, "scratch", 1e-3, 0, synthetic_curve(f), f)
    _saved(runs, 20, "scratch", 1e-3, 1, synthetic_curve(4e14) + 0.01, 4e14)
    for seed in (0, 1):
        _saved(runs, 20, "g3@2-vocab+copy", 1e-3, seed, synthetic_curve(6e14) + 0.01 * seed, 4e14)
    loaded = clock.load_runs(tmp_path)
    curve = clock_report.scratch_curve(clock_report.curve_points(loaded))
    rows = {r["name"]: r for r in clock_report.plan_rows(loaded, curve, 20)}
    same = 1 - 4e14 / scratch_curve.flops_to_reach(curve, synthetic_curve(6e14))[0]
    assert rows["g3@2-vocab+copy"]["equivalent"] == pytest.approx([same, same])
    unshifted = scratch_curve.compute_equivalent_saving(4e14, synthetic_curve(6e14) + 0.01, curve)[0]
    assert unshifted < same - 0.03
    assert rows["scratch"]["equivalent"] == pytest.approx([0, 0], abs=1e-12)


def test_the_noise_study_compares_seeds_on_disjoint_article_subsets_at_a_given_lr(tmp_path):
    """Two fp32 seeds, no seed 0 (the LR is bf16's, given): seed 2 is 0.1 lower on articles 0 and 2 and level on
    1 and 3, so their difference over single articles spreads (0.1, 0, 0.1, 0) and over pairs of articles does not."""
    runs = tmp_path / "runs"
    runs.mkdir()
    for seed, per_article in ((1, [1.9, 1.9, 1.9, 1.9]), (2, [1.8, 1.9, 1.8, 1.9])):
        _saved(runs, 20, "scratch", 1e-3, seed, 1.9, 4e14, articles=4, precision="fp32")
        path = runs / f"b20-scratch-lr0.001-seed{seed}-fp32.json"
        run = json.loads(path.read_text())
        for e in run["final_evals"]:
            e["nats"] = [bpb * math.log(2) * 100 for bpb in per_article]
        path.write_text(json.dumps(run))
    loaded = clock.load_runs(tmp_path, "fp32")
    assert clock_report.noise_study(loaded, 20, sizes=(1, 2)) == []          # no seed 0 to tune at: no LR
    lines = clock_report.noise_study(loaded, 20, sizes=(1, 2), lr=1e-3)
    assert lines[2].startswith("| 1 | 0.0000 | ") and lines[2].endswith(f" | {np.std([0.1, 0, 0.1, 0], ddof=1):.4f} |")
    assert lines[3].endswith(" | 0.0000 |") and lines[4].startswith("| 4 |")


def test_a_plan_is_also_measured_against_its_no_growth_control_at_the_seeds_it_ran(tmp_path):
    """The report's 'd vs its no-growth control': a plan with a data curriculum against scratch reading the same
    stream (switching where the plan first grows: step 2 of scratch's 10, 20%), per seed where the control ran; a
    plan whose only non-model lever is wsd against scratch+wsd; a plan without any, against scratch itself."""
    runs = tmp_path / "runs"
    runs.mkdir()
    for seed in (0, 1, 2):
        _saved(runs, 20, "scratch", 1e-3, seed, 1.90, 4e14)
        _saved(runs, 20, "g3@2+easyfirst", 1e-3, seed, 1.85 + 0.01 * seed, 4e14, growths=(2, 5, 8))
        _saved(runs, 20, "g3@2", 1e-3, seed, 1.89, 4e14, growths=(2, 5, 8))
    for seed in (0, 1):                                          # the control ran at two of the three seeds
        _saved(runs, 20, "scratch+easyfirst20", 1e-3, seed, 1.88, 4e14)
    _saved(runs, 20, "g3@2+wsd", 1e-3, 0, 1.87, 4e14, growths=(2, 5, 8))
    table = clock_report.write_report(tmp_path)
    rows = {r["name"]: r for r in clock_report.plan_rows(clock.load_runs(tmp_path), [(4e14, 1.9)], 20)}
    assert rows["g3@2+easyfirst"]["control"] == "scratch+easyfirst20"
    assert rows["g3@2+easyfirst"]["d_control"] == pytest.approx([-0.03, -0.02])
    assert rows["g3@2+easyfirst"]["d_bpb"] == pytest.approx([-0.05, -0.04, -0.03])
    assert "-0.0250 [" in table and "(scratch+easyfirst20, 2 seeds)" in table
    assert "scratch+wsd not run" in table and "| = d (scratch) |" in table
    assert rows["scratch+easyfirst20"]["control"] is None
    # --controls at the bench's budget: the controls that ran (the clock's runs name them so)
    assert clock.control("g3@2-vocab+copy+easyfirst", 20) == "scratch+easyfirst11.49"
    assert clock.control("g3@2-vocab+copy+easyfirst+seqwarm+wsd", 20) == "scratch+easyfirst15.31+seqwarm2+wsd"
    assert clock.control("g3@2-vocab+copy", 20) is None


def test_runs_of_two_precisions_are_never_compared_with_each_other(tmp_path, monkeypatch):
    """fp32 runs (a CPU without native bf16) are saved apart, reported apart (clock_fp32.md: against fp32 scratch of
    the same seed, at bf16's tuned LR, the compute-equivalent saving on fp32's own scratch curve) and never change
    bf16's report or the planner's row; the older reports refuse a folder that mixes them."""
    import budget_sweep
    import growth_vs_scratch
    runs = tmp_path / "runs"
    runs.mkdir()
    for budget, f in {5: 1e14, 20: 4e14}.items():
        _saved(runs, budget, "scratch", 1e-3, 0, synthetic_curve(f), f)
    _saved(runs, 20, "scratch", 2e-3, 0, synthetic_curve(4e14) + 0.01, 4e14)
    _saved(runs, 20, "g3@2", 1e-3, 0, synthetic_curve(4e14) - 0.02, 4e14, growths=(2, 5, 8))
    _saved(runs, 20, "scratch", 1e-3, 1, 2.00, 4e14, precision="fp32")
    _saved(runs, 20, "g3@2", 1e-3, 1, 1.90, 4e14, growths=(2, 5, 8), precision="fp32")
    _saved(runs, 20, "g3@2", 2e-3, 1, 1.50, 4e14, growths=(2, 5, 8), precision="fp32")    # not at the tuned LR
    bf16 = clock_report.write_report(tmp_path, savings_file=tmp_path / "none.json")
    assert "| g3@2 | 0 |" in bf16 and "| g3@2 | 1 |" not in bf16 and "-0.0200" in bf16
    fp32 = clock_report.write_report(tmp_path, precision="fp32")
    assert (tmp_path / "clock_fp32.md").read_text().startswith("Runs in fp32")
    assert "| g3@2 | 1 | 1.9000 |" in fp32 and "-0.1000" in fp32 and "| g3@2 | 0 |" not in fp32
    assert "Scratch curve (seed 1," in fp32 and "> 0% (past the curve)" in fp32     # one fp32 budget: a bound
    # fp32's own curve, at its seed 1 (bf16's seed-0 curve never enters it): 1.90 lies between scratch at 20 (2.00)
    # and 40 (1.80), halfway in bits/byte, so scratch needs sqrt(4e14 * 8e14) by the log-FLOPs interpolation
    _saved(runs, 40, "scratch", 1e-3, 1, 1.80, 8e14, precision="fp32")
    fp32 = clock_report.write_report(tmp_path, precision="fp32")
    assert clock_report.curve_seed(clock.load_runs(tmp_path, "fp32")) == 1
    assert "| 40 | 8e+14 | 0.001 (0.001), 1.8000" in fp32
    assert f"| g3@2 | 1 | 1.9000 | {100 * (1 - 4e14 / (4e14 * 8e14) ** 0.5):+.1f}% |" in fp32
    assert (tmp_path / "clock.md").read_text().strip() == bf16.strip()
    monkeypatch.setattr(growth_vs_scratch, "PRECISION", "fp32")
    assert budget_sweep.run_path(tmp_path, 20, "g3@2", 1e-3, 1).name == "b20-g3@2-lr0.001-seed1-fp32.json"
    with pytest.raises(SystemExit, match="holds runs in bf16 and fp32"):
        budget_report.load(tmp_path)


def test_bf16_with_scratch_at_one_budget_reads_fp32s_curve_shifted_and_says_so(tmp_path):
    """bf16 scratch at 20 only ends 0.02 below fp32's: bf16's table reads fp32's curve (20 and 40) lowered by 0.02,
    labelled an estimate; the planner's rows stay within bf16 (no curve: no compute-equivalent saving)."""
    runs = tmp_path / "runs"
    runs.mkdir()
    for budget, f in {20: 4e14, 40: 8e14}.items():
        _saved(runs, budget, "scratch", 1e-3, 1, synthetic_curve(f), f, precision="fp32")
    _saved(runs, 20, "scratch", 1e-3, 0, synthetic_curve(4e14) - 0.02, 4e14)
    _saved(runs, 20, "g3@2", 1e-3, 0, synthetic_curve(6e14) - 0.02, 4e14, growths=(2, 5, 8))
    table = clock_report.write_report(tmp_path, savings_file=tmp_path / "none.json", precision="bf16")
    fp32_curve = scratch_curve.lower_curve([(4e14, synthetic_curve(4e14)), (8e14, synthetic_curve(8e14))])
    saved = 1 - 4e14 / scratch_curve.flops_to_reach(fp32_curve, synthetic_curve(6e14))[0]
    assert table.startswith("bf16 scratch ran at 20 tokens/parameter only") and "an estimate" in table
    assert f"| g3@2 | 0 | {synthetic_curve(6e14) - 0.02:.4f} | {100 * saved:+.1f}% |" in table
    for seed in (1, 2):
        _saved(runs, 20, "scratch", 1e-3, seed, synthetic_curve(4e14) - 0.02, 4e14)
        _saved(runs, 20, "g3@2", 1e-3, seed, synthetic_curve(6e14) - 0.02, 4e14, growths=(2, 5, 8))
    (row,) = clock_report.planner_rows(clock.load_runs(tmp_path))
    assert row["plan"] == "g3@2" and all(v is None or v < saved - 0.1 for v in row["flop_savings"])


def test_the_planner_takes_fp32s_row_only_where_bf16_has_none(tmp_path, capsys):
    """A CPU without native bf16 measures the choosing seeds in fp32: their row enters the planner's table, marked
    fp32, at bf16's tuned LR, until bf16's own seeds 0-2 exist at that budget; a row never mixes precisions."""
    runs = tmp_path / "runs"
    runs.mkdir()
    _saved(runs, 20, "scratch", 1e-3, 0, synthetic_curve(4e14), 4e14)                 # bf16: its tuned LR
    _saved(runs, 20, "scratch", 2e-3, 0, synthetic_curve(4e14) + 0.01, 4e14)
    for budget, f in {20: 4e14, 40: 8e14}.items():
        _saved(runs, budget, "scratch", 1e-3, 1, synthetic_curve(f), f, precision="fp32")
    for seed in (0, 1, 2):
        _saved(runs, 20, "scratch", 1e-3, seed, synthetic_curve(4e14), 4e14, precision="fp32")
        _saved(runs, 20, "g3@2", 1e-3, seed, synthetic_curve(6e14), 4e14, growths=(2, 5, 8), precision="fp32")
        _saved(runs, 20, "g3@2", 2e-3, seed, synthetic_curve(9e14), 4e14, growths=(2, 5, 8), precision="fp32")
    table = tmp_path / "measured_savings.json"
    table.write_text(json.dumps(dict(rows=[dict(tokens_per_parameter=20, plan="g3@10", lr=1e-3, seeds=[0, 1, 2],
                                                flop_savings=[0.1, 0.1, 0.1])])))
    clock_report.write_report(tmp_path, savings_file=table, precision="fp32")
    (row,) = json.loads(table.read_text())["rows"]
    saved = 1 - 4e14 / scratch_curve.flops_to_reach(
        scratch_curve.lower_curve([(4e14, synthetic_curve(4e14)), (8e14, synthetic_curve(8e14))]),
        synthetic_curve(6e14))[0]
    assert row["plan"] == "g3@2" and row["precision"] == "fp32" and row["lr"] == 1e-3
    assert row["flop_savings"] == pytest.approx([saved] * 3, abs=1e-4)
    assert "fp32 runs" in Measured(20.0, row["plan"], row["lr"], tuple(row["flop_savings"]), row["saving"],
                                   precision=row["precision"]).saving_text()
    for seed in (0, 1, 2):                                  # bf16's seeds 0-2 arrive: its row takes the budget
        _saved(runs, 20, "g3@2+copy", 1e-3, seed, synthetic_curve(5e14), 4e14, growths=(2, 5, 8))
        if seed:
            _saved(runs, 20, "scratch", 1e-3, seed, synthetic_curve(4e14), 4e14)
    clock_report.write_report(tmp_path, savings_file=table, precision="fp32")
    (row,) = json.loads(table.read_text())["rows"]
    assert row["plan"] == "g3@2+copy" and "precision" not in row


def test_the_planners_row_carries_the_no_growth_controls_saving_at_the_seeds_it_ran(tmp_path, capsys):
    """The row also gives the plan's no-growth control (control_of) and its saving at the plan's seeds, None where
    it did not run, so the planner can tell the growth's share from the curricula's."""
    runs = tmp_path / "runs"
    runs.mkdir()
    for budget, f in {20: 4e14, 40: 8e14}.items():
        _saved(runs, budget, "scratch", 1e-3, 0, synthetic_curve(f), f)
    for seed in (0, 1, 2):
        if seed:
            _saved(runs, 20, "scratch", 1e-3, seed, synthetic_curve(4e14), 4e14)
        _saved(runs, 20, "g3@2+easyfirst", 1e-3, seed, synthetic_curve(6e14), 4e14, growths=(2, 5, 8))
    for seed, reaches in ((0, 5e14), (1, 6e14)):      # the control (growing at step 2 of 10: 20%) at two seeds
        _saved(runs, 20, "scratch+easyfirst20", 1e-3, seed, synthetic_curve(reaches), 4e14)
    table = tmp_path / "measured_savings.json"
    table.write_text(json.dumps(dict(rows=[dict(tokens_per_parameter=20, plan="g3@10", lr=1e-3, seeds=[0, 1, 2],
                                                flop_savings=[0.1, 0.1, 0.1])])))
    clock_report.write_report(tmp_path, savings_file=table)
    (row,) = json.loads(table.read_text())["rows"]
    assert row["plan"] == "g3@2+easyfirst" and row["control"] == "scratch+easyfirst20"
    control, grown = row["control_savings"], row["flop_savings"]
    assert control[2] is None and 0 < control[0] < grown[0] and control[1] == pytest.approx(grown[1])
    measured = Measured(20.0, row["plan"], row["lr"], tuple(grown), row["saving"], control=row["control"],
                        control_savings=tuple(control))
    assert measured.growth_adds is False and "did not add to them" in measured.saving_text()


def test_the_planner_takes_the_plan_whose_worst_choosing_seed_saved_most_once_it_ran_at_all_three(tmp_path, capsys):
    """The clock's row of the planner's table: chosen on seeds 0-2 by the worst seed's compute-equivalent saving
    (past the curve's end: its lower bound if convex; a confirming seed 3 is listed but never chooses), written in
    place of the budget sweep's row at that budget, and read by the planner as a compute-equivalent saving."""
    runs = tmp_path / "runs"
    runs.mkdir()
    for budget, f in {5: 1e14, 20: 4e14, 40: 8e14}.items():
        _saved(runs, budget, "scratch", 1e-3, 0, synthetic_curve(f), f)
    for seed in (1, 2, 3):
        _saved(runs, 20, "scratch", 1e-3, seed, synthetic_curve(4e14), 4e14)
    steady = {0: 6e14, 1: 5.5e14, 2: 6.5e14, 3: 1e14}     # worst choosing seed 5.5e14; seed 3 only confirms
    for seed, reach in steady.items():
        _saved(runs, 20, "g3@2+steady", 1e-3, seed, synthetic_curve(reach), 4e14)
    for seed, reach in ((0, 1e15), (1, 5e14), (2, 1e15)):                   # best mean, worse worst seed
        _saved(runs, 20, "g3@2+lucky", 1e-3, seed, synthetic_curve(reach), 4e14)
    _saved(runs, 20, "g3@2+once", 1e-3, 0, synthetic_curve(2e15), 4e14)    # one seed: not a candidate
    for seed in (0, 1, 2):                                    # a control, however good: scratch is not a plan
        _saved(runs, 20, "scratch+easyfirst10", 1e-3, seed, synthetic_curve(2e15), 4e14)
    table = tmp_path / "measured_savings.json"
    sweep_row = dict(tokens_per_parameter=20, plan="g3@2-vocab+copy", lr=1.5e-3, seeds=[0, 1, 2],
                     flop_savings=[0.02, 0.16, 0.08])
    other_row = dict(sweep_row, tokens_per_parameter=5, plan="g3@10-vocab")
    table.write_text(json.dumps(dict(about="", final_model=dict(hidden_size=128), rows=[other_row, sweep_row])))
    clock_report.write_report(tmp_path, savings_file=table)
    assert "the planner's row at 20 tokens/parameter, g3@2+steady" in capsys.readouterr().out
    assert "| scratch+easyfirst10 (control: no growth) | 0,1,2 |" in (tmp_path / "clock.md").read_text()
    rows = json.loads(table.read_text())["rows"]
    assert rows[0] == other_row and rows[1]["plan"] == "g3@2+steady" and rows[1]["seeds"] == [0, 1, 2, 3]
    curve = clock_report.scratch_curve(clock_report.curve_points(clock.load_runs(tmp_path)))
    expected = [round(1 - 4e14 / scratch_curve.flops_to_reach(curve, synthetic_curve(steady[s]))[0], 4)
                for s in (0, 1, 2)]
    assert rows[1]["flop_savings"][:3] == pytest.approx(expected) and rows[1]["flop_savings"][3] < 0
    assert rows[1]["saving"] == "compute-equivalent" and rows[1]["lr"] == 1e-3
    # past the curve's end a seed counts at its lower bound if the curve is convex: more than against the largest
    # budget (0.5), less than the truth (0.8)
    past = clock_report.planned_saving(4e14, synthetic_curve(2e15), curve)
    assert past == scratch_curve.compute_equivalent_bounds(4e14, synthetic_curve(2e15), curve)[0] and 0.5 < past < 0.8
    assert clock_report.planned_saving(4e14, synthetic_curve(1e13), curve) is None        # worse than the smallest
    from megababel.plan.planner import read_measured
    measured = {m.tokens_per_parameter: m for m in read_measured(table.read_text())[0]}
    assert measured[20].saving == "compute-equivalent" and not measured[20].pays          # seed 3 lost
    assert measured[20].saving_text().startswith("compute-equivalent FLOP saving per seed")
    assert measured[5].saving == "crossing"
    # the budget sweep's own report keeps the clock's row at 20 and rewrites only its own rows
    kept = budget_report.measured_savings([dict(budget=20, best="g1@50", lr=1e-3, seeds=[0, 1, 2], best_flops=[0.1] * 3,
                                                final=dict(hidden_size=128, num_hidden_layers=4, vocab_size=2000))],
                                          clock_rows=budget_report.clock_rows_of(table))
    assert [r["plan"] for r in kept["rows"]] == ["g3@2+steady"]
    clock_report.write_report(tmp_path)          # not the benchmark's folder: the package's table is left alone
    assert "planner's row" not in capsys.readouterr().out
