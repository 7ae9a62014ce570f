"""`megababel-eval`: perplexity and bits per byte of a Hugging Face directory or megababel checkpoint on a text file.

    python tools/eval.py hf/a valid.txt
    megababel-eval hf/a valid.txt   # the same, installed

The code and every option: megababel/cli/evaluate.py (`megababel-eval --help`).
"""
from megababel.cli.evaluate import main

if __name__ == "__main__":
    main()
