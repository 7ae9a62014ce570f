"""bench/growth_report.py on a partial set of saved runs (as `growth_vs_scratch.py --only scratch both-vocab` leaves):
the report covers the runs that exist and names the ones that are missing."""
from __future__ import annotations

import json
import sys

import pytest

from helpers import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import growth_report  # noqa: E402

LR = 1e-3
SCRATCH_FLOPS = 100.0


def _save_run(runs_dir, name, seed, lr, steps, flops_at_step, wall_per_flop, bpb_at_flops, growth_steps=()):
    """A run file as growth_vs_scratch.py's run() writes it: train()'s dict plus the peak LR, named
    <name>-lr<lr>-seed<seed>.json. Evaluations every 10 steps, and a second one at each growth step (after it)."""
    evals, growths = [], []

    def evaluation(step, bpb):
        flops = flops_at_step(step)
        return dict(step=step, flops=flops, wall=flops * wall_per_flop, tokens=step * 2048, bpb=bpb,
                    generation=sum(g <= step for g in growth_steps), parameters=1000)

    for step in range(0, steps + 1, 10):
        evals.append(evaluation(step, bpb_at_flops(flops_at_step(step))))
        if step in growth_steps:
            before = evals[-1]["bpb"]
            evals.append(evaluation(step, before + 0.05))        # growing costs a little loss
            growths.append(dict(step=step, flops=flops_at_step(step), before=before, after=before + 0.05,
                                seconds=0.1, vocab=4000))
    run = dict(name=name, seed=seed, spec={}, evals=evals, growths=growths, final_bpb=evals[-1]["bpb"],
               flops=flops_at_step(steps), wall=flops_at_step(steps) * wall_per_flop, steps=steps, lr=lr)
    (runs_dir / f"{name.replace('/', '_')}-lr{lr:g}-seed{seed}.json").write_text(json.dumps(run))


@pytest.fixture()
def partial_bench(tmp_path):
    """Scratch (seeds 0, 1; plus a second LR tried on seed 0) and both-vocab (seeds 0, 1), nothing else.
    Scratch ends at 2.0 bits/byte after 100 FLOPs; both-vocab, linear in FLOPs, reaches 2.0 after 40 (seed 0) or
    50 (seed 1) FLOPs: savings of 60% and 50%, in FLOPs and in wall time alike (wall is proportional)."""
    runs = tmp_path / "runs"
    runs.mkdir()
    for seed in (0, 1):
        _save_run(runs, "scratch", seed, LR, 100, lambda step: float(step), 0.5, lambda f: 3.0 - f / SCRATCH_FLOPS)
    _save_run(runs, "scratch", 0, 2 * LR, 100, lambda step: float(step), 0.5, lambda f: 3.2 - f / SCRATCH_FLOPS)
    for seed, reaches_at in ((0, 40.0), (1, 50.0)):
        _save_run(runs, "both-vocab", seed, LR, 120, lambda step: step * SCRATCH_FLOPS / 120, 0.5,
                  lambda f, reach=reaches_at: 2.5 - 0.5 * f / reach, growth_steps=(20, 90))
    (tmp_path / "tuned_lr.json").write_text(json.dumps(dict(lr=LR, tried=[LR, 2 * LR])))
    return tmp_path


def test_report_of_scratch_and_both_vocab_only(partial_bench, capsys):
    summaries = growth_report.write_report(partial_bench)
    assert set(summaries) == {"scratch", "both-vocab"}
    assert [s["saving"] for s in summaries["both-vocab"]] == pytest.approx([0.6, 0.5])
    assert [s["wall_saving"] for s in summaries["both-vocab"]] == pytest.approx([0.6, 0.5])
    table = (partial_bench / "table.md").read_text()
    assert table.strip() in capsys.readouterr().out
    assert "| 0.001 (chosen) | 2.0000 |" in table and "| 0.002 | 2.2000 |" in table
    rows = {line.split(":")[0].strip("| "): line for line in table.splitlines() if line.startswith("| ")}
    both_vocab = rows["both-vocab"].split(" | ")
    assert both_vocab[1] == "120"                                     # steps
    assert both_vocab[4] == "+55% ± 7 (+50..+60)"                     # FLOPs saving: mean ± sd (min..max)
    assert both_vocab[5] == "+55% ± 7 (+50..+60)"                     # wall-time saving
    assert rows["scratch"].split(" | ")[4] == "0"
    assert "### Growth vs scratch (seeds 0, 1; peak LR 0.001)" in table
    assert "Not run (no saved run at peak LR 0.001): width, width-vocab, depth, depth-vocab, both." in table
    assert ("Not run (no saved run at peak LR 0.001): both, both/adam-reset, both/global-lr, both/stack, "
            "both/zero-units, both/zero-width.") in table
    if _has_matplotlib():
        assert (partial_bench / "curves.png").stat().st_size > 0


def test_report_without_scratch_says_why_it_has_no_figures(partial_bench):
    for path in (partial_bench / "runs").glob("scratch-*.json"):
        path.unlink()
    assert growth_report.write_report(partial_bench) == {}
    table = (partial_bench / "table.md").read_text()
    assert "No scratch run at this learning rate" in table and "Scratch learning rate" not in table
    assert "Not run (no saved run at peak LR 0.001): scratch, width," in table


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def test_report_without_a_tuned_learning_rate_says_what_to_run(partial_bench):
    (partial_bench / "tuned_lr.json").unlink()
    with pytest.raises(SystemExit, match="tuned_lr.json is missing: .* run bench/growth_vs_scratch.py"):
        growth_report.write_report(partial_bench)
