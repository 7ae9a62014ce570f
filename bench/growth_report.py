"""Tables and plot for bench/growth_vs_scratch.py, from its saved runs (OUT/runs/*.json).

Per progressive run and seed, against the scratch run of the same seed:
  saving       1 - C_grow / C_scratch, C_grow = training FLOPs (or wall time) at which the run's validation curve
               first reaches the scratch run's final bits per byte (linear interpolation between evaluations)
  d_bpb        bits per byte at the scratch run's total FLOPs minus scratch's final (negative: better)
  bump         highest bits per byte within 16 steps after a growth minus the value just before it
  recovery     steps after the growth until bits per byte is back at (or below) the value just before it
Values are mean +- standard deviation over seeds (min..max for the saving).
"""
from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

ORDER = ["scratch", "width", "width-vocab", "depth", "depth-vocab", "both", "both-vocab",
         "both/adam-reset", "both/global-lr", "both/stack", "both/zero-units", "both/zero-width"]
LABELS = {
    "scratch": "scratch (final model throughout)",
    "width": "2x width: 128x8 -> 256x8",
    "width-vocab": "2x width, vocabulary 2000 -> 8000",
    "depth": "2x depth: 256x4 -> 256x8",
    "depth-vocab": "2x depth, vocabulary 2000 -> 8000",
    "both": "width then depth: 128x4 -> 256x4 -> 256x8",
    "both-vocab": "width then depth, vocabulary 2000 -> 4000 -> 8000",
    "both/adam-reset": "Adam state reset at each growth",
    "both/global-lr": "one global LR curve (no per-generation warm-up)",
    "both/stack": "depth by stacking copies (G_stack), not identity layers",
    "both/zero-units": "new heads/FFN units/layers: output side zero, not cancelling pairs",
    "both/zero-width": "new residual dims zero, not split copies",
}


def crossing(xs, ys, target):
    """First x at which the piecewise-linear curve (xs, ys) reaches ys <= target; None if it never does."""
    for i, (x, y) in enumerate(zip(xs, ys)):
        if y <= target:
            if i == 0:
                return x
            x0, y0 = xs[i - 1], ys[i - 1]
            return x0 + (x - x0) * (y0 - target) / (y0 - y) if y0 != y else x
    return None


def at(xs, ys, x):
    return float(np.interp(x, xs, ys))


def growth_effects(run):
    """[(bump, recovery steps or None)] per growth."""
    out, evals = [], run["evals"]
    for g in run["growths"]:
        later = [e for e in evals if e["step"] > g["step"]]
        window = [g["after"]] + [e["bpb"] for e in later if e["step"] <= g["step"] + 16]
        bump = max(window) - g["before"]
        back = [e["step"] for e in later if e["bpb"] <= g["before"]]
        recovery = 0 if g["after"] <= g["before"] and bump <= 0 else (back[0] - g["step"] if back else None)
        out.append((bump, recovery))
    return out


def summarise(run, scratch):
    xs, ws, ys = [e["flops"] for e in run["evals"]], [e["wall"] for e in run["evals"]], [e["bpb"] for e in run["evals"]]
    target = scratch["final_bpb"]
    reach_flops, reach_wall = crossing(xs, ys, target), crossing(ws, ys, target)
    return dict(final=run["final_bpb"], d_bpb=at(xs, ys, scratch["flops"]) - target,
                saving=None if reach_flops is None else 1 - reach_flops / scratch["flops"],
                wall_saving=None if reach_wall is None else 1 - reach_wall / scratch["wall"],
                effects=growth_effects(run), wall=run["wall"])


def fmt(values, digits=3, pct=False):
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    scale, unit = (100, "%") if pct else (1, "")
    mean, sd = np.mean(values) * scale, (np.std(values, ddof=1) * scale if len(values) > 1 else 0.0)
    text = f"{mean:+.{digits}f}{unit}" if pct or mean < 0 else f"{mean:.{digits}f}{unit}"
    if len(values) > 1:
        text += f" ± {sd:.{digits}f}"
    return text


def saving_cell(values, pct_digits=0):
    reached = [v for v in values if v is not None]
    if not reached:
        return f"not reached (0/{len(values)})"
    text = fmt(reached, pct_digits, pct=True)
    if len(reached) > 1:
        text += f" ({min(reached) * 100:+.0f}..{max(reached) * 100:+.0f})"
    if len(reached) < len(values):
        text += f", reached in {len(reached)}/{len(values)}"
    return text


def effects_cell(summaries):
    per_growth = defaultdict(list)
    for s in summaries:
        for i, effect in enumerate(s["effects"]):
            per_growth[i].append(effect)
    cells = []
    for i in sorted(per_growth):
        bumps = [b for b, _ in per_growth[i]]
        recov = [r for _, r in per_growth[i]]
        rec = "never" if all(r is None for r in recov) else \
            "/".join("-" if r is None else str(r) for r in recov)
        cells.append(f"{fmt(bumps, 3)} ({rec})")
    return "; ".join(cells) if cells else "-"


SECTIONS = (("Growth vs scratch", ORDER[:7]), ("Ablations of width-then-depth", ORDER[5:6] + ORDER[7:]))


def common_seeds(by_name: dict, names) -> set:
    """Seeds every present run of `names` has: tables and panels compare on these (ablations have fewer).
    Empty when none of `names` has saved runs (e.g. after `--only scratch both-vocab`)."""
    present = [set(by_name[n]) for n in names if by_name.get(n)]
    return set.intersection(*present) if present else set()


