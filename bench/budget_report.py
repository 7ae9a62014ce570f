"""Tables and plots for bench/budget_sweep.py, from its saved runs (OUT/runs/*.json), and the growth planner's table.

    python bench/budget_report.py                   # = python bench/budget_sweep.py --report
    python bench/budget_report.py --out /tmp/bs     # another sweep's runs (the planner's table is left alone)

Per budget, against scratch at its tuned LR and the same seed:
  FLOP saving   1 - FLOPs at which the plan's validation curve first reaches scratch's final bits/byte / scratch's
                FLOPs (None: never reached; the run ends at scratch's FLOPs)
  wall saving   the same with training wall time
  d_bpb         the plan's final bits/byte (at scratch's FLOPs) minus scratch's (negative: better)
  tokens read   the plan's training tokens / scratch's: a grown run reads more text at equal FLOPs (its early
                generations are cheaper per token), so with a fixed amount of data its saving would shrink
  compute-equivalent saving   1 - FLOPs / the FLOPs scratch of the same seed needs to reach the plan's final
                bits/byte, read off scratch's finals at the budgets (bench/scratch_curve.py), with its bounds if
                scratch's curve is convex in log FLOPs (equivalent); the planner's table counts it
Best plan: the grid plan whose worst seed saved most compute-equivalent (the crossing saving where scratch ran at
one budget), unless a lever combination saved more at every seed (_best_plan); its figures are mean, and min..max
over seeds.
Wall time needs an otherwise idle machine: a run whose 1-minute load average exceeded BUSY_LOAD at any evaluation,
or whose pace slowed within a generation (something else ran beside it), gives no wall saving ("busy"; busy).
Runs that stopped before their last step are left out.
The report of the benchmark's own runs (bench/results/budget_sweep) also writes the growth planner's table,
megababel/plan/measured_savings.json (`measured_savings`): per budget run at PLANNER_SEEDS seeds, the best plan,
scratch's tuned LR and the best plan's FLOP saving per seed.
"""
from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path

import numpy as np

from growth_report import crossing
from scratch_curve import compute_equivalent_bounds, compute_equivalent_saving, lower_curve
from megababel.config import LlamaConfig
from megababel.model.counters import config_parameters

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "bench" / "results" / "budget_sweep"
SAVINGS_FILE = ROOT / "megababel" / "plan" / "measured_savings.json"     # what megababel/plan/planner.py reads
PLANNER_SEEDS = 3    # a budget enters the planner's table once scratch and its best plan have this many seeds
TOKENS_PER_STEP = 2048   # growth_vs_scratch's (not imported: the reports run without torch)
BUSY_PACE = 1.5      # a stretch this much slower than its generation's median pace: something ran beside it
BUSY_LOAD = 3.5      # 1-minute load average on 2 cores while one run (2 threads) trains alone: ~2.6-2.9


def precision(run: dict) -> str:
    """"bf16" or "fp32": what the run trained in (every run saved before the field existed: bf16)."""
    return run.get("precision", "deepspeed-bf16").removeprefix("deepspeed-")


def one_precision(runs: list[dict], folder: Path) -> list[dict]:
    """`runs`, refused if they trained in two precisions: a bf16 run and an fp32 one differ by more than what a
    report compares (growth_vs_scratch.PRECISION: fp32 only on a CPU without native bf16)."""
    found = sorted({precision(r) for r in runs})
    if len(found) > 1:
        raise SystemExit(f"{folder} holds runs in {' and '.join(found)}: a report compares runs of one precision; "
                         f"move the {found[-1]} runs (their names end in -{found[-1]}) to another --out")
    return runs


def load(out: Path) -> dict:
    """{budget: {(name, lr, seed): run}}, finished runs only"""
    runs = defaultdict(dict)
    saved = [json.loads(path.read_text()) for path in sorted((out / "runs").glob("*.json"))]
    for r in one_precision(saved, out / "runs"):
        if r["evals"][-1]["step"] == r["steps"]:
            runs[r["budget"]][(r["name"], r["lr"], r["seed"])] = r
    return runs


