"""The seed plan's growths at real size on this 2-core, 24 GB machine: 2 ranks, ZeRO-3, bf16, through the Trainer.

    python bench/seed_growth.py --spill          # the seed's last growth, 488M -> 1.05B (needs --spill to fit)
    python bench/seed_growth.py --ranks 1 --micro 4 --seq 2048 --label _gpu     # on one GPU (NCCL)
    python bench/seed_growth.py --growth 2       # 219M -> 488M
    python bench/seed_growth.py --growth 3 --phases train      # one phase only

Phases (results in bench/results/seed_growth_g<K>.json; a finished phase is not run again):
  train   build the model before growth K of the `seed_2x` preset, train --steps-before steps, grow (a checkpoint right
          after the growth), train --steps-after steps. Per rank: peak RSS while building, RSS before the growth,
          peak RSS during it, RSS right after it, peak RSS while training the grown model (VmHWM, reset between
          phases; the heap is returned to the OS before each reading), growth seconds, seconds per step; and the
          machine's peak used memory (MemTotal - MemAvailable, sampled every 0.2 s).
  resume  fresh processes resume from that checkpoint and train the same steps: losses must equal the train phase's.
  export  tools/convert_to_hf.py exports the checkpoint (bf16); transformers' LlamaForCausalLM loads it and its loss
          on a batch of the validation set is compared with megababel's (a fresh process, after the ranks exit).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
from bench_data import SPEED_STAGES, tinystories
from megababel.plan.presets import PRESETS
from megababel.plan.schedule import parse_schedule
from megababel.train.trainer import Callback

RESULTS = ROOT / "bench" / "results"


def _status(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def _used_memory() -> int:
    info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in open("/proc/meminfo")}
    return info["MemTotal"] - info["MemAvailable"]


def _trim_and_reset():
    import ctypes
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:          # VmHWM := the current RSS
        f.write("5")


def schedule_spec(growth: int, steps_before: int, steps_after: int) -> dict:
    """The seed_2x preset cut to one growth: the model as it is before growth `growth`, that growth after
    `steps_before` steps. Warm-up 2 steps, so that a few steps move the weights (and a resume has something to
    reproduce)."""
    seed = PRESETS["seed_2x"]
    full = parse_schedule(seed, 1)
    configs = [full.model] + [g.config for g in full.growths]
    event = {k: v for k, v in seed["growths"][growth].items() if k != "at_step"}
    return dict(model=configs[growth].to_dict(),
                training=dict(seed["training"], steps=steps_before + steps_after, warmup_steps=2),
                growths=[dict(event, at_step=steps_before)])


class SeedProbe(Callback):
    """VmHWM per phase (reset between phases) and, sampled every 0.1 s, the peak anonymous memory (RssAnon: what
    cannot be evicted; VmHWM also counts memory-mapped file pages, e.g. a checkpoint being read). What it has is
    written to `partial` after every step and phase, so a run killed later (out of memory) keeps its figures."""

    def __init__(self, partial: Path | None = None):
        self.rows, self.memory, self.partial = [], {}, partial
        self.anon_peak, self.stop = 0, False
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self):
        while not self.stop:
            self.anon_peak = max(self.anon_peak, _status("RssAnon"))
            time.sleep(0.1)

    def _mb(self, field):
        if field == "VmHWM":       # the phase's peak: also report its anonymous part, and start the next phase
            self.last_anon = round(max(self.anon_peak, _status("RssAnon")) / 2**20)
            self.anon_peak = 0
        return round(_status(field) / 2**20)

    def _peak(self, name):
        self.memory[name] = self._mb("VmHWM")
        self.memory[name.replace("peak", "anon_peak")] = self.last_anon
        if torch.cuda.is_available():          # the same phase's peak of allocated GPU memory
            self.memory[name.replace("peak", "gpu_peak")] = round(torch.cuda.max_memory_allocated() / 2**20)
            torch.cuda.reset_peak_memory_stats()
        self._write()

    def _write(self):
        if self.partial is not None:
            self.partial.write_text(json.dumps(dict(memory=self.memory, steps=self.rows,
                                                    growth_seconds=getattr(self, "growth_seconds", None))))

    def on_fit_start(self, trainer):
        self._peak("peak_build_mb")
        _trim_and_reset()
        self.memory["rss_built_mb"] = self._mb("VmRSS")

    def on_step_end(self, trainer, row):
        self.rows.append(dict(step=row["step"], loss=row["loss"], generation=trainer.engine.model.generation,
                              seconds=trainer.tokens_per_step / row["tokens_per_s"]))
        print(f"rank {trainer.rank} step {row['step']} loss {row['loss']:.4f} "
              f"{self.rows[-1]['seconds']:.1f} s/step RSS {self._mb('VmRSS')} MB", flush=True)
        self._write()

    def on_before_growth(self, trainer, growth):
        self._peak("peak_training_before_mb")
        _trim_and_reset()
        self.memory["rss_before_growth_mb"] = self._mb("VmRSS")
        torch.distributed.barrier()

    def on_growth(self, trainer, record):
        self._peak("peak_during_growth_mb")
        self.memory["rss_right_after_growth_mb"] = self._mb("VmRSS")
        self.growth_seconds = record["seconds"]
        self.parameters = (record["parameters"], trainer.parameters)
        self._write()
        _trim_and_reset()

    def on_save(self, trainer, path):
        self._peak("peak_saving_mb")
        _trim_and_reset()

    def on_fit_end(self, trainer, result):
        self._peak("peak_training_after_mb")
        self.memory["rss_end_mb"] = self._mb("VmRSS")


class MachineMemory:
    """Peak used memory of the whole machine, sampled in a thread."""

    def __init__(self):
        self.peak, self.stop = 0, False
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self):
        while not self.stop:
            self.peak = max(self.peak, _used_memory())
            time.sleep(0.2)


def worker(args):
    from megababel.engine import init_distributed
    from megababel.train.trainer import RunConfig, Trainer

    rank, world = init_distributed()
    torch.set_num_threads(1)
    (Path(args.out) / ("spill" if args.spill else "")).mkdir(parents=True, exist_ok=True)
    machine = MachineMemory() if rank == 0 else None
    out = Path(args.out)
    probe = SeedProbe(out / f"partial_{args.phase}_rank{rank}.json")
    run = RunConfig(schedule=schedule_spec(args.growth, args.steps_before, args.steps_after),
                    data=tinystories(SPEED_STAGES), micro_batch_size=args.micro, seq_len=args.seq, zero_stage=3,
                    bf16=True, eval_every=0, eval_batches=1, save_after_growth=args.phase == "train",
                    growth_spill_dir=out / "spill" if args.spill else None,
                    resume=out / "checkpoints" if args.phase == "resume" else None, out=out)
    trainer = Trainer(run, callbacks=[probe]).setup()
    trainer.fit()
    result = dict(rank=rank, memory=probe.memory, steps=probe.rows)
    if args.phase == "train":
        result.update(growth_seconds=round(probe.growth_seconds, 1), parameters=probe.parameters)
    if machine is not None:
        result["machine_peak_used_mb"] = round(machine.peak / 2**20)
    print("RESULT " + json.dumps(result), flush=True)
    torch.distributed.barrier()
    os._exit(0)      # skip interpreter teardown (a communication thread destroyed at exit can abort the process)


def run_ranks(args, phase: str) -> list[dict]:
    from megababel.parallel.local_ranks import run_local_ranks
    command = [__file__, "--worker", "--phase", phase, "--growth", args.growth, "--steps-before", args.steps_before,
               "--steps-after", args.steps_after, "--micro", args.micro, "--seq", args.seq, "--out", args.out,
               "--ranks", args.ranks,
               *(["--spill"] if args.spill else [])]
    try:
        logs = run_local_ranks(args.ranks, command, threads=1, timeout=6 * 3600)
    except RuntimeError as error:       # e.g. killed out of memory: keep what the ranks had measured, and why
        print(str(error)[-4000:], file=sys.stderr, flush=True)
        kernel = subprocess.run(["dmesg"], capture_output=True, text=True).stdout.splitlines()
        killed = [line for line in kernel if "Out of memory: Killed process" in line][-1:]
        return [dict(json.loads((Path(args.out) / f"partial_{phase}_rank{rank}.json").read_text()), rank=rank,
                     failed=str(error).splitlines()[0], kernel=killed) for rank in range(args.ranks)
                if (Path(args.out) / f"partial_{phase}_rank{rank}.json").exists()]
    return [json.loads(next(line for line in log.splitlines() if line.startswith("RESULT "))[7:]) for log in logs]


def export_and_load(args) -> dict:
    """Export the checkpoint right after the growth and compare transformers' loss with megababel's."""
    from transformers import LlamaForCausalLM
    from megababel.checkpoint.io import load_checkpoint, resolve_checkpoint
    from megababel.data.loader import PackedLoader
    from megababel.data.shards import TokenDataset
    from megababel.hf.export import find_tokenizer
    from megababel.model.llama import Llama
    checkpoint = resolve_checkpoint(Path(args.out) / "checkpoints")
    hf_dir = Path(args.out) / "hf"
    start = time.time()
    subprocess.run([sys.executable, str(ROOT / "tools" / "convert_to_hf.py"), str(checkpoint), str(hf_dir),
                    "--dtype", "bf16", "--overwrite"], check=True)
    export_seconds = time.time() - start
    saved = load_checkpoint(checkpoint)
    _, ranking = find_tokenizer(saved.path, saved.run)
    vocab = saved.state.config.vocab_size
    inputs, targets = PackedLoader(TokenDataset(tinystories(SPEED_STAGES) / f"vocab_{vocab}", "valid"), args.seq, 1,
                                   seed=12345).next_batch()
    start = time.time()
    hf = LlamaForCausalLM.from_pretrained(hf_dir, dtype=torch.bfloat16)
    load_seconds = time.time() - start
    # model row -> the export's id: the same at a vocabulary stage (its export is the stage), the tokenizer's after
    to_tokenizer_ids = (torch.arange(vocab) if hf.config.vocab_size == vocab
                        else torch.from_numpy(ranking.order[:vocab].copy()).long())
    with torch.no_grad():       # the softmax over the active vocabulary, as megababel's
        logits = hf(to_tokenizer_ids[inputs]).logits.float()[..., to_tokenizer_ids]
        hf_loss = torch.nn.functional.cross_entropy(logits.reshape(-1, vocab), targets.reshape(-1)).item()
    hf_parameters = sum(p.numel() for p in hf.parameters())
    del hf, logits
    state = saved.state
    model = Llama(state.config, layout=state.layout, generation=state.generation, values=state.values).bfloat16()
    with torch.no_grad():
        ours = model(inputs, targets)[1].item()
    return dict(checkpoint=str(checkpoint), export_seconds=round(export_seconds, 1),
                hf_load_seconds=round(load_seconds, 1), hf_parameters=hf_parameters, active_vocab=vocab,
                hf_loss_bf16=round(hf_loss, 4), megababel_loss_bf16=round(ours, 4))


def planner(growth: int, spill: bool, micro: int, seq: int, ranks: int = 2) -> list:
    """The memory planner's rows (megababel/plan/memory.py) for the stages before and after growth `growth`."""
    from megababel.plan.memory import plan_memory
    full = parse_schedule(PRESETS["seed_2x"], 1)
    configs = [full.model] + [g.config for g in full.growths]
    return plan_memory(configs[growth:growth + 2], ranks, 1, 3, micro, seq, bf16=True, growth_spill=spill)


