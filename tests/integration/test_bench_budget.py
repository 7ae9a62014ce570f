"""bench/budget_sweep.py's schedules (growths at their FLOP fractions, every run at scratch's FLOPs) and
bench/budget_report.py on synthetic saved runs."""
from __future__ import annotations

import json
import sys

import pytest

from helpers import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import budget_report  # noqa: E402
import budget_sweep  # noqa: E402
from megababel.model.counters import flops_per_token  # noqa: E402
from megababel.plan.schedule import parse_schedule  # noqa: E402


def generation_flops(spec) -> list[float]:
    """Training FLOPs spent in each generation of a schedule (the model between two growths)."""
    schedule = parse_schedule(spec, budget_sweep.TOKENS_PER_STEP)
    configs = [schedule.model] + [g.config for g in schedule.growths]
    bounds = [0] + [g.at_step for g in schedule.growths] + [schedule.steps]
    return [(b - a) * flops_per_token(c, budget_sweep.SEQ) * budget_sweep.TOKENS_PER_STEP
            for c, a, b in zip(configs, bounds, bounds[1:])]


@pytest.mark.parametrize("name", budget_sweep.ALL_PLANS)
def test_every_plan_ends_at_the_final_model_with_scratch_flops_and_grows_on_time(name):
    budget = 5
    scratch = sum(generation_flops(budget_sweep.schedule_spec("scratch", budget, 1e-3)))
    spec = budget_sweep.schedule_spec(name, budget, 1e-3)
    flops = generation_flops(spec)
    assert sum(flops) == pytest.approx(scratch, rel=2e-3)
    final = parse_schedule(spec, budget_sweep.TOKENS_PER_STEP)
    assert final.final_config == budget_sweep.final_config()
    first = int(name.split("@")[1].removesuffix("-vocab")) / 100
    growths = len(flops) - 1
    expected = [first + i * (1 - first) / growths for i in range(growths)]    # the first at F, the rest evenly
    reached = [sum(flops[:i + 1]) / scratch for i in range(len(flops) - 1)]
    assert reached == pytest.approx(expected, abs=2e-3)
    assert (final.model.vocab_size == 1000) == name.endswith("-vocab")


def test_late_growths_at_the_largest_budget_would_repeat_text(tmp_path):
    """One epoch of the training text: a plan that spends half the FLOPs on a 4x cheaper model sees ~3x scratch's
    tokens, more than the corpus holds at 20 tokens/parameter; an early growth fits."""
    (tmp_path / "vocab_2000").mkdir()
    index = dict(format="megababel-tokens/1", vocab_size=2000, bos_id=1, eos_id=2, ids="model rows",
                 tokenizer_sha256="x", stage=2000, splits=dict(train=dict(shards=[], n_docs=0, n_tokens=64_929_922,
                                                                           n_bytes=0)))
    (tmp_path / "vocab_2000" / "index.json").write_text(json.dumps(index))
    assert budget_sweep.one_epoch(20, "g1@10", tmp_path)
    assert not budget_sweep.one_epoch(20, "g2@50-vocab", tmp_path)
    assert budget_sweep.one_epoch(5, "g2@50-vocab", tmp_path)


def _run(runs, budget, name, lr, seed, reach, flops=100.0, growths=(), load=2.7, stopped_at=None):
    """A saved run whose bits/byte falls linearly from 3.0 to 3.0 - 1.0 * flops / reach."""
    evals = [dict(step=k, flops=flops * k / 10, wall=flops * k / 20, bpb=3.0 - flops * k / 10 / reach, load=load)
             for k in range(11 if stopped_at is None else stopped_at + 1)]
    run = dict(name=name, seed=seed, lr=lr, budget=budget, evals=evals, growths=list(growths),
               final_bpb=evals[-1]["bpb"], flops=flops, wall=flops / 2, steps=10,
               spec=dict(model=dict(budget_sweep.FINAL, **budget_sweep.COMMON)))
    (runs / f"b{budget:g}-{name}-lr{lr:g}-seed{seed}.json").write_text(json.dumps(run))


