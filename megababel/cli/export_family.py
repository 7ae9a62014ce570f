"""Export a run's model family (launch/train.py --keep-generations) as Hugging Face models, with a family card.

    megababel-export-family runs/a family/a                  # family/a/gen0 .. genN, README.md, family.json
    megababel-export-family runs/a family/a --eval-text ../shared/data/wikipedia/valid.txt --max-docs 200
    megababel-export-family runs/a family/a --dtype bf16 --overwrite
    megababel-export-family runs/a family/a --push me/babel --dry-run   # family/a/upload.json: what would be sent
    megababel-export-family runs/a family/a --push me/babel   # me/babel-gen0 .. genN, one collection "babel"

    python tools/export_family.py runs/a family/a            # the same, from a checkout

Each generation's last state (the model just before each growth, and the final one) becomes a LlamaForCausalLM
directory, exported like megababel-export (tools/convert_to_hf.py) does. The family card lists every member: shape,
parameters (all / without embeddings), the vocabulary stage it was trained on, the training tokens and FLOPs the run
had spent when it was saved (the whole run's, from the start: what the family cost up to that member), and its
bits/byte on the run's validation split as the trainer measured it. A member with a finished decay branch in
RUN/anneal/genG (launch/train.py --resume RUN/generations/step_..._genG --anneal-steps N --out RUN/anneal/genG) is
exported from the branch's end instead, and the branch's FLOPs count in the family's. With --eval-text, each
member's bits/byte on that text three ways, each document scored alone as lm-evaluation-harness' perplexity tasks
do: megababel-eval (tools/eval.py, --per-document), a plain transformers evaluation encoding with AutoTokenizer, and
lm-eval itself (when installed). A member trained before the last vocabulary stage exports as its stage, with a
tokenizer that encodes exactly as it was trained, so the three agree (to fp32 rounding).
"""
from __future__ import annotations

import argparse
import itertools
import json
import shutil
import sys
from pathlib import Path

from megababel.cli.arguments import entry_point, positive_int
from megababel.data.readers import DataError, read_documents
from megababel.data.tokenizer import Tokenizer
from megababel.model.counters import config_parameters

DTYPE_NAMES = ("fp32", "bf16", "fp16")


ANNEAL = "anneal"        # RUN/anneal/genG: launch/train.py --anneal-steps branches, one per member


def member_checkpoint(run_dir: Path, generation_checkpoint: Path) -> tuple[Path, dict | None]:
    """The checkpoint that is member G: the newest of its decay branch RUN/anneal/genG when one finished, else the
    generation's own; and the branch ({steps, flops}: its own steps and FLOPs) or None."""
    from megababel.checkpoint.io import list_checkpoints, load_checkpoint
    generation = int(generation_checkpoint.name.rsplit("gen", 1)[1])
    origin = load_checkpoint(generation_checkpoint, verify=False).run     # run records only: no checksums read
    for checkpoint in reversed(list_checkpoints(run_dir / ANNEAL / f"gen{generation}" / "checkpoints")):
        run = load_checkpoint(checkpoint, verify=False).run
        anneal = ((run.get("record") or {}).get("schedule") or {}).get("training", {}).get("anneal")
        if anneal and run["step"] == anneal["from_step"] + anneal["steps"] and anneal["from_step"] == origin["step"]:
            return checkpoint, dict(steps=anneal["steps"], flops=run["flops"] - origin["flops"])
    return generation_checkpoint, None


def member_row(checkpoint: Path, export: Path, tokenizer_size: int) -> dict:
    from megababel.checkpoint.io import load_checkpoint
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


EVALUATORS = (("eval_bpb", "megababel-eval"), ("autotokenizer_bpb", "AutoTokenizer"), ("lm_eval_bpb", "lm-eval"))


