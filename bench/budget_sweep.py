"""Does growing pay where users train? Compute saving of progressive plans over scratch versus the token budget.

    python bench/budget_sweep.py                          # budgets 0.1 1 5 20 tokens/parameter; resumes
    python bench/budget_sweep.py --budgets 0.1 1          # the small budgets only
    python bench/budget_sweep.py --report                 # table + plots again from the saved runs
    python bench/budget_sweep.py --budgets 20 --levers    # then the levers on the best plan at 20
    python bench/budget_sweep.py --budgets 20 --levers @2 @5 copy x4+copy genlr+rewarm1 zerowidth --lever-seeds 0 1 2
    python bench/budget_sweep.py --budgets 20 --family    # the best grid plan's model family against its members alone
    python bench/budget_sweep.py --quick --out /tmp/bs    # smoke test: a tiny budget, 2 plans, one LR

Final model: hidden 128 (head_dim 32), 4 layers, FFN 352, vocabulary stage 2000 of the Llama 2 tokenizer: 1.32M
parameters, 0.80M without the two vocabulary matrices. A budget is scratch's training tokens per parameter, ALL
parameters counted (the report also gives tokens per non-embedding parameter). Data: ../shared/data/wikipedia,
65M training tokens at vocabulary 2000, so even the largest budget (26M tokens for scratch; a progressive run sees
more at equal FLOPs) is less than one epoch: no text is repeated. Validation: the first 40 articles of valid.txt
(never trained on), all tokens, bits per byte.

Every run trains through megababel's Trainer as `launch/train.py --bf16` does (DeepSpeed ZeRO-0, bf16 weights with
fp32 masters, AdamW, per-generation LR curves, Adam state kept), batch 8 x 256 tokens, and every progressive run gets
scratch's training FLOPs (megababel/model/counters.py).
Per budget, in order: scratch's peak LR tuned on --lrs (seed 0; extended when the best is at an edge); every plan
at that LR (seed 0); then --seeds for scratch and the plan with the largest FLOP saving. Plans (made by
megababel/plan/planner.py, which the planner's rule is fitted to):
  g1  64x2 -> 128x4 in one growth
  g2  64x2 -> 128x2 (width + FFN) -> 128x4 (depth, interleaved identity layers)
  g3  64x2 -> 96x2 -> 128x2 -> 128x4
each with its first growth at 10, 25 or 50% of scratch's FLOPs (`@10` ...) and the rest evenly spaced after it, and
each with a vocabulary stage ("-vocab": 1000 until the first growth, then 2000) or without. A plan whose run would
see more tokens than one epoch of the training text (late first growths at the largest budget: cheap early stages
mean many more tokens at equal FLOPs) is not run at that budget.

Outputs in --out (default bench/results/budget_sweep): runs/b<budget>-<plan>-lr<lr>-seed<k>.json (reused on a
re-run), table.md, saving_vs_budget.png, curves_b<largest>.png. growth_report.py's definitions of saving apply.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
import growth_vs_scratch
from bench_data import wikipedia
from budget_report import busy, saving
from growth_vs_scratch import SEQ, TOKENS_PER_STEP, Validation, train
from megababel.config import LlamaConfig
from megababel.model.counters import config_parameters, flops_per_token
from megababel.plan.planner import GENERATION_WIDTHS, plan_schedule
from megababel.plan.schedule import parse_schedule

COMMON = dict(head_dim=32, multiple_of=32, max_position_embeddings=SEQ)
FINAL = dict(hidden_size=128, num_hidden_layers=4, intermediate_size=352, vocab_size=2000)
VALID_ARTICLES = 40
FIRST_GROWTH = (0.10, 0.25, 0.50)
ALL_PLANS = [f"{plan}@{round(100 * f)}{vocab}" for plan in GENERATION_WIDTHS for f in FIRST_GROWTH
             for vocab in ("", "-vocab")]


def final_config() -> LlamaConfig:
    return LlamaConfig(**FINAL, **COMMON)


def scratch_steps(budget: float) -> int:
    return max(20, round(budget * config_parameters(final_config()) / TOKENS_PER_STEP))


def schedule_spec(name: str, budget: float, lr: float) -> dict:
    """A run's schedule, made by the planner (megababel/plan/planner.py), so that what is measured is what it plans."""
    return plan_schedule(final_config(), name, scratch_steps(budget), SEQ, TOKENS_PER_STEP, lr)


RERUN_BUSY = False      # --rerun-busy: train again the saved runs that shared the machine
PROCESSES = 1           # --processes: how many sweep processes share the machine (recorded per run)


