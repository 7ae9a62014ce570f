"""Annealed family members (issue 34): how long a decay branch each member needs to come within 0.01 bits/byte of a
model of its shape trained alone on the same FLOPs, and the family saving with annealed members.

    python bench/annealed_family.py --seeds 0 1 2             # the best plan at 20 tokens/parameter; resumes
    python bench/annealed_family.py --report                  # annealed_family.md from the saved runs
    python bench/annealed_family.py --quick --out /tmp/af     # smoke test: budget 0.05, one seed, one fraction

Per seed, everything as bench/clock.py measures it (final figure: a line through the last 5 evaluations on all 486
held-out Wikipedia articles, read at the last step):
- the plan's run (--plan, at --budget, at scratch's LR there) with its generations kept (launch/train.py
  --keep-generations): member G is generation G's last state, at its peak LR;
- for each member but the last, decay branches of --fractions of the member's own steps (from its birth to the next
  growth), as `launch/train.py --resume MEMBER --anneal-steps N` trains them: no growth, every LR falling linearly to
  its minimum; the member's figure before the branch is measured too;
- the member's shape trained alone from scratch (cosine) on the FLOPs the family had spent on it (the run up to the
  member) and on those plus its longest branch, at scratch's LR (issue 19 tuned every member shape of these plans
  over 0.00075/0.0015/0.003 and found 0.0015 best for each; --tune tunes again on seed 0); a branch's "alone at the
  same FLOPs" is read between the two (linear in log FLOPs).
Report: per member and branch length, the annealed figure against alone at the same FLOPs; the shortest fraction at
which every member of every seed comes within --within (0.01) bits/byte; and the family saving with members annealed
that long: 1 - (the run's FLOPs + the branches') / (the FLOPs each member's shape alone needs to reach the annealed
figure, summed; the final member's is scratch's FLOPs when the run ends no worse than scratch of the same seed, a
lower bound (scratch: bench/clock.py's runs, --clock-out); ">=" / "<=" mark a seed whose saving is only
bounded, where a member's figure is outside its two alone runs'). A seed is measured in one precision: bf16, or
fp32 on a CPU without native bf16 (growth_vs_scratch.PRECISION; its runs and kept folders end in -fp32, its scratch
is the clock's fp32 run); a seed begun in the other precision is refused before any compute. Outputs in --out (default
bench/results/annealed_family): runs/*.json, kept/ (generation checkpoints; not in git), annealed_family.md.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
from pathlib import Path

import numpy as np

import budget_sweep
from budget_sweep import family_members, precision_suffix, run_path, schedule_spec
from clock import Clock, final_figure, interval, prepare
from growth_vs_scratch import PRECISION, SEQ, TOKENS_PER_STEP, resumable

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "bench" / "results" / "annealed_family"
CLOCK_OUT = ROOT / "bench" / "results" / "clock"      # scratch of the final model, per seed: bench/clock.py's runs
PLAN, BUDGET, LR = "g3@2-vocab+copy", 20, 1.5e-3      # the best plan at 20 and scratch's tuned LR (bench/clock.py)
FRACTIONS = (0.05, 0.1, 0.2)


def member_steps(spec: dict) -> list[tuple[int, int]]:
    """(birth step, last step + 1) of every generation of the plan's run."""
    from megababel.plan.schedule import parse_schedule
    schedule = parse_schedule(spec, TOKENS_PER_STEP)
    starts = [0] + [g.at_step for g in schedule.growths]
    return list(zip(starts, starts[1:] + [schedule.steps]))


def kept_dir(out: Path, plan: str, seed: int) -> Path:
    """The family run's OUT (its kept generations), apart for each precision as its saved runs are."""
    return out / "kept" / f"{plan}-seed{seed}{precision_suffix()}"


def branch_name(plan: str, generation: int, fraction: float) -> str:
    return f"branch-{plan}-g{generation}-f{fraction:g}"


