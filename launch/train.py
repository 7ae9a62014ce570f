"""Progressive training demo: a small Llama that grows twice while it trains, on CPU, in one process.

    python launch/train.py                       # tiny preset on the embedded corpus, ~1-2 minutes on 2 cores
    python launch/train.py --bf16 --steps 900    # bf16 autocast, longer
    python launch/train.py --out runs/demo2      # logs, loss plot and summary go to runs/demo2

The embedded corpus is the docstrings of Python's standard library (no download), encoded as UTF-8 bytes. The
schedule grows width + FFN at 1/3 of the run and depth at 2/3. Each generation of parameters gets its own AdamW
param groups and learning-rate schedule (warm-up from the step it was born, cosine decay to the end); older
generations keep the schedule they had. Adam state of old parameters carries over (parameters keep their identity).

(DeepSpeed ZeRO, multi-rank runs, vocabulary stages and checkpoints arrive with the training issue; this script is the
single-process form that the DeepSpeed launcher will wrap.)
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
from megababel.data.embedded import BYTE_VOCAB, embedded_corpus, encode_bytes, random_windows  # noqa: E402

TINY_START = LlamaConfig(hidden_size=64, head_dim=16, num_hidden_layers=2, vocab_size=BYTE_VOCAB,
                         multiple_of=32, max_position_embeddings=1024)
# (fraction of the run at which it happens, event)
TINY_SCHEDULE = [(1 / 3, GrowthEvent(hidden_size=128, intermediate_size=352)),
                 (2 / 3, GrowthEvent(num_hidden_layers=4, layer_positions="interleave"))]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=450, help="optimizer steps in total (default 450)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate of every generation")
    p.add_argument("--warmup", type=int, default=30, help="warm-up steps of each generation")
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (fp32 master weights)")
    p.add_argument("--eval-every", type=int, default=50, help="validation every N steps (default 50)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--out", type=Path, default=Path("runs/demo"))
    args = p.parse_args(argv)
    for name in ("steps", "batch_size", "seq_len", "warmup", "eval_every"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.seq_len > TINY_START.max_position_embeddings:
        p.error(f"--seq-len {args.seq_len} exceeds max_position_embeddings {TINY_START.max_position_embeddings}")
    if not args.lr > 0:
        p.error(f"--lr must be positive, got {args.lr}")
    return args


def lr_at(step: int, born: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up from the generation's birth step, then cosine decay to 10% at the end of training."""
    age = step - born
    if age < warmup:
        return peak * (age + 1) / warmup
    progress = min(1.0, (step - born - warmup) / max(1, total - born - warmup))
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def generation_groups(model, generation: int, step: int, weight_decay: float) -> list[dict]:
    """Two param groups (decayed matrices, undecayed norm gains) for the parameters born in `generation`."""
    params = [p for p in model.parameters() if p.block_meta.generation == generation]
    return [{"params": group, "weight_decay": decay, "generation": generation, "born": step}
            for decay, group in ((weight_decay, [p for p in params if p.dim() >= 2]),
                                 (0.0, [p for p in params if p.dim() < 2])) if group]


@torch.no_grad()
def evaluate(model, batches, autocast) -> float:
    with autocast():
        return sum(model(x, y)[1].item() for x, y in batches) / len(batches)


