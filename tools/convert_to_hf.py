"""`megababel-export`: export a megababel checkpoint to a Hugging Face LlamaForCausalLM directory.

    python tools/convert_to_hf.py runs/a/checkpoints hf/a
    megababel-export runs/a/checkpoints hf/a   # the same, installed

The code and every option: megababel/cli/export_hf.py (`megababel-export --help`).
"""
from megababel.cli.export_hf import main

if __name__ == "__main__":
    main()
