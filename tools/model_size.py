"""Parameters and training FLOPs of a Llama config, for planning a growth schedule.

    python tools/model_size.py --hidden-size 512 --num-hidden-layers 8              # the seed's ~60M start
    python tools/model_size.py --hidden-size 768 1024 2048 --num-hidden-layers 8 12 16 --vocab-size 8000 16000 32000

Several values per flag describe successive stages (a missing value repeats the last one). Nothing is allocated.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from megababel.config import ConfigError, LlamaConfig  # noqa: E402
from megababel.counters import config_parameters, flops_per_token  # noqa: E402

STAGE_FIELDS = ("hidden_size", "num_hidden_layers", "intermediate_size", "vocab_size", "num_key_value_heads")


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hidden-size", type=int, nargs="+", default=[512])
    p.add_argument("--num-hidden-layers", type=int, nargs="+", default=[8])
    p.add_argument("--intermediate-size", type=int, nargs="+", default=[None])
    p.add_argument("--vocab-size", type=int, nargs="+", default=[32000])
    p.add_argument("--num-key-value-heads", type=int, nargs="+", default=[None])
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--multiple-of", type=int, default=256)
    p.add_argument("--seq-len", type=int, default=2048)
    args = p.parse_args(argv)
    n_stages = max(len(getattr(args, f)) for f in STAGE_FIELDS)
    rows, previous = [], None
    print(f"{'stage':>5} {'hidden':>7} {'layers':>6} {'ffn':>6} {'heads':>5} {'vocab':>6} {'params':>14} "
          f"{'non-emb':>14} {'x prev':>6} {'train GFLOP/token':>18}")
    for stage in range(n_stages):
        values = {f: getattr(args, f)[min(stage, len(getattr(args, f)) - 1)] for f in STAGE_FIELDS}
        try:
            config = LlamaConfig(head_dim=args.head_dim, multiple_of=args.multiple_of, **values)
        except ConfigError as e:
            p.error(f"stage {stage}: {e}")
        total = config_parameters(config)
        non_embedding = total - 2 * config.vocab_size * config.hidden_size
        flops = flops_per_token(config, args.seq_len)
        ratio = f"{total / previous:.2f}" if previous else "-"
        print(f"{stage:>5} {config.hidden_size:>7} {config.num_hidden_layers:>6} {config.intermediate_size:>6} "
              f"{config.num_attention_heads:>5} {config.vocab_size:>6} {total:>14,} {non_embedding:>14,} {ratio:>6} "
              f"{flops / 1e9:>18.3f}")
        rows.append(dict(config=config, parameters=total, flops_per_token=flops))
        previous = total
    return rows


if __name__ == "__main__":
    main()
