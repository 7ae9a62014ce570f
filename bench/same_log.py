"""Two runs' OUT/log.csv compared row by row in every column but the wall-clock one (tokens_per_s): a change that
must not change behaviour (a refactor) leaves the main job's log bit-identical.

    git worktree add /tmp/before HEAD~1                       # the tree before the change
    (cd /tmp/before && PYTHONPATH=$PWD DS_ACCELERATOR=cpu deepspeed --num_gpus 2 --master_port 29611 \
        launch/train.py --zero-stage 3 --out /tmp/before_run)
    DS_ACCELERATOR=cpu deepspeed --num_gpus 2 --master_port 29612 launch/train.py --zero-stage 3 --out /tmp/after_run
    python bench/same_log.py /tmp/before_run/log.csv /tmp/after_run/log.csv      # exit status 1 if they differ

(PYTHONPATH puts the other tree's package before the installed one.)
"""
from __future__ import annotations

import argparse
import csv
import sys

WALL_CLOCK = {"tokens_per_s"}


def rows(path: str) -> list[dict]:
    with open(path, newline="") as f:
        return [{k: v for k, v in row.items() if k not in WALL_CLOCK} for row in csv.DictReader(f)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("before")
    p.add_argument("after")
    args = p.parse_args(argv)
    before, after = rows(args.before), rows(args.after)
    first = next((i for i, (a, b) in enumerate(zip(before, after)) if a != b), None)
    if first is None and len(before) == len(after):
        print(f"identical: {len(before)} rows, every column but {', '.join(sorted(WALL_CLOCK))}")
        return 0
    if first is None:
        print(f"{len(before)} rows before, {len(after)} after (the first {min(len(before), len(after))} identical)")
    else:
        differ = [k for k in before[first] if before[first][k] != after[first].get(k)]
        print(f"row {first} (step {before[first].get('step')}) differs in {', '.join(differ)}: "
              f"{[before[first][k] for k in differ]} before, {[after[first].get(k) for k in differ]} after")
    return 1


if __name__ == "__main__":
    sys.exit(main())
