"""The report of bench/clock.py, from its saved runs: the scratch curve, the noise study, the savings table.

    python bench/clock_report.py                    # = python bench/clock.py --report
    python bench/clock_report.py --out /tmp/clock

Definitions (bench/clock.py): the final figure is a quadratic fitted through a run's last evaluations on every
held-out article, read at the last step (near their mean where the curve is flat); the scratch curve is, per
budget, the lower of scratch (cosine) and scratch+wsd at their tuned LRs (seed 0; curve_seed in fp32);
compute-equivalent saving = 1 - FLOPs / scratch's FLOPs to reach the run's final figure on that curve (for
another seed, shifted by its scratch's offset from the curve seed's at the plan's budget: seed_curve); crossing
saving = bench/budget_report.py's (first crossing of the 40-article curve below scratch's last evaluation, against
scratch of the same seed); d bits/byte = the run's final figure minus scratch's (same seed, same FLOPs); d vs
control = the same against the plan's no-growth control (planner.control_of: scratch with the plan's curriculum,
warm-up and LR decay), where it ran at that seed: what the growth alone is worth; wall saving at equal FLOPs =
1 - the run's training wall time / scratch's (same seed and set-up, neither beside other work); compute-equivalent
wall saving = 1 - the run's wall time / the wall time scratch needs for the FLOPs of the compute-equivalent saving
(at scratch's own seconds per FLOP): what the same quality costs in time; tokens read / scratch's: how much more
text the run read at equal FLOPs (tokens_read: with a fixed amount of data a saving would shrink). Each with the
mean over seeds and its 95% confidence interval (Student's t).
"""
from __future__ import annotations

import argparse
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from budget_report import SAVINGS_FILE, busy, saving, tokens_read, write_clock_row
from megababel.plan.planner import control_of
from clock import DEFAULT_OUT, final_figure, final_mean, interval, load_runs
from scratch_curve import compute_equivalent_bounds, compute_equivalent_saving, lower_curve

CHOOSING_SEEDS = (0, 1, 2)     # plans are chosen on these; seeds 3-4 only confirm (issue 32)


def curve_seed(runs: dict) -> int:
    """The seed the scratch curve is drawn at: the one with scratch at the most budgets, the lowest among equals
    (seed 0 in bf16, where the LRs were tuned; fp32's runs on a CPU without native bf16 began at seed 1)."""
    budgets = defaultdict(set)
    for (budget, name, _, seed) in runs:
        if name in ("scratch", "scratch+wsd"):
            budgets[seed].add(budget)
    return min(budgets, key=lambda s: (-len(budgets[s]), s), default=0)


def curve_points(runs: dict, seed: int = 0) -> dict:
    """{budget: {schedule name: (lr, final figure, FLOPs, tried LRs, mean of the final evaluations)}} for scratch
    and scratch+wsd at `seed`, at each one's best LR."""
    tried = defaultdict(dict)
    for (budget, name, lr, s), r in runs.items():
        if name in ("scratch", "scratch+wsd") and s == seed:
            tried[budget, name][lr] = r
    points = defaultdict(dict)
    for (budget, name), by_lr in tried.items():
        lr = min(by_lr, key=lambda x: final_figure(by_lr[x]))
        points[budget][name] = (lr, final_figure(by_lr[lr]), by_lr[lr]["flops"], sorted(by_lr),
                                final_mean(by_lr[lr]))
    return points


def scratch_curve(points: dict) -> list:
    """Per budget, (scratch's FLOPs, the lower final figure of its schedules), as lower_curve's points."""
    return lower_curve([(next(iter(by_name.values()))[2], min(v[1] for v in by_name.values()))
                        for by_name in points.values()])


def _ci(values, pct=True) -> str:
    if not values:
        return "-"
    mean, low, high = interval(values)
    scale, unit = (100, "%") if pct else (1, "")
    text = f"{scale * mean:+.1f}{unit}" if pct else f"{mean:+.4f}"
    if not math.isnan(low):
        text += f" [{scale * low:+.1f}, {scale * high:+.1f}]" if pct else f" [{low:+.4f}, {high:+.4f}]"
    return text


def _control_cell(row: dict) -> str:
    """d vs the no-growth control: over the seeds it ran at, named; '-' for scratch and its controls."""
    if row["control"] is None:
        return "-" if row["name"].startswith("scratch") else "= d (scratch)"
    if not row["d_control"]:
        return f"{row['control']} not run"
    seeds = len(row["d_control"])
    return f"{_ci(row['d_control'], pct=False)} ({row['control']}, {seeds} seed{'s' * (seeds > 1)})"