def precision_suffix() -> str:
    """What names a run, or its kept folder, trained in fp32 (growth_vs_scratch.PRECISION): "-fp32"; bf16, "" ."""
    return "" if growth_vs_scratch.PRECISION == "bf16" else f"-{growth_vs_scratch.PRECISION}"


def run_path(out: Path, budget: float, name: str, lr: float, seed: int) -> Path:
    """Where the run is saved; a run in fp32 (growth_vs_scratch.PRECISION) apart from its bf16 twin."""
    return out / "runs" / f"b{budget:g}-{name}-lr{lr:g}-seed{seed}{precision_suffix()}.json"


def partial_dir(path: Path) -> Path:
    """Where the run saved as `path` keeps its checkpoints while it trains (removed once it is saved)."""
    return path.with_suffix(".partial")


def claimed(path: Path) -> bool:
    """Whether another live sweep process is training this run (its pid in RUN.claim)."""
    claim = path.with_suffix(".claim")
    try:
        pid = int(claim.read_text())
        if pid != os.getpid():
            os.kill(pid, 0)
            return True
    except (OSError, ValueError):
        pass
    return False


def _claim(path: Path) -> bool:
    """Claim the run for this process, atomically (a hard link fails if the claim exists: two processes starting
    together cannot both take it); a dead process's claim is taken over. False: another live process has it."""
    claim, mine = path.with_suffix(".claim"), path.with_suffix(f".claim.{os.getpid()}")
    mine.write_text(str(os.getpid()))
    try:
        while True:
            try:
                os.link(mine, claim)
                return True
            except FileExistsError:
                if claimed(path):
                    return False
                claim.unlink(missing_ok=True)               # stale: its process is gone
    finally:
        mine.unlink(missing_ok=True)