def family_run(out, budget, plan, lr, seed, data, validation, clock, need_generations: bool = True) -> dict:
    """The plan's run with its generations kept; trained again when a branch still to train needs them and they
    are gone (a fresh checkout: kept/ is not in git), never when every branch of the seed is saved."""
    kept = kept_dir(out, plan, seed)
    path = run_path(out, budget, f"family-{plan}", lr, seed)
    if need_generations and path.is_file() and not (kept / "generations").is_dir():
        path.unlink()                                  # its generations are gone: train it again
    if not path.is_file() and not budget_sweep.claimed(path) and not resumable(kept):
        shutil.rmtree(kept, ignore_errors=True)        # a stopped run with no checkpoint yet: it starts again
    return budget_sweep.run(out, budget, f"family-{plan}", lr, seed, data, validation,
                            spec=schedule_spec(plan, budget, lr), clock=clock,
                            options=dict(partial=kept, keep_generations=True))


def branch_run(out, budget, plan, lr, seed, generation, fraction, data, validation, clock) -> dict:
    from megababel.checkpoint.io import list_checkpoints
    name = branch_name(plan, generation, fraction)
    path = run_path(out, budget, name, lr, seed)
    if path.is_file():                                 # saved (only a finished run is): no member needed
        return json.loads(path.read_text())
    spec = schedule_spec(plan, budget, lr)
    born, end = member_steps(spec)[generation]
    member = next(c for c in list_checkpoints(kept_dir(out, plan, seed) / "generations")
                  if c.name.endswith(f"_gen{generation}"))
    branch_out = out / "kept" / f"{name}-seed{seed}{precision_suffix()}"
    if not path.is_file() and not budget_sweep.claimed(path) and not resumable(branch_out):
        shutil.rmtree(branch_out, ignore_errors=True)  # nothing to resume: it starts again from the member
    return budget_sweep.run(out, budget, name, lr, seed, data, validation, spec=spec, clock=clock,
                            options=dict(partial=branch_out, resume=member,
                                         anneal_steps=max(1, round(fraction * (end - born)))))


def alone_run(out, budget, plan, generation, flops, kind, lr, seed, data, validation, clock) -> dict:
    """Member `generation`'s shape from scratch on `flops` (cosine)."""
    from megababel.model.counters import flops_per_token
    from megababel.plan.planner import plan_schedule
    config = family_members(schedule_spec(plan, budget, LR))[generation]
    steps = max(20, round(flops / (flops_per_token(config, SEQ) * TOKENS_PER_STEP)))
    spec = plan_schedule(config, "scratch", steps, SEQ, TOKENS_PER_STEP, lr)
    return budget_sweep.run(out, budget, f"alone-{plan}-g{generation}-{kind}", lr, seed, data, validation,
                            spec=spec, clock=clock)


def measure(out, budget, plan, lr, seeds, fractions, data, validation, clock, tune: bool = False):
    members = len(family_members(schedule_spec(plan, budget, lr))) - 1       # the last is the run's final model
    for seed in seeds:
        missing = [(g, f) for g in range(members) for f in fractions
                   if not run_path(out, budget, branch_name(plan, g, f), lr, seed).is_file()]
        family = family_run(out, budget, plan, lr, seed, data, validation, clock, need_generations=bool(missing))
        branches = {(g, f): branch_run(out, budget, plan, lr, seed, g, f, data, validation, clock)
                    for g in range(members) for f in fractions}
        for g in range(members):
            at = family["growths"][g]["flops"]
            if tune and seed == seeds[0]:             # each member's LR: tuned on the first seed's matched run
                for x in (lr / 2, lr, 2 * lr):
                    alone_run(out, budget, plan, g, at, "matched", x, seed, data, validation, clock)
            best = member_lr(load(out), budget, plan, g, seeds[0]) if tune else lr
            alone_run(out, budget, plan, g, at, "matched", best, seed, data, validation, clock)
            alone_run(out, budget, plan, g, branches[g, max(fractions)]["flops"], "branched", best, seed, data,
                      validation, clock)


def member_lr(runs: dict, budget, plan, generation, seed) -> float | None:
    """Member `generation`'s tuned LR: the best of seed `seed`'s matched alone runs (None before they ran)."""
    tried = {lr: r for (b, name, lr, s), r in runs.items()
             if b == budget and s == seed and name == f"alone-{plan}-g{generation}-matched"}
    return min(tried, key=lambda x: final_figure(tried[x])) if tried else None


