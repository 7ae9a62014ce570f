"""Perplexity and bits per byte of a Hugging Face directory or a megababel checkpoint on a text file.

    megababel-eval hf/a ../shared/data/tinystories/valid.txt             # an export (or any HF Llama)
    megababel-eval runs/a/checkpoints ../shared/data/tinystories/valid.txt --seq-len 256
    megababel-eval hf/a data.jsonl --text-key text --max-docs 500 --json result.json
    megababel-eval hf/a valid.jsonl --per-document --seq-len 2048     # = lm-eval's bits_per_byte on those documents
    megababel-eval hf/a - --tasks hellaswag,arc_easy    # lm-evaluation-harness (pip install 'megababel[eval]')
    megababel-eval hf/a - --tasks my_task --include-path my_tasks/ --json r.json --log-samples   # local tasks

    python tools/eval.py hf/a ../shared/data/tinystories/valid.txt       # the same, from a checkout

Both kinds of model are evaluated the same way: each document becomes BOS + tokens + EOS, the documents are
concatenated and cut into windows of --seq-len + 1 tokens (no overlap), and every next-token loss counts; full
windows go --batch-size at a time. --dtype bf16 runs the weights in bf16 (the loss in fp32); fp32 is the default.
Bits per byte = total loss / ln 2 / UTF-8 bytes of the documents, comparable across tokenizers and vocabulary
stages; perplexity is per token. A Hugging Face directory with a `tokenizer.model` is encoded by that SentencePiece
model (else by AutoTokenizer); a megababel export of a vocabulary stage carries the stage itself there, so this,
AutoTokenizer and lm-eval all encode it as it was trained. The evaluator is megababel/hf/evaluate.py
(importable: `from megababel.hf.evaluate import Evaluated, evaluate`).
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

from megababel.cli.arguments import entry_point, positive_int
from megababel.data.readers import TXT_MODES, DataError, read_documents

DTYPE_NAMES = ("fp32", "bf16")       # megababel.hf.evaluate.DTYPES' keys (a test checks), named without torch


@entry_point
def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("model", type=Path,
                   help="Hugging Face directory, or megababel checkpoint (step dir or checkpoints dir)")
    p.add_argument("data", help="txt / jsonl / parquet file ('-' with --tasks only)")
    p.add_argument("--seq-len", type=positive_int, default=1024)
    p.add_argument("--batch-size", type=positive_int, default=4)
    p.add_argument("--per-document", action="store_true", help="each document alone (BOS, no EOS, windows rolling "
                   "as lm-evaluation-harness' perplexity tasks score them): its bits_per_byte on the same documents")
    p.add_argument("--dtype", choices=DTYPE_NAMES, default="fp32", help="weights' precision (loss in fp32)")
    p.add_argument("--text-key", default="text", help="jsonl field / parquet column (default: text)")
    p.add_argument("--txt-mode", default="paragraph", choices=TXT_MODES,
                   help="txt documents: paragraph | line | file")
    p.add_argument("--max-docs", type=positive_int, default=None, help="at most this many documents (default: all)")
    p.add_argument("--tasks", default=None, help="comma-separated lm-evaluation-harness tasks")
    p.add_argument("--include-path", type=Path, default=None, help="a folder of lm-eval task YAMLs (local tasks)")
    p.add_argument("--limit", type=positive_int, default=None, help="lm-eval: at most this many documents per task")
    p.add_argument("--log-samples", action="store_true", help="lm-eval: also keep every document's log-likelihoods "
                                                              "(in --json)")
    p.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = p.parse_args(argv)
    # imported after parsing: --help and a bad flag answer without torch's ~2 s import
    from megababel.checkpoint.io import CheckpointError
    from megababel.hf.evaluate import DTYPES, Evaluated, EvaluationError, evaluate, lm_eval_warning, run_lm_eval
    if not args.model.exists():
        p.error(f"{args.model}: no such model directory")
    if args.include_path is not None and not args.include_path.is_dir():       # before any evaluation is spent
        p.error(f"--include-path {args.include_path}: no such directory")
    if args.data == "-" and not args.tasks:
        p.error("DATA '-' means no text to evaluate: give --tasks, or a txt / jsonl / parquet file")
    result = {}
    if args.data != "-":
        try:
            model = Evaluated.load(args.model, DTYPES[args.dtype])
            if model.note:
                print(f"note: {model.note}", file=sys.stderr)
            if args.seq_len > model.context:
                print(f"note: --seq-len {args.seq_len} is longer than the {model.context} tokens {args.model} trained "
                      f"on; positions beyond them are untrained. --seq-len {model.context} measures it within its "
                      f"context", file=sys.stderr)
            documents = read_documents(args.data, text_key=args.text_key, txt_mode=args.txt_mode)
            result = evaluate(model, itertools.islice(documents, args.max_docs), args.seq_len, args.batch_size,
                              per_document=args.per_document)
        except (CheckpointError, DataError, OSError, ValueError) as e:
            p.error(str(e))
        print(f"{result['model']}: {result['documents']} documents, {result['tokens']:,} tokens, "
              f"{result['bytes']:,} bytes: {result['nll_per_token']:.4f} nats/token, perplexity "
              f"{result['perplexity']:.2f}, {result['bits_per_byte']:.4f} bits/byte")
    if args.tasks:
        if warning := lm_eval_warning(args.model):
            print(f"warning: {warning}", file=sys.stderr)
        try:
            result["lm_eval"] = run_lm_eval(args.model, args.tasks, args.include_path, args.limit, args.log_samples)
        except EvaluationError as e:
            p.error(str(e))
        print(json.dumps(result["lm_eval"]["results"], indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
