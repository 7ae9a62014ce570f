"""`megababel-model-size`: parameters and training FLOPs of a Llama config, and per-rank memory of a run.

    python tools/model_size.py --hidden-size 512 --num-hidden-layers 8
    megababel-model-size --hidden-size 512 --num-hidden-layers 8   # the same, installed

The code and every option: megababel/cli/model_size.py (`megababel-model-size --help`).
"""
from megababel.cli.model_size import main

if __name__ == "__main__":
    main()
