"""Plan a growth schedule: the final model and a budget in, the schedule the measurements say is best out.

    megababel-plan --final tinystories --tokens-per-parameter 1 --seq-len 256 --global-batch-tokens 2048
    megababel-plan --final seed --tokens 2e10 --seq-len 2048 --global-batch-tokens 1048576 --out seed.yaml
    megababel-plan --final seed --tokens-per-parameter 20 --global-batch-tokens 524288 --levers narrow   # TP 2
    megababel-plan --hidden-size 2048 --head-dim 128 --num-hidden-layers 24 --vocab-size 32000 \\
        --flops 1e21 --data data/sp --out plan.yaml
    deepspeed launch/train.py --schedule plan.yaml ...        # or plan at launch: --schedule auto --final ...

    python tools/plan_growth.py --final tinystories --tokens-per-parameter 1 --seq-len 256   # from a checkout

The rule (megababel/plan/planner.py) follows bench/README.md's saving-versus-budget table: the best measured plan at the
budget nearest in log(tokens per parameter), its LR scaled to the model's width; "do not grow" (a scratch schedule)
where growing did not pay there, unless --family. It prints what it chose and why, and what the FLOP saving is worth
in wall-clock on a measured device (--device).
The budget is scratch's: the tokens (or FLOPs) of training the final model from scratch; the planned run spends the
same FLOPs and sees more tokens. --global-batch-tokens must be what the run will use (steps are counted in it).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from megababel.cli.arguments import entry_point, positive_float, positive_int
from megababel.config import ConfigError, LlamaConfig
from megababel.model.counters import config_parameters
from megababel.plan.planner import data_vocab_stages, plan_growth
from megababel.plan.presets import final_model

MODEL_FIELDS = ("hidden_size", "head_dim", "num_hidden_layers", "intermediate_size", "num_key_value_heads",
                "vocab_size", "multiple_of", "max_position_embeddings")


@entry_point
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    model = p.add_argument_group("the final model: --final, or its fields (Hugging Face names)")
    model.add_argument("--final", default=None, help="a preset or schedule file: its final model")
    for name in MODEL_FIELDS:
        model.add_argument("--" + name.replace("_", "-"), type=positive_int, default=None)
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--tokens", type=positive_float, help="scratch's training tokens")
    budget.add_argument("--tokens-per-parameter", type=positive_float,
                        help="tokens per parameter (all, embeddings included)")
    budget.add_argument("--flops", type=positive_float, help="training FLOPs")
    p.add_argument("--seq-len", type=positive_int, default=2048)
    p.add_argument("--global-batch-tokens", type=positive_int, default=None, help="tokens per optimizer step (default: "
                                                                          "8 sequences of --seq-len)")
    p.add_argument("--lr", type=positive_float, default=None, help="peak LR (default: the rule's)")
    p.add_argument("--family", action="store_true", help="plan the growth even where it does not pay: the smaller "
                   "models are wanted too (train with --keep-generations, export with megababel-export-family)")
    p.add_argument("--levers", nargs="+", default=[], metavar="LEVER",
                   help="levers added to the measured plan (megababel/plan/planner.py), e.g. narrow: every generation "
                        "has the final's heads, the first at half head_dim, so that tensor parallelism divides them")
    p.add_argument("--data", type=Path, default=None, help="dataset directory: plan only its vocabulary stages")
    p.add_argument("--device", default="h200", help="price the plan's wall-clock on this device's measured "
                   "throughput (megababel/plan/throughput.json: h200, cpu; default h200, the one GPU measured)")
    p.add_argument("--out", type=Path, default=None, help="write the schedule here (.yaml or .json)")
    args = p.parse_args(argv)
    fields = {k: getattr(args, k) for k in MODEL_FIELDS if getattr(args, k) is not None}
    try:
        if args.final is not None:
            final = LlamaConfig(**dict(final_model(args.final).to_dict(), **fields))
        elif {"hidden_size", "num_hidden_layers", "vocab_size"} <= set(fields):
            final = LlamaConfig(**fields)
        else:
            raise ConfigError("give the final model: --final PRESET_OR_FILE, or --hidden-size, --num-hidden-layers "
                              "and --vocab-size (and --head-dim, --intermediate-size, ... as needed)")
        if args.data is not None and not args.data.is_dir():
            raise ConfigError(f"--data {args.data}: no such directory")
        tokens = args.tokens if args.tokens_per_parameter is None else \
            args.tokens_per_parameter * config_parameters(final)
        plan = plan_growth(final, tokens=tokens, flops=args.flops, seq_len=args.seq_len,
                           tokens_per_step=args.global_batch_tokens or 8 * args.seq_len, lr=args.lr,
                           vocab_stages=None if args.data is None else data_vocab_stages(args.data),
                           family=args.family, levers=tuple(args.levers), device=args.device)
    except ConfigError as e:
        p.error(str(e))
    print(plan.explain())
    text = json.dumps(plan.schedule, indent=1)
    if args.out is None:
        print(text)
        return plan
    if args.out.suffix in (".yaml", ".yml"):
        import yaml
        text = yaml.safe_dump(plan.schedule, sort_keys=False)
    args.out.write_text(text)
    print(f"wrote {args.out}: {plan.scratch_steps} steps of scratch's FLOPs as {plan.schedule['training']['steps']} "
          f"steps, {len(plan.schedule['growths'])} growths")
    return plan


if __name__ == "__main__":
    main()