def report(paths: list[Path], micro: int, seq: int) -> str:
    """Markdown: measured figures per rank next to the planner's, for each results file."""
    lines = ["| run | rank | build peak | before growth (trimmed) | peak during growth | right after growth | "
             "peak training (grown) | growth s | s/step before / after | resume losses equal | HF loss = ours |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for path in paths:
        results = json.loads(path.read_text())
        growth, spill = int(re.search(r"_g(\d)", path.stem).group(1)), "spill" in path.stem
        setting = results.get("setting", dict(ranks=2, micro=micro, seq=seq))
        before, after = planner(growth, spill, setting["micro"], setting["seq"], setting["ranks"])
        export = results.get("export", {})
        same = export and export.get("hf_loss_bf16") == export.get("megababel_loss_bf16")
        for r in results["train"]:
            m = r["memory"]
            resumed = {s["step"]: s["loss"] for s in next((x for x in results.get("resume", [])
                                                           if x["rank"] == r["rank"]), {"steps": []})["steps"]}
            equal = all(resumed[s["step"]] == s["loss"] for s in r["steps"] if s["step"] in resumed) \
                if resumed else "-"
            times = [[s["seconds"] for s in r["steps"] if s["generation"] == g][1:] for g in (0, 1)]
            if r.get("failed"):
                times[1] = []
            mean = [f"{sum(t) / len(t):.1f}" if t else "-" for t in times]
            gib = {k: f"{v / 1024:.2f}" for k, v in m.items()}
            trained = gib.get("peak_training_after_mb", "killed: out of memory" if r.get("failed") else "-")
            lines.append(f"| {path.stem} | {r['rank']} | {gib['peak_build_mb']} | {gib['rss_before_growth_mb']} | "
                         f"{gib['peak_during_growth_mb']} (anon {gib['anon_peak_during_growth_mb']}) | "
                         f"{gib['rss_right_after_growth_mb']} | {trained} | {r.get('growth_seconds') or 0:.1f} | "
                         f"{mean[0]} / {mean[1]} | {equal} | {same if export else '-'} |")
        GB = 2**30
        lines.append(f"| planner | | | {before.state / GB:.2f} (state) | {after.growth_peak / GB:.2f} | "
                     f"{after.state / GB:.2f} | {after.training / GB:.2f} | | | | |")
    return "\n".join(lines) + "\n\nGiB per rank (VmRSS / VmHWM; anon: RssAnon, without evictable file pages)."


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--growth", type=int, default=3, help="which growth of the seed_2x preset (0-3; 3: 488M -> 1.05B)")
    p.add_argument("--steps-before", type=int, default=3)
    p.add_argument("--steps-after", type=int, default=3)
    p.add_argument("--ranks", type=int, default=2, help="processes (on GPUs: one per GPU)")
    p.add_argument("--micro", type=int, default=1)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--phases", nargs="+", default=["train", "resume", "export"])
    p.add_argument("--spill", action="store_true", help="--growth-spill-dir OUT/spill: the old state pieces in a "
                                                       "mapped file during the growth")
    p.add_argument("--out", default=None, help="run folder (default: a folder under /tmp)")
    p.add_argument("--label", default="", help="suffix of the results file, e.g. _gpu")
    p.add_argument("--report", action="store_true", help="print the results files as a table, with the planner's "
                                                        "predictions")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--phase", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.out = args.out or f"/tmp/megababel_seed_growth_g{args.growth}"
    if args.worker:
        return worker(args)
    if args.report:
        table = report(sorted(RESULTS.glob("seed_growth_g*.json")), args.micro, args.seq)
        print(table)
        (RESULTS / "seed_growth.md").write_text(table + "\n")
        return table
    tinystories(SPEED_STAGES)                 # built once here, before the ranks read it
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"seed_growth_g{args.growth}{'_spill' if args.spill else ''}{args.label}.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    results["setting"] = dict(ranks=args.ranks, micro=args.micro, seq=args.seq,
                              device=torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu")
    for phase in args.phases:
        if phase in results:
            print(f"{phase}: done already ({path})")
            continue
        print(f"{phase} ...", flush=True)
        results[phase] = export_and_load(args) if phase == "export" else run_ranks(args, phase)
        path.write_text(json.dumps(results, indent=1))
        print(json.dumps(results[phase], indent=1), flush=True)
    return results


if __name__ == "__main__":
    main()
