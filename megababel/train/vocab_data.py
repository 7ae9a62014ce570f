"""The data of one vocabulary stage: this rank's training loader and the validation batches, and the check that a
dataset holds every vocabulary stage a schedule uses, before any compute."""
from __future__ import annotations

import math
from pathlib import Path

from megababel.config import ConfigError
from megababel.data.loader import PackedLoader
from megababel.data.readers import DataError
from megababel.data.shards import TokenDataset
from megababel.plan.schedule import Schedule
from megababel.train.run_config import RunConfig


class VocabData:
    """This rank's training loader (at the generation's `seq_len`) and the (shared) validation batches of one
    vocabulary stage. Validation is always at the run's --seq-len, so every generation is measured alike."""

    def __init__(self, data: Path, size: int, run: RunConfig, dp_rank: int, dp_world: int, rank_batch: int,
                 seq_len: int, previous: "VocabData | None" = None):
        self.size = size
        train, valid = TokenDataset(data / f"vocab_{size}", "train"), TokenDataset(data / f"vocab_{size}", "valid")
        # a rank's share of the global batch, all micro-batches of an accumulated step together: the global batch
        # is the same consecutive sequences whatever the micro batch, accumulation and number of ranks
        self.loader = PackedLoader(train, seq_len, rank_batch, dp_rank=dp_rank, dp_world=dp_world,
                                   seed=run.seed)
        if previous is not None:
            self.loader.continue_from(previous.loader)
        # the same global batches whatever the layout: each data-parallel rank evaluates its slice, and
        # engine.evaluate averages over ranks
        val = PackedLoader(valid, run.seq_len, run.micro_batch_size, dp_rank=dp_rank, dp_world=dp_world, seed=12345)
        self.val_batches = [val.next_batch() for _ in range(min(run.eval_batches, val.sequences_per_epoch //
                                                                val.global_batch))]
        # every target in the packed stream is a document token, an EOS or a BOS
        self.valid_tokens_per_byte = (valid.n_tokens + 2 * valid.n_docs) / max(1, valid.n_bytes)
        self.train_tokens_per_byte = (train.n_tokens + 2 * train.n_docs) / max(1, train.n_bytes)

    def valid_bits_per_byte(self, loss: float) -> float:
        return loss * self.valid_tokens_per_byte / math.log(2)

    def train_bits_per_byte(self, loss: float) -> float:
        return loss * self.train_tokens_per_byte / math.log(2)


def check_data(data: Path, schedule: Schedule, run: RunConfig, dp_world: int, reads: list | None = None):
    """Every vocabulary stage the schedule uses: both splits readable, every global batch it is read with (`reads`:
    (vocabulary size, sequence length, sequences per rank per step) per generation; default one micro batch of
    --seq-len) fits in the training split, and one validation batch in the validation split. Before any compute."""
    available = sorted(int(d.name.split("_")[1]) for d in data.glob("vocab_*") if (d / "index.json").is_file())
    missing = [v for v in schedule.vocab_sizes() if v not in available]
    if missing:
        raise ConfigError(f"the schedule uses vocabulary stages {missing} that {data} does not have (available: "
                          f"{available}); preprocess them with tools/preprocess_data.py --stages ...")
    reads = reads or [(size, run.seq_len, run.micro_batch_size) for size in schedule.vocab_sizes()]
    checks = [(size, "train", seq_len, batch) for size, seq_len, batch in reads] + \
        [(size, "valid", run.seq_len, run.micro_batch_size) for size in schedule.vocab_sizes()]
    for size, split, seq_len, batch in checks:
        try:
            PackedLoader(TokenDataset(data / f"vocab_{size}", split), seq_len, batch, dp_world=dp_world)
        except DataError as e:
            raise ConfigError(f"--data {data}, vocabulary stage {size}, {split} split: {e}; use a smaller "
                              f"--seq-len / --micro-batch-size or more data") from None
    for name in ("tokenizer.model", "ranking.json"):
        if not (data / name).is_file():
            raise ConfigError(f"--data {data} has no {name}: make it with tools/preprocess_data.py")