def plan_budgets(runs: dict) -> list[float]:
    """The budgets at which plans were run (anything but scratch and scratch+wsd)."""
    return sorted({b for (b, n, _, _) in runs if n not in ("scratch", "scratch+wsd")})


def plan_rows(runs: dict, curve: list, budget: float, lr: float | None = None, curve_seed: int = 0) -> list[dict]:
    """Per run name at `budget` (scratch's tuned LR there, or `lr`): its savings per seed, against scratch of that
    seed; no compute-equivalent saving without a `curve` (scratch's at `curve_seed`). Each seed reads the curve
    shifted by how much its scratch at `budget` ended above curve_seed's (seed_curve)."""
    at = {k: r for k, r in runs.items() if k[0] == budget}
    scratch0 = {lr: r for (_, n, lr, s), r in at.items() if n == "scratch" and s == 0}
    if lr is None and not scratch0:
        return []
    lr = lr if lr is not None else min(scratch0, key=lambda x: final_figure(scratch0[x]))
    scratch = {s: r for (_, n, l, s), r in at.items() if n == "scratch" and l == lr}
    curves = {seed: seed_curve(curve, scratch, seed, curve_seed) for seed in scratch}
    rows = defaultdict(lambda: dict(seeds=[], figure=[], equivalent=[], bounds=[], convex=[], crossing=[], d_bpb=[],
                                    wall=[], wall_equivalent=[], planned=[], control=None, d_control=[],
                                    tokens=[]))
    for (_, name, l, seed), r in sorted(at.items(), key=lambda kv: (kv[0][1], kv[0][3])):
        if l != lr or seed not in scratch or name == "scratch+wsd":
            continue
        row, base = rows[name], scratch[seed]
        if r["growths"]:
            row["control"] = control_of(name, base["steps"], r["growths"][0]["step"])
            control = at.get((budget, row["control"], lr, seed))
            if control is not None:
                row["d_control"].append(final_figure(r) - final_figure(control))
        figure = final_figure(r)
        row["seeds"].append(seed)
        row["figure"].append(figure)
        if curve:
            equivalent, bound = compute_equivalent_saving(r["flops"], figure, curves[seed])
            if equivalent is None:
                row["bounds"].append(bound)
            else:
                row["equivalent"].append(equivalent)
            row["convex"].append(compute_equivalent_bounds(r["flops"], figure, curves[seed]))
        row["planned"].append(planned_saving(r["flops"], figure, curves[seed]) if curve else None)
        crossing = saving(r, base, "flops")
        row["crossing"].append(-1.0 if crossing is None else crossing)   # never reached: counted as -100%
        row["d_bpb"].append(figure - final_figure(base))
        row["tokens"].append(tokens_read(r) / tokens_read(base))
        same_setup = (r.get("threads"), r.get("processes")) == (base.get("threads"), base.get("processes"))
        if same_setup and not busy(r) and not busy(base):
            row["wall"].append(1 - r["wall"] / base["wall"])
            if curve and equivalent is not None:       # scratch's wall for the FLOPs it needs, at its own pace
                row["wall_equivalent"].append(1 - r["wall"] / (base["wall"] / (1 - equivalent) * r["flops"]
                                                                / base["flops"]))
    return [dict(name=n, lr=lr, **v) for n, v in rows.items()]


def borrowed_curve(out: Path, points: dict) -> tuple[list, tuple[float, int]] | None:
    """bf16's stand-in for a scratch curve it has measured at one budget only: fp32's curve (at fp32's curve_seed),
    shifted by bf16's scratch minus fp32's at a budget both ran (the curve seeds'), with (that budget, fp32's curve
    seed); None where fp32 has no curve of two budgets or no common budget. An estimate: the shape of the curve is
    taken from the other precision and seed, its level from this one's."""
    other = load_runs(out, "fp32")
    other_seed = curve_seed(other)
    other_points = curve_points(other, other_seed)
    common = sorted(set(points) & set(other_points))
    if len(other_points) < 2 or not common:
        return None
    anchor = common[0]
    level = min(v[1] for v in points[anchor].values())
    other_level = min(v[1] for v in other_points[anchor].values())
    return ([(flops, bpb + level - other_level) for flops, bpb in scratch_curve(other_points)],
            (anchor, other_seed))


