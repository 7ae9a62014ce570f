"""Progressive training on DeepSpeed: the model grows (width, FFN, depth, vocabulary) while it trains.

    python launch/train.py                                       # 1 process, ZeRO-0, tiny preset, embedded corpus
    DS_ACCELERATOR=cpu deepspeed --num_gpus 2 launch/train.py --stage 3      # 2 ranks, ZeRO-3 (CPU: gloo)
    deepspeed launch/train.py --stage 3 --bf16 --schedule seed --data data/slimpajama --micro-batch-size 8 --seq-len 2048
    python launch/train.py --schedule my_schedule.yaml --data data/tinystories --out runs/ts
    python launch/train.py --save-every 100 --out runs/a                    # checkpoints in runs/a/checkpoints
    deepspeed --num_gpus 1 launch/train.py --resume runs/a/checkpoints --out runs/a   # any ZeRO stage / rank count
    sbatch --nodes=2 launch/slurm/train.sbatch --stage 3 --out runs/a          # Slurm: see launch/slurm/README.md
    DS_ACCELERATOR=cpu deepspeed --num_gpus 4 launch/train.py --stage 3 --tp 2  # tensor parallel 2 x data parallel 2

--schedule: a preset (tiny, seed) or a YAML/JSON file (format: megababel/schedule.py); it is validated, with the
data, before anything is built. --data: a directory from tools/preprocess_data.py holding every vocabulary stage the
schedule uses; default: the embedded corpus (Python docstrings, own tokenizer, stages 1000/2000/4000), built into
~/.cache/megababel on first use. Each generation of parameters has its own AdamW param groups and learning-rate curve
(warm-up from its birth step, cosine decay to the end); old generations keep theirs and their Adam state. Rank 0
writes OUT/log.csv, TensorBoard events in OUT/tensorboard, OUT/loss.png (validation bits per byte, growth marked)
and OUT/summary.txt.

SIGUSR1 or SIGTERM (Slurm's --signal before the time limit, preemption) makes every rank stop after the current
step, write a checkpoint and OUT/preempted, and exit 0; `--resume auto` continues from OUT/checkpoints if present.

--tp N: tensor parallelism over groups of N consecutive ranks (megababel/parallel/tensor_parallel.py), data parallelism (and
ZeRO partitioning) over world / N. Every stage's heads, key/value heads, FFN width and vocabulary must be divisible
by N: checked before anything is built. Checkpoints hold the unsharded model, so a run resumes under any --tp.
"""
from __future__ import annotations