def busy(run: dict) -> bool:
    """Whether the run shared the machine: its 1-minute load average passed BUSY_LOAD at some evaluation, or it
    slowed down within a generation (slowed_down: a process beside it at one thread lifts the load of a two-thread
    run on an otherwise idle machine from 2.0 to only about 3.0)."""
    return max((e.get("load", 0) for e in run["evals"][1:]), default=0) > BUSY_LOAD or slowed_down(run)


def slowed_down(run: dict, min_steps: int = 300) -> bool:
    """Whether some stretch of at least `min_steps` steps between two evaluations in one generation took more than
    BUSY_PACE x the generation's median seconds per step (its generations of 3+ such stretches)."""
    paces = defaultdict(list)
    for a, b in zip(run["evals"], run["evals"][1:]):
        if b["step"] - a["step"] >= min_steps and a.get("generation") == b.get("generation"):
            paces[a.get("generation")].append((b["wall"] - a["wall"]) / (b["step"] - a["step"]))
    return any(max(v) > BUSY_PACE * float(np.median(v)) for v in paces.values() if len(v) >= 3)


def saving(run: dict, scratch: dict, key: str) -> float | None:
    xs, ys = [e[key] for e in run["evals"]], [e["bpb"] for e in run["evals"]]
    reached = crossing(xs, ys, scratch["final_bpb"])
    return None if reached is None else 1 - reached / scratch[key]


def wall_saving(run: dict, scratch: dict):
    """The wall-time saving, or "busy" when either run shared the machine or the two ran in different set-ups (torch
    threads, sweep processes side by side; runs before this was recorded: 2 threads, alone)."""
    setup = [(r.get("threads", 2), r.get("processes", 1)) for r in (run, scratch)]
    return "busy" if busy(run) or busy(scratch) or setup[0] != setup[1] else saving(run, scratch, "wall")


def tokens_read(run: dict) -> float:
    """The training tokens a run read (distinct text: one epoch at most, budget_sweep.one_epoch). A grown run reads
    more than scratch at equal FLOPs, its early generations being cheaper per token, so with a fixed amount of data
    its saving would shrink: the reports say how much more."""
    last = run["evals"][-1]
    return last.get("tokens", last["step"] * TOKENS_PER_STEP)


def _pct(v):
    return v if isinstance(v, str) else "never" if v is None else f"{100 * v:.0f}%"


def _spread(values, pct=True):
    """Mean (min..max) over seeds; where some seed never reached scratch's loss, each seed's value ("1%, 4%, never"):
    a mean of the seeds that got there would flatter the plan."""
    scale = 100 if pct else 1
    if not values:
        return "-"
    if any(v is None for v in values):
        return ", ".join("never" if v is None else f"{scale * v:.0f}%" if pct else f"{v:+.3f}" for v in values)
    mean = f"{scale * np.mean(values):.0f}%" if pct else f"{np.mean(values):+.3f}"
    if len(values) > 1:
        low, high = min(values), max(values)
        mean += f" ({scale * low:.0f}..{scale * high:.0f})" if pct else f" ({low:+.3f}..{high:+.3f})"
    return mean


GRID_PLAN = re.compile(r"g\d@(10|25|50)(-vocab)?")    # the sweep's plans; anything else is a lever (+x, @2, @5)


def is_grid_plan(name: str) -> bool:
    return GRID_PLAN.fullmatch(name) is not None


