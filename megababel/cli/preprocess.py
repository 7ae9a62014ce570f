"""Tokenize a corpus into memory-mappable shards, one set per vocabulary stage, plus the frequency ranking.

    # TinyStories (local txt, stories separated by blank lines), Llama 2 tokenizer, three vocabulary stages + the full
    megababel-preprocess ../shared/data/tinystories/train.txt --valid-input ../shared/data/tinystories/valid.txt \\
        --tokenizer ../shared/data/tokenizers/llama2/tokenizer.model --stages 500 2000 8000 32000 --out data/tinystories

    # SlimPajama-style jsonl / parquet files (field or column "text"), 1% held out for validation
    megababel-preprocess chunk1.jsonl chunk2.jsonl --tokenizer meta-llama/Llama-2-7b-hf --stages 32000 --out data/sp
    megababel-preprocess part-*.parquet --text-key content --tokenizer tok.model --stages 4000 --out data/pq

    # a Hugging Face dataset by name (online, needs `pip install datasets`)
    megababel-preprocess hf:roneneldan/TinyStories:train --tokenizer tok.model --stages 8000 --out data/ts

    # the same, from a checkout
    python tools/preprocess_data.py chunk1.jsonl --tokenizer tok.model --stages 4000 32000 --out data/sp

    # a second corpus to mix with the first in one run (training.data): the same tokenizer and model rows
    megababel-preprocess stories.txt --tokenizer tok.model --stages 4000 32000 --ranking data/sp/ranking.json \
        --out data/stories

    # per-document difficulty scores (length, rarity) for a dataset made before they were written
    megababel-preprocess --difficulty data/sp

Writes OUT/tokenizer.model, OUT/ranking.json, OUT/vocab_<V>/ (index.json + shards, splits train and valid) and
OUT/difficulty/ (per-document scores, megababel/data/difficulty.py).
An interrupted run leaves no index.json, so it can never be mistaken for a complete dataset.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from megababel.cli.arguments import entry_point, non_negative_int, positive_int
from megababel.data.difficulty import write_difficulty
from megababel.data.preprocess import preprocess
from megababel.data.readers import TXT_MODES, DataError
from megababel.data.tokenizer import Tokenizer, TokenizerError


@entry_point
def main(argv=None) -> dict:
    alone = argparse.ArgumentParser(add_help=False)
    alone.add_argument("--difficulty", type=Path, default=None)
    known, rest = alone.parse_known_args(argv)
    if known.difficulty is not None:          # scores for an existing dataset, nothing else
        if rest:
            alone.exit(2, f"error: --difficulty DIR takes no other argument (got {' '.join(rest)})\n")
        try:
            written = write_difficulty(known.difficulty)
        except DataError as e:
            alone.exit(2, f"error: {e}\n")
        print("\n".join(map(str, written)))
        return dict(difficulty=[str(w) for w in written])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("inputs", nargs="+", help=".txt, .jsonl or .parquet files, local dataset directories (save_to_disk, "
                   "or parquet / jsonl shards; DIR:split), or hf:owner/name[:split]")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--tokenizer", required=True, help="SentencePiece .model file, a directory with tokenizer.model, "
                                                      "or a Hugging Face repo id")
    p.add_argument("--stages", nargs="+", type=positive_int, required=True, help="vocabulary stage sizes to encode")
    p.add_argument("--valid-input", nargs="*", default=[], help="documents for the validation split")
    p.add_argument("--valid-every", type=non_negative_int, default=100,
                   help="without --valid-input: every N-th document goes to validation (default 100; 0: none)")
    p.add_argument("--text-key", default="text", help="jsonl field / parquet column holding the text")
    p.add_argument("--txt-mode", default="paragraph", choices=TXT_MODES,
                   help="txt documents: paragraphs separated by blank lines (default), lines, or whole files")
    p.add_argument("--encoding-errors", default="strict", choices=("strict", "replace"))
    p.add_argument("--workers", type=positive_int, default=2, help="tokenizer threads")
    p.add_argument("--shard-tokens", type=positive_int, default=1 << 26, help="tokens per shard file")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p.add_argument("--ranking", type=Path, default=None, help="another dataset's ranking.json: share its model rows "
                   "(to mix the two datasets in one run) instead of ranking this corpus's pieces")
    p.add_argument("--difficulty", type=Path, default=None, metavar="DIR", help="only write DIR's per-document "
                   "difficulty scores (a dataset made before they were written); no other argument")
    args = p.parse_args(argv)
    try:
        tokenizer = Tokenizer.load(args.tokenizer)
        stats = preprocess(args.inputs, args.out, tokenizer, args.stages, valid_sources=args.valid_input,
                           valid_every=args.valid_every, workers=args.workers, text_key=args.text_key,
                           txt_mode=args.txt_mode, encoding_errors=args.encoding_errors,
                           shard_tokens=args.shard_tokens, overwrite=args.overwrite, ranking=args.ranking)
    except (DataError, TokenizerError) as e:
        p.exit(2, f"error: {e}\n")
    print(json.dumps(stats, indent=1))
    return stats


if __name__ == "__main__":
    main()