def test_a_run_that_slowed_down_within_a_generation_shared_the_machine():
    """A two-thread run with a one-thread process beside it: the load reads about 3 (under BUSY_LOAD), but one
    stretch of 300+ steps took twice the generation's usual seconds per step; stretches across a growth (another
    pace) and short ones (an evaluation's share) do not count."""
    def run(paces, generations=None, step=320):
        evals, wall = [dict(step=0, wall=0.0, load=2.0, generation=0)], 0.0
        for i, pace in enumerate(paces):
            wall += pace * step
            evals.append(dict(step=(i + 1) * step, wall=wall, load=3.0,
                              generation=0 if generations is None else generations[i]))
        return dict(evals=evals)
    assert not budget_report.busy(run([0.26, 0.27, 0.26, 0.28]))
    assert budget_report.busy(run([0.26, 0.27, 0.55, 0.26]))
    assert not budget_report.busy(run([0.26, 0.27, 0.26, 0.55, 0.56, 0.55], generations=[0, 0, 0, 1, 1, 1]))
    assert not budget_report.busy(run([0.26, 0.27, 0.55, 0.26], step=100))


def test_lever_variants_append_levers_or_move_the_first_growth():
    assert budget_sweep.lever_variant("g2@10-vocab", "@2") == "g2@2-vocab"
    assert budget_sweep.lever_variant("g1@25", "@5") == "g1@5"
    assert budget_sweep.lever_variant("g2@10-vocab", "x4+copy") == "g2@10-vocab+x4+copy"
    assert budget_sweep.lever_variant("g3@10-vocab", "@2+copy") == "g3@2-vocab+copy"


def test_report_finds_the_tuned_lr_the_best_plan_and_its_saving_over_seeds(tmp_path, capsys):
    runs = tmp_path / "runs"
    runs.mkdir()
    for seed in (0, 1):
        _run(runs, 1, "scratch", 1e-3, seed, reach=100.0)                 # ends at 2.0
    _run(runs, 1, "scratch", 2e-3, 0, reach=110.0)                          # ends higher: not the tuned LR
    _run(runs, 1, "g2@25", 1e-3, 0, reach=60.0)                             # reaches 2.0 at 60: saving 40%
    _run(runs, 1, "g2@25", 1e-3, 1, reach=80.0)                             # 20%
    _run(runs, 1, "g1@10", 1e-3, 0, reach=120.0)                            # never reaches 2.0
    _run(runs, 1, "g2@25+rewarm1", 1e-3, 0, reach=50.0)                     # a lever: 50%, never the best plan
    _run(runs, 1, "g2@2", 1e-3, 0, reach=45.0)                              # @2 is a lever too, not a grid plan
    _run(runs, 1, "g3@10", 1e-3, 0, reach=90.0, load=5.0)                   # shared the machine: no wall saving
    _run(runs, 1, "g3@25", 1e-3, 0, reach=10.0, stopped_at=3)               # stopped early: left out
    table = budget_report.write_report(tmp_path)
    (row,) = budget_report.summarise(budget_report.load(tmp_path))
    assert row["lr"] == 1e-3 and row["best"] == "g2@25"
    assert row["best_flops"] == pytest.approx([0.4, 0.2])
    assert row["plans"]["g1@10"]["flops"] is None and row["plans"]["g1@10"]["d_bpb"] > 0
    assert "| g2@25 | 30% (20..40) |" in table and "| g1@10 | never /" in table
    assert row["levers"]["g2@25+rewarm1"]["flops"] == pytest.approx(0.5) and "g2@25+rewarm1" not in row["plans"]
    assert row["levers"]["g2@2"]["flops"] == pytest.approx(0.55) and "g2@2" not in row["plans"]
    # the lever table: every seed run of the base and the lever, each against scratch of its seed
    assert "| g2@25 (base) | 30% (20..40) |" in table and "| g2@25+rewarm1 | 50% | - | - | 50% | -1.000 | 1 |" in table
    assert row["by_seed"]["g2@25"]["seeds"] == [0, 1] and row["by_seed"]["g2@25"]["flops"] == pytest.approx([0.4, 0.2])
    assert row["plans"]["g3@10"]["wall"] == "busy" and row["plans"]["g3@10"]["flops"] == pytest.approx(0.1)
    assert "g3@25" not in row["plans"]
    assert table in capsys.readouterr().out
    # a lever run at every seed competes; among the plans run at every seed the worst seed decides
    _run(runs, 1, "g2@2", 1e-3, 1, reach=70.0)                              # 55%, 30%: beats g2@25's 40%, 20%
    (row,) = budget_report.summarise(budget_report.load(tmp_path))
    assert row["best"] == "g2@2" and row["best_flops"] == pytest.approx([0.55, 0.3])
    _run(runs, 1, "g2@25+rewarm1", 1e-3, 1, reach=10.0)                     # 50%, 90%: less at seed 0, best worst
    (row,) = budget_report.summarise(budget_report.load(tmp_path))
    assert row["best"] == "g2@25+rewarm1" and row["best_flops"] == pytest.approx([0.5, 0.9])
    _run(runs, 1, "g2@25+rewarm1", 1e-3, 1, reach=120.0)                    # seed 1 never gets there: worst
    (row,) = budget_report.summarise(budget_report.load(tmp_path))
    assert row["best"] == "g2@2"
    # a lever replaces the grid's best only where it saves more at every seed: a better worst seed is not enough
    tmp_path = tmp_path / "another"        # (scratch at a second budget would make the saving compute-equivalent)
    runs = tmp_path / "runs"
    runs.mkdir(parents=True)
    for seed in (0, 1):
        _run(runs, 5, "scratch", 1e-3, seed, reach=100.0)
    _run(runs, 5, "g2@25", 1e-3, 0, reach=60.0)                             # 40%, 20%
    _run(runs, 5, "g2@25", 1e-3, 1, reach=80.0)
    _run(runs, 5, "g2@25+narrow", 1e-3, 0, reach=61.0)                      # 39%, 25%: a better worst seed
    _run(runs, 5, "g2@25+narrow", 1e-3, 1, reach=75.0)
    assert budget_report.summarise(budget_report.load(tmp_path))[0]["best"] == "g2@25"
    _run(runs, 5, "g2@25+copy", 1e-3, 0, reach=59.0)                        # 41%, 21%: more at every seed
    _run(runs, 5, "g2@25+copy", 1e-3, 1, reach=79.0)
    assert budget_report.summarise(budget_report.load(tmp_path))[0]["best"] == "g2@25+copy"


