"""Data pipeline speed: preprocessing, per-stage encoding strategies, and the loader, against training consumption.

    python bench/data_speed.py                                   # TinyStories 2 MiB from ../shared/data, Llama 2
    python bench/data_speed.py --input corpus.jsonl --tokenizer tok.model --stages 500 2000 8000 32000

Measures, on 2 cores:
1. preprocessing throughput (tools/preprocess_data.py's code: pass 1 + one encoding per stage);
2. the two ways to get per-stage data: (a) encode the text under the stage, (b) remap full-vocabulary tokens to
   their segmentation under the stage (a lookup table, vectorised; what preprocessing does). For (b) it reports
   speed, how many documents come out identical to (a), and the token count difference;
3. the loader's tokens/s (PackedLoader, seq 256, batch 8), compared with the 60M model's training step
   (bench/README.md: ~1500 tokens/s bf16, ~600 fp32 on this machine).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
from megababel.data.loader import PackedLoader
from megababel.data.preprocess import preprocess, stage_dir
from megababel.data.readers import read_documents
from megababel.data.shards import TokenDataset
from megababel.data.tokenizer import Tokenizer, VocabRanking

SHARED = ROOT / ".." / "shared" / "data"
TRAINING_TOKENS_PER_S = {"bf16": 1500, "fp32": 600}   # 60M config, bench/README.md


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--input", default=str(SHARED / "tinystories" / "train.txt"))
    p.add_argument("--tokenizer", default=str(SHARED / "tokenizers" / "llama2" / "tokenizer.model"))
    p.add_argument("--stages", nargs="+", type=int, default=[500, 2000, 8000, 32000])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "data_speed.json")
    args = p.parse_args(argv)
    tokenizer = Tokenizer.load(args.tokenizer)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        stats = preprocess([args.input], tmp, tokenizer, args.stages, workers=args.workers, progress=False)
        total = time.perf_counter() - t0
        pass1 = stats["pass1"]
        results["preprocess"] = dict(
            total_seconds=round(total, 2), pass1_tokens_per_s=round(pass1["tokens"] / pass1["seconds"]),
            pass1_bytes_per_s=round(pass1["bytes"] / pass1["seconds"]),
            stage_tokens_per_s={k: round(v["tokens"] / v["seconds"]) for k, v in stats.items()
                                if k.startswith("vocab") and "tokens" in v})
        ranking = VocabRanking.load(Path(tmp) / "ranking.json", tokenizer)
        texts = list(read_documents(args.input))
        full_ids = [np.asarray(ids, dtype=np.int64) for ids in tokenizer.encode_batch(texts, args.workers)]
        results["on_the_fly_remap"] = {}
        for size in args.stages:
            if size == tokenizer.vocab_size:
                continue
            stage = ranking.stage(tokenizer, size)
            t0 = time.perf_counter()
            exact = stage.encode_batch(texts, args.workers)
            encode_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            stage.remap(full_ids[0][:1])            # builds the decomposition table
            table_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            remapped = [stage.remap(ids) for ids in full_ids]
            remap_s = time.perf_counter() - t0
            n_exact, n_remap = sum(map(len, exact)), sum(map(len, remapped))
            identical = sum(np.array_equal(a, b) for a, b in zip(exact, remapped))
            results["on_the_fly_remap"][size] = dict(
                exact_encode_tokens_per_s=round(n_exact / encode_s), remap_tokens_per_s=round(n_remap / remap_s),
                table_seconds=round(table_s, 2), extra_tokens_vs_exact=f"{100 * (n_remap / n_exact - 1):+.1f}%",
                documents_identical_to_exact=f"{identical}/{len(texts)}")
        largest = stage_dir(tmp, max(args.stages))
        loader = PackedLoader(TokenDataset(largest), seq_len=256, batch_size=8)
        t0, n = time.perf_counter(), 0
        while time.perf_counter() - t0 < 3.0:
            x, _ = loader.next_batch()
            n += x.numel()
        rate = n / (time.perf_counter() - t0)
        results["loader"] = dict(tokens_per_s=round(rate),
                                 **{f"x_training_{k}": round(rate / v) for k, v in TRAINING_TOKENS_PER_S.items()})
        results["preprocess"].update({f"x_training_{k}": round(results["preprocess"]["pass1_tokens_per_s"] / v)
                                      for k, v in TRAINING_TOKENS_PER_S.items()})
    print(json.dumps(results, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(dict(input=args.input, tokenizer=args.tokenizer, results=results), indent=1))


if __name__ == "__main__":
    main()
