"""Start a megababel run from a Hugging Face Llama: convert its weights and tokenizer into a megababel checkpoint.

    # 1. a dataset tokenized with the model's own tokenizer (its ranking puts the vocabulary rows in data order)
    megababel-preprocess corpus.txt --tokenizer hf/small --stages 32000 --out data/c
    # 2. the checkpoint, rows in that dataset's ranking order
    megababel-import hf/small runs/grow/init --ranking data/c/ranking.json
    # 3. train and grow it: a schedule whose `model` is the imported config (megababel-model-size shows it)
    deepspeed launch/train.py --resume runs/grow/init --schedule grow.yaml --data data/c --out runs/grow

    python tools/convert_from_hf.py hf/small runs/grow/init --ranking data/c/ranking.json   # step 2, from a checkout

The checkpoint is generation 0 at step 0 without optimizer state (Adam starts fresh). Needs model.safetensors
(or a sharded index) and tokenizer.model. A model megababel's Llama cannot represent exactly is refused with the
config.json field to blame: another architecture, RoPE scaling, attention or MLP biases, tied embeddings, an activation
other than SiLU, pretraining_tp != 1, attention dropout.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from megababel.cli.arguments import entry_point
from megababel.config import ConfigError
from megababel.data.tokenizer import TokenizerError


@entry_point
def main(argv=None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("hf_dir", type=Path)
    p.add_argument("out", type=Path, help="checkpoint directory to create")
    p.add_argument("--ranking", type=Path, default=None,
                   help="a dataset's ranking.json (same tokenizer): vocabulary rows in its order "
                        "(default: tokenizer order)")
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    # imported after parsing: --help and a bad flag answer without torch's ~2 s import
    from megababel.hf.export import ExportError, import_hf
    try:
        out = import_hf(args.hf_dir, args.out, args.ranking, overwrite=args.overwrite)
    except (ExportError, TokenizerError) as e:
        p.error(str(e))
    except ConfigError as e:    # hf_adapter.UnsupportedHFConfigError, or a config megababel's LlamaConfig rejects
        p.error(f"{args.hf_dir / 'config.json'}: {e}")
    print(f"imported {args.hf_dir} -> {out} (resume from it with launch/train.py --resume {out})")
    return out


if __name__ == "__main__":
    main()
