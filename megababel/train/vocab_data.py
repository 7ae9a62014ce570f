"""The data of one vocabulary stage: this rank's training loader (one dataset, or a mixture of the run's datasets and
their difficulty slices) and the validation batches, and the check, before any compute, that the datasets hold what
the schedule reads."""
from __future__ import annotations

import math
from pathlib import Path

from megababel.config import ConfigError
from megababel.data.difficulty import document_scores, documents_in
from megababel.data.loader import PackedLoader
from megababel.data.mixture import MixtureLoader
from megababel.data.sources import SourceKey
from megababel.data.readers import DataError
from megababel.data.shards import TokenDataset
from megababel.plan.schedule import Schedule
from megababel.train.run_config import RunConfig


def source_loader(datasets: dict[str, Path], key: str, size: int, seq_len: int, batch: int, dp_rank: int,
                  dp_world: int, seed: int) -> PackedLoader:
    """The training loader of one mixture source at vocabulary stage `size`: its dataset, or the documents of its
    difficulty slice."""
    source = SourceKey.parse(key)
    train = TokenDataset(datasets[source.name] / f"vocab_{size}", "train")
    documents = None
    if source.metric is not None:
        scores = document_scores(datasets[source.name], "train", source.metric, train.n_docs)
        documents = documents_in(scores, source.low, source.high)
    return PackedLoader(train, seq_len, batch, dp_rank=dp_rank, dp_world=dp_world, seed=seed, documents=documents)


class VocabData:
    """This rank's training loader (at the generation's `seq_len`, reading its `mixture` of `sources`, or the one
    dataset when None) and the (shared) validation batches of one vocabulary stage. Validation is always the first
    dataset's valid split at the run's --seq-len, so every generation is measured alike."""

    def __init__(self, datasets: dict[str, Path], size: int, run: RunConfig, dp_rank: int, dp_world: int,
                 rank_batch: int, seq_len: int, mixture: dict | None = None, sources=(),
                 previous: "VocabData | None" = None):
        self.size = size
        first = next(iter(datasets.values()))
        valid = TokenDataset(first / f"vocab_{size}", "valid")
        # a rank's share of the global batch, all micro-batches of an accumulated step together: the global batch
        # is the same consecutive sequences whatever the micro batch, accumulation and number of ranks
        if mixture is None:
            train = TokenDataset(first / f"vocab_{size}", "train")
            self.loader = PackedLoader(train, seq_len, rank_batch, dp_rank=dp_rank, dp_world=dp_world, seed=run.seed)
        else:
            loaders = {key: source_loader(datasets, key, size, seq_len, 1, dp_rank, dp_world, run.seed)
                       for key in sources}
            self.loader = MixtureLoader(loaders, mixture, rank_batch, dp_rank, dp_world)
            train = loaders[max(mixture, key=mixture.get)].dataset      # for the training bits/byte, roughly
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

    def set_mixture(self, mixture: dict | None):
        """A growth's or curriculum change's new mixture (the sources keep their positions)."""
        if mixture is not None:
            self.loader.set_weights(mixture)

    def valid_bits_per_byte(self, loss: float) -> float:
        return loss * self.valid_tokens_per_byte / math.log(2)

    def train_bits_per_byte(self, loss: float) -> float:
        return loss * self.train_tokens_per_byte / math.log(2)


def dataset_names(data) -> dict[str, Path]:
    """The run's datasets by name: --data DIR (named after its folder) or --data NAME=DIR ... (a dict)."""
    if isinstance(data, dict):
        return {str(k): Path(v) for k, v in data.items()}
    return {Path(data).name: Path(data)}


def check_data(datasets: dict[str, Path], schedule: Schedule, run: RunConfig, dp_world: int, reads: list):
    """Every vocabulary stage the schedule reads, in every dataset it reads it from: both splits readable, every
    global batch it is read with (`reads`: (vocabulary size, sequence length, sequences per rank per step, mixture
    or None) per generation and curriculum change) fits in the training split (a mixture source: its share of it),
    and one validation batch in the first dataset's validation split; the datasets share one tokenizer and
    vocabulary ranking; the difficulty slices have scores. Before any compute."""
    from megababel.train.record import vocabulary_fingerprints
    first_name, first = next(iter(datasets.items()))
    sources = schedule.data_sources()
    if not sources and len(datasets) > 1:
        raise ConfigError(f"--data names {len(datasets)} datasets ({', '.join(datasets)}) but the schedule gives no "
                          f"mixture: set training.data, e.g. {{{first_name}: 1.0}}")
    for key in sources:
        if SourceKey.parse(key).name not in datasets:
            raise ConfigError(f"the schedule's data source {key!r} names no dataset: give --data "
                              f"{SourceKey.parse(key).name}=DIR (datasets given: {', '.join(datasets)})")
    for name, directory in datasets.items():
        used = set(schedule.vocab_sizes()) if directory == first else set()    # validation: every stage
        for size, _, _, mixture in reads:
            if mixture and name in {SourceKey.parse(k).name for k, w in mixture.items() if w > 0}:
                used.add(size)
        used = sorted(used)
        available = sorted(int(d.name.split("_")[1]) for d in directory.glob("vocab_*") if (d / "index.json").is_file())
        missing = [v for v in used if v not in available]
        if missing:
            raise ConfigError(f"the schedule uses vocabulary stages {missing} that {directory} does not have "
                              f"(available: {available}); preprocess them with tools/preprocess_data.py --stages ...")
    for name in ("tokenizer.model", "ranking.json"):
        for directory in datasets.values():
            if not (directory / name).is_file():
                raise ConfigError(f"--data {directory} has no {name}: make it with tools/preprocess_data.py")
    mine = vocabulary_fingerprints(first)
    for name, directory in datasets.items():
        if vocabulary_fingerprints(directory) != mine:
            raise ConfigError(f"--data {name}={directory} was tokenized with another tokenizer or vocabulary ranking "
                              f"than {first}: one mixture needs one vocabulary; preprocess it again with "
                              f"megababel-preprocess --ranking {first / 'ranking.json'}")
    checks = []        # (directory, vocabulary size, split, seq_len, sequences per step, source or None)
    for size, seq_len, batch, mixture in reads:
        if mixture is None:
            checks.append((first, size, "train", seq_len, batch * dp_world, None))
        for key, weight in (mixture or {}).items():
            if weight > 0:
                share = math.ceil(weight * batch * dp_world) + 1
                checks.append((datasets[SourceKey.parse(key).name], size, "train", seq_len, share, key))
        checks.append((first, size, "valid", run.seq_len, run.micro_batch_size * dp_world, None))
    for directory, size, split, seq_len, sequences, key in dict.fromkeys(checks):
        where = f"--data {directory}, vocabulary stage {size}, {split} split" + (f" (source {key})" if key else "")
        if not (directory / f"vocab_{size}" / "index.json").is_file():
            raise ConfigError(f"the schedule uses vocabulary stage {size} that {directory} does not have; "
                              f"preprocess it with tools/preprocess_data.py --stages ...")
        try:
            if key is None:
                loader = PackedLoader(TokenDataset(directory / f"vocab_{size}", split), seq_len, 1)
            else:
                loader = source_loader(datasets, key, size, seq_len, 1, 0, 1, 0)
            loader.check_fits(seq_len, sequences)
        except DataError as e:
            raise ConfigError(f"{where}: {e}; use a smaller --seq-len / --micro-batch-size or more data") from None
