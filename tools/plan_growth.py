"""`megababel-plan`: plan a growth schedule from the final model and a budget.

    python tools/plan_growth.py --final tinystories --tokens-per-parameter 1 --seq-len 256
    megababel-plan --final tinystories --tokens-per-parameter 1 --seq-len 256   # the same, installed

The code and every option: megababel/cli/plan_growth.py (`megababel-plan --help`).
"""
from megababel.cli.plan_growth import main

if __name__ == "__main__":
    main()