def load(out: Path):
    from budget_report import one_precision
    runs = one_precision([json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json"))], out / "runs")
    if not (out / "tuned_lr.json").is_file():
        sys.exit(f"{out / 'tuned_lr.json'} is missing: the report compares runs at the tuned scratch learning rate; "
                 f"run bench/growth_vs_scratch.py (it tunes first) with --out {out}")
    tuned = json.loads((out / "tuned_lr.json").read_text())
    return runs, tuned


def write_report(out: Path):
    runs, tuned = load(out)
    lr = tuned["lr"]
    by_name = defaultdict(dict)
    for r in runs:
        if r["lr"] == lr:
            by_name[r["name"]][r["seed"]] = r
    scratch = by_name.get("scratch", {})
    lines = []
    scratch_runs = [r for r in runs if r["name"] == "scratch"]
    if scratch_runs:     # the learning-rate search runs on the first seed
        tuning_seed = min(r["seed"] for r in scratch_runs)
        lines += [f"### Scratch learning rate (seed {tuning_seed})", "", "| peak LR | final bits/byte |", "|---|---|"]
        tuning = sorted((r["lr"], r["final_bpb"]) for r in scratch_runs if r["seed"] == tuning_seed)
        lines += [f"| {a:g}{' (chosen)' if a == lr else ''} | {b:.4f} |" for a, b in tuning]
    header = ["| run | steps | final bits/byte | Δ bits/byte at equal FLOPs | FLOPs saving to reach scratch | "
              "wall-time saving | bump at each growth (recovery steps per seed) |", "|---|---|---|---|---|---|---|"]
    summaries = {}
    for title, names in SECTIONS:
        seeds = sorted(common_seeds(by_name, names))
        not_run = [n for n in names if n not in by_name]
        # a partial set of runs (`--only`, an interrupted bench) still gets a table, and says what it lacks
        note = ["", f"Not run (no saved run at peak LR {lr:g}): {', '.join(not_run)}."] if not_run else []
        if not seeds:
            lines += ["", f"### {title}"] + note
            continue
        if not scratch:
            lines += ["", f"### {title}", "", "No scratch run at this learning rate: every figure is relative to it."]
            lines += note
            continue
        lines += ["", f"### {title} (seeds {', '.join(map(str, seeds))}; peak LR {lr:g})", ""] + header
        for name in names:
            if name not in by_name:
                continue
            paired = [(r, scratch[s]) for s, r in sorted(by_name[name].items()) if s in scratch and s in seeds]
            if not paired:
                continue
            summ = [summarise(r, s) for r, s in paired]
            summaries[name] = summ
            steps = paired[0][0]["steps"]
            lines.append(f"| {name}: {LABELS[name]} | {steps} | {fmt([s['final'] for s in summ], 4)} | "
                         f"{fmt([s['d_bpb'] for s in summ], 4) if name != 'scratch' else '0'} | "
                         f"{saving_cell([s['saving'] for s in summ]) if name != 'scratch' else '0'} | "
                         f"{saving_cell([s['wall_saving'] for s in summ]) if name != 'scratch' else '0'} | "
                         f"{effects_cell(summ)} |")
        lines += note
    if scratch:
        first = next(iter(scratch.values()))
        lines += ["", f"Scratch budget: {first['steps']} steps x {8 * 256} tokens = {first['flops']:.3g} training FLOPs, "
                      f"{np.mean([r['wall'] for r in scratch.values()]):.0f} s of training on 2 cores (mean); "
                      f"every progressive run spends the same FLOPs (within rounding of its step count)."]
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(by_name, out / "curves.png")
    return summaries


def mean_curve(runs: dict, key: str):
    curves = [([e[key] for e in r["evals"]], [e["bpb"] for e in r["evals"]]) for r in runs.values()]
    n = min(len(c[0]) for c in curves)
    return np.mean([c[0][:n] for c in curves], axis=0), np.mean([c[1][:n] for c in curves], axis=0)


def plot(by_name, path: Path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return
    if "scratch" not in by_name:     # the curves' scale (y range) comes from scratch
        print("no scratch runs: no plot")
        return
    fig, axes = plt.subplots(1, 3, figsize=(18, 5.5))
    panels = [(axes[0], ORDER[:7], "flops", "training FLOPs (project counter)"),
              (axes[1], ORDER[:7], "wall", "training wall time (s, 2 CPU cores)"),
              (axes[2], ["scratch", "both"] + ORDER[7:], "flops", "training FLOPs (project counter)")]
    sx, sy = mean_curve(by_name["scratch"], "flops")
    top = float(np.interp(0.15 * sx[-1], sx, sy))
    for ax, names, key, xlabel in panels:
        seeds = common_seeds(by_name, names)
        names = [n for n in names if n in by_name and seeds]
        if not names:
            ax.text(0.5, 0.5, "no saved runs", ha="center", va="center", transform=ax.transAxes)
            continue
        for name in names:
            runs = {s: r for s, r in by_name[name].items() if s in seeds}
            x, y = mean_curve(runs, key)
            style = dict(lw=2.2, color="black") if name == "scratch" else dict(lw=1.2)
            line, = ax.plot(x, y, label=name, **style)
            for g in next(iter(runs.values()))["growths"]:
                gx = np.mean([[e[key] for e in r["evals"] if e["step"] == g["step"]][0] for r in runs.values()])
                ax.axvline(gx, color=line.get_color(), ls=":", lw=0.8)
        ax.set_ylim(min(min(e["bpb"] for r in by_name[n].values() for e in r["evals"]) for n in names) - 0.02, top)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("validation bits per byte (mean over seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_title("growth vs scratch at equal FLOPs (dotted: growth)")
    axes[1].set_title("the same against wall time")
    axes[2].set_title("ablations of width-then-depth")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")
