"""Export a megababel checkpoint to a Hugging Face LlamaForCausalLM directory (safetensors + tokenizer + card).

    megababel-export runs/a/checkpoints hf/a                 # the latest checkpoint of a run
    megababel-export runs/a/checkpoints/step_00000300_gen2 hf/a --dtype bf16
    megababel-export CKPT hf/a --tokenizer data/tinystories  # tokenizer + ranking from a dataset dir
    megababel-export CKPT hf/a --push-to-hub me/babel-60m --dry-run   # writes hf/a.upload.json only
    megababel-export CKPT hf/a --push-to-hub me/babel-60m    # one branch per generation: gen2

    python tools/convert_to_hf.py runs/a/checkpoints hf/a    # the same, from a checkout

Any checkpoint works: any TP degree, ZeRO stage, number of generations or vocabulary stage (checkpoints are stored
unsharded). Then: `AutoModelForCausalLM.from_pretrained("hf/a")` and `AutoTokenizer.from_pretrained("hf/a")`; a
checkpoint from before the last vocabulary stage exports as its stage, with a tokenizer that encodes exactly as it was
trained. Format details: megababel/hf/export.py.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from megababel.cli.arguments import entry_point


@entry_point
def main(argv=None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("checkpoint", type=Path, help="a step_N directory, or a checkpoints directory (its latest)")
    p.add_argument("out", type=Path)
    p.add_argument("--tokenizer", type=Path, default=None,
                   help="directory with tokenizer.model + ranking.json (default: the checkpoint, then its dataset)")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--push-to-hub", metavar="REPO", default=None, help="upload OUT to this Hub repo after exporting")
    p.add_argument("--revision", default=None, help="Hub branch (default: gen<G> of the checkpoint)")
    p.add_argument("--dry-run", action="store_true", help="with --push-to-hub: write OUT.upload.json, upload nothing")
    args = p.parse_args(argv)
    # imported after parsing: --help and a bad flag answer without torch's ~2 s import
    import torch

    from megababel.data.tokenizer import Tokenizer
    from megababel.hf.export import ExportError, export_checkpoint, stage_note
    from megababel.hf.hub import HubError, push_folder
    dtype = dict(fp32=torch.float32, bf16=torch.bfloat16, fp16=torch.float16)[args.dtype]
    try:
        out = export_checkpoint(args.checkpoint, args.out, args.tokenizer, dtype=dtype, overwrite=args.overwrite)
    except ExportError as e:
        p.error(str(e))
    print(f"exported {args.checkpoint} -> {out}")
    info = json.loads((out / "megababel.json").read_text())
    if info["row_order"] != "tokenizer ids":
        print(f"note: {stage_note(info['active_vocab_size'], Tokenizer.load(out).vocab_size)}", file=sys.stderr)
    if args.push_to_hub:
        try:
            plan = push_folder(out, args.push_to_hub, args.revision, dry_run=args.dry_run)
        except HubError as e:
            print(f"error: {e} (the export in {out} is complete and untouched)", file=sys.stderr)
            raise SystemExit(1)
        print(plan)
    return out


if __name__ == "__main__":
    main()