def load(out: Path) -> dict:
    """{(budget, name, lr, seed): run}, every finished run: a seed is measured in one precision (its members,
    branches, alone runs and scratch are compared with each other), bf16 or, on a CPU without native bf16, fp32;
    refused if a seed holds runs of both."""
    from clock import load_runs
    by_precision = {p: load_runs(out, p) for p in ("bf16", "fp32")}
    both = {k[3] for k in by_precision["bf16"]} & {k[3] for k in by_precision["fp32"]}
    if both:
        raise SystemExit(f"{out / 'runs'}: seed(s) {sorted(both)} hold runs in bf16 and in fp32; a seed is measured "
                         f"in one precision: move one precision's runs of those seeds (names ending -fp32) away")
    return {**by_precision["bf16"], **by_precision["fp32"]}


def seed_precision(runs: dict, seed: int) -> str:
    """The precision seed `seed`'s runs trained in (load keeps a seed to one)."""
    from budget_report import precision
    return next((precision(r) for (_, _, _, s), r in runs.items() if s == seed), "bf16")


def refuse_another_precision(out: Path, seeds, here: str = PRECISION):
    """Before any compute: a seed whose runs, saved or stopped (kept/ folders), trained in another precision than
    this machine's is refused; its comparisons would mix precisions (growth_vs_scratch.PRECISION)."""
    from budget_report import precision
    for seed in seeds:
        saved = [json.loads(p.read_text()) for p in (out / "runs").glob(f"*-seed{seed}*.json")]
        found = {precision(r) for r in saved if r["seed"] == seed}
        found |= {"fp32" if d.name.endswith(f"-seed{seed}-fp32") else "bf16" for d in (out / "kept").glob("*")
                  if d.name.endswith((f"-seed{seed}", f"-seed{seed}-fp32"))}
        if found - {here}:
            raise SystemExit(f"seed {seed} of {out} was measured in {', '.join(sorted(found - {here}))} and this "
                             f"machine trains in {here} (growth_vs_scratch.PRECISION): a seed is measured in one "
                             f"precision; finish seed {seed} where {', '.join(sorted(found - {here}))} is native, "
                             f"or measure another seed here")


def _line(alone: list[dict]) -> tuple[tuple[float, float], tuple[float, float]]:
    (f0, b0), (f1, b1) = sorted((r["flops"], final_figure(r)) for r in alone)
    return (math.log(f0), b0), (math.log(f1), b1)


def alone_at(alone: list[dict], flops: float) -> float:
    """Alone's final figure at `flops`, linear in log FLOPs through its matched and branched runs."""
    (x0, b0), (x1, b1) = _line(alone)
    return b0 + (b1 - b0) * (math.log(flops) - x0) / (x1 - x0)


def alone_flops_to(alone: list[dict], bpb: float) -> tuple[float, str]:
    """The FLOPs alone needs to reach `bpb`, on the same line, with "" for a reading between the two runs; past them
    only a bound: (the larger run's FLOPs, ">=") when `bpb` is below both figures, (the smaller's, "<=") above."""
    (x0, b0), (x1, b1) = _line(alone)
    t = (b0 - bpb) / (b0 - b1) if b1 < b0 else math.inf
    if t > 1:
        return math.exp(x1), ">="
    if t < 0:
        return math.exp(x0), "<="
    return math.exp(x0 + t * (x1 - x0)), ""


