"""Parameters and training FLOPs of a Llama config, for planning a growth schedule; and per-rank memory of a run.

    megababel-model-size --hidden-size 512 --num-hidden-layers 8              # the seed's ~60M start
    megababel-model-size --hidden-size 768 1024 2048 --num-hidden-layers 8 12 16 --vocab-size 8000 16000 32000
    megababel-model-size --schedule seed_2x --world 2 --zero-stage 3 --micro-batch-size 1 --seq-len 128 --bf16
    megababel-model-size --schedule seed_2x_tp --world 16 --tp 8 --zero-stage 3 --micro-batch-size 4 \\
        --seq-len 2048 --bf16

    python tools/model_size.py --hidden-size 512 --num-hidden-layers 8       # the same, from a checkout

Several values per flag describe successive generations (a missing value repeats the last one). Nothing is allocated.
With --schedule (a preset or a YAML/JSON file), it prints each generation's memory per rank: weights (with ZeRO's fp32
masters), gradients, Adam, their sum with the runtime (state: between steps), activations with and without
activation checkpointing, a step's workspace, the training peak, and the peak while growing into the generation
(megababel/plan/memory.py says what each counts).
"""
from __future__ import annotations

import argparse

from megababel.cli.arguments import check_divisible, entry_point, positive_int
from megababel.config import ConfigError, LlamaConfig
from megababel.model.counters import config_parameters, flops_per_token

GENERATION_FIELDS = ("hidden_size", "num_hidden_layers", "intermediate_size", "vocab_size", "num_key_value_heads")


def memory_table(args) -> list:
    from megababel.plan.memory import GIB, plan_memory
    from megababel.parallel import check_tensor_parallel
    from megababel.plan.presets import load_schedule
    schedule = load_schedule(args.schedule, args.micro_batch_size * args.seq_len)
    configs = [schedule.model] + [g.config for g in schedule.growths]
    check_tensor_parallel(configs, args.tp, args.world)
    rows = plan_memory(configs, args.world, args.tp, args.zero_stage, args.micro_batch_size, args.seq_len,
                       bf16=args.bf16, growth_spill=args.growth_spill)
    print(f"{args.schedule}: {args.world} ranks = TP {args.tp} x DP {args.world // args.tp}, ZeRO-{args.zero_stage}, "
          f"{'bf16' if args.bf16 else 'fp32'}, micro batch {args.micro_batch_size} x seq {args.seq_len}; GiB per rank "
          f"(runtime {rows[0].runtime / GIB:.2f} included in the totals)")
    print(f"{'gen':>5} {'params':>8} {'params/rank':>11} {'weights':>8} {'grads':>7} {'Adam':>7} {'state':>7} "
          f"{'activ.':>7} {'ckpt':>7} {'workspace':>9} {'training':>9} {'w/ ckpt':>8} {'growth peak':>11}")
    for generation, r in enumerate(rows):
        growth = "-" if r.growth_peak is None else f"{r.growth_peak / GIB:.2f}"
        print(f"{generation:>5} {config_parameters(r.config) / 1e6:>7.0f}M {r.parameters / 1e6:>10.0f}M "
              f"{r.weights / GIB:>8.2f} {r.gradients / GIB:>7.2f} {r.adam / GIB:>7.2f} {r.state / GIB:>7.2f} "
              f"{r.activations / GIB:>7.2f} {r.activations_checkpointed / GIB:>7.2f} {r.workspace / GIB:>9.2f} "
              f"{r.training / GIB:>9.2f} "
              f"{r.training_checkpointed / GIB:>8.2f} {growth:>11}")
    return rows


@entry_point
def main(argv=None) -> list:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--hidden-size", type=positive_int, nargs="+", default=[512])
    p.add_argument("--num-hidden-layers", type=positive_int, nargs="+", default=[8])
    p.add_argument("--intermediate-size", type=positive_int, nargs="+", default=[None])
    p.add_argument("--vocab-size", type=positive_int, nargs="+", default=[32000])
    p.add_argument("--num-key-value-heads", type=positive_int, nargs="+", default=[None])
    p.add_argument("--head-dim", type=positive_int, default=128)
    p.add_argument("--multiple-of", type=positive_int, default=256)
    p.add_argument("--seq-len", type=positive_int, default=2048)
    memory = p.add_argument_group("memory per rank (with --schedule)")
    memory.add_argument("--schedule", default=None, help="preset name or YAML/JSON schedule file")
    memory.add_argument("--world", type=positive_int, default=1, help="ranks (default 1)")
    memory.add_argument("--tp", type=positive_int, default=1, help="tensor-parallel degree (default 1)")
    memory.add_argument("--zero-stage", "--stage", dest="zero_stage", type=int, default=0, choices=(0, 1, 2, 3))
    memory.add_argument("--micro-batch-size", type=positive_int, default=1)
    memory.add_argument("--bf16", action="store_true")
    memory.add_argument("--growth-spill", action="store_true",
                        help="growths keep the old state pieces in a mapped file (launch/train.py --growth-spill-dir)")
    args = p.parse_args(argv)
    check_divisible(p, args.world, "--world", args.tp, "--tp")
    if args.schedule is not None:
        try:
            return memory_table(args)
        except ConfigError as e:
            p.error(str(e))
    n_generations = max(len(getattr(args, f)) for f in GENERATION_FIELDS)
    rows, previous = [], None
    print(f"{'gen':>5} {'hidden':>7} {'layers':>6} {'ffn':>6} {'heads':>5} {'vocab':>6} {'params':>14} "
          f"{'non-emb':>14} {'x prev':>6} {'train GFLOP/token':>18}")
    for generation in range(n_generations):
        values = {f: getattr(args, f)[min(generation, len(getattr(args, f)) - 1)] for f in GENERATION_FIELDS}
        try:
            config = LlamaConfig(head_dim=args.head_dim, multiple_of=args.multiple_of, **values)
        except ConfigError as e:
            p.error(f"generation {generation}: {e}")
        total = config_parameters(config)
        non_embedding = total - 2 * config.vocab_size * config.hidden_size
        flops = flops_per_token(config, args.seq_len)
        ratio = f"{total / previous:.2f}" if previous else "-"
        print(f"{generation:>5} {config.hidden_size:>7} {config.num_hidden_layers:>6} {config.intermediate_size:>6} "
              f"{config.num_attention_heads:>5} {config.vocab_size:>6} {total:>14,} {non_embedding:>14,} {ratio:>6} "
              f"{flops / 1e9:>18.3f}")
        rows.append(dict(config=config, parameters=total, flops_per_token=flops))
        previous = total
    return rows


if __name__ == "__main__":
    main()