def run(out: Path, budget: float, name: str, lr: float, seed: int, data: Path, validation: dict,
        spec: dict | None = None, wait: bool = True, clock=None, options: dict | None = None) -> dict | None:
    """Train (or load the saved) run `name` at `budget`; `spec`: its schedule when not a plan name (family members);
    `clock`: bench/clock.py's final evaluations; `options`: growth_vs_scratch.train's (a kept OUT, a decay branch).
    Several sweep processes may share the work: a run another one is training is waited for (`wait`) or skipped
    (None)."""
    path = run_path(out, budget, name, lr, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    while not path.is_file() and claimed(path):
        if not wait:
            return None
        time.sleep(30)
    if path.is_file():
        saved = json.loads(path.read_text())
        finished = saved["evals"][-1]["step"] == saved["steps"]
        if finished and not (RERUN_BUSY and busy(saved)):
            return saved
        print(f"{path.name}: " + (f"stopped at step {saved['evals'][-1]['step']} of {saved['steps']}" if not finished
                                  else "shared the machine (no wall time)") + "; training it again")
    print(f"budget {budget:g} tokens/parameter: {name} seed {seed} lr {lr:g}", flush=True)
    if not _claim(path):              # another process took it meanwhile
        return run(out, budget, name, lr, seed, data, validation, spec, wait, clock, options)
    spec = spec or schedule_spec(name, budget, lr)
    options = dict(options or {})
    # every run checkpoints as it trains, so that a stopped one (SIGTERM) resumes where it stopped: into its own
    # partial folder, removed once the run is saved, unless the caller keeps its OUT (a family run, a branch)
    made_here = "out" not in options and "partial" not in options
    if made_here:
        options["partial"] = partial_dir(path)
    try:
        result = train(name, spec, seed, run_data(data, spec), validation, eval_every=max(10, spec["training"]["steps"] // 40),
                       micro_batch_size=4 if "+halfbatch" in name else 8,     # half of 8 x 256: micro batches of 4
                       clock=clock, **options)
        result.update(budget=budget, lr=lr, threads=torch.get_num_threads(), processes=PROCESSES)
        path.write_text(json.dumps(result))
        if made_here:
            shutil.rmtree(options["partial"], ignore_errors=True)
    finally:
        path.with_suffix(".claim").unlink(missing_ok=True)
    print(f"  -> final {result['final_bpb']:.4f} bits/byte, {result['flops']:.3g} FLOPs, {result['wall']:.0f} s",
          flush=True)
    return result


def run_data(data: Path, spec: dict) -> Path | dict:
    """What a run reads: the corpus, or for a data mixture (the planner's +easyfirst, +simplefirst) the sources it
    names: main (the corpus, with its difficulty scores) and simple (TinyStories with the corpus's model rows)."""
    schedule = parse_schedule(spec, TOKENS_PER_STEP)
    names = {key.partition("[")[0] for key in schedule.data_sources()}
    if not names:
        return data
    from bench_data import simple_stories, with_difficulty
    return {"main": with_difficulty(data), **({"simple": simple_stories(data)} if "simple" in names else {})}


def all_of(jobs: dict, clock=None) -> dict:
    """Run every job (`run`'s arguments): first those no other sweep process is training, then wait for the rest,
    so that processes sharing the sweep each train a different run. `clock`: bench/clock.py's, for every job."""
    done = {key: run(*job, wait=False, clock=clock) for key, job in jobs.items()}
    return {key: done[key] or run(*jobs[key], clock=clock) for key in jobs}


def one_epoch(budget: float, name: str, data: Path) -> bool:
    """Whether the run's tokens fit in one epoch of the training text (counted at the final vocabulary, where the
    text is fewest tokens): a plan that would repeat text is not run at that budget."""
    index = json.loads((data / f"vocab_{FINAL['vocab_size']}" / "index.json").read_text())
    steps = schedule_spec(name, budget, 1e-3)["training"]["steps"]
    return steps * TOKENS_PER_STEP <= index["splits"]["train"]["n_tokens"]


def lever_variant(best: str, lever: str) -> str:
    """The best plan with a lever: "+copy" etc. appended (several joined by "+"), or "@P" its first growth moved to
    P% of the FLOPs (g2@10-vocab with @2: g2@2-vocab)."""
    if lever.startswith("@"):
        plan, _, rest = best.partition("@")
        at, plus, others = lever.partition("+")
        return plan + at + ("-vocab" if rest.endswith("-vocab") else "") + plus + others
    return f"{best}+{lever}"


def run_levers(out: Path, budget: float, levers: list, seeds: list, data: Path, validation: dict):
    """Each lever on the best plan at `budget` (scratch's tuned LR), for each seed (and the plan itself and scratch
    at those seeds, if not run yet), once the plans there are run."""
    from budget_report import load, summarise
    row = next((r for r in summarise(load(out)) if r["budget"] == budget), None)
    if row is None or row["base"] is None:
        raise SystemExit(f"--levers: no plans run at budget {budget:g} yet; run the sweep there first")
    names = ["scratch", row["base"]] + [lever_variant(row["base"], lever) for lever in levers]
    all_of({(name, seed): (out, budget, name, row["lr"], seed, data, validation) for seed in seeds for name in names})


def family_members(spec: dict) -> list[LlamaConfig]:
    """The models a plan's run passes through, one per generation: the model before each growth, then the final."""
    schedule = parse_schedule(spec, TOKENS_PER_STEP)
    return [schedule.model] + [g.config for g in schedule.growths]


def member_name(generation: int, kind: str, plan: str) -> str:
    return f"member{generation}-{kind}-{plan}"


def run_family(out: Path, budget: float, plan: str | None, seeds: list, data: Path, validation: dict):
    """A plan's run as a model family: each member but the last (the final model, whose baseline is scratch) also
    trained alone from scratch, on its own compute-optimal budget (`budget` tokens per its parameters, "optimal") and
    on the FLOPs the family had spent when it reached that member ("matched"). The member's peak LR: of scratch's tuned
    LR, twice it, and one more past the better of those two, the one that ends lowest on seed 0's optimal run."""
    from budget_report import load, summarise
    row = next((r for r in summarise(load(out)) if r["budget"] == budget), None)
    if row is None or row["base"] is None:
        raise SystemExit(f"--family: no plans run at budget {budget:g} yet; run the sweep there first")
    plan, lr = plan or row["base"], row["lr"]
    families = all_of({seed: (out, budget, plan, lr, seed, data, validation) for seed in seeds})
    all_of({seed: (out, budget, "scratch", lr, seed, data, validation) for seed in seeds})
    members = family_members(families[seeds[0]]["spec"])[:-1]

    def member_job(generation, kind, member_lr, seed):
        config, growth = members[generation], families[seed]["growths"][generation]
        steps = dict(optimal=max(20, round(budget * config_parameters(config) / TOKENS_PER_STEP)),
                     matched=max(20, round(growth["flops"] / (flops_per_token(config, SEQ) * TOKENS_PER_STEP))))
        spec = plan_schedule(config, "scratch", steps[kind], SEQ, TOKENS_PER_STEP, member_lr)
        return (out, budget, member_name(generation, kind, plan), member_lr, seed, data, validation, spec)
    # Largest members first, so that processes sharing the phase finish it together (the small runs fill the tail).
    largest_first = range(len(members) - 1, -1, -1)
    tried = all_of({(g, x): member_job(g, "optimal", x, seeds[0]) for g in largest_first for x in (lr, 2 * lr)})

    def best_lr(g):
        return min((x for (h, x) in tried if h == g), key=lambda x: tried[g, x]["final_bpb"])
    # one more LR past the better edge (halved or doubled), so that no baseline is left at the edge of its grid
    beyond = {g: best_lr(g) / 2 if best_lr(g) == lr else best_lr(g) * 2 for g in largest_first}
    tried.update(all_of({(g, x): member_job(g, "optimal", x, seeds[0]) for g, x in beyond.items()}))
    member_lrs = {g: best_lr(g) for g in largest_first}
    all_of({(g, kind, seed): member_job(g, kind, member_lrs[g], seed)
            for g in largest_first for kind in ("matched", "optimal") for seed in seeds})


def sweep_budget(out: Path, budget: float, lrs: list, plans: list, seeds: list, data: Path, validation: dict):
    plans = [name for name in plans if one_epoch(budget, name, data)]

    tuning = all_of({lr: (out, budget, "scratch", lr, seeds[0], data, validation) for lr in sorted(lrs)})
    while True:     # extend the grid while the best LR sits at an edge (at most two extensions)
        best = min(tuning, key=lambda lr: tuning[lr]["final_bpb"])
        edges = sorted(tuning)
        if best not in (edges[0], edges[-1]) or len(tuning) >= len(lrs) + 2:
            break
        lr = best * 2 if best == edges[-1] else best / 2
        tuning[lr] = run(out, budget, "scratch", lr, seeds[0], data, validation)
    lr = min(tuning, key=lambda lr: tuning[lr]["final_bpb"])
    results = all_of({name: (out, budget, name, lr, seeds[0], data, validation) for name in plans})
    best_plan = max(results, key=lambda n: saving(results[n], tuning[lr], "flops") or -1)
    all_of({(name, seed): (out, budget, name, lr, seed, data, validation)
            for seed in seeds[1:] for name in ("scratch", best_plan)})


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "budget_sweep")
    p.add_argument("--budgets", type=float, nargs="+", default=[0.1, 1, 5, 20])
    p.add_argument("--lrs", type=float, nargs="+", default=[1.5e-3, 3e-3, 6e-3], help="scratch peak LRs to try")
    p.add_argument("--plans", nargs="+", default=ALL_PLANS, choices=ALL_PLANS, metavar="PLAN")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--levers", nargs="*", default=None, metavar="LEVER",
                   help="after the sweep, run these levers on the best grid plan at the largest budget (default when "
                        "given bare: rewarm1 rewarm5 halfbatch; see megababel/plan/planner.py; @P moves the first growth "
                        "to P%% of the FLOPs; join levers with +, e.g. x4+copy)")
    p.add_argument("--lever-seeds", type=int, nargs="+", default=[0], help="seeds for --levers (default 0)")
    p.add_argument("--family", nargs="?", const="best", default=None, metavar="PLAN",
                   help="after the sweep, the model family of PLAN (default: the best grid plan, seed 0) at the "
                        "largest budget: each member also trained alone (results in family.md); seeds: --seeds")
    p.add_argument("--rerun-busy", action="store_true", help="train again the saved runs that shared the machine "
                                                               "(their wall time is not reported)")
    p.add_argument("--report", action="store_true", help="only make the table and plots from saved runs")
    p.add_argument("--quick", action="store_true", help="smoke test: budget 0.05, plans g2@25 and g2@25-vocab")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--processes", type=int, default=1, help="how many sweep processes run side by side (the same "
                   "command twice with --threads 1 --processes 2: they share the runs): recorded, so that wall "
                   "times are compared only between runs made alike")
    args = p.parse_args(argv)
    global RERUN_BUSY, PROCESSES
    RERUN_BUSY, PROCESSES = args.rerun_busy, args.processes
    if args.quick:
        args.budgets, args.lrs, args.plans, args.seeds = [0.05], args.lrs[1:2], ["g2@25", "g2@25-vocab"], [0]
    if not args.report:
        from megababel.engine import init_distributed
        torch.set_num_threads(args.threads)
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        init_distributed()
        data = wikipedia([1000, 2000], valid_articles=VALID_ARTICLES)
        validation = {v: Validation(data / f"vocab_{v}") for v in (1000, 2000)}
        for budget in sorted(args.budgets):
            sweep_budget(args.out, budget, args.lrs, args.plans, args.seeds, data, validation)
        if args.levers is not None:
            run_levers(args.out, max(args.budgets), args.levers or ["rewarm1", "rewarm5", "halfbatch"],
                       args.lever_seeds, data, validation)
        if args.family is not None:
            run_family(args.out, max(args.budgets), None if args.family == "best" else args.family, args.seeds,
                       data, validation)
    from budget_report import write_family_report, write_report
    write_report(args.out)
    write_family_report(args.out)


if __name__ == "__main__":
    main()
