"""Does a tokenizer.json reproduce a vocabulary stage? Agreement of AutoTokenizer with SentencePiece's stage encoding.

    python bench/stage_tokenizer.py                       # results/stage_tokenizer.{md,json}; ~3 min on 2 cores
    python bench/stage_tokenizer.py --paragraphs 200 --stages 1000 8000      # quick look
    python bench/stage_tokenizer.py --export hf/gen1 --paragraphs 500           # + bits/byte of an export both ways

A model exported before its last vocabulary stage was trained on SentencePiece's stage encoding: BPE over the full
Llama 2 vocabulary in which the out-of-stage pieces are marked UNUSED. SentencePiece still merges through those
pieces and only at the end splits each out-of-stage piece back into the pair it was merged from (recursively), and an
out-of-stage character that stays alone falls back to bytes. A Hugging Face BPE tokenizer (tokenizer.json) has no
such final step. Three candidates are measured, as AutoTokenizer loads them from an export:
- `full`: the full tokenizer's tokenizer.json (what megababel shipped for a stage export before issue 34);
- `trimmed merges`: the same with every merge whose result is out of the stage removed, so out-of-stage pieces are
  never formed (but neither is an in-stage piece SentencePiece reaches only through one), which is what
  llama.cpp's tokenizer does with a GGUF converted from a stage export (its converter keeps the stage's pieces only;
  measured directly in bench/README.md, "Exact stage tokenizers");
- `stage export`: what megababel ships now (megababel/hf/export.py save_stage_tokenizer): the stage itself as a
  SentencePiece model with model-row ids, loaded by transformers' SentencePiece backend; and how many paragraphs its
  decode gives back, without and with trust_remote_code (tokenization_megababel.py).
A paragraph agrees when the two id sequences are identical. Corpora: TinyStories valid, WikiText-103 valid and
Shakespeare, blank-line paragraphs (the first --paragraphs of each); rankings: the TinyStories and the Wikipedia
build's piece frequencies, as the benchmarks' datasets have them.
With --export (an intermediate-stage export), also the size of the difference in bits/byte: tools/eval.py's (the
stage's encoding, out-of-stage logits masked, as the model was trained and as megababel reports) against a plain
Hugging Face evaluation (AutoTokenizer + AutoModelForCausalLM, BOS + text + EOS, the same windows), per corpus.
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
from bench_data import SHARED, SPEED_STAGES, tinystories, wikipedia
from megababel.data.readers import read_documents
from megababel.hf.export import save_stage_tokenizer, save_tokenizer
from megababel.data.tokenizer import Tokenizer, VocabRanking
from megababel.hf import evaluate as EVAL

CORPORA = {"TinyStories": SHARED / "tinystories" / "valid.txt", "WikiText": SHARED / "wikitext" / "wiki.valid.raw",
           "Shakespeare": SHARED / "shakespeare" / "input.txt"}


def trimmed_merges(spec: dict, in_stage: set[str]) -> dict:
    spec = json.loads(json.dumps(spec))
    spec["model"]["merges"] = [m for m in spec["model"]["merges"]
                               if "".join(m.split(" ", 1) if isinstance(m, str) else m) in in_stage]
    return spec


def agreement(hf, stage, paragraphs: list[str]) -> dict:
    ours = [stage.to_tokenizer_ids(ids).tolist() for ids in stage.encode_batch(paragraphs)]
    theirs = hf(paragraphs, add_special_tokens=False)["input_ids"]
    out_of_stage = set(stage.ranking.order[stage.size:].tolist())
    tokens = sum(len(t) for t in theirs)
    return dict(paragraphs=len(paragraphs), identical=sum(a == b for a, b in zip(ours, theirs)),
                out_of_stage_tokens=sum(i in out_of_stage for t in theirs for i in t) / tokens,
                token_ratio=tokens / sum(len(o) for o in ours))


def stage_export_agreement(folder: Path, stage, paragraphs: list[str]) -> dict:
    from transformers import AutoTokenizer
    plain = AutoTokenizer.from_pretrained(str(folder))
    remote = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=True)
    theirs = plain(paragraphs, add_special_tokens=False)["input_ids"]
    ours = [ids.tolist() for ids in stage.encode_batch(paragraphs)]
    return dict(paragraphs=len(paragraphs), identical=sum(a == b for a, b in zip(ours, theirs)),
                decoded=sum(plain.decode(ids) == p for ids, p in zip(theirs, paragraphs)),
                decoded_remote_code=sum(remote.decode(ids) == p for ids, p in zip(theirs, paragraphs)))


def bits_per_byte_both_ways(export: Path, corpora: dict) -> list[dict]:
    ours, theirs = EVAL.Evaluated.load(export), EVAL.Evaluated.load(export, auto_tokenizer=True)
    rows = []
    for corpus, paragraphs in corpora.items():
        a, b = (EVAL.evaluate(m, paragraphs, 1024, 4, progress=False) for m in (ours, theirs))
        rows.append(dict(corpus=corpus, megababel_bpb=a["bits_per_byte"], autotokenizer_bpb=b["bits_per_byte"],
                         megababel_tokens=a["tokens"], autotokenizer_tokens=b["tokens"]))
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stages", type=int, nargs="+", default=[1000, 2000, 4000, 8000, 16000, 24000, 32000])
    p.add_argument("--paragraphs", type=int, default=2000)
    p.add_argument("--export", type=Path, default=None, help="an intermediate-stage export: its bits/byte both ways")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = p.parse_args(argv)
    from transformers import AutoTokenizer

    tokenizer = Tokenizer.load(SHARED / "tokenizers" / "llama2" / "tokenizer.model")
    rankings = {"TinyStories": VocabRanking.load(tinystories(SPEED_STAGES) / "ranking.json", tokenizer),
                "Wikipedia": VocabRanking.load(wikipedia([1000, 2000, 4000]) / "ranking.json", tokenizer)}
    corpora = {name: [d for _, d in zip(range(args.paragraphs), read_documents(str(path)))]
               for name, path in CORPORA.items()}
    if args.export:
        info = json.loads((args.export / "megababel.json").read_text())
        rows = bits_per_byte_both_ways(args.export, corpora)
        lines = [f"{args.export.name}: vocabulary {info['active_vocab_size']} of 32000, first {args.paragraphs} "
                 f"paragraphs", "", "| corpus | tools/eval.py bits/byte | AutoTokenizer bits/byte | difference | "
                 "tokens (eval.py / AutoTokenizer) |", "|---|---|---|---|---|"]
        lines += [f"| {r['corpus']} | {r['megababel_bpb']:.3f} | {r['autotokenizer_bpb']:.3f} | "
                  f"{r['autotokenizer_bpb'] - r['megababel_bpb']:+.3f} | {r['megababel_tokens']:,} / "
                  f"{r['autotokenizer_tokens']:,} |" for r in rows]
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "stage_tokenizer_bpb.json").write_text(
            json.dumps(dict(export=str(args.export), rows=rows), indent=1))
        (args.out / "stage_tokenizer_bpb.md").write_text("\n".join(lines) + "\n")
        print("\n".join(lines))
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        export = Path(tmp) / "full"
        export.mkdir()
        save_tokenizer(tokenizer, export)                 # exactly what tools/convert_to_hf.py writes
        full_spec = json.loads((export / "tokenizer.json").read_text())
        full = AutoTokenizer.from_pretrained(str(export))
        for ranking_name, ranking in rankings.items():
            for size in args.stages:
                stage = ranking.stage(tokenizer, size)
                in_stage = {tokenizer.sp.id_to_piece(int(i)) for i in ranking.order[:size]}
                trimmed_dir = Path(tmp) / "trimmed"
                shutil.rmtree(trimmed_dir, ignore_errors=True)
                shutil.copytree(export, trimmed_dir)
                (trimmed_dir / "tokenizer.json").write_text(
                    json.dumps(trimmed_merges(full_spec, in_stage), ensure_ascii=False))
                trimmed = AutoTokenizer.from_pretrained(str(trimmed_dir))
                stage_dir = Path(tmp) / f"stage-{ranking_name}-{size}"
                stage_dir.mkdir()
                save_stage_tokenizer(stage, stage_dir, 4096)
                for corpus, paragraphs in corpora.items():
                    row = dict(ranking=ranking_name, stage=size, corpus=corpus, variant="stage export",
                               **stage_export_agreement(stage_dir, stage, paragraphs))
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                    for variant, hf in (("full", full), ("trimmed merges", trimmed)):
                        row = dict(ranking=ranking_name, stage=size, corpus=corpus, variant=variant,
                                   **agreement(hf, stage, paragraphs))
                        rows.append(row)
                        print(json.dumps(row), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "stage_tokenizer.json").write_text(json.dumps(rows, indent=1))
    counts = ", ".join(f"{name} {len(paragraphs):,}" for name, paragraphs in corpora.items())
    lines = [f"Paragraphs whose AutoTokenizer ids equal SentencePiece's stage encoding (the first paragraphs: "
             f"{counts}); in brackets, the share of AutoTokenizer's tokens (full tokenizer.json) that are out of the "
             f"stage", "",
             "| ranking | stage | " + " | ".join(f"{c}: full | {c}: trimmed merges | {c}: stage export"
                                                for c in CORPORA) + " |",
             "|---|---|" + "---|---|---|" * len(CORPORA)]
    decoded = [[] for _ in range(2)]
    for ranking_name in rankings:
        for size in args.stages:
            cells = []
            for corpus in CORPORA:
                by = {r["variant"]: r for r in rows
                      if (r["ranking"], r["stage"], r["corpus"]) == (ranking_name, size, corpus)}
                f, t, e = by["full"], by["trimmed merges"], by["stage export"]
                cells += [f"{100 * f['identical'] / f['paragraphs']:.1f}% ({100 * f['out_of_stage_tokens']:.1f}%)",
                          f"{100 * t['identical'] / t['paragraphs']:.1f}%",
                          f"{100 * e['identical'] / e['paragraphs']:.1f}%"]
                decoded[0].append(e["decoded"] / e["paragraphs"])
                decoded[1].append(e["decoded_remote_code"] / e["paragraphs"])
            lines.append(f"| {ranking_name} | {size} | " + " | ".join(cells) + " |")
    lines += ["", f"Stage export, decode(encode(paragraph)) == paragraph: {100 * min(decoded[0]):.1f}-"
              f"{100 * max(decoded[0]):.1f}% of paragraphs per stage and corpus with the plain SentencePiece backend "
              f"(byte pieces print as <0x..>, outer spaces are stripped), {100 * min(decoded[1]):.1f}-"
              f"{100 * max(decoded[1]):.1f}% with trust_remote_code=True."]
    (args.out / "stage_tokenizer.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
