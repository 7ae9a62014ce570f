"""Export a run's model family (launch/train.py --keep-generations) as Hugging Face models, with a family card.

    megababel-export-family runs/a family/a                  # family/a/gen0 .. genN, README.md, family.json
    megababel-export-family runs/a family/a --eval-text ../shared/data/wikipedia/valid.txt --max-docs 200
    megababel-export-family runs/a family/a --dtype bf16 --overwrite

    python tools/export_family.py runs/a family/a            # the same, from a checkout

Each generation's last state (the model just before each growth, and the final one) becomes a LlamaForCausalLM
directory, exported like megababel-export (tools/convert_to_hf.py) does. The family card lists every member: shape,
parameters (all / without embeddings), the vocabulary stage it was trained on, the training tokens and FLOPs the run
had spent when it was saved (the whole run's, from the start: what the family cost up to that member), and its
bits/byte on the run's validation split as the trainer measured it; with --eval-text also megababel-eval's
(tools/eval.py's) bits/byte on that text. A member trained before the last vocabulary stage must be encoded with its
`vocab_stage.model` (megababel-eval does): the card says which members those are, and each such member's own card
warns.
"""
from __future__ import annotations

import argparse
import itertools
import json
import shutil
from pathlib import Path

import torch

from megababel.checkpoint.io import CheckpointError, list_checkpoints, load_checkpoint
from megababel.cli.arguments import entry_point, positive_int
from megababel.data.readers import DataError, read_documents
from megababel.hf.evaluate import Evaluated, evaluate
from megababel.hf.export import ExportError, export_checkpoint
from megababel.model.counters import config_parameters

DTYPES = dict(fp32=torch.float32, bf16=torch.bfloat16, fp16=torch.float16)


def member_row(checkpoint: Path, export: Path, tokenizer_size: int) -> dict:
    saved = load_checkpoint(checkpoint)
    config, run = saved.state.config, saved.run
    parameters = config_parameters(config)
    embedding = 2 * config.vocab_size * config.hidden_size           # embed_tokens + the untied lm_head
    return dict(generation=saved.state.generation, step=run["step"], tokens=run.get("tokens", 0),
                flops=run.get("flops", 0.0), hidden_size=config.hidden_size, layers=config.num_hidden_layers,
                intermediate_size=config.intermediate_size, heads=config.num_attention_heads,
                vocab_size=config.vocab_size, tokenizer_vocab_size=tokenizer_size, parameters=parameters,
                non_embedding_parameters=parameters - embedding, validation_bpb=run.get("validation_bpb"),
                checkpoint=str(checkpoint), export=export.name)


def family_card(rows: list[dict], run_dir: Path, eval_text: str | None) -> str:
    extra = " | megababel-eval bits/byte |" if eval_text else " |"
    lines = [f"# megababel model family: {len(rows)} members from one run", "",
             f"Every generation of the progressive run `{run_dir}`, saved as it ended (just before the next growth; "
             f"the last is the final model), exported as a plain `LlamaForCausalLM`. Tokens and FLOPs are the whole "
             f"run's up to each member: one run paid for the whole family.", "",
             "| member | generation | hidden x layers (FFN, heads) | parameters (non-embedding) | vocabulary stage | "
             "tokens | training FLOPs | validation bits/byte" + extra,
             "|---|---|---|---|---|---|---|---|" + ("---|" if eval_text else "")]
    for r in rows:
        stage = ("full" if r["vocab_size"] == r["tokenizer_vocab_size"] else
                 f"**{r['vocab_size']} of {r['tokenizer_vocab_size']}**: encode with its vocab_stage.model")
        bpb = "" if r["validation_bpb"] is None else f"{r['validation_bpb']:.4f}"
        lines.append(f"| `{r['export']}` | {r['generation']} | {r['hidden_size']} x {r['layers']} "
                     f"({r['intermediate_size']}, {r['heads']}) | {r['parameters'] / 1e6:.2f}M "
                     f"({r['non_embedding_parameters'] / 1e6:.2f}M) | {stage} | {r['tokens']:,} | {r['flops']:.3g} | "
                     f"{bpb}" + (f" | {r['eval_bpb']:.4f} |" if eval_text else " |"))
    lines += ["", "Validation bits/byte: the trainer's, on the run's validation split when the member was saved."]
    if eval_text:
        lines.append(f"megababel-eval bits/byte: on `{eval_text}`, each export encoded as it was trained.")
    if any(r["vocab_size"] < r["tokenizer_vocab_size"] for r in rows):
        lines += ["", "Members marked with a vocabulary stage were trained on the first pieces of a frequency "
                  "ranking only. Their tokenizer.json is the full tokenizer, which encodes text differently (see "
                  "each member's card): evaluate them with megababel-eval (megababel's tools/eval.py), or encode with "
                  "`vocab_stage.model`, to get the numbers above."]
    return "\n".join(lines) + "\n"


@entry_point
def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("run", type=Path, help="the run's --out directory (with generations/)")
    p.add_argument("out", type=Path)
    p.add_argument("--dtype", choices=list(DTYPES), default="fp32")
    p.add_argument("--eval-text", default=None, help="also evaluate every member with megababel-eval on this file")
    p.add_argument("--max-docs", type=positive_int, default=None, help="with --eval-text: at most this many documents")
    p.add_argument("--seq-len", type=positive_int, default=1024, help="with --eval-text: megababel-eval's window")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    args = p.parse_args(argv)
    members = list_checkpoints(args.run / "generations")
    if not members:
        p.error(f"{args.run / 'generations'}: no generation checkpoints; train with launch/train.py "
                f"--keep-generations (it keeps each generation's last state there)")
    if args.out.exists() and any(args.out.iterdir()) and not args.overwrite:
        p.error(f"{args.out} exists and is not empty; pass --overwrite to replace it")
    if args.eval_text is not None and not Path(args.eval_text).is_file():
        p.error(f"--eval-text {args.eval_text}: no such file")
    if args.overwrite:
        shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        for checkpoint in members:
            generation = int(checkpoint.name.rsplit("gen", 1)[1])
            export = export_checkpoint(checkpoint, args.out / f"gen{generation}", dtype=DTYPES[args.dtype])
            tokenizer_size = json.loads((export / "config.json").read_text())["vocab_size"]
            rows.append(member_row(checkpoint, export, tokenizer_size))
            print(f"exported generation {generation} ({rows[-1]['parameters'] / 1e6:.2f}M parameters, vocabulary "
                  f"{rows[-1]['vocab_size']}) -> {export}", flush=True)
        if args.eval_text:
            for row in rows:
                documents = itertools.islice(read_documents(args.eval_text), args.max_docs)
                model = Evaluated.load(args.out / row["export"])
                row["eval_bpb"] = evaluate(model, documents, args.seq_len, 4, progress=False)["bits_per_byte"]
    except (CheckpointError, ExportError, DataError, OSError) as e:
        p.error(str(e))
    (args.out / "family.json").write_text(json.dumps(dict(run=str(args.run), members=rows), indent=1))
    (args.out / "README.md").write_text(family_card(rows, args.run, args.eval_text))
    print(f"family card: {args.out / 'README.md'}")
    return rows


if __name__ == "__main__":
    main()