def _best_plan(per_plan: dict, per_lever: dict, by_seed: dict, seeds: set) -> str | None:
    """The best plan at a budget, ranked by "choice" (the compute-equivalent saving the planner counts, or the
    crossing saving where scratch ran at one budget; never reaching scratch's loss ranks last):
    - the grid's best: among the grid plans run at every seed scratch has, the one whose worst seed saved most
      (the planner grows only where every seed saved); seed 0's saving breaks ties, and decides where none has
      every seed yet (the sweep then runs the other seeds of that one);
    - a lever combination replaces it only if it saved more at every seed both ran (a lever is adopted where it
      pays in every seed: a better worst seed alone can be noise, e.g. 24.4% against 24.3%); among those, the
      best worst seed. A lever seen at one seed only is a lead, not a plan."""
    def value(v):
        return -1.0 if v is None else v

    def key(name):
        entry = by_seed.get(name)
        seed0 = per_plan.get(name, per_lever.get(name))["choice"]
        worst = min(map(value, entry["choice"])) if entry and seeds <= set(entry["seeds"]) else -2.0
        return worst, value(seed0)

    def per_seed(name):
        entry = by_seed.get(name) or dict(seeds=[0], choice=[per_plan[name]["choice"]])
        return dict(zip(entry["seeds"], map(value, entry["choice"])))
    grid = max(per_plan, key=key, default=None)
    levers = [n for n, v in by_seed.items() if n in per_lever and seeds <= set(v["seeds"])]
    if grid is not None:
        incumbent = per_seed(grid)
        levers = [n for n in levers if all(per_seed(n)[s] > incumbent[s] for s in incumbent if s in per_seed(n))]
    return max(levers, key=key) if levers else grid


def _tuned_scratch(by: dict) -> tuple[float, dict] | None:
    """scratch's tuned LR at one budget (the lowest final bits/byte at seed 0) and its runs per seed at that LR."""
    scratch0 = {lr: r for (n, lr, s), r in by.items() if n == "scratch" and s == 0}
    if not scratch0:
        return None
    lr = min(scratch0, key=lambda k: scratch0[k]["final_bpb"])
    return lr, {s: r for (n, l, s), r in by.items() if n == "scratch" and l == lr}


def scratch_curves(runs: dict) -> dict:
    """{seed: lower_curve of scratch's final bits/byte at each budget's tuned LR}, for seeds with 2+ budgets."""
    points = defaultdict(list)
    for by in runs.values():
        tuned = _tuned_scratch(by)
        for seed, scratch in (tuned[1].items() if tuned else ()):
            points[seed].append((scratch["flops"], scratch["final_bpb"]))
    return {seed: lower_curve(p) for seed, p in points.items() if len(p) > 1}


def equivalent(run: dict, curves: dict) -> dict | None:
    """A run's compute-equivalent saving against scratch's curve of its seed (None: that seed has no curve): the
    interpolated figure (or the bound past the curve) and its bounds if scratch's curve is convex."""
    curve = curves.get(run["seed"])
    if curve is None:
        return None
    interpolated, bound = compute_equivalent_saving(run["flops"], run["final_bpb"], curve)
    least, most = compute_equivalent_bounds(run["flops"], run["final_bpb"], curve)
    return dict(interpolated=interpolated, bound=bound, least=least, most=most)


