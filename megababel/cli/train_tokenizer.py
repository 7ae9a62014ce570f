"""Train a SentencePiece BPE tokenizer with the Llama 2 recipe (byte fallback, split digits, identity normalisation,
whitespace-only pieces, <unk>/<s>/</s> = 0/1/2), for corpora without the Llama 2 tokenizer file.

    megababel-train-tokenizer corpus.txt --vocab-size 8000 --out tok/tokenizer.model
    megababel-train-tokenizer part-*.parquet --text-key content --vocab-size 32000 --out tok/tokenizer.model
    megababel-train-tokenizer --embedded --vocab-size 4000 --out tok/tokenizer.model   # the embedded corpus

    python tools/train_tokenizer.py corpus.txt --vocab-size 8000 --out tok/tokenizer.model   # from a checkout

Then: megababel-preprocess corpus.txt --tokenizer tok/tokenizer.model --stages 1000 4000 8000 --out data/x
(or python tools/preprocess_data.py ...)
"""
from __future__ import annotations

import argparse
import itertools
from pathlib import Path

from megababel.cli.arguments import entry_point, positive_int
from megababel.data.embedded import embedded_corpus
from megababel.data.readers import TXT_MODES, DataError, check_source, read_documents
from megababel.data.tokenizer import TokenizerError, train_sentencepiece


@entry_point
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("inputs", nargs="*", help=".txt, .jsonl or .parquet files, or hf:owner/name[:split]")
    p.add_argument("--embedded", action="store_true", help="train on the embedded corpus (stdlib docstrings)")
    p.add_argument("--vocab-size", type=positive_int, required=True)
    p.add_argument("--out", type=Path, required=True, help="the .model file to write")
    p.add_argument("--text-key", default="text")
    p.add_argument("--txt-mode", default="paragraph", choices=TXT_MODES)
    p.add_argument("--max-documents", type=positive_int, default=None, help="train on the first N documents only")
    p.add_argument("--threads", type=positive_int, default=2)
    args = p.parse_args(argv)
    if not args.inputs and not args.embedded:
        p.error("give input files or --embedded")
    if args.vocab_size < 260:
        p.error(f"--vocab-size {args.vocab_size}: the recipe needs at least 260 pieces (3 specials, 256 bytes, '▁')")
    try:
        for source in args.inputs:
            check_source(source)
        docs = itertools.chain(embedded_corpus() if args.embedded else [],
                               *(read_documents(s, args.text_key, args.txt_mode) for s in args.inputs))
        tokenizer = train_sentencepiece(itertools.islice(docs, args.max_documents), args.vocab_size, args.out,
                                        num_threads=args.threads)
    except (DataError, TokenizerError) as e:
        p.exit(2, f"error: {e}\n")
    print(f"wrote {args.out}: {tokenizer.vocab_size} pieces (sha256 {tokenizer.sha256[:12]}...)")
    return tokenizer


if __name__ == "__main__":
    main()