def test_the_compute_equivalent_saving_reads_scratchs_finals_at_the_other_budgets(tmp_path):
    """Scratch of the same seed at budgets 1, 5 and 20 (100, 500, 2000 FLOPs) ending at 2.0, 1.5 and 1.2: a plan at
    budget 1 that ends at 1.75 is halfway to budget 5 in log FLOPs (sqrt(5) x 100 FLOPs: 55% saved); if the curve is
    convex, the line through budgets 5 and 20, extended back, bounds the least scratch needs. At budget 20, a plan
    past the curve gets only that least."""
    runs = tmp_path / "runs"
    runs.mkdir()
    for budget, flops in ((1, 100.0), (5, 500.0), (20, 2000.0)):
        _run(runs, budget, "scratch", 1e-3, 0, reach=flops / {1: 1.0, 5: 1.5, 20: 1.8}[budget], flops=flops)
    _run(runs, 1, "g2@25", 1e-3, 0, reach=100.0 / 1.25)
    _run(runs, 20, "g2@25", 1e-3, 0, reach=2000.0 / 1.89, flops=2000.0)       # ends at 1.11
    rows = budget_report.summarise(budget_report.load(tmp_path))
    (at_1,) = rows[0]["best_equivalent"]
    assert at_1["interpolated"] == pytest.approx(1 - 1 / 5 ** 0.5)
    # the 5-20 line falls 0.3 per log(4): it reaches 1.75 at log(500) - 0.25 / 0.3 * log(4), above budget 1
    least = 1 - 100 / (500 * 4 ** (-0.25 / 0.3))
    assert at_1["least"] == pytest.approx(least) and at_1["most"] == pytest.approx(at_1["interpolated"])
    (at_20,) = rows[2]["best_equivalent"]
    assert at_20["interpolated"] is None and at_20["bound"] == "> 0%" and at_20["most"] is None
    assert at_20["least"] == pytest.approx(1 - 1 / 4 ** (0.09 / 0.3))
    table = budget_report.write_report(tmp_path)
    assert "| g2@25 | 20% | 55% | 37%..55% |" in table      # budget 1: crossing, interpolated, bounds
    assert "| > 0% (past the curve) | >= 34% |" in table


