"""Progressive training: a small Llama that grows in width + FFN, depth and vocabulary while it trains (CPU, 1 process).

    python launch/train.py                        # embedded corpus (built and cached on first run), ~1 minute
    python launch/train.py --bf16 --steps 900     # bf16 autocast, longer
    python launch/train.py --data data/tinystories --vocab-stages 500 2000 8000   # a preprocessed corpus
    python launch/train.py --out runs/demo2       # logs, loss plot and summary go to runs/demo2

Data: `--data` is a directory made by tools/preprocess_data.py (vocab_<V>/ per vocabulary stage). Without it, the
embedded corpus (Python standard-library docstrings, tokenizer trained on them) is built into ~/.cache/megababel.

Schedule (tiny preset): growth at 1/3 of the run (hidden 64 -> 128, FFN 192 -> 352, next vocabulary stage) and at
2/3 (2 -> 4 layers, interleaved, last vocabulary stage). Each generation of parameters gets its own AdamW param
groups and learning-rate schedule (warm-up from its birth step, cosine decay to the end); older generations keep
the schedule they had, and their Adam state (parameters keep their identity). Validation reports bits per byte,
which stays comparable when the vocabulary changes.

(DeepSpeed ZeRO, multi-rank runs and checkpoints arrive with the training issue; this is the single-process form.)
"""
from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from megababel import GrowthEvent, Llama, LlamaConfig, grow  # noqa: E402
from megababel.counters import count_parameters, flops_per_token  # noqa: E402
from megababel.data.embedded import build_embedded_dataset  # noqa: E402
from megababel.data.loader import PackedLoader  # noqa: E402
from megababel.data.readers import DataError  # noqa: E402
from megababel.data.shards import TokenDataset  # noqa: E402

