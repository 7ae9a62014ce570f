"""`megababel-export-family`: export a run's model family (--keep-generations) as Hugging Face models and a family card.

    python tools/export_family.py runs/a family/a
    megababel-export-family runs/a family/a   # the same, installed

The code and every option: megababel/cli/export_family.py (`megababel-export-family --help`).
"""
from megababel.cli.export_family import main

if __name__ == "__main__":
    main()