def test_the_planners_table_takes_the_budgets_run_at_three_seeds(tmp_path, capsys):
    """measured_savings: per budget whose best plan and scratch share 3 seeds, the best plan, the tuned LR and each
    seed's FLOP saving to 4 decimals (None: never reached); written only where asked (or for the benchmark's runs)."""
    runs = tmp_path / "runs"
    runs.mkdir()
    for seed in (0, 1, 2):
        _run(runs, 1, "scratch", 1e-3, seed, reach=100.0)
        _run(runs, 5, "scratch", 2e-3, seed, reach=500.0 / 1.5, flops=500.0)     # ends at 1.5 for 5x the FLOPs
    for seed, reach in ((0, 70.0), (1, 60.0), (2, 120.0)):
        _run(runs, 1, "g2@25", 1e-3, seed, reach=reach)               # crossing 30%, 40%, never
    _run(runs, 5, "g1@10", 2e-3, 0, reach=50.0, flops=500.0)          # one seed only: not in the table
    path = tmp_path / "savings.json"
    budget_report.write_report(tmp_path, savings_file=path)
    assert f"wrote {path}: the planner's table, 1 budgets" in capsys.readouterr().out
    table = json.loads(path.read_text())
    # compute-equivalent on scratch's finals (2.0 at 100 FLOPs, 1.5 at 500): seed 0 ends at 3 - 100/70, between
    # them; seed 1 at 3 - 100/60, past budget 5 (the line through the two, extended: its least if convex); seed 2
    # at 3 - 100/120, above scratch's smallest budget: never
    ends = [3 - 100 / 70, 3 - 100 / 60]
    equivalent = [round(1 - 100 / (100 * 5 ** ((2.0 - ends[0]) / 0.5)), 4),
                  round(1 - 100 / (500 * 5 ** ((1.5 - ends[1]) / 0.5)), 4), None]
    assert table["rows"] == [dict(tokens_per_parameter=1, plan="g2@25", lr=1e-3, seeds=[0, 1, 2],
                                  flop_savings=equivalent, saving="compute-equivalent-finals",
                                  crossing_savings=[0.3, 0.4, None])]
    assert table["final_model"]["hidden_size"] == 128 and table["final_model"]["parameters"] > 0
    assert table["command"] == f"python bench/budget_sweep.py --report --out {tmp_path}"
    from megababel.plan.planner import read_measured
    (measured,), final = read_measured(path.read_text())
    assert (measured.plan, measured.lr, measured.flop_savings, measured.pays) == ("g2@25", 1e-3, tuple(equivalent),
                                                                                  False)
    assert measured.crossing_savings == (0.3, 0.4, None)
    assert "compute-equivalent FLOP saving per seed" in measured.saving_text() and "30%, 40%, never" in \
        measured.saving_text()
    # with scratch at one budget there is no curve to read: the crossing saving
    (runs / "b5-scratch-lr0.002-seed0.json").unlink()
    (runs / "b5-g1@10-lr0.002-seed0.json").unlink()
    for seed in (1, 2):
        (runs / f"b5-scratch-lr0.002-seed{seed}.json").unlink()
    budget_report.write_report(tmp_path, savings_file=path)
    assert json.loads(path.read_text())["rows"][0]["flop_savings"] == [0.3, 0.4, None]