def summarise(runs: dict) -> list[dict]:
    """Per budget with scratch at seed 0: its tuned LR, its runs, every plan and lever against scratch of the same
    seed (crossing saving "flops", "wall", "d_bpb", the compute-equivalent "equivalent" per seed), the best plan
    (_best_plan) and its figures per seed."""
    curves = scratch_curves(runs)

    def choice(run, scratch):
        """What _best_plan ranks by: the planner's compute-equivalent saving where the seed has a curve."""
        entry = equivalent(run, curves)
        return saving(run, scratch, "flops") if entry is None else planner_saving(entry)

    def against(run, scratch):
        return dict(flops=saving(run, scratch, "flops"), wall=wall_saving(run, scratch),
                    d_bpb=run["final_bpb"] - scratch["final_bpb"], choice=choice(run, scratch))
    rows = []
    for budget in sorted(runs):
        by = runs[budget]
        tuned = _tuned_scratch(by)
        if tuned is None:
            continue
        lr, scratch = tuned
        by = {k: r for k, r in by.items() if not k[0].startswith("member")}      # family members: their own report
        plans = {n: r for (n, l, s), r in by.items() if is_grid_plan(n) and l == lr and s == 0}
        levers = {n: r for (n, l, s), r in by.items() if n != "scratch" and not is_grid_plan(n) and l == lr and s == 0}
        per_plan = {n: against(r, scratch[0]) for n, r in plans.items()}
        per_lever = {n: against(r, scratch[0]) for n, r in levers.items()}
        by_seed = {}        # every non-scratch run at the tuned LR, against scratch of the same seed
        for (n, l, s), r in by.items():
            if n != "scratch" and l == lr and s in scratch:
                entry = by_seed.setdefault(n, dict(seeds=[], flops=[], wall=[], d_bpb=[], choice=[], equivalent=[]))
                entry["seeds"].append(s)
                entry["flops"].append(saving(r, scratch[s], "flops"))
                entry["d_bpb"].append(r["final_bpb"] - scratch[s]["final_bpb"])
                entry["choice"].append(choice(r, scratch[s]))
                entry["equivalent"].append(equivalent(r, curves))
                if wall_saving(r, scratch[s]) != "busy":
                    entry["wall"].append(saving(r, scratch[s], "wall"))
        best = _best_plan(per_plan, per_lever, by_seed, set(scratch))
        # the grid's best at seed 0 by the crossing saving: what --levers varies and --family grows by default
        # (fixed, so that those commands mean the same runs whichever lever later becomes the best plan)
        base = max(per_plan, key=lambda n: per_plan[n]["flops"] or -1) if per_plan else None
        seeds = {s: r for (n, l, s), r in by.items() if n == best and l == lr}
        common = sorted(set(seeds) & set(scratch))
        final = scratch[0]["spec"]["model"]
        rows.append(dict(budget=budget, lr=lr, tried=sorted(l for (n, l, s) in by if n == "scratch" and s == 0),
                         scratch=scratch, plans=per_plan, best=best,
                         base=base, levers=per_lever, by_seed=by_seed,
                         tokens=scratch[0]["steps"] * TOKENS_PER_STEP, final=final,
                         best_flops=[saving(seeds[s], scratch[s], "flops") for s in common],
                         best_wall=[saving(seeds[s], scratch[s], "wall") for s in common     # idle pairs only
                                    if wall_saving(seeds[s], scratch[s]) != "busy"],
                         best_d=[seeds[s]["final_bpb"] - scratch[s]["final_bpb"] for s in common],
                         best_tokens=[tokens_read(seeds[s]) / tokens_read(scratch[s]) for s in common],
                         best_equivalent=[equivalent(seeds[s], curves) for s in common],
                         seeds=common))
    return rows


def _equivalent_cells(entries: list) -> tuple[str, str]:
    """The interpolated compute-equivalent saving and its bounds if scratch's curve is convex: mean (min..max) and
    the mean bounds over seeds; each seed's where one lies outside scratch's budgets ("> X%": past the largest, only
    the least is known; "< X%": short of the smallest), as a mean over the others would hide it."""
    entries = [e for e in entries if e is not None]
    if not entries:
        return "-", "-"

    def pct(v):
        return "?" if v is None else f"{round(100 * v):d}%"          # round() to an int: never "-0%"

    def mean(values):
        return None if any(v is None for v in values) else float(np.mean(values))
    if all(e["interpolated"] is not None for e in entries):
        bounds = f"{pct(mean([e['least'] for e in entries]))}..{pct(mean([e['most'] for e in entries]))}"
        return _spread([e["interpolated"] for e in entries]), bounds
    interpolated = ", ".join(e["bound"] or pct(e["interpolated"]) for e in entries)
    if len({e["bound"] for e in entries}) == 1:                          # every seed past the curve, alike
        interpolated = f"{entries[0]['bound']} (past the curve)" if entries[0]["bound"][0] == ">" else interpolated
    bounds = ", ".join(f">= {pct(e['least'])}" if e["most"] is None else f"{pct(e['least'])}..{pct(e['most'])}"
                       for e in entries)
    return interpolated, bounds


