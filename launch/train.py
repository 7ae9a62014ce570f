"""Progressive training on DeepSpeed: the model grows (width, FFN, depth, vocabulary) while it trains.

    python launch/train.py                                       # 1 process, ZeRO-0, tiny preset, embedded corpus
    DS_ACCELERATOR=cpu deepspeed --num_gpus 2 launch/train.py --zero-stage 3      # 2 ranks, ZeRO-3 (CPU: gloo)
    deepspeed launch/train.py --zero-stage 3 --bf16 --schedule seed --data data/slimpajama --micro-batch-size 8 --seq-len 2048
    python launch/train.py --schedule my_schedule.yaml --data data/tinystories --out runs/ts
    python launch/train.py --schedule auto --final tinystories --tokens-per-parameter 1 --data data/ts --seq-len 256
    python launch/train.py --save-every 100 --keep-last 3 --out runs/a        # checkpoints in runs/a/checkpoints
    deepspeed --num_gpus 1 launch/train.py --resume runs/a/checkpoints --out runs/a   # any ZeRO stage / rank count
    sbatch --nodes=2 launch/slurm/train.sbatch --zero-stage 3 --out runs/a      # Slurm: see launch/slurm/README.md
    DS_ACCELERATOR=cpu deepspeed --num_gpus 4 launch/train.py --zero-stage 3 --tp 2  # tensor parallel 2 x data parallel 2
    deepspeed --num_gpus 8 launch/train.py --zero-stage 3 --bf16 --seq-len 2048 --micro-batch-size 4 \
        --global-batch-tokens 1048576 --activation-checkpointing    # 1M tokens per step: 16 micro-steps per rank

This script is megababel.train.cli, installed as `megababel-train` (also `python -m megababel.train` and
`deepspeed --module megababel.train`); its docstring explains every flag, resume, signals and tensor parallelism.
"""
from megababel.train.cli import entry_point, main  # noqa: F401  (main: tests and benchmarks call it in-process)

if __name__ == "__main__":
    entry_point()