import argparse
import csv
import math
import signal
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from megababel.checkpoint import CheckpointError, load_checkpoint, save_checkpoint  # noqa: E402
from megababel.config import ConfigError  # noqa: E402
from megababel.counters import count_parameters, flops_per_token  # noqa: E402
from megababel.data.embedded import build_embedded_dataset  # noqa: E402
from megababel.data.loader import PackedLoader  # noqa: E402
from megababel.data.readers import DataError  # noqa: E402
from megababel.data.shards import TokenDataset  # noqa: E402
from megababel.deepspeed_config import load_ds_config  # noqa: E402
from megababel.engine import GrowingEngine  # noqa: E402
from megababel.parallel import comm_device, init_distributed  # noqa: E402
from megababel.schedule import load_schedule  # noqa: E402
from megababel.parallel.tensor_parallel import TensorParallel, check_tensor_parallel  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stage", type=int, default=0, choices=(0, 1, 2, 3), help="ZeRO stage (default 0)")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel degree (default 1); data parallel = world / tp")
    p.add_argument("--schedule", default="tiny", help="preset name or YAML/JSON file (default: tiny)")
    p.add_argument("--data", type=Path, default=None, help="dataset directory (default: the embedded corpus)")
    p.add_argument("--steps", type=int, default=None, help="override training.steps of the schedule")
    p.add_argument("--micro-batch-size", type=int, default=8, help="sequences per rank per step (default 8)")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--bf16", action="store_true", help="bf16 weights and compute, fp32 master weights")
    p.add_argument("--offload-optimizer", action="store_true", help="ZeRO optimizer state in CPU memory")
    p.add_argument("--gradient-clipping", type=float, default=None, help="override the DeepSpeed config's")
    p.add_argument("--ds-config", default=None, help="DeepSpeed JSON (default: ds_configs/zero<stage>.json)")
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--save-every", type=int, default=0, help="checkpoint every N steps and at the end (0: never)")
    p.add_argument("--save-after-growth", action="store_true", help="also checkpoint right after each growth")
    p.add_argument("--resume", type=Path, default=None,
                   help="checkpoint (step_N dir, or a checkpoints dir: latest); 'auto': OUT/checkpoints if it exists")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per rank")
    p.add_argument("--out", type=Path, default=Path("runs/demo"))
    p.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)   # set by the deepspeed launcher
    args = p.parse_args(argv)
    for name in ("micro_batch_size", "seq_len", "eval_every"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.steps is not None and args.steps <= 0:
        p.error(f"--steps must be positive, got {args.steps}")
    if args.data is not None and not args.data.is_dir():
        p.error(f"--data {args.data}: no such directory (make one with tools/preprocess_data.py)")
    if args.save_every < 0:
        p.error(f"--save-every must be >= 0, got {args.save_every}")
    if args.offload_optimizer and args.stage == 0:
        p.error("--offload-optimizer needs --stage 1, 2 or 3")
    return p, args


class StageData:
    """This rank's training loader and the (shared) validation batches of one vocabulary stage."""

    def __init__(self, data: Path, size: int, args, rank: int, world: int, previous: "StageData | None" = None):
        self.size = size
        train, valid = TokenDataset(data / f"vocab_{size}", "train"), TokenDataset(data / f"vocab_{size}", "valid")
        self.loader = PackedLoader(train, args.seq_len, args.micro_batch_size, dp_rank=rank, dp_world=world,
                                   seed=args.seed)
        if previous is not None:
            self.loader.continue_from(previous.loader)
        val = PackedLoader(valid, args.seq_len, args.micro_batch_size, seed=12345)
        self.val_batches = [val.next_batch() for _ in range(min(4, val.sequences_per_epoch // val.global_batch))]
        # every target in the packed stream is a document token, an EOS or a BOS
        self.tokens_per_byte = (valid.n_tokens + 2 * valid.n_docs) / max(1, valid.n_bytes)

    def bits_per_byte(self, loss: float) -> float:
        return loss * self.tokens_per_byte / math.log(2)


class StopRequest:
    """SIGUSR1 / SIGTERM ask for a checkpoint and a clean stop. Ranks may get the signal at different moments, so
    they agree (an all-reduce of a flag) at every step boundary and all stop after the same step."""

    def __init__(self):
        self.signal_name = None
        self.previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGUSR1, signal.SIGTERM)}

    def close(self):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame):
        self.signal_name = signal.Signals(signum).name

    def agreed(self) -> bool:
        flag = torch.tensor([1.0 if self.signal_name else 0.0])
        if dist.is_initialized() and dist.get_world_size() > 1:
            flag = flag.to(comm_device())
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() and self.signal_name is None:
            self.signal_name = "on another rank"
        return bool(flag.item())


def check_vocabulary(p, data: Path, schedule):
    available = sorted(int(d.name.split("_")[1]) for d in data.glob("vocab_*") if (d / "index.json").is_file())
    missing = [v for v in schedule.vocab_sizes() if v not in available]
    if missing:
        p.error(f"the schedule uses vocabulary stages {missing} that {data} does not have (available: {available}); "
                f"preprocess them with tools/preprocess_data.py --stages ...")


def save_plot(rows, events, val_points, path: Path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no loss plot")
        return
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot([r["tokens"] / 1e6 for r in rows], [r["train_bpb"] for r in rows], lw=0.8, label="train (batch)")
    ax.plot([t / 1e6 for t, _ in val_points], [v for _, v in val_points], "o-", label="validation")
    for tokens, label in events:
        ax.axvline(tokens / 1e6, color="grey", ls="--", lw=0.8)
        ax.annotate(label, (tokens / 1e6, ax.get_ylim()[1]), rotation=90, va="top", ha="right", fontsize=8)
    ax.set_xlabel("training tokens (millions)")
    ax.set_ylabel("bits per byte")
    ax.set_title("megababel progressive training (growth events dashed)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    p, args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rank, world = init_distributed()
    try:
        check_tensor_parallel([], args.tp, world)
        # ranks of one TP group (consecutive) share a data-parallel rank: same batches, one shard of the model each
        dp_rank, dp_world = rank // args.tp, world // args.tp
        tokens_per_step = args.micro_batch_size * dp_world * args.seq_len
        schedule = load_schedule(args.schedule, tokens_per_step, {"steps": args.steps} if args.steps else None)
        check_tensor_parallel([schedule.model] + [s.config for s in schedule.growths], args.tp, world)
        if args.seq_len > schedule.model.max_position_embeddings:
            p.error(f"--seq-len {args.seq_len} exceeds max_position_embeddings {schedule.model.max_position_embeddings}")
        ds_config = load_ds_config(args.stage, args.micro_batch_size, 1, dp_world, args.bf16, args.offload_optimizer,
                                   args.gradient_clipping, args.ds_config)
    except (ConfigError, ValueError) as e:
        p.error(str(e))
    tp = TensorParallel(args.tp) if args.tp > 1 else None
    if args.data is None:
        if rank == 0:
            build_embedded_dataset(progress=True)
        dist.barrier()
    data = args.data or build_embedded_dataset()
    check_vocabulary(p, data, schedule)
    try:
        stage = StageData(data, schedule.model.vocab_size, args, dp_rank, dp_world)
    except DataError as e:
        p.error(str(e))
    is_main = rank == 0
    say = tqdm.write if is_main else (lambda *a, **k: None)
    say(f"data {data}; schedule {args.schedule}: {len(schedule.growths)} growth stages, {schedule.steps} steps; "
        f"ZeRO-{args.stage}, {world} rank(s) = TP {args.tp} x DP {dp_world}, {'bf16' if args.bf16 else 'fp32'}")

    start, tokens, flops = 0, 0, 0
    if args.resume == Path("auto"):
        latest = args.out / "checkpoints"
        args.resume = latest if (latest / "latest").is_file() else None
    stop = StopRequest()
    if args.resume is not None:
        try:
            saved = load_checkpoint(args.resume)
        except CheckpointError as e:
            p.error(str(e))
        expected = schedule.growths[saved["generation"] - 1].config if saved["generation"] else schedule.model
        imported = "imported_from" in saved      # tools/convert_from_hf.py: weights only, the run starts at step 0
        if imported and saved["config"] != expected:
            a, b = saved["config"].to_dict(), expected.to_dict()
            differ = ", ".join(f"{k}: {a[k]} imported vs {b.get(k)} in the schedule" for k in a if a[k] != b.get(k))
            p.error(f"--resume {saved['path']}: the imported model differs from --schedule {args.schedule}'s model "
                    f"({differ}): set these in the schedule's `model`")
        if imported:
            saved.update(seq_len=args.seq_len, global_batch=args.micro_batch_size * dp_world, schedule=args.schedule)
        if saved["config"] != expected or saved["seq_len"] != args.seq_len:
            p.error(f"--resume {saved['path']}: the checkpoint's model / sequence length do not match --schedule "
                    f"{args.schedule} and --seq-len {args.seq_len} (saved with --schedule {saved['schedule']}, "
                    f"--seq-len {saved['seq_len']})")
        if saved["global_batch"] != args.micro_batch_size * dp_world:
            p.error(f"--resume: the checkpoint was trained with a global batch of {saved['global_batch']} sequences; "
                    f"use --micro-batch-size {saved['global_batch'] // dp_world} with {dp_world} data-parallel "
                    f"rank(s)")
        engine = GrowingEngine(saved["config"], ds_config, schedule, seed=args.seed, layout=saved["layout"],
                               values=saved["values"], generation=saved["generation"], groups=saved["groups"],
                               moments=saved["moments"], steps=saved["steps"], counters=saved["counters"], tp=tp)
        stage = StageData(data, saved["vocab"], args, dp_rank, dp_world)
        if not imported:
            stage.loader.load_state_dict(saved["loader"])
        start, tokens, flops = saved["step"], saved["tokens"], saved["flops"]
        history = saved.get("history") or []
        say(f"resumed from {saved['path']} at step {start} (saved by {saved['world_size']} rank(s), "
            f"TP {saved.get('tensor_parallel', 1)})")
        del saved
    else:
        engine = GrowingEngine(schedule.model, ds_config, schedule, seed=args.seed, tp=tp)
    parameters = count_parameters(engine.model).total      # changes only at growth: not recounted every step
    pending = list(schedule.growths[engine.model.generation:])
    rows, events, growth_log = [], [], []
    if not start:
        history = [dict(generation=0, step=0, tokens=0, config=engine.model.config.to_dict(), parameters=parameters,
                        loss_before=None, loss_after=None)]
    last_val_loss = engine.evaluate(stage.val_batches)
    val_points = [(tokens, stage.bits_per_byte(last_val_loss))]
    if is_main:
        args.out.mkdir(parents=True, exist_ok=True)
        log_path = args.out / "log.csv"
        kept = []      # resuming into the same run: keep the rows before the checkpoint, drop the ones after it
        if start and log_path.is_file():
            kept = [row for row in csv.DictReader(open(log_path)) if int(row["step"]) < start]
        log_file = open(log_path, "w", newline="")
        log = csv.DictWriter(log_file, ["step", "tokens", "flops", "loss", "train_bpb", "generation", "vocab",
                                        "parameters", "tokens_per_s"])
        log.writeheader()
        log.writerows(kept)
        from torch.utils.tensorboard import SummaryWriter
        board = SummaryWriter(str(args.out / "tensorboard"), purge_step=start)
    if is_main:
        (args.out / "preempted").unlink(missing_ok=True)
    preempted = False
    bar = tqdm(range(start, schedule.steps), desc="training", unit="step", dynamic_ncols=True, mininterval=1.0,
               disable=not is_main, initial=start, total=schedule.steps)
    t_last = time.perf_counter()
    def save(next_step: int):
        if is_main:
            log_file.flush()
        save_checkpoint(args.out / "checkpoints", engine, dict(
            step=next_step, tokens=tokens, flops=flops, vocab=stage.size, loader=stage.loader.state_dict(),
            schedule=str(args.schedule), seq_len=args.seq_len, global_batch=args.micro_batch_size * dp_world,
            data=str(data), history=history, validation_loss=last_val_loss,
            validation_bpb=stage.bits_per_byte(last_val_loss)),
            files={"tokenizer.model": data / "tokenizer.model", "ranking.json": data / "ranking.json"})

    for step in bar:
        while pending and pending[0].at_step == step:
            growth = pending.pop(0)
            t0 = time.perf_counter()
            before = engine.evaluate(stage.val_batches)
            generation = engine.grow(growth.event, step, growth.lr, growth.warmup_steps,
                                     reset_optimizer=growth.optimizer_state == "reset")
            after = engine.evaluate(stage.val_batches)
            seconds = time.perf_counter() - t0
            config = engine.model.config
            if config.vocab_size != stage.size:
                stage = StageData(data, config.vocab_size, args, dp_rank, dp_world, previous=stage)
            total = parameters = count_parameters(engine.model).total
            say(f"step {step}: growth -> generation {generation}: hidden {config.hidden_size}, ffn "
                f"{config.intermediate_size}, layers {config.num_hidden_layers}, vocabulary {config.vocab_size}, "
                f"{total:,} parameters ({seconds:.1f} s); validation loss on the previous stage's tokens "
                f"{before:.5f} -> {after:.5f}")
            events.append((tokens, f"gen {generation}: {total / 1e6:.2f}M, V={config.vocab_size}"))
            if is_main:
                board.add_text("growth", f"step {step}: generation {generation}, {config}", step)
            history.append(dict(generation=generation, step=step, tokens=tokens, config=config.to_dict(),
                                parameters=total, loss_before=before, loss_after=after))
            growth_log.append(dict(step=step, generation=generation, loss_before=before, loss_after=after,
                                   seconds=seconds, vocab_changed=growth.event.vocab_size is not None))
            if args.save_after_growth:
                save(step)
        x, y = stage.loader.next_batch()
        loss = engine.train_step(x, y, step)
        tokens += tokens_per_step
        flops += flops_per_token(engine.model.config, args.seq_len) * tokens_per_step
        now = time.perf_counter()
        row = dict(step=step, tokens=tokens, flops=flops, loss=round(loss, 6),
                   train_bpb=round(stage.bits_per_byte(loss), 5), generation=engine.model.generation,
                   vocab=stage.size, parameters=parameters,
                   tokens_per_s=round(tokens_per_step / (now - t_last)))
        t_last = now
        rows.append(row)
        if is_main:
            log.writerow(row)
            for key in ("loss", "train_bpb", "parameters", "tokens_per_s", "generation", "vocab"):
                board.add_scalar(f"train/{key}", row[key], step)
            board.add_scalar("train/lr_newest_generation", engine.engine.optimizer.param_groups[-1]["lr"], step)
            bar.set_postfix(loss=f"{loss:.3f}", tok_s=row["tokens_per_s"], gen=row["generation"],
                            params=f"{row['parameters'] / 1e6:.2f}M", refresh=False)
        if (step + 1) % args.eval_every == 0 or step + 1 == schedule.steps:
            last_val_loss = engine.evaluate(stage.val_batches)
            val_points.append((tokens, stage.bits_per_byte(last_val_loss)))
            if is_main:
                board.add_scalar("validation/bits_per_byte", val_points[-1][1], step)
        saved_now = args.save_every and ((step + 1) % args.save_every == 0 or step + 1 == schedule.steps)
        if saved_now:
            save(step + 1)
        if step + 1 < schedule.steps and stop.agreed():
            if not saved_now:
                save(step + 1)
            if is_main:
                (args.out / "preempted").write_text(f"{step + 1}\n")
            say(f"signal {stop.signal_name}: checkpoint saved at step {step + 1}; stopping (resume with "
                f"--resume auto, or requeue the Slurm job)")
            preempted = True
            break
    stop.close()
    final = val_points[-1][1]
    summary = (f"final validation {final:.3f} bits/byte after {tokens:,} tokens, {flops:.3g} training FLOPs; model "
               f"{parameters:,} parameters in {engine.model.generation + 1} generations, "
               f"vocabulary {engine.model.config.vocab_size}")
    if is_main:
        log_file.close()
        board.close()
        save_plot(rows, events, val_points, args.out / "loss.png")
        (args.out / "summary.txt").write_text(summary + "\n")
        print(summary)
        print(f"logs: {args.out / 'log.csv'}, plot: {args.out / 'loss.png'}")
    return dict(preempted=preempted, final_validation_bpb=final, initial_validation_bpb=val_points[0][1],
                generation=engine.model.generation, growth=growth_log, vocab_size=engine.model.config.vocab_size,
                parameters=parameters, losses=[r["loss"] for r in rows])


if __name__ == "__main__":
    main()
    if dist.is_initialized():     # every rank leaves together: no rank tears down while another still talks
        dist.barrier()
        dist.destroy_process_group()