def seed_rows(runs: dict, budget, plan, seed, tuned: dict, scratch: dict | None) -> tuple[list[dict], dict]:
    """Per branch of one seed: its figures; and per fraction, the family saving with members annealed that long
    ((saving, bound) or None when a run is missing). `scratch`: the final model from scratch, this seed."""
    mine = {(name, lr): r for (b, name, lr, s), r in runs.items() if b == budget and s == seed}
    family = next((r for (n, _), r in mine.items() if n == f"family-{plan}"), None)
    if family is None:
        return [], {}
    rows, by_fraction = [], {}
    for (name, _), r in sorted(mine.items()):
        if not name.startswith(f"branch-{plan}-g"):
            continue
        g, f = name[len(f"branch-{plan}-g"):].split("-f")
        g, f = int(g), float(f)
        alone = [a for (n, lr), a in mine.items() if n.startswith(f"alone-{plan}-g{g}-") and lr == tuned.get(g)]
        row = dict(seed=seed, member=g, fraction=f, steps=r["steps"] - family["growths"][g]["step"],
                   branch_flops=r["flops"] - family["growths"][g]["flops"], figure=final_figure(r),
                   before=r.get("initial_eval", {}).get("bpb", math.nan), alone=None)
        if len(alone) == 2:
            row["alone"] = alone_at(alone, r["flops"])
            row["alone_flops"] = alone_flops_to(alone, row["figure"])
        rows.append(row)
        by_fraction.setdefault(f, []).append(row)
    savings = {}
    for f, members in by_fraction.items():
        if scratch is None or any(m["alone"] is None for m in members):
            continue
        family_flops = family["flops"] + sum(m["branch_flops"] for m in members)
        if final_figure(family) > final_figure(scratch):
            continue                                  # the final member needs scratch's curve: bench/clock.py
        # scratch needs at least its FLOPs to reach a final figure at or below its own
        bounds = {m["alone_flops"][1] for m in members} | {">=" if final_figure(family) < final_figure(scratch)
                                                           else ""}
        alone_total = scratch["flops"] + sum(m["alone_flops"][0] for m in members)
        bound = "" if bounds == {""} else ">=" if bounds <= {"", ">="} else "<=" if bounds <= {"", "<="} else "~"
        savings[f] = (1 - family_flops / alone_total, bound)
    return rows, savings


def report(out: Path, budget=BUDGET, plan=PLAN, within: float = 0.01, lr: float = LR,
           clock_out: Path = CLOCK_OUT) -> str:
    from clock import load_runs
    runs = load(out)
    seeds = sorted({s for (b, n, _, s) in runs if b == budget and n == f"family-{plan}"})
    tuned = {g: member_lr(runs, budget, plan, g, seeds[0]) or lr for g in range(8)} if seeds else {}
    lines = [f"Annealed members of {plan} at {budget:g} tokens/parameter (bench/annealed_family.py; bits/byte: "
             f"bench/clock.py's final figure on all held-out articles):", "",
             "Each seed against its own scratch and alone runs, all in the precision it trained in (fp32: a CPU "
             "without native bf16).", "",
             "| seed | member | branch: fraction of its steps (steps) | branch FLOPs | before | annealed | alone, same "
             "FLOPs | annealed - alone |", "|---|---|---|---|---|---|---|---|"]
    gaps, savings = {}, {}
    for seed in seeds:
        precision = seed_precision(runs, seed)         # scratch of the same seed in the same precision
        scratch = load_runs(clock_out, precision).get((budget, "scratch", lr, seed)) if clock_out.is_dir() else None
        rows, seed_savings = seed_rows(runs, budget, plan, seed, tuned, scratch)
        label = f"{seed}" if precision == "bf16" else f"{seed} ({precision})"
        for r in rows:
            alone = "- | -" if r["alone"] is None else f"{r['alone']:.4f} | {r['figure'] - r['alone']:+.4f}"
            lines.append(f"| {label} | {r['member']} | {r['fraction']:g} ({r['steps']}) | {r['branch_flops']:.3g} | "
                         f"{r['before']:.4f} | {r['figure']:.4f} | {alone} |")
            if r["alone"] is not None:
                gaps.setdefault(r["fraction"], []).append(r["figure"] - r["alone"])
        for f, value in seed_savings.items():
            savings.setdefault(f, []).append(value)
    lines += ["", "Per branch length, over members and seeds: annealed - alone at the same FLOPs (mean [95% CI], "
              "worst), and the family saving with every member annealed that long (1 - the run's and the branches' "
              "FLOPs / each member's shape alone to the same figure, summed; per seed):", "",
              f"| fraction | annealed - alone | worst | every member within {within:g} | family saving |",
              "|---|---|---|---|---|"]
    for f in sorted(gaps):
        mean, low, high = interval(gaps[f])
        ci = "" if math.isnan(low) else f" [{low:+.4f}, {high:+.4f}]"
        values = savings.get(f, [])
        saving = "-" if not values else f"{100 * np.mean([v for v, _ in values]):.0f}% (" + ", ".join(
            f"{b + ' ' if b else ''}{100 * v:.0f}" for v, b in values) + ")"
        lines.append(f"| {f:g} | {mean:+.4f}{ci} | {max(gaps[f]):+.4f} | "
                     f"{'yes' if max(gaps[f]) <= within else 'no'} | {saving} |")
    text = "\n".join(lines) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "annealed_family.md").write_text(text)
    print(text)
    _plot(runs, budget, plan, seeds, tuned, out)
    return text