def measured_savings(rows: list[dict], out: Path = DEFAULT_OUT, clock_rows=()) -> dict:
    """The growth planner's table (megababel/plan/measured_savings.json) from `summarise`'s rows of the runs in
    `out`: every budget whose best plan was run at PLANNER_SEEDS seeds, its best plan, scratch's tuned peak LR and
    the plan's FLOP saving per seed (planner_row: compute-equivalent where scratch ran at several budgets; 4
    decimals; None: that seed never reached scratch's final bits/byte).
    `clock_rows` (bench/clock.py's, "saving": "compute-equivalent") take the place of this sweep's row at their
    budget: the clock's saving is the fairer one (bench/clock.py's docstring)."""
    config = LlamaConfig(**rows[0]["final"])
    runs = out.resolve() / "runs"
    command = "python bench/budget_sweep.py --report"
    if out.resolve() != DEFAULT_OUT.resolve():
        command += f" --out {out}"
    return dict(
        about="The growth planner's table (megababel/plan/planner.py, MEASURED): per budget (scratch's training "
              "tokens per parameter, all parameters), the best growth plan, scratch's tuned peak LR (at the final"
              " model's hidden size) and that plan's FLOP saving per seed (null: that seed never reached "
              "scratch). \"saving\" says how: \"compute-equivalent-finals\" (1 - FLOPs / the FLOPs scratch needs to "
              "reach the plan's final bits/byte, read off scratch's finals at the sweep's budgets, linear in log "
              "FLOPs; past the largest budget its lower bound if scratch's curve is convex; the plan chosen by "
              "it, see bench/budget_report.py's _best_plan; the first-crossing saving in \"crossing_savings\"), "
              "\"compute-equivalent\" (bench/clock.py's: the same on the clock's curve of scratch runs), or "
              "\"crossing\" (the FLOPs at which the plan first reaches scratch's final bits/byte; where scratch ran "
              "at one budget only). Written by "
              "bench/budget_report.py and bench/clock.py from the saved runs; do not edit.",
        command=command,
        runs=str(runs.relative_to(ROOT) if runs.is_relative_to(ROOT) else runs),
        final_model=dict(config.to_dict(), parameters=config_parameters(config)),
        rows=sorted([planner_row(r) for r in rows if r["best"] is not None and len(r["seeds"]) >= PLANNER_SEEDS
                     and r["budget"] not in {c["tokens_per_parameter"] for c in clock_rows}] + list(clock_rows),
                    key=lambda r: r["tokens_per_parameter"]))


def planner_saving(entry: dict) -> float | None:
    """The compute-equivalent saving the planner counts for one seed (equivalent's entry): interpolated
    on scratch's finals; past the largest budget, its lower bound if scratch's curve is convex; short of the smallest
    budget, None (it never reached scratch)."""
    if entry["interpolated"] is not None:
        return entry["interpolated"]
    return entry["least"] if entry["bound"].startswith(">") else None


def planner_row(row: dict) -> dict:
    """A row of the planner's table from summarise's `row`: the best plan (chosen by its worst seed's
    compute-equivalent saving, _best_plan) with that saving per seed ("flop_savings") and its crossing saving per
    seed; the crossing saving alone where scratch ran at a single budget (no curve to read)."""
    def rounded(values):
        return [None if v is None else round(v, 4) for v in values]
    crossing = rounded(row["best_flops"])
    base = dict(tokens_per_parameter=row["budget"], plan=row["best"], lr=row["lr"], seeds=row["seeds"])
    if any(e is None for e in row["best_equivalent"]):
        return dict(base, flop_savings=crossing)
    return dict(base, flop_savings=rounded(planner_saving(e) for e in row["best_equivalent"]),
                saving="compute-equivalent-finals", crossing_savings=crossing)


def _json_lines(table: dict) -> str:
    """JSON, one line per field and per row of the table (diffs show which row changed)."""
    fields = [f" {json.dumps(k)}: " + ("[\n" + ",\n".join(f"  {json.dumps(row)}" for row in v) + "\n ]" if k == "rows"
                                       else json.dumps(v)) for k, v in table.items()]
    return "{\n" + ",\n".join(fields) + "\n}\n"


def clock_rows_of(path: Path) -> list[dict]:
    """The rows bench/clock.py wrote into the planner's table at `path` (none if there is no file)."""
    if not path.is_file():
        return []
    return [r for r in json.loads(path.read_text())["rows"] if r.get("saving") == "compute-equivalent"]


def write_measured_savings(rows: list[dict], out: Path, path: Path) -> dict:
    table = measured_savings(rows, out, clock_rows_of(path))
    path.write_text(_json_lines(table))
    print(f"wrote {path}: the planner's table, {len(table['rows'])} budgets")
    return table