def seed_curve(curve: list | None, scratch: dict, seed: int, curve_seed: int) -> list | None:
    """The scratch curve a run of `seed` is read against: curve_seed's, shifted by how much scratch of `seed`
    ended above scratch of curve_seed at this budget (`scratch`: {seed: run}), the offset taken as the same at every
    budget (the curve's other budgets were trained at curve_seed, not at every seed). Without the shift, a seed
    whose scratch (and so, likely, its plan) ended higher, from its initialisation and data order alone, would
    read as a smaller saving: the seeds are compared pairwise, as d bits/byte is. Unshifted where curve_seed has
    no scratch at this budget."""
    if not curve or curve_seed not in scratch or seed not in scratch:
        return curve
    offset = final_figure(scratch[seed]) - final_figure(scratch[curve_seed])
    return [(flops, bpb + offset) for flops, bpb in curve]


def _convex_cell(bounds: list) -> str:
    """The compute-equivalent saving's bounds if scratch's curve is convex (scratch_curve.py), over seeds: the mean
    least and most; ">= X%" where some seed lies past the largest budget (no most)."""
    if not bounds or any(least is None for least, _ in bounds):
        return "-"
    least = f"{100 * np.mean([b[0] for b in bounds]):+.0f}%"
    if any(most is None for _, most in bounds):
        return f">= {least}"
    return f"{least}..{100 * np.mean([b[1] for b in bounds]):+.0f}%"


def planned_saving(flops: float, bpb: float, curve) -> float | None:
    """The compute-equivalent saving as the planner counts it: exact on the curve; past its end, the lower bound if
    scratch's curve is convex (scratch_curve.py: the last two budgets' line, extended, or the largest budget itself;
    as bench/budget_report.py counts it); worse than its smallest budget, None (never reached scratch)."""
    equivalent, _ = compute_equivalent_saving(flops, bpb, curve)
    if equivalent is not None:
        return equivalent
    return compute_equivalent_bounds(flops, bpb, curve)[0] if bpb < curve[-1][1] else None


def planner_row(rows: list[dict], choosing=CHOOSING_SEEDS) -> dict | None:
    """The planner's row (megababel/plan/measured_savings.json) from plan_rows' `rows` at one budget: among the plans
    run at every `choosing` seed, the one whose worst choosing seed saved most (never reaching scratch is the worst),
    with its saving at every seed it ran (the confirming seeds too), and its no-growth control's at the same seeds
    where the control ran (the planner plans the control where the growth did not add to it); None until a plan
    has them all."""
    def worst(row):
        return min(-1.0 if v is None else v for s, v in zip(row["seeds"], row["planned"]) if s in choosing)
    # scratch with a lever (scratch+easyfirstP) is a control, what the lever is worth without growth: not a plan
    candidates = [r for r in rows if r["name"].split("+")[0] != "scratch" and set(choosing) <= set(r["seeds"])]
    if not candidates:
        return None
    best = max(candidates, key=worst)
    row = dict(tokens_per_parameter=best["budget"], plan=best["name"], lr=best["lr"], seeds=best["seeds"],
               flop_savings=[None if v is None else round(v, 4) for v in best["planned"]],
               saving="compute-equivalent")
    control = next((r for r in rows if r["name"] == best.get("control")), None)
    if control is not None:
        by_seed = dict(zip(control["seeds"], control["planned"]))
        row.update(control=control["name"], control_savings=[None if by_seed.get(s) is None else round(by_seed[s], 4)
                                                             for s in best["seeds"]])
    return row


def planner_rows(runs: dict, precision: str = "bf16", bf16_runs: dict | None = None) -> list[dict]:
    """planner_row at each budget where plans ran (the rows the clock writes into the planner's table), from the
    runs of one `precision`: fp32's on its own curve (curve_seed), at bf16's tuned LR (`bf16_runs`), marked
    "precision": "fp32"."""
    seed = 0 if precision == "bf16" else curve_seed(runs)
    curve = scratch_curve(curve_points(runs, seed))
    bf16_lrs = {} if precision == "bf16" else {
        b: v["scratch"][0] for b, v in curve_points(bf16_runs or {}).items() if "scratch" in v}
    rows = [planner_row([dict(r, budget=b) for r in plan_rows(runs, curve, b, bf16_lrs.get(b), seed)])
            for b in plan_budgets(runs)]
    return [r if precision == "bf16" else dict(r, precision=precision) for r in rows if r is not None]


def clock_planner_rows(out: Path) -> list[dict]:
    """The clock's rows of the planner's table: bf16's, and fp32's at a budget where bf16 has none (a CPU without
    native bf16 measures the choosing seeds in fp32; one precision per row, never a mix of seeds)."""
    rows = planner_rows(bf16 := load_runs(out, "bf16"))
    fp32 = planner_rows(load_runs(out, "fp32"), "fp32", bf16)
    taken = {r["tokens_per_parameter"] for r in rows}
    return sorted(rows + [r for r in fp32 if r["tokens_per_parameter"] not in taken],
                  key=lambda r: r["tokens_per_parameter"])