def save_plot(rows, events, val_points, path: Path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no loss plot")
        return
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot([r["tokens"] / 1e6 for r in rows], [r["loss"] for r in rows], lw=0.8, label="train loss")
    ax.plot([t / 1e6 for t, _ in val_points], [v for _, v in val_points], "o-", label="validation loss")
    for tokens, label in events:
        ax.axvline(tokens / 1e6, color="grey", ls="--", lw=0.8)
        ax.annotate(label, (tokens / 1e6, ax.get_ylim()[1]), rotation=90, va="top", ha="right", fontsize=8)
    ax.set_xlabel("training tokens (millions)")
    ax.set_ylabel("cross-entropy (nats per byte)")
    ax.set_title("megababel progressive training (growth events dashed)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)

    docs = embedded_corpus()
    n_val = max(1, len(docs) // 20)
    train, val = encode_bytes(docs[:-n_val]), encode_bytes(docs[-n_val:])
    data_rng, val_rng = torch.Generator().manual_seed(args.seed), torch.Generator().manual_seed(12345)
    val_batches = [random_windows(val, args.batch_size, args.seq_len, val_rng) for _ in range(8)]
    print(f"embedded corpus: {len(docs)} docstrings, {len(train):,} train / {len(val):,} validation bytes")

    model = Llama(TINY_START, seed=args.seed)
    optimizer = torch.optim.AdamW(generation_groups(model, 0, 0, args.weight_decay), lr=args.lr,
                                  betas=(0.9, 0.95), eps=1e-8)
    schedule = sorted((round(frac * args.steps), event) for frac, event in TINY_SCHEDULE)
    def autocast():
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16)

    tokens_per_step = args.batch_size * args.seq_len
    rows, events, growth_losses, val_points = [], [], [], [(0, evaluate(model, val_batches, autocast))]
    tokens = flops = 0
    log_file = open(args.out / "log.csv", "w", newline="")
    log = csv.DictWriter(log_file, ["step", "tokens", "flops", "loss", "generation", "parameters", "tokens_per_s"])
    log.writeheader()
    bar = tqdm(range(args.steps), desc="training", unit="step", dynamic_ncols=True, mininterval=1.0)
    t_last = time.perf_counter()
    for step in bar:
        while schedule and schedule[0][0] == step:
            _, event = schedule.pop(0)
            before = evaluate(model, val_batches[:2], autocast)
            generation = grow(model, event, seed=args.seed)
            for group in generation_groups(model, generation, step, args.weight_decay):
                optimizer.add_param_group(group)
            after = evaluate(model, val_batches[:2], autocast)
            counts = count_parameters(model)
            tqdm.write(f"step {step}: growth -> generation {generation}: hidden {model.config.hidden_size}, "
                       f"ffn {model.config.intermediate_size}, layers {model.config.num_hidden_layers}, "
                       f"{counts.total:,} parameters; validation loss {before:.5f} -> {after:.5f}")
            events.append((tokens, f"gen {generation}: {counts.total / 1e6:.2f}M"))
            growth_losses.append((before, after))
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, group["born"], args.steps, args.lr, args.warmup)
        x, y = random_windows(train, args.batch_size, args.seq_len, data_rng)
        with autocast():
            _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

        tokens += tokens_per_step
        flops += flops_per_token(model.config, args.seq_len) * tokens_per_step
        now = time.perf_counter()
        row = dict(step=step, tokens=tokens, flops=flops, loss=round(loss.item(), 5), generation=model.generation,
                   parameters=count_parameters(model).total, tokens_per_s=round(tokens_per_step / (now - t_last)))
        t_last = now
        rows.append(row)
        log.writerow(row)
        bar.set_postfix(loss=f"{row['loss']:.3f}", tok_s=row["tokens_per_s"], gen=row["generation"],
                        params=f"{row['parameters'] / 1e6:.2f}M", refresh=False)
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            val_points.append((tokens, evaluate(model, val_batches, autocast)))
    log_file.close()

    final = val_points[-1][1]
    save_plot(rows, events, val_points, args.out / "loss.png")
    summary = (f"final validation loss {final:.4f} nats/byte ({final / math.log(2):.3f} bits/byte) after "
               f"{tokens:,} tokens, {flops:.3g} training FLOPs; model {count_parameters(model).total:,} parameters "
               f"in {model.generation + 1} generations")
    (args.out / "summary.txt").write_text(summary + "\n")
    print(summary)
    print(f"logs: {args.out / 'log.csv'}, plot: {args.out / 'loss.png'}")
    return dict(final_validation_loss=final, initial_validation_loss=val_points[0][1],
                generation=model.generation, growth_losses=growth_losses, parameters=count_parameters(model).total)


if __name__ == "__main__":
    main()
