"""bench/annealed_family.py's reading of the alone runs: the figure at a branch's FLOPs and the FLOPs alone needs to
reach an annealed figure, bounded (never extrapolated) outside the two runs."""
from __future__ import annotations

import json
import math
import sys

import pytest

from helpers import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import annealed_family  # noqa: E402


def _run(flops, figure):
    return dict(flops=flops, final_evals=[dict(step=10, bpb=figure, nats=[figure * math.log(2) * 100],
                                               n_bytes=[100])])


def test_alone_is_read_in_log_flops_between_its_two_runs_and_only_bounded_outside():
    alone = [_run(4e12, 2.30), _run(1e12, 2.40)]                 # any order
    assert annealed_family.alone_at(alone, 2e12) == pytest.approx(2.35)
    assert annealed_family.alone_flops_to(alone, 2.35) == (pytest.approx(2e12), "")
    assert annealed_family.alone_flops_to(alone, 2.20) == (pytest.approx(4e12), ">=")    # below both: at least
    assert annealed_family.alone_flops_to(alone, 2.50) == (pytest.approx(1e12), "<=")    # above both: at most
    flat = [_run(1e12, 2.3), _run(2e12, 2.3)]
    assert annealed_family.alone_flops_to(flat, 2.25)[1] == ">="


def test_member_steps_are_each_generations_span():
    spec = annealed_family.schedule_spec("g3@25-vocab", 0.05, 3e-3)
    spans = annealed_family.member_steps(spec)
    assert len(spans) == 4 and spans[0][0] == 0 and all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    assert spans[-1][1] == spec["training"]["steps"] and all(a < b for a, b in spans)


def _saved(folder, name, seed, precision, flops, figure, steps=10, **fields):
    """A finished saved run as bench/budget_sweep.run writes it (budget 20, LR 0.0015)."""
    run = dict(_run(flops, figure), name=name, seed=seed, budget=20, lr=1.5e-3, steps=steps, growths=[],
               evals=[dict(step=steps, bpb=figure)], precision=f"deepspeed-{precision}")
    run.update(fields)
    suffix = "" if precision == "bf16" else f"-{precision}"
    (folder / "runs").mkdir(parents=True, exist_ok=True)
    (folder / "runs" / f"b20-{name}-lr0.0015-seed{seed}{suffix}.json").write_text(json.dumps(run))


def test_each_seed_is_measured_in_one_precision_against_scratch_of_that_precision(tmp_path):
    """Seed 0 in bf16 and seed 2 in fp32 (a CPU without native bf16): each member's branch against its shape alone
    and the family against scratch of its own seed in its own precision; the clock's bf16 scratch of seed 2 (a
    decoy, 10x the FLOPs) is never used for the fp32 seed."""
    out, clock_out, plan = tmp_path / "af", tmp_path / "clock", "g3@2-vocab+copy"
    for seed, precision in ((0, "bf16"), (2, "fp32")):
        _saved(out, f"family-{plan}", seed, precision, 100.0, 1.8, steps=40,
               growths=[dict(step=10, flops=10.0)])
        _saved(out, f"branch-{plan}-g0-f0.05", seed, precision, 11.0, 2.0, steps=12)
        _saved(out, f"alone-{plan}-g0-matched", seed, precision, 10.0, 2.1)
        _saved(out, f"alone-{plan}-g0-branched", seed, precision, 20.0, 1.9)
        _saved(clock_out, "scratch", seed, precision, 100.0, 1.85)
    _saved(clock_out, "scratch", 2, "bf16", 1000.0, 1.85)
    text = annealed_family.report(out, plan=plan, clock_out=clock_out)
    assert "| 2 (fp32) | 0 | 0.05 (2) |" in text and "| 0 | 0 | 0.05 (2) |" in text
    # alone reaches the branch's 2.0 at sqrt(10 x 20) FLOPs; the final member, below scratch, at least scratch's
    saving = 1 - (100 + 1) / (100 + math.sqrt(200))
    assert f"| {100 * saving:.0f}% (>= {100 * saving:.0f}, >= {100 * saving:.0f}) |" in text
    # a seed holding both precisions is refused, and so is measuring a seed begun in the other precision
    annealed_family.refuse_another_precision(out, [0], here="bf16")
    annealed_family.refuse_another_precision(out, [2, 3], here="fp32")
    with pytest.raises(SystemExit, match="seed 0 .* measured in bf16 and this machine trains in fp32"):
        annealed_family.refuse_another_precision(out, [0], here="fp32")
    (out / "kept" / f"{plan}-seed3").mkdir(parents=True)          # a stopped bf16 family run of seed 3
    with pytest.raises(SystemExit, match="seed 3"):
        annealed_family.refuse_another_precision(out, [3], here="fp32")
    _saved(out, f"alone-{plan}-g1-matched", 0, "fp32", 10.0, 2.1)
    with pytest.raises(SystemExit, match=r"seed\(s\) \[0\] hold runs in bf16 and in fp32"):
        annealed_family.load(out)


def test_a_seed_whose_branches_are_saved_is_not_trained_again_without_its_kept_generations(tmp_path, distributed_env):
    """kept/ is not in git: on a fresh checkout a seed whose every branch is saved keeps its family run and measures
    only what is missing (here nothing: no training, no data needed); with a branch missing the family run, whose
    generations are gone, is trained again (its start opens a process group: distributed_env keeps its port out of
    later tests' subprocesses)."""
    plan, precision = "g3@2-vocab+copy", annealed_family.PRECISION
    _saved(tmp_path, f"family-{plan}", 0, precision, 100.0, 1.8, steps=40,
           growths=[dict(step=10 * g, flops=10.0 * g) for g in (1, 2, 3)])
    for g in range(3):
        _saved(tmp_path, f"branch-{plan}-g{g}-f0.05", 0, precision, 11.0 * (g + 1), 2.0, steps=12)
        for kind in ("matched", "branched"):
            _saved(tmp_path, f"alone-{plan}-g{g}-{kind}", 0, precision, 10.0 * (g + 1), 2.1)
    annealed_family.measure(tmp_path, 20, plan, 1.5e-3, [0], [0.05], None, None, None)   # trains nothing
    family = annealed_family.run_path(tmp_path, 20, f"family-{plan}", 1.5e-3, 0)
    assert family.is_file()
    annealed_family.run_path(tmp_path, 20, f"branch-{plan}-g2-f0.05", 1.5e-3, 0).unlink()
    with pytest.raises(Exception):          # no data to train with: the point is what it removed first
        annealed_family.measure(tmp_path, 20, plan, 1.5e-3, [0], [0.05], None, None, None)
    assert not family.is_file()
