"""How differently llama.cpp encodes a vocabulary-stage export, and what it costs in bits/byte.

    # llama.cpp built as in bench/llama_perplexity_ref.py, plus: cmake --build build --target llama-tokenize
    python bench/llama_cpp_stage.py EXPORT --llama-cpp /tmp/llcpp/llama_cpp_python-0.3.36/vendor/llama.cpp \
        --paragraphs 300                          # results/llama_cpp_stage.{md,json}

A stage export's tokenizer.model is the stage with its out-of-stage pieces marked UNUSED (megababel/hf/export.py).
convert_hf_to_gguf.py keeps only the first vocab_size pieces, the stage's, and llama.cpp's SentencePiece tokenizer
merges only through pieces it has, so it never forms an out-of-stage piece and splits it back as SentencePiece does.
Measured here, per corpus (TinyStories valid, WikiText-103 valid, Shakespeare; the first --paragraphs paragraphs):
- paragraphs whose `llama-tokenize` ids equal the stage's (AutoTokenizer's, which are exact);
- bits/byte of the export through transformers, each paragraph alone (BOS, its tokens; megababel-eval
  --per-document), once with the exact ids and once with llama.cpp's ids: the size of the difference, with the model
  computation held fixed (llama.cpp computes what transformers does: bench/README.md, "head_dim growth: llama.cpp");
- and llama-perplexity's own figure on the concatenated paragraphs next to bench/llama_perplexity_ref.py's (the same
  measure with exact ids).
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from bench_data import SHARED
from llama_perplexity_ref import llama_perplexity
from megababel.data.readers import read_documents
from megababel.hf import evaluate as EVAL

ROOT = Path(__file__).resolve().parents[1]

CORPORA = {"TinyStories": SHARED / "tinystories" / "valid.txt", "WikiText": SHARED / "wikitext" / "wiki.valid.raw",
           "Shakespeare": SHARED / "shakespeare" / "input.txt"}


def convert(export: Path, llama_cpp: Path, gguf: Path):
    subprocess.run([sys.executable, str(llama_cpp / "convert_hf_to_gguf.py"), str(export), "--outfile", str(gguf),
                    "--outtype", "f32"], check=True, capture_output=True, text=True,
                   env={"PYTHONPATH": str(llama_cpp / "gguf-py"), "PATH": "/usr/bin:/bin"})


def llama_tokenize(llama_cpp: Path, gguf: Path, text: str) -> list[int]:
    done = subprocess.run([str(llama_cpp / "build" / "bin" / "llama-tokenize"), "-m", str(gguf), "--stdin", "--ids",
                           "--no-bos", "--no-escape", "--log-disable"], input=text, capture_output=True, text=True,
                          check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


class FixedIds(EVAL.Evaluated):
    """The export's model on ids given per text (llama.cpp's)."""

    def __init__(self, model: EVAL.Evaluated, ids: dict[str, list[int]]):
        self.inner, self.ids, self.bos, self.eos = model, ids, model.bos, model.eos
        self.name = model.name + " (llama.cpp's ids)"

    def encode(self, text):
        return self.ids[text]

    def nll(self, inputs, targets):
        return self.inner.nll(inputs, targets)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("export", type=Path, help="a megababel export at an intermediate vocabulary stage")
    p.add_argument("--llama-cpp", type=Path, required=True, help="llama.cpp's source folder, built (build/bin)")
    p.add_argument("--paragraphs", type=int, default=300)
    p.add_argument("--ctx", type=int, default=128, help="llama-perplexity's context")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    exact = EVAL.Evaluated.load(args.export, auto_tokenizer=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        gguf = Path(tmp) / "model.gguf"
        convert(args.export, args.llama_cpp, gguf)
        for corpus, path in CORPORA.items():
            paragraphs = [d for _, d in zip(range(args.paragraphs), read_documents(str(path)))]
            theirs = {t: llama_tokenize(args.llama_cpp, gguf, t) for t in paragraphs}
            identical = sum(theirs[t] == list(exact.encode(t)) for t in paragraphs)
            a = EVAL.evaluate(exact, paragraphs, 1024, 4, progress=False, per_document=True)
            b = EVAL.evaluate(FixedIds(exact, theirs), paragraphs, 1024, 4, progress=False, per_document=True)
            text = Path(tmp) / f"{corpus}.txt"
            text.write_text("\n\n".join(paragraphs))
            done = subprocess.run([str(args.llama_cpp / "build" / "bin" / "llama-perplexity"), "-m", str(gguf), "-f",
                                   str(text), "-c", str(args.ctx), "-b", str(args.ctx)], capture_output=True,
                                  text=True)
            found = re.search(r"Final estimate: PPL = ([0-9.]+)", done.stdout + done.stderr)
            reference, _ = llama_perplexity(str(args.export), text.read_text(), args.ctx)
            rows.append(dict(corpus=corpus, paragraphs=len(paragraphs), identical=identical,
                             exact_bpb=a["bits_per_byte"], llama_cpp_ids_bpb=b["bits_per_byte"],
                             exact_tokens=a["tokens"], llama_cpp_tokens=b["tokens"],
                             llama_perplexity=float(found.group(1)) if found else None, reference_ppl=reference))
            print(json.dumps(rows[-1]), flush=True)
    info = json.loads((args.export / "megababel.json").read_text())
    lines = [f"{args.export.name}: vocabulary stage {info['active_vocab_size']}, first {args.paragraphs} paragraphs "
             f"per corpus", "", "| corpus | llama-tokenize = stage (paragraphs) | bits/byte, exact ids | bits/byte, "
             "llama.cpp's ids | difference | tokens (exact / llama.cpp) | llama-perplexity PPL | same measure, "
             "exact ids |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ppl = "-" if r["llama_perplexity"] is None else f"{r['llama_perplexity']:.3f}"
        lines.append(f"| {r['corpus']} | {100 * r['identical'] / r['paragraphs']:.1f}% | {r['exact_bpb']:.4f} | "
                     f"{r['llama_cpp_ids_bpb']:.4f} | {r['llama_cpp_ids_bpb'] - r['exact_bpb']:+.4f} | "
                     f"{r['exact_tokens']:,} / {r['llama_cpp_tokens']:,} | {ppl} | {r['reference_ppl']:.3f} |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "llama_cpp_stage.json").write_text(json.dumps(dict(export=str(args.export), rows=rows), indent=1))
    (args.out / "llama_cpp_stage.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
