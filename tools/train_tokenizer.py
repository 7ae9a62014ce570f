"""`megababel-train-tokenizer`: train a SentencePiece BPE tokenizer with the Llama 2 recipe.

    python tools/train_tokenizer.py corpus.txt --vocab-size 8000 --out tok/tokenizer.model
    megababel-train-tokenizer corpus.txt --vocab-size 8000 --out tok/tokenizer.model   # the same, installed

The code and every option: megababel/cli/train_tokenizer.py (`megababel-train-tokenizer --help`).
"""
from megababel.cli.train_tokenizer import main

if __name__ == "__main__":
    main()