TINY_START = dict(hidden_size=64, head_dim=16, num_hidden_layers=2, multiple_of=32, max_position_embeddings=1024)
# (fraction of the run, event); vocab_size comes from the vocabulary stages
TINY_SCHEDULE = [(1 / 3, dict(hidden_size=128, intermediate_size=352)),
                 (2 / 3, dict(num_hidden_layers=4, layer_positions="interleave"))]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=None, help="dataset directory from tools/preprocess_data.py "
                                                          "(default: the embedded corpus)")
    p.add_argument("--vocab-stages", type=int, nargs="+", default=None,
                   help="vocabulary stage at the start and after each growth (default: the dataset's stages)")
    p.add_argument("--steps", type=int, default=450, help="optimizer steps in total (default 450)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate of every generation")
    p.add_argument("--warmup", type=int, default=30, help="warm-up steps of each generation")
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--eval-every", type=int, default=50, help="validation every N steps (default 50)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (fp32 master weights)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--out", type=Path, default=Path("runs/demo"))
    args = p.parse_args(argv)
    for name in ("steps", "batch_size", "seq_len", "warmup", "eval_every"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.seq_len > TINY_START["max_position_embeddings"]:
        p.error(f"--seq-len {args.seq_len} exceeds max_position_embeddings {TINY_START['max_position_embeddings']}")
    if not args.lr > 0:
        p.error(f"--lr must be positive, got {args.lr}")
    if args.data is not None and not args.data.is_dir():
        p.error(f"--data {args.data}: no such directory (make one with tools/preprocess_data.py)")
    return p, args


def vocabulary_plan(p, data: Path, requested: list[int] | None) -> list[int]:
    """One vocabulary stage per phase of the schedule (start + each growth), checked against the dataset."""
    available = sorted(int(d.name.split("_")[1]) for d in data.glob("vocab_*") if (d / "index.json").is_file())
    if not available:
        p.error(f"--data {data}: no vocab_<V>/index.json inside (make it with tools/preprocess_data.py)")
    phases = len(TINY_SCHEDULE) + 1
    if requested is None:
        requested = [available[min(i * (len(available) - 1) // max(1, phases - 1), len(available) - 1)]
                     for i in range(phases)]
    if len(requested) != phases:
        p.error(f"--vocab-stages needs {phases} sizes (start + {phases - 1} growth events), got {len(requested)}")
    for size in requested:
        if size not in available:
            p.error(f"--vocab-stages: stage {size} is not in {data} (available: {available})")
    if any(b < a for a, b in zip(requested, requested[1:])):
        p.error(f"--vocab-stages {requested}: the vocabulary may only grow")
    return requested


def lr_at(step: int, born: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up from the generation's birth step, then cosine decay to 10% at the end of training."""
    age = step - born
    if age < warmup:
        return peak * (age + 1) / warmup
    progress = min(1.0, (age - warmup) / max(1, total - born - warmup))
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def generation_groups(model, generation: int, step: int, weight_decay: float) -> list[dict]:
    """Two param groups (decayed matrices, undecayed norm gains) for the parameters born in `generation`."""
    params = [p for p in model.parameters() if p.block_meta.generation == generation]
    return [{"params": group, "weight_decay": decay, "generation": generation, "born": step}
            for decay, group in ((weight_decay, [p for p in params if p.dim() >= 2]),
                                 (0.0, [p for p in params if p.dim() < 2])) if group]


class StageData:
    """Training loader and fixed validation batches of one vocabulary stage."""

    def __init__(self, data: Path, size: int, args, previous: "StageData | None" = None):
        self.size = size
        train, valid = TokenDataset(data / f"vocab_{size}", "train"), TokenDataset(data / f"vocab_{size}", "valid")
        self.loader = PackedLoader(train, args.seq_len, args.batch_size, seed=args.seed)
        if previous is not None:   # same documents, same order: continue at the same fraction of the epoch
            old = previous.loader
            self.loader.epoch = old.epoch
            self.loader.consumed = old.consumed * self.loader.sequences_per_epoch // old.sequences_per_epoch
        val_loader = PackedLoader(valid, args.seq_len, args.batch_size, seed=12345)
        self.val_batches = [val_loader.next_batch() for _ in range(min(8, val_loader.sequences_per_epoch //
                                                                       args.batch_size))]
        # every target in the packed stream is a document token, an EOS or a BOS
        self.tokens_per_byte = (valid.n_tokens + 2 * valid.n_docs) / max(1, valid.n_bytes)


@torch.no_grad()
def evaluate(model, stage: StageData, autocast) -> tuple[float, float]:
    """(loss in nats per token, bits per byte) on the stage's validation batches."""
    with autocast():
        loss = sum(model(x, y)[1].item() for x, y in stage.val_batches) / len(stage.val_batches)
    return loss, loss * stage.tokens_per_byte / math.log(2)


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
    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    data = args.data or build_embedded_dataset(progress=True)
    vocab = vocabulary_plan(p, data, args.vocab_stages)
    try:
        stage = StageData(data, vocab[0], args)
    except DataError as e:
        p.error(str(e))
    print(f"data: {data} (vocabulary stages {vocab}), {stage.loader.dataset.n_tokens:,} training tokens at stage "
          f"{vocab[0]}")

    model = Llama(LlamaConfig(vocab_size=vocab[0], **TINY_START), seed=args.seed)
    optimizer = torch.optim.AdamW(generation_groups(model, 0, 0, args.weight_decay), lr=args.lr,
                                  betas=(0.9, 0.95), eps=1e-8)
    schedule = [(round(frac * args.steps), GrowthEvent(**event, vocab_size=size if size > prev else None))
                for (frac, event), prev, size in zip(TINY_SCHEDULE, vocab, vocab[1:])]

    def autocast():
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16)

    tokens_per_step = args.batch_size * args.seq_len
    rows, events, growth_log = [], [], []
    val_points = [(0, evaluate(model, stage, autocast)[1])]
    tokens = flops = 0
    log_file = open(args.out / "log.csv", "w", newline="")
    log = csv.DictWriter(log_file, ["step", "tokens", "flops", "loss", "train_bpb", "lr", "generation", "vocab",
                                    "parameters", "tokens_per_s"])
    log.writeheader()
    bar = tqdm(range(args.steps), desc="training", unit="step", dynamic_ncols=True, mininterval=1.0)
    t_last = time.perf_counter()
    for step in bar:
        while schedule and schedule[0][0] == step:
            _, event = schedule.pop(0)
            old_stage = stage
            before = evaluate(model, old_stage, autocast)[0]
            generation = grow(model, event, seed=args.seed)
            after = evaluate(model, old_stage, autocast)[0]
            for group in generation_groups(model, generation, step, args.weight_decay):
                optimizer.add_param_group(group)
            if model.config.vocab_size != stage.size:
                stage = StageData(data, model.config.vocab_size, args, previous=stage)
            counts = count_parameters(model)
            tqdm.write(f"step {step}: growth -> generation {generation}: hidden {model.config.hidden_size}, "
                       f"ffn {model.config.intermediate_size}, layers {model.config.num_hidden_layers}, vocabulary "
                       f"{model.config.vocab_size}, {counts.total:,} parameters; validation loss on the previous "
                       f"stage's tokens {before:.5f} -> {after:.5f}")
            events.append((tokens, f"gen {generation}: {counts.total / 1e6:.2f}M, V={model.config.vocab_size}"))
            growth_log.append(dict(step=step, generation=generation, loss_before=before, loss_after=after,
                                   vocab_changed=event.vocab_size is not None))
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, group["born"], args.steps, args.lr, args.warmup)
        x, y = stage.loader.next_batch()
        with autocast():
            _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

        tokens += tokens_per_step
        flops += flops_per_token(model.config, args.seq_len) * tokens_per_step
        now = time.perf_counter()
        row = dict(step=step, tokens=tokens, flops=flops, loss=round(loss.item(), 5),
                   train_bpb=round(loss.item() * stage.tokens_per_byte / math.log(2), 5),
                   lr=round(optimizer.param_groups[0]["lr"], 7), generation=model.generation, vocab=stage.size,
                   parameters=count_parameters(model).total, tokens_per_s=round(tokens_per_step / (now - t_last)))
        t_last = now
        rows.append(row)
        log.writerow(row)
        bar.set_postfix(loss=f"{row['loss']:.3f}", tok_s=row["tokens_per_s"], gen=row["generation"],
                        params=f"{row['parameters'] / 1e6:.2f}M", refresh=False)
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            val_points.append((tokens, evaluate(model, stage, autocast)[1]))
    log_file.close()

    final = val_points[-1][1]
    save_plot(rows, events, val_points, args.out / "loss.png")
    summary = (f"final validation {final:.3f} bits/byte after {tokens:,} tokens, {flops:.3g} training FLOPs; model "
               f"{count_parameters(model).total:,} parameters in {model.generation + 1} generations, vocabulary "
               f"{model.config.vocab_size}")
    (args.out / "summary.txt").write_text(summary + "\n")
    print(summary)
    print(f"logs: {args.out / 'log.csv'}, plot: {args.out / 'loss.png'}")
    return dict(final_validation_bpb=final, initial_validation_bpb=val_points[0][1], generation=model.generation,
                growth=growth_log, vocab_size=model.config.vocab_size, parameters=count_parameters(model).total)


if __name__ == "__main__":
    main()
