"""The growth planner (megababel/plan/planner.py, tools/plan_growth.py, launch/train.py --schedule auto): its table
(megababel/plan/measured_savings.json) is what bench/budget_report.py computes from the saved benchmark runs, it
reproduces the best measured plan at each benchmarked budget, its schedules are valid and spend scratch's FLOPs, and
impossible requests are refused with the field and the fix."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from helpers import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import budget_report  # noqa: E402
import budget_sweep  # noqa: E402
from megababel.config import ConfigError, LlamaConfig  # noqa: E402
from megababel.model.counters import config_parameters, flops_per_token  # noqa: E402
from megababel.plan.planner import BENCH_HIDDEN, MEASURED, MEASURED_FINAL, plan_growth, plan_schedule  # noqa: E402
from megababel.plan.schedule import parse_schedule  # noqa: E402

RUNS = ROOT / "bench" / "results" / "budget_sweep"
BENCH_FINAL = budget_sweep.final_config()


def bench_plan(tokens_per_parameter: float, **kw):
    return plan_growth(BENCH_FINAL, tokens=tokens_per_parameter * config_parameters(BENCH_FINAL),
                       seq_len=budget_sweep.SEQ, tokens_per_step=budget_sweep.TOKENS_PER_STEP, **kw)


def test_the_table_is_the_saved_benchmark():
    """The planner's data file is exactly what bench/budget_report.py writes from bench/budget_sweep.py's saved runs
    (every budget run at 3 seeds: best plan, tuned LR, each seed's saving), and MEASURED is that file: the rule
    cannot drift from the data. (A new run: `python bench/budget_sweep.py --report` rewrites the file.)"""
    rows = budget_report.summarise(budget_report.load(RUNS))
    clock_rows = budget_report.clock_rows_of(budget_report.SAVINGS_FILE)
    table = budget_report.measured_savings(rows, clock_rows=clock_rows)
    saved = json.loads(budget_report.SAVINGS_FILE.read_text())
    assert saved == table
    assert budget_report.SAVINGS_FILE.read_text() == budget_report._json_lines(table)      # as written, byte for byte
    assert [(m.tokens_per_parameter, m.plan, m.lr, list(m.flop_savings)) for m in MEASURED] == [
        (r["tokens_per_parameter"], r["plan"], r["lr"], r["flop_savings"]) for r in saved["rows"]]
    assert MEASURED_FINAL == saved["final_model"] and BENCH_HIDDEN == BENCH_FINAL.hidden_size == 128
    assert MEASURED_FINAL["parameters"] == config_parameters(BENCH_FINAL)
    complete = {r["budget"] for r in rows if len(r["seeds"]) >= 3} | {r["tokens_per_parameter"] for r in clock_rows}
    assert complete == {m.tokens_per_parameter for m in MEASURED} and all(m.seeds >= 3 for m in MEASURED)
    by_budget = {r["budget"]: r for r in rows}
    for m in MEASURED:          # the rounding: 4 decimals of what the report computes
        row = by_budget.get(m.tokens_per_parameter)
        if m.saving == "compute-equivalent-finals":
            assert list(m.crossing_savings) == pytest.approx(row["best_flops"], abs=5e-5)
            assert list(m.flop_savings) == pytest.approx(
                [budget_report.planner_saving(e) for e in row["best_equivalent"]], abs=5e-5)
    # every budget of the sweep has scratch at several budgets: the planner counts compute-equivalent FLOPs
    assert {m.saving for m in MEASURED} <= {"compute-equivalent-finals", "compute-equivalent"}


def test_the_clocks_rows_are_the_saved_clock():
    """A row of bench/clock.py's (compute-equivalent) is what clock_report computes from the clock's saved runs: one
    per budget where a plan ran at seeds 0-2 in bf16 (or else in fp32), and none before (`python bench/clock.py
    --report` writes it)."""
    import clock
    import clock_report
    expected = clock_report.clock_planner_rows(clock.DEFAULT_OUT)
    assert budget_report.clock_rows_of(budget_report.SAVINGS_FILE) == expected


def test_the_report_of_the_benchmark_writes_the_planners_table(tmp_path, capsys):
    """`python bench/budget_report.py` (= budget_sweep.py --report) rewrites the package's table from the benchmark's
    runs; the report of another folder (a --quick sweep, a test) leaves it alone unless given a file."""
    import shutil
    out = tmp_path / "sweep"
    shutil.copytree(RUNS / "runs", out / "runs")
    written = tmp_path / "measured_savings.json"
    budget_report.write_report(out, savings_file=written)
    assert f"wrote {written}" in capsys.readouterr().out
    table = json.loads(written.read_text())
    saved = json.loads(budget_report.SAVINGS_FILE.read_text())
    assert table["command"] == f"python bench/budget_sweep.py --report --out {out}"
    assert dict(table, command=saved["command"], runs=saved["runs"]) == saved
    assert not list(out.glob("*.json"))
    budget_report.write_report(out)                       # not the benchmark's folder: no table written
    assert "wrote" not in capsys.readouterr().out and not list(out.glob("*.json"))


@pytest.mark.parametrize("measured", MEASURED, ids=lambda m: f"{m.tokens_per_parameter:g}")
def test_it_reproduces_the_best_measured_plan_at_each_benchmarked_budget(measured):
    plan = bench_plan(measured.tokens_per_parameter, family=True)     # the measured growth, even where it lost
    assert plan.name == measured.plan and plan.schedule["training"]["lr"] == measured.lr
    assert bench_plan(measured.tokens_per_parameter).name == (measured.plan if measured.pays else "scratch")
    runs = [json.loads(p.read_text()) for p in (RUNS / "runs").glob(
        f"b{measured.tokens_per_parameter:g}-{measured.plan}-lr{measured.lr:g}-seed0.json")]
    assert runs and runs[0]["spec"]["growths"] == plan.schedule["growths"]       # the very schedule measured
    assert f"best plan {measured.plan}" in plan.explain()


def test_between_budgets_the_nearest_in_log_scale_and_far_ones_are_flagged():
    assert bench_plan(0.25).name == MEASURED[0].plan        # log-nearer to 0.1 than to 1
    assert bench_plan(0.5).name == MEASURED[1].plan
    far = bench_plan(100 * MEASURED[-1].tokens_per_parameter)
    last = MEASURED[-1]
    assert far.name == (last.plan if last.pays else "scratch") and "no measurement within 2x" in far.explain()


@pytest.mark.parametrize("final", [
    dict(hidden_size=128, head_dim=32, num_hidden_layers=4, intermediate_size=352, vocab_size=2000, multiple_of=32),
    dict(hidden_size=2048, head_dim=128, num_hidden_layers=24, num_key_value_heads=4, vocab_size=32000),   # GQA
    dict(hidden_size=1792, head_dim=128, num_hidden_layers=24, intermediate_size=4864, vocab_size=32000)],
    ids=["bench", "gqa-2048", "seed-1.05B"])
@pytest.mark.parametrize("name", ["scratch"] + budget_sweep.ALL_PLANS + [
    "g2@10-vocab+halfbatch", "g1@25+rewarm2", "g3@10+rewarm1+halfbatch", "g1@2-vocab+copy", "g1@5+x4+copy",
    "g2@10+x4", "g3@10-vocab+zerowidth", "g2@5-vocab+genlr+rewarm1"])
def test_every_plan_is_a_valid_schedule_ending_at_the_final_model_at_scratch_flops(final, name):
    final = LlamaConfig(**final)
    spec = plan_schedule(final, name, 1000, 2048, 2048 * 8, 3e-4)
    schedule = parse_schedule(spec, 2048 * 8)           # validates every growth against the model it grows
    assert schedule.final_config == final
    configs = [schedule.model] + [g.config for g in schedule.growths]
    if final.hidden_size == 1792 and name.startswith("g3"):      # 14 heads: 3/4 width is the nearest whole, 11
        assert [c.num_attention_heads for c in configs] == [7, 11, 14, 14]
    bounds = [0] + [g.at_step for g in schedule.growths] + [schedule.steps]
    batches = [schedule.batch_tokens(g) or 2048 * 8 for g in range(len(configs))]
    flops = sum((b - a) * flops_per_token(c, 2048) * t for c, a, b, t in zip(configs, bounds, bounds[1:], batches))
    assert flops == pytest.approx(1000 * flops_per_token(final, 2048) * 2048 * 8, rel=3e-3)
    assert batches[:-1] == [2048 * 4] * (len(batches) - 1) if "+halfbatch" in name else set(batches) == {2048 * 8}
    rewarm = {g.rewarmup_steps for g in schedule.growths}
    assert rewarm == ({20} if "+rewarm2" in name else {10} if "+rewarm1" in name else {0} if rewarm else set())
    assert (schedule.model.vocab_size == final.vocab_size // 2) == ("-vocab" in name)
    if name == "scratch":
        return
    depth = next(g for g in schedule.growths if g.event.num_hidden_layers)
    assert schedule.model.num_hidden_layers == final.num_hidden_layers // (4 if "+x4" in name else 2)
    assert depth.event.depth_init == ("copy" if "+copy" in name else "identity")
    if "+copy" in name:           # the trained layers stacked again on top, in order
        old = schedule.model.num_hidden_layers
        assert depth.event.copy_from == [i % old for i in range(final.num_hidden_layers - old)]
    assert all((g.event.width_init == "zero") == ("+zerowidth" in name)
               for g in schedule.growths if g.event.hidden_size)
    lrs = [schedule.lr] + [g.lr for g in schedule.growths]
    expected = [3e-4 * final.hidden_size / c.hidden_size for c in configs] if "+genlr" in name else [3e-4] * len(lrs)
    assert lrs == pytest.approx(expected)


def test_the_data_decides_the_vocabulary_stage():
    plan = bench_plan(0.1, vocab_stages=[500, 2000])                 # no 1000 stage: the largest below half
    assert plan.schedule["model"]["vocab_size"] == 500
    plan = bench_plan(0.1, vocab_stages=[2000])                      # none below the final: no vocabulary stage
    assert plan.name == "g3@10" and plan.schedule["model"]["vocab_size"] == 2000 and "no vocabulary" in plan.explain()
    from megababel.plan.planner import Measured
    table = (Measured(20.0, "g3@2-vocab+copy", 1.5e-3, (0.1, 0.1, 0.1)),)       # a plan with a lever keeps it
    plan = bench_plan(20.0, table=table, vocab_stages=[2000])
    assert plan.name == "g3@2+copy" and plan.schedule["model"]["vocab_size"] == 2000
    assert plan.schedule["growths"][-1]["depth_init"] == "copy"
    assert bench_plan(20.0, table=table, vocab_stages=[1000, 2000]).schedule["model"]["vocab_size"] == 1000


def test_the_lr_scales_with_width_unless_given():
    wide = LlamaConfig(hidden_size=1024, head_dim=64, num_hidden_layers=8, vocab_size=32000)
    plan = plan_growth(wide, tokens=1e9, seq_len=2048, tokens_per_step=2**19)
    assert plan.schedule["training"]["lr"] == pytest.approx(plan.measured.lr * 128 / 1024)
    assert "1/width" in plan.explain()
    assert plan_growth(wide, tokens=1e9, seq_len=2048, tokens_per_step=2**19, lr=1e-4).schedule["training"]["lr"] == 1e-4


@pytest.mark.parametrize("final, kw, field, fix", [
    (dict(num_hidden_layers=3), dict(tokens=1e7), "num_hidden_layers", "multiple of 2 layers"),
    (dict(), dict(tokens=1e4), "tokens", "raise the budget"),
    (dict(), dict(tokens=1e7, flops=1e15), "budget", "exactly one"),
    (dict(), dict(tokens=-5.0), "tokens", "positive"),
    (dict(), dict(flops=float("inf")), "flops", "positive"),
    (dict(), dict(tokens=1e7, tokens_per_step=0), "tokens_per_step", "positive"),
    (dict(hidden_size=96, head_dim=32, num_hidden_layers=4), dict(tokens=1e5), "hidden_size", "divisible"),
], ids=["odd-layers", "too-few-steps", "tokens-and-flops", "negative", "inf-flops", "zero-batch", "3-heads"])
def test_impossible_requests_are_refused_naming_the_field_and_the_fix(final, kw, field, fix):
    config = LlamaConfig(**dict(dict(hidden_size=128, head_dim=32, num_hidden_layers=4, vocab_size=2000), **final))
    kw = dict(dict(seq_len=256, tokens_per_step=2048), **kw)
    with pytest.raises(ConfigError, match=fix) as error:
        plan_growth(config, **kw)
    assert field in str(error.value)


def test_the_command_line_writes_a_schedule_the_launcher_accepts(tmp_path):
    out = tmp_path / "plan.yaml"
    done = subprocess.run([sys.executable, "-m", "megababel.cli.plan_growth", "--final", "tinystories",
                           "--tokens-per-parameter", "0.1", "--seq-len", "256", "--global-batch-tokens", "2048",
                           "--out", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "plan g3@10-vocab" in done.stdout
    from megababel.plan.presets import load_schedule
    schedule = load_schedule(out, 2048)
    assert schedule.final_config.hidden_size == 256 and len(schedule.growths) == 3
    bad = subprocess.run([sys.executable, "-m", "megababel.cli.plan_growth", "--final", "tinystories",
                          "--tokens", "1000"], capture_output=True, text=True)
    assert bad.returncode == 2 and "raise the budget" in bad.stderr and "Traceback" not in bad.stderr
    from megababel.cli.plan_growth import main
    narrow = main(["--final", "tinystories", "--tokens-per-parameter", "0.1", "--seq-len", "256", "--levers", "narrow",
                   "--out", str(tmp_path / "narrow.json")])
    assert narrow.name == "g3@10-vocab+narrow"
    assert load_schedule(tmp_path / "narrow.json", 2048).model.head_dim == schedule.model.head_dim // 2


def test_an_unknown_lever_is_refused():
    with pytest.raises(ConfigError, match="levers are"):
        plan_schedule(BENCH_FINAL, "g1@25+turbo", 1000, 256, 2048, 1e-3)


@pytest.mark.parametrize("name, tokens, seq_len, tokens_per_step, stages", [
    ("tiny", 450 * 8 * 128, 128, 8 * 128, [1000, 2000, 4000]),
    ("tinystories", 150 * 8 * 256, 256, 8 * 256, [2000, 4000, 8000]),
    ("seed", 20 * 1_050_629_888, 2048, 256 * 2048, [8000, 16000, 32000])])
def test_presets_follow_the_planner(name, tokens, seq_len, tokens_per_step, stages):
    """The preset, loaded at its batch, is step for step the planner's plan for its final model and budget (its
    growths are stored as fractions, so that --steps scales them: they must land on the planned steps)."""
    from megababel.model.counters import config_parameters
    from megababel.plan.presets import final_model, load_schedule
    final = final_model(name)
    plan = plan_growth(final, tokens=tokens, seq_len=seq_len, tokens_per_step=tokens_per_step, vocab_stages=stages,
                       family=name == "seed",   # the seed preset grows for its family (megababel/plan/presets.py)
                       levers=("narrow",) if name == "seed" else ())     # and starts with narrower heads
    loaded, planned = load_schedule(name, tokens_per_step), parse_schedule(plan.schedule, tokens_per_step)
    nearest = min(MEASURED, key=lambda m: abs(math.log(m.tokens_per_parameter * config_parameters(final) / tokens)))
    def levers(name):            # the seed preset asks for +narrow, whether or not the measured plan has it
        return set(name.replace("-vocab", "").split("+")) - {"narrow"}
    assert levers(plan.name) == levers(nearest.plan)
    def growths(schedule):       # the batch in effect is checked below (the seed preset fixes it)
        return [{k: v for k, v in g.items() if k != "global_batch_tokens"} for g in schedule.resolved()["growths"]]
    assert loaded.resolved()["model"] == planned.resolved()["model"] and growths(loaded) == growths(planned)
    assert loaded.steps == planned.steps and loaded.lr == planned.lr
    if name == "seed":           # the 1.05B final at 20 tokens/parameter, its batch fixed by the preset
        assert config_parameters(final) == 1_050_629_888 and loaded.batch_tokens(0) == tokens_per_step


@pytest.mark.parametrize("savings, pays", [
    ((0.3, 0.2, 0.25), True), ((0.01, 0.04, None), False), ((-0.04, None, 0.02), False), ((0.1, None, None), False),
    ((None, None, None), False), ((0.0, 0.1, 0.2), False), ((0.05,), True)])
def test_where_growing_did_not_pay_the_planner_says_do_not_grow(savings, pays):
    """Every seed must save (never reaching scratch's loss counts as no saving): otherwise the plan is scratch and the
    explanation says "do not grow"; family mode still plans the growth, saying what it costs."""
    from megababel.plan.planner import Measured
    table = (Measured(20.0, "g1@10-vocab", 3e-3, savings),)
    plan = bench_plan(20.0, table=table)
    assert (plan.name == "g1@10-vocab") == pays and (plan.name == "scratch") != pays
    if not pays:
        assert plan.schedule["growths"] == [] and plan.schedule["model"] == BENCH_FINAL.to_dict()
        assert "do not grow" in plan.explain() and "--family" in plan.explain()
        family = bench_plan(20.0, table=table, family=True)
        assert family.name == "g1@10-vocab" and len(family.schedule["growths"]) == 1
        assert "family mode" in family.explain()


@pytest.mark.parametrize("controls, grows", [((0.2, 0.1, None), True), ((0.2, 0.3, None), False),
                                              ((None, None, None), True), ((), True)])
def test_where_the_growth_added_nothing_to_its_curricula_the_planner_plans_its_no_growth_control(controls, grows):
    """A row with the plan's no-growth control: the growth must save more than it at every seed where it ran, or the
    plan is the control (the same curricula, no growth), said in a note; family mode still grows."""
    from megababel.plan.planner import Measured
    control = "scratch+easyfirst15.31+seqwarm2+wsd"
    measured = Measured(20.0, "g3@2-vocab+copy+easyfirst+seqwarm+wsd", 1.5e-3, (0.46, 0.26, 0.4),
                        "compute-equivalent", control=control, control_savings=controls)
    plan = bench_plan(20.0, table=(measured,))
    assert (plan.name == measured.plan) == grows and (plan.name == control) != grows
    if not grows:
        assert plan.schedule["growths"] == [] and plan.schedule["curriculum"]
        assert "no-growth control" in plan.explain() and "did not add to them" in plan.explain()
        assert bench_plan(20.0, table=(measured,), family=True).name == measured.plan
    elif controls and controls[0] is not None:
        assert "added to them at every seed" in plan.explain()


def test_at_20_tokens_per_parameter_the_planner_grows_with_stacked_depth_and_says_it_breaks_the_function():
    """The 20 row's best plan (first growth at 2%, depth by stacking trained layers, narrower heads at the start)
    saved FLOPs in every seed, so the planner grows there; its explanation warns that the stacking growth does not
    keep the function, and says the first growth doubles head_dim."""
    plan = bench_plan(20.0)
    assert plan.name == MEASURED[-1].plan == "g3@2-vocab+copy+narrow" and MEASURED[-1].pays
    assert "doubles head_dim" in plan.explain()
    assert plan.schedule["growths"][-1]["depth_init"] == "copy" and "does not keep the function" in plan.explain()
    assert "does not keep the function" not in bench_plan(5.0).explain()


@pytest.mark.parametrize("name", ["g3@2-vocab+copy+narrow", "g1@50+narrow", "g2@10-vocab+narrow"])
def test_the_narrow_lever_starts_with_twice_the_heads_and_grows_head_dim_at_the_first_growth(name):
    """+narrow: the first generation is as wide as the plain plan's with the final's heads at half its head_dim;
    the first growth doubles head_dim, and the plan still ends at the final model, at scratch's FLOPs."""
    plain = parse_schedule(plan_schedule(BENCH_FINAL, name.removesuffix("+narrow"), 1000, 256, 2048, 1.5e-3), 2048)
    narrow = parse_schedule(plan_schedule(BENCH_FINAL, name, 1000, 256, 2048, 1.5e-3), 2048)
    assert narrow.model.hidden_size == plain.model.hidden_size
    assert (narrow.model.num_attention_heads, narrow.model.head_dim) == (BENCH_FINAL.num_attention_heads,
                                                                        BENCH_FINAL.head_dim // 2)
    assert narrow.growths[0].event.head_dim == BENCH_FINAL.head_dim
    assert all(g.config.num_attention_heads == BENCH_FINAL.num_attention_heads for g in narrow.growths)
    assert narrow.final_config == BENCH_FINAL == plain.final_config
    flops = [sum(flops_per_token(c, 256) * 2048 * n for c, n in zip(
        [s.model] + [g.config for g in s.growths],
        [b - a for a, b in zip([0] + [g.at_step for g in s.growths], [g.at_step for g in s.growths] + [s.steps])]))
        for s in (plain, narrow)]
    assert flops[1] == pytest.approx(flops[0], rel=0.01)


def test_the_explanation_says_when_a_plan_grows_head_dim():
    from megababel.plan.planner import Plan
    plan = Plan("g3@2-vocab+copy+narrow", {}, MEASURED[-1], 20.0, 1000, [])
    assert "the first growth doubles head_dim" in plan.explain()
    assert "head_dim" not in Plan("g3@2-vocab+copy", {}, MEASURED[-1], 20.0, 1000, []).explain()


def test_levers_can_be_added_to_the_measured_plan_and_an_unknown_one_is_refused():
    """plan_growth(levers=("narrow",)) is the measured plan with +narrow (what the seed preset asks for); a lever the
    plan already has is not added twice; a misspelt lever is refused even where the plan is scratch."""
    tokens = 20 * config_parameters(BENCH_FINAL)
    plan = plan_growth(BENCH_FINAL, tokens=tokens, seq_len=256, tokens_per_step=2048, levers=("wsd", "copy"))
    assert plan.name == MEASURED[-1].plan + "+wsd" and parse_schedule(plan.schedule, 2048).lr_decay == "wsd"
    with pytest.raises(ConfigError, match="levers are"):
        plan_growth(BENCH_FINAL, tokens=tokens, seq_len=256, tokens_per_step=2048, levers=("narow",))


def test_the_seed_preset_starts_with_the_final_heads_at_half_head_dim_so_tensor_parallelism_2_divides_it():
    """14 heads of 64 on hidden 896 (not 7 of 128), then 14 of 128: --tp 2 splits every generation; 4 cannot split
    14 heads (the seed's final model; seed_2x_tp is the preset for 4 and 8)."""
    from megababel.parallel import check_tensor_parallel
    from megababel.plan.presets import load_schedule
    seed = load_schedule("seed", 256 * 2048)
    configs = [seed.model] + [g.config for g in seed.growths]
    assert [(c.num_attention_heads, c.head_dim) for c in configs] == [(14, 64)] + [(14, 128)] * len(seed.growths)
    check_tensor_parallel(configs, 2, 2)
    with pytest.raises(ConfigError, match="num_attention_heads=14 .*--tp 4"):
        check_tensor_parallel(configs, 4, 4)


@pytest.mark.parametrize("name", ["scratch+wsd", "g3@2-vocab+copy+wsd"])
def test_the_wsd_lever_gives_a_warmup_stable_decay_schedule_for_scratch_and_plans(name):
    schedule = parse_schedule(plan_schedule(BENCH_FINAL, name, 1000, 256, 2048, 1.5e-3), 2048)
    plain = parse_schedule(plan_schedule(BENCH_FINAL, name.removesuffix("+wsd"), 1000, 256, 2048, 1.5e-3), 2048)
    assert (schedule.lr_decay, schedule.decay_fraction, plain.lr_decay) == ("wsd", 0.2, "cosine")
    assert schedule.steps == plain.steps and schedule.decay_start == schedule.steps - round(0.2 * schedule.steps)
    with pytest.raises(ConfigError, match="scratch takes only"):
        plan_schedule(BENCH_FINAL, "scratch+copy", 1000, 256, 2048, 1.5e-3)


def test_the_seqwarm_lever_halves_the_sequence_length_per_earlier_generation_at_the_same_flops():
    plain = parse_schedule(plan_schedule(BENCH_FINAL, "g3@2-vocab+copy", 1000, 256, 2048, 1.5e-3), 2048)
    warm = parse_schedule(plan_schedule(BENCH_FINAL, "g3@2-vocab+copy+seqwarm", 1000, 256, 2048, 1.5e-3), 2048)
    assert [warm.generation_seq_len(g) for g in range(4)] == [32, 64, 128, 256]
    def flops(s, lengths):
        ends = [g.at_step for g in s.growths] + [s.steps]
        return sum(flops_per_token(c, n) * 2048 * (b - a) for c, n, a, b in zip(
            [s.model] + [g.config for g in s.growths], lengths, [0] + ends[:-1], ends))
    assert flops(warm, [32, 64, 128, 256]) == pytest.approx(flops(plain, [256] * 4), rel=0.01)
    assert warm.growths[0].at_step > plain.growths[0].at_step      # shorter contexts: cheaper tokens, more steps
    with pytest.raises(ConfigError, match="not divisible by 8"):
        plan_schedule(BENCH_FINAL, "g3@2-vocab+seqwarm", 1000, 100, 2048, 1.5e-3)


@pytest.mark.parametrize("lever, first, later", [
    ("easyfirst", {"main[rarity:0-0.5]": 1.0}, {"main[rarity:0-0.5]": 0.5, "main[rarity:0.5-1]": 0.5}),
    ("simplefirst", {"main": 0.5, "simple": 0.5}, {"main": 1.0, "simple": 0.0})])
def test_the_data_curriculum_levers_set_the_first_generations_mixture_and_then_the_main_data(lever, first, later):
    schedule = parse_schedule(plan_schedule(BENCH_FINAL, f"g3@2-vocab+copy+{lever}", 1000, 256, 2048, 1.5e-3), 2048)
    assert schedule.generation_data(0) == first
    assert all(schedule.generation_data(g) == later for g in (1, 2, 3))
    assert curriculum_explained(f"g3@2-vocab+copy+{lever}") == lever
    with pytest.raises(ConfigError, match="two data curricula"):
        plan_schedule(BENCH_FINAL, "g3@2-vocab+easyfirst+simplefirst", 1000, 256, 2048, 1.5e-3)


def test_a_switch_moves_the_curriculum_off_the_growths_so_scratch_can_read_what_a_grown_run_reads():
    """scratch+easyfirstP: the easier half for the first P% of the steps, then both halves, as the grown plan reads
    them from its first growth; the control that separates a curriculum's gain from the growth's."""
    grown = parse_schedule(plan_schedule(BENCH_FINAL, "g3@2-vocab+copy+easyfirst", 1000, 256, 2048, 1.5e-3), 2048)
    first = grown.growths[0].at_step
    switch = 100 * first / 1000                                   # scratch runs 1000 steps: the same tokens
    scratch = parse_schedule(plan_schedule(BENCH_FINAL, f"scratch+easyfirst{switch:g}", 1000, 256, 2048, 1.5e-3),
                             2048)
    assert (scratch.steps, scratch.growths) == (1000, [])
    assert [scratch.data_at(step, 0) for step in (0, first, first + 1)] == \
           [grown.data_at(step, grown.generation_at(step - 1)) for step in (0, first, first + 1)]
    assert curriculum_explained(f"scratch+easyfirst{switch:g}") == "easyfirst"
    moved = parse_schedule(plan_schedule(BENCH_FINAL, "g3@2-vocab+copy+easyfirst50", 1000, 256, 2048, 1.5e-3), 2048)
    assert [c.at_step for c in moved.curriculum] == [round(moved.steps / 2)]
    assert moved.generation_data(1) == {"main[rarity:0-0.5]": 1.0}          # the growths read on until the switch
    for name, message in (("scratch+easyfirst", r"no growth to switch at: give the switch, \+easyfirstP"),
                          ("scratch+easyfirst0", "needs 0 < P < 100"), ("scratch+simplefirst1e3", "needs 0 < P < 100"),
                          ("scratch+easyfirst5+simplefirst5", "two data curricula")):
        with pytest.raises(ConfigError, match=message):
            plan_schedule(BENCH_FINAL, name, 1000, 256, 2048, 1.5e-3)


def test_scratch_warms_up_its_sequence_length_where_g3_would_grow_the_control_a_warm_up_is_owed():
    """scratch+seqwarmP: g3@P+seqwarm's four lengths, changed at P% of the steps and then evenly (where g3@P's
    growths would be by FLOPs); with a data switch on the same step, one change carries both."""
    scratch = parse_schedule(plan_schedule(BENCH_FINAL, "scratch+seqwarm2", 1000, 256, 2048, 1.5e-3), 2048)
    assert (scratch.steps, scratch.growths) == (1000, [])
    assert [(c.at_step, c.seq_len, c.data) for c in scratch.curriculum] == [(20, 64, None), (347, 128, None),
                                                                          (673, 256, None)]
    assert [scratch.seq_len_at(step, 0) for step in (0, 20, 21, 347, 348, 999)] == [32, 32, 64, 64, 128, 256]
    grown = parse_schedule(plan_schedule(BENCH_FINAL, "g3@2-vocab+copy+seqwarm", 1000, 256, 2048, 1.5e-3), 2048)
    assert [grown.generation_seq_len(g) for g in range(4)] == [32, 64, 128, 256]
    both = parse_schedule(plan_schedule(BENCH_FINAL, "scratch+easyfirst2+seqwarm2+wsd", 1000, 256, 2048, 1.5e-3),
                          2048)
    assert [(c.at_step, c.seq_len) for c in both.curriculum] == [(20, 64), (347, 128), (673, 256)]
    assert both.curriculum[0].data == {"main[rarity:0-0.5]": 0.5, "main[rarity:0.5-1]": 0.5}
    assert both.data_at(0, 0) == {"main[rarity:0-0.5]": 1.0} and both.lr_decay == "wsd"
    for name, message in (("scratch+seqwarm", r"give \+seqwarmP"), ("scratch+seqwarm100", "needs 0 < P < 100"),
                          ("g3@2-vocab+seqwarm2", "a grown plan warms up by generation: use \\+seqwarm")):
        with pytest.raises(ConfigError, match=message):
            plan_schedule(BENCH_FINAL, name, 1000, 256, 2048, 1.5e-3)
    with pytest.raises(ConfigError, match="not divisible by 8"):
        plan_schedule(BENCH_FINAL, "scratch+seqwarm2", 1000, 100, 2048, 1.5e-3)


def test_a_plans_no_growth_control_reads_and_schedules_as_it_does():
    """control_of: scratch with the plan's data curriculum switched where it first grows, its warm-up where g3@P
    grows, its LR decay; the model's levers dropped; None without such levers."""
    from megababel.plan.planner import control_of
    assert control_of("g3@2-vocab+copy+easyfirst", 12851, 1477) == "scratch+easyfirst11.49"
    assert control_of("g3@2-vocab+copy+easyfirst+seqwarm+wsd", 12851, 1968) == "scratch+easyfirst15.31+seqwarm2+wsd"
    assert control_of("g2@10+simplefirst40+narrow", 1000, 100) == "scratch+simplefirst40"
    assert control_of("g3@2-vocab+copy+narrow", 12851, 1477) is None and control_of("scratch+wsd", 10, 1) is None
    name = "g3@2-vocab+copy+easyfirst+seqwarm"
    grown = parse_schedule(plan_schedule(BENCH_FINAL, name, 1000, 256, 2048, 1.5e-3), 2048)
    first = grown.growths[0].at_step
    control = parse_schedule(plan_schedule(BENCH_FINAL, control_of(name, 1000, first), 1000, 256, 2048, 1.5e-3), 2048)
    assert [control.data_at(step, 0) for step in (first - 1, first, first + 1)] == \
           [grown.data_at(step, grown.generation_at(step - 1)) for step in (first - 1, first, first + 1)]


def curriculum_explained(name: str) -> str:
    """Which data curriculum a plan's explanation describes."""
    from megababel.plan.planner import Plan
    text = Plan(name, {}, MEASURED[-1], 20.0, 1000, []).explain()
    return "easyfirst" if "easier half" in text else "simplefirst" if "simpler dataset" in text else text


def test_a_measured_narrow_start_that_this_final_cannot_take_is_dropped_with_a_note_and_refused_when_asked():
    """5 heads of 32: g3 starts at 3 heads (96 wide), not half the final's 160-wide attention, so +narrow cannot
    apply. From the measured table it is dropped, with a note; asked for with levers=, it is refused."""
    final = LlamaConfig(hidden_size=160, head_dim=32, num_hidden_layers=4, intermediate_size=448, vocab_size=2000)
    tokens = 20 * config_parameters(final)
    plan = plan_growth(final, tokens=tokens, seq_len=256, tokens_per_step=2048)
    assert "narrow" in MEASURED[-1].plan and plan.name == MEASURED[-1].plan.replace("+narrow", "")
    assert "planned without +narrow" in plan.explain()
    with pytest.raises(ConfigError, match=r"\+narrow starts at half"):
        plan_growth(final, tokens=tokens, seq_len=256, tokens_per_step=2048, levers=("narrow",))