def test_wall_time_is_compared_only_between_runs_made_alike(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    _run(runs, 1, "scratch", 1e-3, 0, reach=100.0)
    _run(runs, 1, "g2@25", 1e-3, 0, reach=60.0)
    scratch, plan = (json.loads((runs / f"b1-{n}-lr0.001-seed0.json").read_text()) for n in ("scratch", "g2@25"))
    assert budget_report.wall_saving(plan, scratch) == pytest.approx(0.4)     # both: 2 threads, alone (the default)
    assert budget_report.wall_saving(dict(plan, threads=1, processes=2), scratch) == "busy"
    assert budget_report.wall_saving(dict(plan, threads=1, processes=2),
                                     dict(scratch, threads=1, processes=2)) == pytest.approx(0.4)


def test_a_seed_that_never_reaches_scratch_lists_every_seed_instead_of_a_mean():
    assert budget_report._spread([0.30, 0.32, 0.31]) == "31% (30..32)"
    assert budget_report._spread([0.01, 0.04, None]) == "1%, 4%, never"      # not "3% (1..4)" of the two that did
    assert budget_report._spread([-0.005, None], pct=False) == "-0.005, never"


def test_family_members_are_named_by_shape_and_vocabulary_stage():
    spec = budget_sweep.schedule_spec("g3@10-vocab", 20, 1e-3)
    assert budget_report.member_shapes(spec) == ["64x2, FFN 176, vocabulary 1000", "96x2, FFN 264, vocabulary 2000",
                                                 "128x2, FFN 352, vocabulary 2000", "128x4, FFN 352, vocabulary 2000"]


def test_family_report_sums_each_member_trained_alone_and_marks_lower_bounds(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    _run(runs, 20, "scratch", 1e-3, 0, reach=100.0)                     # 3.0 -> 2.0 over 100 FLOPs
    _run(runs, 20, "g1@10", 1e-3, 0, reach=80.0, growths=[dict(step=3, flops=30.0, before=2.7, after=2.7)])
    _run(runs, 20, "member0-optimal-g1@10", 2e-3, 0, reach=50.0, flops=50.0)    # reaches 2.7 at 15 FLOPs
    _run(runs, 20, "member0-matched-g1@10", 2e-3, 0, reach=40.0, flops=30.0)    # at 12: the least counts
    # the LR tried and not chosen (the matched run is at the chosen one) is not counted, though it gets there at 10
    _run(runs, 20, "member0-optimal-g1@10", 1e-3, 0, reach=33.3, flops=50.0)
    (row,) = budget_report.summarise_family(budget_report.load(tmp_path))
    (seed,) = row["seeds"]
    first, final = seed["members"]
    assert first["alone_flops"] == pytest.approx(12.0) and not first["lower_bound"]
    assert first["family_flops"] == 30.0 and first["bpb"] == 2.7
    # the family ends at 1.75, below scratch's 2.0: alone never got there in scratch's 100 FLOPs, a lower bound
    assert final["lower_bound"] and final["alone_flops"] == 100.0
    assert seed["saving"] == pytest.approx(1 - 100 / 112) and seed["lower_bound"]
    table = budget_report.write_family_report(tmp_path)
    assert "family saving >= 11%" in table and "| 0 | 128x4, FFN 352, vocabulary 2000 |" in table
    assert "| 1 (final) |" in table
    (summary,) = budget_report.summarise(budget_report.load(tmp_path))       # members are not plans
    assert set(summary["plans"]) == {"g1@10"} and set(summary["by_seed"]) == {"g1@10"}


def test_a_run_claimed_by_another_live_process_is_skipped_or_waited_for(tmp_path):
    import os
    path = budget_sweep.run_path(tmp_path, 5, "g2@25", 1e-3, 0)
    path.parent.mkdir(parents=True)
    claim = path.with_suffix(".claim")
    claim.write_text(str(os.getpid()))                      # our own claim: not another's
    assert not budget_sweep.claimed(path)
    claim.write_text("1")                                   # a live process (init)
    assert budget_sweep.claimed(path)
    assert budget_sweep.run(tmp_path, 5, "g2@25", 1e-3, 0, None, None, wait=False) is None
    assert not budget_sweep._claim(path)                    # cannot be taken while that process lives
    claim.write_text("999999999")                           # a dead one: its claim is stale
    assert not budget_sweep.claimed(path)
    assert budget_sweep._claim(path) and claim.read_text() == str(os.getpid())      # taken over
    assert not budget_sweep.claimed(path) and sorted(p.name for p in path.parent.iterdir()) == [claim.name]


class StopAt:
    """Sends this process SIGTERM after step `step`, as a session's end does to a running benchmark."""

    def __init__(self, step: int):
        self.step = step

    def __getattr__(self, hook):                 # every other Callback hook: nothing
        return lambda *args: None

    def on_step_end(self, trainer, row):
        if trainer.step == self.step:
            import signal
            signal.raise_signal(signal.SIGTERM)


def test_a_stopped_run_resumes_where_it_stopped_and_ends_as_if_never_stopped(distributed_env, tmp_path, monkeypatch):
    """SIGTERM checkpoints a run with what was measured so far; the next invocation resumes it exactly (the same
    evaluations, growths and FLOPs as a run never stopped, nor checkpointed on the way) and removes the checkpoints
    once the run is saved."""
    from megababel.data.embedded import build_embedded_dataset
    import growth_vs_scratch
    from growth_vs_scratch import Validation
    data = build_embedded_dataset()
    validation = {v: Validation(data / f"vocab_{v}") for v in (1000, 2000)}
    spec = dict(model=dict(hidden_size=64, head_dim=32, num_hidden_layers=2, multiple_of=32, vocab_size=1000,
                           max_position_embeddings=256),
                training=dict(steps=30, lr=3e-3, warmup_steps=3),
                growths=[dict(at_step=15, hidden_size=96, intermediate_size=256, vocab_size=2000)])
    whole = budget_sweep.run(tmp_path / "whole", 1, "tiny", 3e-3, 0, data, validation, spec=spec)
    monkeypatch.setattr(growth_vs_scratch, "PARTIAL_EVERY", 5)       # checkpoints on the way change nothing
    stopped = tmp_path / "stopped"
    path = budget_sweep.run_path(stopped, 1, "tiny", 3e-3, 0)
    with pytest.raises(SystemExit, match="stopped by SIGTERM at step 12 of 30; checkpointed: a re-run resumes it"):
        budget_sweep.run(stopped, 1, "tiny", 3e-3, 0, data, validation, spec=spec,
                         options=dict(callbacks=[StopAt(12)]))
    assert not path.is_file() and any((budget_sweep.partial_dir(path) / "checkpoints").glob("step_00000012_*"))
    resumed = budget_sweep.run(stopped, 1, "tiny", 3e-3, 0, data, validation, spec=spec)
    same = lambda evals: [{k: e[k] for k in ("step", "flops", "bpb", "generation")} for e in evals]  # noqa: E731
    assert same(resumed["evals"]) == same(whole["evals"]) and len(whole["evals"]) > 8
    assert [(g["step"], g["before"], g["after"]) for g in resumed["growths"]] == \
           [(g["step"], g["before"], g["after"]) for g in whole["growths"]]
    assert resumed["flops"] == whole["flops"] and resumed["final_bpb"] == whole["final_bpb"]
    assert path.is_file() and not budget_sweep.partial_dir(path).exists()


def test_a_stopped_decay_branch_resumes_its_own_checkpoint_not_the_member_it_started_from(distributed_env, tmp_path):
    """A branch (bench/annealed_family.py) starts from a member's checkpoint (resume=MEMBER) into its partial
    folder; stopped, it continues from its own checkpoint with its own measurements."""
    from megababel.checkpoint.io import list_checkpoints
    from megababel.data.embedded import build_embedded_dataset
    from growth_vs_scratch import Validation, train
    data = build_embedded_dataset()
    validation = {v: Validation(data / f"vocab_{v}") for v in (1000, 2000)}
    spec = dict(model=dict(hidden_size=64, head_dim=32, num_hidden_layers=2, multiple_of=32, vocab_size=1000,
                           max_position_embeddings=256),
                training=dict(steps=24, lr=3e-3, warmup_steps=3),
                growths=[dict(at_step=12, hidden_size=96, intermediate_size=256)])
    train("family", spec, 0, data, validation, eval_every=4, partial=tmp_path / "family", keep_generations=True)
    member = next(c for c in list_checkpoints(tmp_path / "family" / "generations") if c.name.endswith("_gen0"))
    branch = dict(resume=member, anneal_steps=8)
    whole = train("branch", spec, 0, data, validation, eval_every=4, partial=tmp_path / "whole", **branch)
    with pytest.raises(SystemExit, match="stopped by SIGTERM at step 16 of 20; checkpointed"):
        train("branch", spec, 0, data, validation, eval_every=4, partial=tmp_path / "stopped", callbacks=[StopAt(16)],
              **branch)
    resumed = train("branch", spec, 0, data, validation, eval_every=4, partial=tmp_path / "stopped", **branch)
    same = lambda evals: [{k: e[k] for k in ("step", "flops", "bpb")} for e in evals]  # noqa: E731
    assert same(resumed["evals"]) == same(whole["evals"]) and whole["evals"][0]["step"] == 12
    assert resumed["flops"] == whole["flops"] and resumed["steps"] == 20