def _plot(runs: dict, budget, plan, seeds, tuned: dict, out: Path):
    """annealed_family.png: per member, bits/byte against FLOPs: the member at its growth, its branches, and its
    shape alone (the two runs whose line gives "alone, same FLOPs"), one colour per seed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    members = sorted({int(n[len(f"branch-{plan}-g"):].split("-f")[0]) for (b, n, _, s) in runs
                      if b == budget and n.startswith(f"branch-{plan}-g")})
    if not members:
        return
    fig, axes = plt.subplots(1, len(members), figsize=(4.5 * len(members), 3.8), squeeze=False)
    for ax, g in zip(axes[0], members):
        for i, seed in enumerate(seeds):
            colour = f"C{i}"
            mine = {n: r for (b, n, lr, s), r in runs.items() if b == budget and s == seed
                    and (n.startswith(f"branch-{plan}-g{g}-") or (n.startswith(f"alone-{plan}-g{g}-")
                                                                   and lr == tuned.get(g)))}
            alone = sorted((r["flops"] / 1e12, final_figure(r)) for n, r in mine.items() if n.startswith("alone"))
            if alone:
                ax.plot(*zip(*alone), color=colour, linestyle="--", marker="s", label=f"alone, seed {seed}")
            branches = sorted((r["flops"] / 1e12, final_figure(r), r.get("initial_eval")) for n, r in mine.items()
                              if n.startswith("branch"))
            if branches:
                start = branches[0][2]
                xs = ([start["flops"] / 1e12] if start else []) + [f for f, _, _ in branches]
                ys = ([start["bpb"]] if start else []) + [b for _, b, _ in branches]
                ax.plot(xs, ys, color=colour, marker="o", label=f"member, then its branches, seed {seed}")
        ax.set_title(f"member {g}", fontsize=9)
        ax.set_xlabel("training TFLOPs (up to the member, + branch)")
        ax.set_ylabel("final bits/byte (held-out Wikipedia)")
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out / "annealed_family.png", dpi=120)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--plan", default=PLAN)
    p.add_argument("--budget", type=float, default=BUDGET)
    p.add_argument("--lr", type=float, default=LR, help="scratch's tuned LR at --budget (bench/clock.py's)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--fractions", type=float, nargs="+", default=list(FRACTIONS))
    p.add_argument("--tune", action="store_true", help="tune each member's alone LR on the first seed over "
                   "{lr/2, lr, 2 lr} (default: --lr, which issue 19's family tuning found best for every member "
                   "shape of these plans)")
    p.add_argument("--within", type=float, default=0.01)
    p.add_argument("--clock-out", type=Path, default=CLOCK_OUT, help="bench/clock.py's --out: scratch per seed")
    p.add_argument("--articles", type=int, default=None, help="the clock's final evaluations on the first N articles")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--report", action="store_true")
    p.add_argument("--quick", action="store_true", help="smoke test: budget 0.05, seed 0, fraction 0.2, 10 articles")
    args = p.parse_args(argv)
    if args.quick:
        args.budget, args.seeds, args.fractions, args.articles, args.plan = 0.05, [0], [0.2], 10, "g3@25-vocab"
    if not args.report:
        if not args.quick:
            refuse_another_precision(args.out, args.seeds)
        data, validation = prepare(args.threads)
        measure(args.out, args.budget, args.plan, args.lr, args.seeds, args.fractions, data, validation,
                Clock(data, args.articles), args.tune)
    report(args.out, args.budget, args.plan, args.within, args.lr, args.clock_out)


if __name__ == "__main__":
    main()
