"""`megababel-import`: start a megababel run from a Hugging Face Llama (its weights and tokenizer as a checkpoint).

    python tools/convert_from_hf.py hf/small runs/grow/init --ranking data/c/ranking.json
    megababel-import hf/small runs/grow/init --ranking data/c/ranking.json   # the same, installed

The code and every option: megababel/cli/import_hf.py (`megababel-import --help`).
"""
from megababel.cli.import_hf import main

if __name__ == "__main__":
    main()
