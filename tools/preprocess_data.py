"""`megababel-preprocess`: tokenize a corpus into memory-mappable shards, one set per vocabulary stage.

    python tools/preprocess_data.py corpus.txt --tokenizer tok.model --stages 4000 32000 --out data/c
    megababel-preprocess corpus.txt --tokenizer tok.model --stages 4000 32000 --out data/c   # the same, installed

The code and every option: megababel/cli/preprocess.py (`megababel-preprocess --help`).
"""
from megababel.cli.preprocess import main

if __name__ == "__main__":
    main()