def noise_study(runs: dict, budget: float, sizes=(40, 120, 243), lr: float | None = None) -> list[str]:
    """How stable is a final figure? From scratch's runs at `budget` (tuned LR) with per-article losses:
    - wiggle: the spread (std) of the FINAL_POINTS final evaluations of one run, on the first n articles;
    - figure: the final figure on n articles against the same on all of them (how far a small set's absolute value
      is; across disjoint subsets of n);
    - pair: the difference between two seeds' final figures, across disjoint subsets of n (what a comparison of two
      runs on n articles would see)."""
    scratch0 = {lr: r for (b, n, lr, s), r in runs.items() if b == budget and n == "scratch" and s == 0}
    if lr is None and not scratch0:
        return []
    tuned = lr if lr is not None else min(scratch0, key=lambda x: final_figure(scratch0[x]))
    scratch = sorted(((s, r) for (b, n, lr, s), r in runs.items() if b == budget and n == "scratch" and lr == tuned),
                     key=lambda kv: kv[0])
    lines = ["| articles | wiggle between final evaluations (std) | final figure across disjoint subsets (std) | "
             "seed-pair difference across disjoint subsets (std) |", "|---|---|---|---|"]
    n_articles = len(scratch[0][1]["final_evals"][0]["nats"])
    for n in sorted(set(sizes) | {n_articles}):
        if n > n_articles:
            continue
        subsets = [list(range(i, i + n)) for i in range(0, n_articles - n + 1, n)]
        wiggles = [np.std([final_figure(dict(final_evals=[e]), subsets[0]) for e in r["final_evals"]], ddof=1)
                   for _, r in scratch]
        figures = [np.std([final_figure(r, a) for a in subsets], ddof=1) if len(subsets) > 1 else math.nan
                   for _, r in scratch]
        pairs = [np.std([final_figure(a, s) - final_figure(b, s) for s in subsets], ddof=1)
                 if len(subsets) > 1 else math.nan
                 for (_, a), (_, b) in zip(scratch, scratch[1:])]
        def mean(values):
            values = [v for v in values if not math.isnan(v)]
            return f"{np.mean(values):.4f}" if values else "-"
        lines.append(f"| {n} | {mean(wiggles)} | {mean(figures)} | {mean(pairs)} |")
    return lines