def _bpb(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def family_card(rows: list[dict], run_dir: Path, eval_text: str | None) -> str:
    extra = "".join(f" | {name} bits/byte" for _, name in EVALUATORS) + " |" if eval_text else " |"
    lines = [f"# megababel model family: {len(rows)} members from one run", "",
             f"Every generation of the progressive run `{run_dir}`, saved as it ended (just before the next growth; "
             f"the last is the final model), exported as a plain `LlamaForCausalLM`. Tokens and FLOPs are the whole "
             f"run's up to each member, plus the member's own decay branch where it has one (`{ANNEAL}/genG`, "
             f"launch/train.py --anneal-steps): one run paid for the whole family.", "",
             "| member | generation | hidden x layers (FFN, heads) | parameters (non-embedding) | vocabulary stage | "
             "annealed | tokens | training FLOPs | validation bits/byte" + extra,
             "|---|---|---|---|---|---|---|---|---|" + ("---|" * len(EVALUATORS) if eval_text else "")]
    for r in rows:
        stage = ("full" if r["vocab_size"] == r["tokenizer_vocab_size"] else
                 f"{r['vocab_size']} of {r['tokenizer_vocab_size']} (its own tokenizer)")
        bpb = "" if r["validation_bpb"] is None else f"{r['validation_bpb']:.4f}"
        branch = r.get("branch")
        annealed = "no" if branch is None else f"{branch['steps']} steps ({branch['flops']:.3g} FLOPs)"
        lines.append(f"| `{r['export']}` | {r['generation']} | {r['hidden_size']} x {r['layers']} "
                     f"({r['intermediate_size']}, {r['heads']}) | {r['parameters'] / 1e6:.2f}M "
                     f"({r['non_embedding_parameters'] / 1e6:.2f}M) | {stage} | {annealed} | {r['tokens']:,} | "
                     f"{r['flops']:.3g} | "
                     f"{bpb}" + ("".join(f" | {_bpb(r.get(key))}" for key, _ in EVALUATORS) + " |"
                                 if eval_text else " |"))
    branches = sum(r["branch"]["flops"] for r in rows if r.get("branch"))
    total = max(r.get("run_flops", r["flops"]) for r in rows) + branches
    lines += ["", f"The family cost {total:.3g} training FLOPs: the run's {total - branches:.3g}"
              + (f" and its members' decay branches' {branches:.3g}." if branches else "."),
              "", "Validation bits/byte: the trainer's, on the run's validation split when the member was saved."]
    if eval_text:
        lines.append(f"On `{eval_text}`, each document scored alone (BOS, then its tokens; windows as lm-eval's "
                     f"loglikelihood_rolling): megababel-eval --per-document; transformers with AutoTokenizer; "
                     f"lm-evaluation-harness on a local perplexity task (add_bos_token=False; '-' where lm-eval is "
                     f"not installed). Each member in windows of at most the length it trained on ("
                     + ", ".join(f"{r['export']}: {r['context']}" for r in rows if "context" in r)
                     + " tokens): a sequence-length curriculum's early members never learned longer positions.")
    if any(r["vocab_size"] < r["tokenizer_vocab_size"] for r in rows):
        lines += ["", "Members with a vocabulary stage were trained on the first pieces of a frequency ranking only. "
                  "Each ships that stage as its tokenizer (ids = the model's rows), which AutoTokenizer and lm-eval "
                  "load and encode exactly as the model was trained; to decode exactly too, load it with "
                  "`trust_remote_code=True` (see each member's card). llama.cpp encodes such members differently "
                  "(+0.15 to +0.40 bits/byte measured at stages 1000-4000; each member's card says why)."]
    return "\n".join(lines) + "\n"


@entry_point
def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("run", type=Path, help="the run's --out directory (with generations/)")
    p.add_argument("out", type=Path)
    p.add_argument("--dtype", choices=DTYPE_NAMES, default="fp32")
    p.add_argument("--eval-text", default=None, help="also evaluate every member with megababel-eval on this file")
    p.add_argument("--max-docs", type=positive_int, default=None, help="with --eval-text: at most this many documents")
    p.add_argument("--seq-len", type=positive_int, default=1024, help="with --eval-text: megababel-eval's window")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--push", metavar="REPO_PREFIX", default=None,
                   help="upload member G to REPO_PREFIX-genG and gather them in one Hub collection")
    p.add_argument("--dry-run", action="store_true", help="with --push: write OUT/upload.json, upload nothing")
    args = p.parse_args(argv)
    # imported after parsing: --help and a bad flag answer without torch's ~2 s import
    import torch

    from megababel.checkpoint.io import CheckpointError, list_checkpoints, load_checkpoint
    from megababel.hf.evaluate import EvaluationError, Evaluated, evaluate, lm_eval_bits_per_byte
    from megababel.hf.export import ExportError, export_checkpoint
    from megababel.hf.hub import HubError, push_family
    dtype = dict(fp32=torch.float32, bf16=torch.bfloat16, fp16=torch.float16)[args.dtype]
    if args.dry_run and not args.push:
        p.error("--dry-run goes with --push REPO_PREFIX")
    if args.push and args.push.count("/") != 1:
        p.error(f"--push {args.push!r}: give a prefix like user/name (members go to user/name-gen0, ...)")
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
        for generation_checkpoint in members:
            generation = int(generation_checkpoint.name.rsplit("gen", 1)[1])
            checkpoint, branch = member_checkpoint(args.run, generation_checkpoint)
            export = export_checkpoint(checkpoint, args.out / f"gen{generation}", dtype=dtype)
            rows.append(dict(member_row(checkpoint, export, Tokenizer.load(export).vocab_size), branch=branch,
                             run_flops=load_checkpoint(generation_checkpoint, verify=False).run.get("flops", 0.0)))
            print(f"exported generation {generation} ({rows[-1]['parameters'] / 1e6:.2f}M parameters, vocabulary "
                  f"{rows[-1]['vocab_size']}) -> {export}", flush=True)
        if args.eval_text:
            documents = list(itertools.islice(read_documents(args.eval_text), args.max_docs))
            for row in rows:
                export = args.out / row["export"]
                # each member within the context it trained on: a sequence-length curriculum's early members
                # trained shorter, and positions beyond that were never learned
                row["context"] = window = min(args.seq_len, json.loads((export / "config.json").read_text())[
                    "max_position_embeddings"])      # export writes the trained length there
                for key, auto_tokenizer in (("eval_bpb", False), ("autotokenizer_bpb", True)):
                    model = Evaluated.load(export, auto_tokenizer=auto_tokenizer)
                    row[key] = evaluate(model, documents, window, 4, progress=False,
                                        per_document=True)["bits_per_byte"]
                try:
                    row["lm_eval_bpb"] = lm_eval_bits_per_byte(export, documents, window)
                except EvaluationError:          # lm-eval not installed: the card shows "-"
                    row["lm_eval_bpb"] = None
                print(f"generation {row['generation']}: " + ", ".join(
                    f"{name} {_bpb(row[key])}" for key, name in EVALUATORS) + " bits/byte", flush=True)
    except (CheckpointError, ExportError, DataError, OSError) as e:
        p.error(str(e))
    (args.out / "family.json").write_text(json.dumps(dict(run=str(args.run), members=rows), indent=1))
    (args.out / "README.md").write_text(family_card(rows, args.run, args.eval_text))
    print(f"family card: {args.out / 'README.md'}")
    if args.push:
        members = [(args.out / r["export"], f"{args.push}-{r['export']}") for r in rows]
        try:
            print(push_family(members, args.push.split("/")[1], args.out / "upload.json", dry_run=args.dry_run))
        except HubError as e:
            print(f"error: {e} (the exports in {args.out} are complete and untouched)", file=sys.stderr)
            raise SystemExit(1)
    return rows


if __name__ == "__main__":
    main()