def write_clock_row(row: dict, path: Path) -> dict:
    """bench/clock.py's planner row into the table at `path`, in place of whatever row was at its budget."""
    table = json.loads(path.read_text())
    table["rows"] = sorted([r for r in table["rows"] if r["tokens_per_parameter"] != row["tokens_per_parameter"]]
                           + [row], key=lambda r: r["tokens_per_parameter"])
    path.write_text(_json_lines(table))
    print(f"wrote {path}: the planner's row at {row['tokens_per_parameter']:g} tokens/parameter, {row['plan']} "
          f"(bench/clock.py)")
    return table


def write_report(out: Path, savings_file: Path | None = None) -> str:
    """table.md and the plots in `out`, and the planner's table in `savings_file` (default: the package's data file
    when `out` is the benchmark's own results folder; no file for other folders: a --quick sweep or a test must not
    change what the planner plans)."""
    rows = summarise(load(out))
    if not rows:
        print(f"no runs in {out / 'runs'}: run bench/budget_sweep.py first")
        return ""
    if savings_file is None and out.resolve() == DEFAULT_OUT.resolve():
        savings_file = SAVINGS_FILE
    config = LlamaConfig(**rows[0]["final"])
    total = config_parameters(config)
    non_embedding = total - 2 * config.vocab_size * config.hidden_size
    lines = [f"Final model {total / 1e6:.2f}M parameters ({non_embedding / 1e6:.2f}M without embeddings).", "",
             "| tokens/parameter (all / non-embedding) | scratch tokens | scratch LR (tried) | scratch final bits/byte "
             "| best plan | FLOP saving | compute-equivalent saving | its bounds if scratch's curve is convex "
             "| wall saving | d bits/byte at equal FLOPs | tokens read / scratch's | seeds |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        finals = [s["final_bpb"] for s in r["scratch"].values()]
        scratch = f"{np.mean(finals):.4f}" + (f" +- {np.std(finals):.4f}" if len(finals) > 1 else "")
        lines.append(f"| {r['tokens'] / total:.2g} / {r['tokens'] / non_embedding:.2g} | {r['tokens'] / 1e6:.2f}M | "
                     f"{r['lr']:g} ({', '.join(f'{x:g}' for x in r['tried'])}) | {scratch} | {r['best']} | "
                     f"{_spread(r['best_flops'])} | {' | '.join(_equivalent_cells(r['best_equivalent']))} | "
                     f"{_spread(r['best_wall'])} | {_spread(r['best_d'], pct=False)} | "
                     f"{np.mean(r['best_tokens']):.2f}x | {len(r['seeds'])} |")
    lines += ["", "Every plan, seed 0 (FLOP saving / d bits/byte at equal FLOPs):", "",
              "| plan | " + " | ".join(f"{r['budget']:g} tok/param" for r in rows) + " |",
              "|---|" + "---|" * len(rows)]
    for name in sorted({n for r in rows for n in r["plans"]}):
        cells = [f"{_pct(r['plans'][name]['flops'])} / {r['plans'][name]['d_bpb']:+.3f}" if name in r["plans"]
                 else "-" for r in rows]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for r in rows:
        if not r["levers"]:
            continue
        lines += ["", f"Levers at {r['budget']:g} tokens/parameter (plan + lever against the plan alone, @P: its first "
                  f"growth at P% of the FLOPs; each against scratch of its own seed):", "",
                  "| run | FLOP saving | compute-equivalent saving | its bounds if convex | wall saving | "
                  "d bits/byte at equal FLOPs | seeds |", "|---|---|---|---|---|---|---|"]
        bases = sorted({name.split("+")[0] for name in r["levers"] if is_grid_plan(name.split("+")[0])}
                       | ({r["base"]} - {None}))
        for name in bases + sorted(r["levers"], key=lambda n: (n.split("+")[0], n)):
            v = r["by_seed"].get(name)
            if v is None:
                continue
            label = f"{name} (base)" if name in bases else name
            lines.append(f"| {label} | {_spread(v['flops'])} | {' | '.join(_equivalent_cells(v['equivalent']))} | "
                         f"{_spread(v['wall'])} | {_spread(v['d_bpb'], pct=False)} | {len(v['seeds'])} |")
    table = "\n".join(lines)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(table + "\n")
    print(table)
    _plots(rows, out)
    if savings_file is not None:
        write_measured_savings(rows, out, savings_file)
    return table


def _plots(rows, out: Path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        ax.scatter([r["budget"]] * len(r["plans"]), [100 * (v["flops"] or 0) for v in r["plans"].values()],
                   color="0.8", s=12)
    xs = [r["budget"] for r in rows if r["best_flops"]]
    means = [100 * np.mean([v or 0 for v in r["best_flops"]]) for r in rows if r["best_flops"]]
    lows = [100 * min(v or 0 for v in r["best_flops"]) for r in rows if r["best_flops"]]
    highs = [100 * max(v or 0 for v in r["best_flops"]) for r in rows if r["best_flops"]]
    ax.errorbar(xs, means, yerr=[np.subtract(means, lows), np.subtract(highs, means)], marker="o", capsize=3,
                label="best plan (mean, min..max over seeds)")
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xscale("log")
    ax.set_xlabel("scratch tokens per parameter")
    ax.set_ylabel("FLOP saving to reach scratch's final bits/byte (%)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "saving_vs_budget.png", dpi=120)
    plt.close(fig)
    largest = rows[-1]
    runs = load(out)[largest["budget"]]
    fig, ax = plt.subplots(figsize=(6, 4))
    shown = [runs[key] for key in ((name, largest["lr"], 0) for name in     # the grid's best and the best
             dict.fromkeys(("scratch", largest["base"], largest["best"]))) if key in runs]
    for r in shown:
        ax.plot([e["flops"] for e in r["evals"]], [e["bpb"] for e in r["evals"]], label=r["name"])
        for g in r["growths"]:
            ax.axvline(g["flops"], color="0.7", ls=":")
    lowest = min(r["final_bpb"] for r in shown)
    ax.set_ylim(lowest - 0.05, lowest + 0.6)        # the end, where the runs differ by hundredths, stays readable
    ax.set_xlabel("training FLOPs")
    ax.set_ylabel("validation bits/byte")
    ax.set_title(f"{largest['budget']:g} tokens/parameter, seed 0")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / f"curves_b{largest['budget']:g}.png", dpi=120)
    plt.close(fig)


def summarise_family(runs: dict) -> list[dict]:
    """Per budget and family plan (bench/budget_sweep.py --family), per seed: each member (the model before each
    growth, then the final) with the FLOPs the family had spent when it reached it, its bits/byte, and the FLOPs the
    member trained alone needed to reach that bits/byte (the least over its alone runs; where none reached it, their
    FLOPs, a lower bound); the family saving is 1 - family FLOPs / the members' alone FLOPs summed."""
    rows = []
    for budget in sorted(runs):
        by = runs[budget]
        plans = sorted({n.split("-", 2)[2] for (n, _, _) in by if n.startswith("member")})
        for plan in plans:
            seeds = []
            for (name, lr, seed), family in sorted(by.items(), key=lambda kv: kv[0][2]):
                scratch = by.get(("scratch", lr, seed))
                if name != plan or scratch is None:
                    continue
                members = []
                for generation, growth in enumerate(family["growths"]):
                    alone = {(n, l): r for (n, l, s), r in by.items()
                             if s == seed and n.startswith(f"member{generation}-") and n.split("-", 2)[2] == plan}
                    # seed 0 also has the LR it was not chosen at (budget_sweep.run_family tries three): every seed
                    # counts its member's runs at the chosen LR only, the one its "matched" run used
                    chosen = {l for (n, l) in alone if n.startswith(f"member{generation}-matched-")}
                    alone = [r for (n, l), r in alone.items() if not chosen or l in chosen]
                    if not alone:
                        break
                    members.append(_member(growth["flops"], growth["before"], alone,
                                           growth_parameters(family, generation)))
                if len(members) != len(family["growths"]):
                    continue                                      # this seed's members are not all run yet
                members.append(_member(family["flops"], family["final_bpb"], [scratch],
                                       family["evals"][-1].get("parameters")))
                for member, shape in zip(members, member_shapes(family["spec"])):
                    member["shape"] = shape
                alone_total = sum(m["alone_flops"] for m in members)
                seeds.append(dict(seed=seed, members=members, family_flops=family["flops"], alone_flops=alone_total,
                                  saving=1 - family["flops"] / alone_total,
                                  lower_bound=any(m["lower_bound"] for m in members)))
            if seeds:
                rows.append(dict(budget=budget, plan=plan, seeds=seeds))
    return rows


def member_shapes(spec: dict) -> list[str]:
    """Each generation's model of a run's schedule (the model, then each growth's fields over it), as text: the
    vocabulary is the stage each member was trained and is evaluated at."""
    model, shapes = dict(spec.get("model", {})), []
    for growth in [{}] + list(spec.get("growths", [])):
        model.update({k: v for k, v in growth.items() if k in model})
        shapes.append(f"{model.get('hidden_size')}x{model.get('num_hidden_layers')}, "
                      f"FFN {model.get('intermediate_size')}, vocabulary {model.get('vocab_size')}")
    return shapes


def growth_parameters(family: dict, generation: int):
    """Parameters of generation `generation` of a run (from its evaluations' records)."""
    return next((e.get("parameters") for e in family["evals"] if e.get("generation") == generation), None)


def _member(family_flops: float, bpb: float, alone: list, parameters) -> dict:
    reached = [x for x in (crossing([e["flops"] for e in r["evals"]], [e["bpb"] for e in r["evals"]], bpb)
                           for r in alone) if x is not None]
    return dict(parameters=parameters, family_flops=family_flops, bpb=bpb,
                alone_flops=min(reached) if reached else max(r["flops"] for r in alone), lower_bound=not reached,
                alone_bpb={r["name"]: r["final_bpb"] for r in alone})


def write_family_report(out: Path) -> str:
    rows = summarise_family(load(out))
    if not rows:
        return ""
    lines = []
    for row in rows:
        savings = [s["saving"] for s in row["seeds"]]
        bound = any(s["lower_bound"] for s in row["seeds"])
        lines += [f"Model family of {row['plan']} at {row['budget']:g} tokens/parameter: family saving "
                  f"{'>= ' if bound else ''}{_spread(savings)} over {len(savings)} seed(s) (1 - the family's FLOPs / "
                  f"the FLOPs of training each member alone to the same bits/byte)", "",
                  "| member | model (hidden x layers) | parameters | family FLOPs when reached | bits/byte | "
                  "alone: FLOPs to that bits/byte | alone runs' final bits/byte |", "|---|---|---|---|---|---|---|"]
        first = row["seeds"][0]["members"]
        for k, member in enumerate(first):
            per_seed = [s["members"][k] for s in row["seeds"]]
            alone = np.mean([m["alone_flops"] for m in per_seed])
            marker = ">= " if any(m["lower_bound"] for m in per_seed) else ""
            finals = ", ".join(f"{n.split('-')[1] if n.startswith('member') else n} {b:.3f}"
                               for n, b in member["alone_bpb"].items())
            params = "" if member["parameters"] is None else f"{member['parameters'] / 1e6:.2f}M"
            lines.append(f"| {k}{' (final)' if k == len(first) - 1 else ''} | {member.get('shape', '')} | "
                         f"{params} | "
                         f"{np.mean([m['family_flops'] for m in per_seed]):.3g} | "
                         f"{np.mean([m['bpb'] for m in per_seed]):.4f} | {marker}{alone:.3g} | {finals} |")
        total_family = np.mean([s["family_flops"] for s in row["seeds"]])
        total_alone = np.mean([s["alone_flops"] for s in row["seeds"]])
        lines += [f"| all | | | {total_family:.3g} | | {'>= ' if bound else ''}{total_alone:.3g} | |", ""]
    table = "\n".join(lines)
    (out / "family.md").write_text(table + "\n")
    print(table)
    return table


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the sweep's folder (its runs/ are read)")
    args = p.parse_args(argv)
    write_report(args.out)
    write_family_report(args.out)


if __name__ == "__main__":
    main()