def write_report(out: Path = DEFAULT_OUT, savings_file: Path | None = None, precision: str = "bf16") -> str:
    """clock.md and clock_curve.png in `out`, from the runs that trained in `precision`; and, once a plan has run
    at every choosing seed, the planner's row at its budget in `savings_file` (default: the package's table when
    `out` is the benchmark's own results folder; none for another folder: a --quick clock or a test must not change
    what the planner plans). fp32 runs (a CPU without native bf16) go to clock_fp32.md, against each other only,
    on fp32's scratch curve drawn at its own seed (curve_seed); the planner's row at a budget is bf16's, or fp32's
    where bf16's choosing seeds are not all run (clock_planner_rows). While bf16 scratch has one budget, bf16's
    table reads fp32's curve shifted to it (borrowed_curve), labelled an estimate; its planner row never does."""
    runs, suffix = load_runs(out, precision), "" if precision == "bf16" else f"_{precision}"
    if not runs:
        print(f"no finished {precision} runs in {out / 'runs'}: run bench/clock.py first")
        return ""
    seed = curve_seed(runs) if precision != "bf16" else 0
    points = curve_points(runs, seed)
    curve = scratch_curve(points)
    bf16_lrs = {b: v["scratch"][0] for b, v in curve_points(load_runs(out, "bf16")).items() if "scratch" in v}
    lines = [] if precision == "bf16" else [
        f"Runs in {precision} (a CPU without native bf16), compared only with each other: against scratch of the "
        f"same seed and precision, at bf16's tuned LR where this precision tried no other; the compute-equivalent "
        f"saving reads {precision}'s own scratch curve.", ""]
    lines += [f"Scratch curve (seed {seed}, each schedule at its tuned LR among those tried; the curve takes the "
              f"lower):", "",
             "| tokens/parameter | FLOPs | scratch (cosine): LR (tried), final bits/byte (mean of the final "
             "evaluations) | scratch+wsd: the same |", "|---|---|---|---|"]
    borrowed = borrowed_curve(out, points) if precision == "bf16" and len(curve) < 2 else None
    if borrowed is not None:
        curve, (anchor, other_seed) = borrowed
        lines = [f"bf16 scratch ran at {anchor:g} tokens/parameter only, so the compute-equivalent savings below "
                 f"are an estimate: they read fp32's scratch curve (seed {other_seed}, clock_fp32.md), shifted to "
                 f"pass through bf16's scratch at {anchor:g} (seed {seed}), which assumes the curve has the same "
                 f"shape in both precisions (borrowed_curve).", ""] + lines
    for budget in sorted(points):
        cells = []
        for name in ("scratch", "scratch+wsd"):
            v = points[budget].get(name)
            cells.append("-" if v is None else f"{v[0]:g} ({', '.join(f'{x:g}' for x in v[3])}), {v[1]:.4f} "
                                                  f"(mean {v[4]:.4f})")
        flops = next(iter(points[budget].values()))[2]
        lines.append(f"| {budget:g} | {flops:.3g} | " + " | ".join(cells) + " |")
    rows = []
    for budget in plan_budgets(runs):
        budget_rows = plan_rows(runs, curve, budget, None if precision == "bf16" else bf16_lrs.get(budget), seed)
        rows += [dict(r, budget=budget) for r in budget_rows]
        lines += ["", f"At {budget:g} tokens/parameter, against scratch of the same seed (mean [95% CI]):", "",
                  "| run | seeds | final bits/byte | compute-equivalent saving | its bounds if scratch's curve is "
                  "convex | crossing saving | d bits/byte at equal FLOPs | d vs its no-growth control | wall saving at "
                  "equal FLOPs | compute-equivalent wall saving | tokens read / scratch's |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for row in sorted(budget_rows, key=lambda r: (r["name"] != "scratch", r["name"])):
            bounds = ", ".join(row["bounds"]) + " (past the curve)" if row["bounds"] else ""
            equivalent = (_ci(row["equivalent"]) + (f"; {bounds}" if bounds else "")) if row["equivalent"] else bounds
            control = " (control: no growth)" if row["name"].startswith("scratch+") else ""
            lines.append(f"| {row['name']}{control} | {','.join(map(str, row['seeds']))} | "
                         f"{np.mean(row['figure']):.4f} | "
                         f"{equivalent} | {_convex_cell(row['convex'])} | {_ci(row['crossing'])} | "
                         f"{_ci(row['d_bpb'], pct=False)} | "
                         f"{_control_cell(row)} | {_ci(row['wall'])} | {_ci(row['wall_equivalent'])} | "
                         f"{np.mean(row['tokens']):.2f}x |")
    seeds_at = defaultdict(set)
    for (b, n, _, s) in runs:
        if n == "scratch":
            seeds_at[b].add(s)
    noisiest = max(seeds_at, key=lambda b: (len(seeds_at[b]), b), default=None)
    noise = [] if noisiest is None else noise_study(runs, noisiest, lr=None if precision == "bf16" else
                                                    bf16_lrs.get(noisiest))
    if noise:
        lines += ["", f"Noise of the final figure (scratch at {noisiest:g} tokens/parameter; bits/byte):", ""] + noise
    table = "\n".join(lines)
    (out / f"clock{suffix}.md").write_text(table + "\n")
    print(table)
    _plot(points, curve, rows, out, suffix, "fp32's curve, shifted (an estimate)" if borrowed else "curve")
    if savings_file is None and out.resolve() == DEFAULT_OUT.resolve():
        savings_file = SAVINGS_FILE
    for row in clock_planner_rows(out) if savings_file is not None else ():
        write_clock_row(row, savings_file)
    return table


def _plot(points, curve, rows, out: Path, suffix: str = "", curve_label: str = "curve"):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, marker in (("scratch", "o"), ("scratch+wsd", "s")):
        xs = [points[b][name][2] for b in sorted(points) if name in points[b]]
        ys = [points[b][name][1] for b in sorted(points) if name in points[b]]
        ax.plot(xs, ys, marker=marker, label=name, linestyle=":" if name != "scratch" else "-")
    ax.plot([c[0] for c in curve], [c[1] for c in curve], color="0.6", linewidth=3, alpha=0.4, label=curve_label)
    for row in rows:
        if row["name"] != "scratch" and row["budget"] in points:
            flops = next(iter(points[row["budget"]].values()))[2]
            ax.scatter([flops] * len(row["figure"]), row["figure"], s=14, label=row["name"])
    ax.set_xscale("log")
    ax.set_xlabel("training FLOPs")
    ax.set_ylabel("final bits/byte (held-out Wikipedia)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / f"clock_curve{suffix}.png", dpi=120)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    args = p.parse_args(argv)
    write_report(args.out, precision=args.precision)


if __name__ == "__main__":
    main()
