"""tools/eval.py's evaluator against a plain transformers forward of the same model and batches, one run.

    python bench/eval_speed.py                          # results/eval_speed.{md,json}; ~5 min on 2 cores
    python bench/eval_speed.py --sizes 9M --dtypes fp32 --rounds 1 --kbytes 20      # smoke

Three variants on the same text, alternating round by round, each timed end to end; each reports its best round
(other work on the machine only ever slows a round down, so the minimum is the least disturbed figure):
- `evaluator, checkpoint`: `evaluate()` of megababel.hf.evaluate (what tools/eval.py runs) on a megababel checkpoint (megababel's model), encoding
  included;
- `evaluator, export`: the same on the checkpoint's Hugging Face export (LlamaForCausalLM, tokenizer.model);
- `transformers forward`: `model(input_ids).logits` of that LlamaForCausalLM on the evaluator's own batches, no
  encoding and no loss: the ceiling the evaluator is held to (target >= 0.8x).
The models are random (speed does not depend on the weights), made as a user would make them: a LlamaForCausalLM
imported with tools/convert_from_hf.py, exported with tools/convert_to_hf.py. Llama 2 tokenizer, full vocabulary;
text: the first --kbytes of TinyStories valid paragraphs.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
from bench_data import SHARED
from megababel.cli import export_hf, import_hf
from megababel.data.readers import read_documents
from megababel.hf import evaluate as EVAL
SIZES = {   # vocabulary 32000 (Llama 2)
    "9M": dict(hidden_size=128, intermediate_size=352, num_hidden_layers=4, num_attention_heads=4, head_dim=32),
    "60M": dict(hidden_size=512, intermediate_size=1376, num_hidden_layers=8, num_attention_heads=8, head_dim=64),
}


def make_model(size: str, folder: Path) -> tuple[Path, Path]:
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    config = LlamaConfig(**SIZES[size], num_key_value_heads=SIZES[size]["num_attention_heads"], vocab_size=32000,
                         tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(folder / "source")
    (folder / "source" / "tokenizer.model").write_bytes((SHARED / "tokenizers/llama2/tokenizer.model").read_bytes())
    import_hf.main([str(folder / "source"), str(folder / "checkpoint")])
    export_hf.main([str(folder / "checkpoint"), str(folder / "export")])
    return folder / "checkpoint", folder / "export"


def evaluator(path: Path, dtype, docs, args) -> tuple[float, int]:
    model = EVAL.Evaluated.load(path, dtype)
    start = time.perf_counter()
    result = EVAL.evaluate(model, docs, args.seq_len, args.batch_size, progress=False)
    return time.perf_counter() - start, result["tokens"]


@torch.inference_mode()
def transformers_forward(path: Path, dtype, docs, args) -> tuple[float, int]:
    model = EVAL.Evaluated.load(path, dtype)          # the export's LlamaForCausalLM and its encoding
    batches = EVAL.windows(EVAL.token_stream(model, docs)[0], args.seq_len, args.batch_size)
    start = time.perf_counter()
    for ids in batches:
        model.model(ids[:, :-1]).logits
    return time.perf_counter() - start, sum(ids[:, 1:].numel() for ids in batches)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    p.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=list(EVAL.DTYPES))
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--kbytes", type=int, default=100, help="text to evaluate, kB of TinyStories valid")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    docs, size = [], 0
    for doc in read_documents(str(SHARED / "tinystories" / "valid.txt")):
        if size >= args.kbytes * 1000:
            break
        docs.append(doc)
        size += len(doc.encode())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model_size in args.sizes:
            checkpoint, export = make_model(model_size, Path(tmp) / model_size)
            for dtype_name in args.dtypes:
                dtype = EVAL.DTYPES[dtype_name]
                variants = {"evaluator, checkpoint": lambda: evaluator(checkpoint, dtype, docs, args),
                            "evaluator, export": lambda: evaluator(export, dtype, docs, args),
                            "transformers forward": lambda: transformers_forward(export, dtype, docs, args)}
                seconds = {name: [] for name in variants}
                for _ in range(args.rounds):
                    for name, run in variants.items():
                        elapsed, tokens = run()
                        seconds[name].append(elapsed)
                reference = tokens / min(seconds["transformers forward"])
                for name, times in seconds.items():
                    tokens_per_s = tokens / min(times)
                    rows.append(dict(size=model_size, dtype=dtype_name, variant=name, tokens=tokens,
                                     tokens_per_s=round(tokens_per_s),
                                     vs_transformers=round(tokens_per_s / reference, 3),
                                     seconds=[round(t, 3) for t in times]))
                    print(json.dumps(rows[-1]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "eval_speed.json").write_text(json.dumps(rows, indent=1))
    lines = [f"{torch.get_num_threads()} torch threads, seq {args.seq_len} x batch {args.batch_size}, "
             f"{args.kbytes} kB of TinyStories, best of {args.rounds} rounds (variants alternate)", "",
             "| model | dtype | variant | tokens/s | vs transformers forward |", "|---|---|---|---|---|"]
    lines += [f"| {r['size']} | {r['dtype']} | {r['variant']} | {r['tokens_per_s']:,} | {r['vs_transformers']:.2f}x |"
              for r in rows]
    (args.out / "eval_speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
