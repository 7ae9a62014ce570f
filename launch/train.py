"""Progressive training on DeepSpeed: the model grows (width, FFN, depth, vocabulary) while it trains.

    python launch/train.py                                       # 1 process, ZeRO-0, tiny preset, embedded corpus
    DS_ACCELERATOR=cpu deepspeed --num_gpus 2 launch/train.py --zero-stage 3      # 2 ranks, ZeRO-3 (CPU: gloo)
    deepspeed launch/train.py --zero-stage 3 --bf16 --schedule seed --data data/slimpajama --seq-len 2048
    sbatch --nodes=2 launch/slurm/train.sbatch --zero-stage 3 --out runs/a      # Slurm: see launch/slurm/README.md

This script is megababel.train.cli, installed as `megababel-train` (also `python -m megababel.train` and
`deepspeed --module megababel.train`); its docstring explains every flag, resume, signals and tensor parallelism.
"""
from megababel.train.cli import entry_point, main  # noqa: F401  (main: tests and benchmarks call it in-process)

if __name__ == "__main__":
    entry_point()
