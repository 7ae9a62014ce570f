"""RunLogger: rank 0's view of a run: progress bar, OUT/log.csv, TensorBoard, growth messages, OUT/loss.png and
OUT/summary.txt."""
from __future__ import annotations

import csv
from pathlib import Path

from tqdm import tqdm

from megababel.engine.distributed import slow_bf16_here
from megababel.train.callbacks import Callback


class RunLogger(Callback):
    """Rank 0's view of the run: progress bar, log.csv, TensorBoard, growth messages, loss plot, summary."""

    def __init__(self, out: Path, is_main: bool):
        self.out, self.is_main = out, is_main
        self.rows, self.events, self.val_points = [], [], []
        self.compile_reported: set[int] = set()     # generations whose first step's compile time was shown

    def say(self, message: str):
        if self.is_main:
            tqdm.write(message)

    def on_fit_start(self, trainer):
        run = trainer.run
        self.say(f"data {trainer.data_dir}; schedule {run.schedule}: {len(trainer.schedule.growths)} growths, "
                 f"{trainer.schedule.end_step} steps; ZeRO-{run.zero_stage}, {trainer.world} rank(s) = TP {run.tp} x "
                 f"DP {trainer.dp_world}, {'bf16' if run.bf16 else 'fp32'}"
                 f"{', activation checkpointing' if run.activation_checkpointing else ''}"
                 f"{', torch.compile' if run.compile else ''}")
        plans = [f"{sequences * seq_len:,} tokens ({sequences // accumulation // trainer.dp_world} x {accumulation} x "
                 f"{trainer.dp_world} x {seq_len})" for (sequences, accumulation), seq_len in
                 zip(trainer.batches, trainer.seq_lens)]
        self.say("global batch per generation (micro batch x accumulation x DP x sequence length): " +
                 ", ".join(plans))
        if trainer.plan is not None:
            self.say(trainer.plan.explain())
        if run.bf16 and slow_bf16_here():
            self.say("warning: --bf16 on a CPU without native bf16 (no AVX512-BF16 or AMX): PyTorch emulates its "
                     "matmuls, about 50x slower than fp32 here; train without --bf16 on this machine")
        schedule = trainer.schedule
        if schedule.warmup_steps >= schedule.steps:     # e.g. --steps cut a preset short: fine for a smoke run
            self.say(f"warning: training.warmup_steps {schedule.warmup_steps} >= {schedule.steps} steps: the LR "
                     f"never reaches its peak {schedule.lr:g}; lower warmup_steps in the schedule for a real run")
        lengths = set(trainer.seq_lens) | {c.seq_len for c in schedule.curriculum if c.seq_len is not None}
        if run.eval_every and min(lengths) < run.seq_len:
            self.say(f"note: validation runs at --seq-len {run.seq_len}, and some generations train shorter "
                     f"({', '.join(str(n) for n in sorted(lengths) if n < run.seq_len)}): there it scores positions "
                     f"the model has not trained, so it lags until the sequence length catches up")
        if trainer.resumed_from is not None:
            self.say(f"resumed from {trainer.resumed_from} at step {trainer.step}")
        if schedule.anneal:
            start, steps = schedule.anneal
            self.say(f"decay branch: {steps} steps from step {start}, no more growth, every LR falling linearly to "
                     f"min_lr_ratio x its peak")
        if not self.is_main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "preempted").unlink(missing_ok=True)
        log_path, start = self.out / "log.csv", trainer.step
        kept = []      # resuming into the same run: keep the rows before the checkpoint, drop the ones after it
        if start and log_path.is_file():
            kept = [row for row in csv.DictReader(open(log_path)) if int(row["step"]) < start]
        self.log_file = open(log_path, "w", newline="")
        self.log = csv.DictWriter(self.log_file, ["step", "tokens", "flops", "loss", "train_bpb", "generation",
                                                  "vocab", "parameters", "tokens_per_s", "lr"])
        self.log.writeheader()
        self.log.writerows(kept)
        from torch.utils.tensorboard import SummaryWriter
        self.board = SummaryWriter(str(self.out / "tensorboard"), purge_step=start)
        self.bar = tqdm(total=trainer.schedule.end_step, initial=start, desc="training", unit="step",
                        dynamic_ncols=True, mininterval=1.0)

    def on_step_end(self, trainer, row):
        row = dict(row, loss=round(row["loss"], 6), train_bpb=round(row["train_bpb"], 5),
                   tokens_per_s=round(row["tokens_per_s"]), lr=f"{row['lr']:.4g}")
        self.rows.append(row)
        seconds = trainer.history[-1].get("compile_seconds")
        if seconds is not None and row["generation"] not in self.compile_reported:
            self.compile_reported.add(row["generation"])
            self.say(f"generation {row['generation']}: {seconds:.1f} s in torch.compile by its first step (each "
                     f"new shape, and validation, compiles once)")
        if not self.is_main:
            return
        self.log.writerow(row)
        self.log_file.flush()    # a checkpoint may follow this step: a kill right after it must not lose the row
        for key in ("loss", "train_bpb", "parameters", "tokens_per_s", "generation", "vocab"):
            self.board.add_scalar(f"train/{key}", row[key], row["step"])
        for info, lr in trainer.engine.param_group_lrs():
            if info.decay:
                self.board.add_scalar(f"lr/generation_{info.generation}", lr, row["step"])
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{row['loss']:.3f}", tok_s=row["tokens_per_s"], gen=row["generation"],
                             params=f"{row['parameters'] / 1e6:.2f}M", refresh=False)

    def on_validation(self, trainer, loss, bits_per_byte):
        self.val_points.append((trainer.tokens, bits_per_byte))
        if self.is_main:
            self.board.add_scalar("validation/bits_per_byte", bits_per_byte, trainer.step)

    def on_growth(self, trainer, record):
        config = record["config"]
        change = "" if record["loss_before"] is None else (
            f"; validation loss on the previous vocabulary stage's tokens {record['loss_before']:.5f} -> "
            f"{record['loss_after']:.5f}")
        self.say(f"step {record['step']}: growth -> generation {record['generation']}: hidden {config.hidden_size}, "
                 f"ffn {config.intermediate_size}, layers {config.num_hidden_layers}, vocabulary {config.vocab_size}, "
                 f"{record['parameters']:,} parameters ({record['seconds']:.1f} s){change}")
        self.events.append((trainer.tokens, f"gen {record['generation']}: {record['parameters'] / 1e6:.2f}M, "
                                            f"V={config.vocab_size}"))
        if self.is_main:
            self.board.add_text("growth", f"step {record['step']}: generation {record['generation']}, {config}",
                                record["step"])

    def on_curriculum_change(self, trainer, change):
        what = [] if change.data is None else [
            "data " + ", ".join(f"{key} {weight:g}" for key, weight in change.data.items() if weight > 0)]
        what += [] if change.seq_len is None else [f"sequence length {change.seq_len}"]
        self.say(f"step {change.at_step}: curriculum -> {'; '.join(what)}")
        self.events.append((trainer.tokens, "; ".join(what)))

    def abort(self):
        """Close the progress bar and the logs of a run that stops with an error (the bar would print over it)."""
        if self.is_main and hasattr(self, "bar"):
            self.bar.close()
            self.log_file.close()
            self.board.close()

    def on_save(self, trainer, path):
        if self.is_main:
            self.log_file.flush()

    def on_fit_end(self, trainer, result):
        if result["preempted"]:
            if self.is_main:
                (self.out / "preempted").write_text(f"{trainer.step}\n")
            self.say(f"signal {trainer.stop_signal}: checkpoint saved at step {trainer.step}; stopping (resume "
                     f"with --resume auto, or requeue the Slurm job)")
        final = self.val_points[-1][1] if self.val_points else float("nan")
        summary = (f"final validation {final:.3f} bits/byte after {trainer.tokens:,} tokens, {trainer.flops:.3g} "
                   f"training FLOPs; model {trainer.parameters:,} parameters in {trainer.engine.model.generation + 1} "
                   f"generations, vocabulary {trainer.engine.model.config.vocab_size}")
        compiled = [(entry["generation"], entry["compile_seconds"]) for entry in trainer.history
                    if "compile_seconds" in entry]
        if compiled:
            summary += "\ntorch.compile seconds per generation: " + ", ".join(
                f"{generation}: {seconds:.1f}" for generation, seconds in compiled)
        if not self.is_main:
            return
        self.bar.close()
        self.log_file.close()
        self.board.close()
        save_plot(self.rows, self.events, self.val_points, self.out / "loss.png")
        (self.out / "summary.txt").write_text(summary + "\n")
        print(summary)
        print(f"logs: {self.out / 'log.csv'}, plot: {self.out / 'loss.png'}")


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
