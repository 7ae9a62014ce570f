"""Data mixtures and difficulty slices (megababel/data/mixture.py, difficulty.py): every global batch split by weight,
each source reading its own stream, ranks tiling the global batch, exact resume; slices by rank of a metric."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from megababel.config import ConfigError
from megababel.data.difficulty import document_scores, documents_in, write_difficulty
from megababel.data.loader import PackedLoader
from megababel.data.mixture import MixtureLoader
from megababel.data.sources import SourceKey, check_weights
from megababel.data.readers import DataError
from megababel.data.shards import TokenDataset


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A copy of the embedded dataset with its difficulty scores."""
    from megababel.data.embedded import build_embedded_dataset
    out = tmp_path_factory.mktemp("mix") / "embedded"
    shutil.copytree(build_embedded_dataset(), out)
    write_difficulty(out)
    return out


def loaders(root, keys, seq_len=32, dp_rank=0, dp_world=1, seed=3):
    train = TokenDataset(root / "vocab_1000", "train")
    out = {}
    for key in keys:
        source = SourceKey.parse(key)
        documents = None if source.metric is None else documents_in(
            document_scores(root, "train", source.metric, train.n_docs), source.low, source.high)
        out[key] = PackedLoader(train, seq_len, 1, dp_rank=dp_rank, dp_world=dp_world, seed=seed, documents=documents)
    return out


WEIGHTS = {"all": 0.5, "all[rarity:0-0.5]": 0.3, "all[rarity:0.5-1]": 0.2}


def test_difficulty_slices_partition_the_documents_by_rank(root):
    scores = document_scores(root, "train", "rarity")
    easy, hard = documents_in(scores, 0, 0.5), documents_in(scores, 0.5, 1)
    assert len(easy) + len(hard) == len(scores) and not set(easy) & set(hard)
    assert scores[easy].max() <= scores[hard].min()
    lengths = document_scores(root, "train", "length")
    assert np.array_equal(lengths, TokenDataset(root / "vocab_4000", "train").doc_length)   # the largest stage
    with pytest.raises(DataError, match="megababel-preprocess --difficulty"):
        document_scores(root / "vocab_1000", "train", "rarity")
    with pytest.raises(DataError, match="write one float per train document"):
        document_scores(root, "train", "refloss")


def test_every_batch_splits_by_weight_and_each_source_reads_its_own_stream(root):
    mixture = MixtureLoader(loaders(root, WEIGHTS), WEIGHTS, batch_size=10)
    alone = loaders(root, WEIGHTS)              # each source read by itself, in order
    seen = {k: [] for k in WEIGHTS}
    for step in range(7):
        slots = mixture.slots()
        drawn_before = dict(mixture.drawn)
        x, _ = mixture.next_batch()
        total = sum(mixture.drawn.values())
        assert all(abs(mixture.drawn[k] - WEIGHTS[k] * total) <= 1 for k in WEIGHTS), (step, mixture.drawn)
        for k in WEIGHTS:
            n = mixture.drawn[k] - drawn_before[k]
            rows = [x[i].numpy() for i, s in enumerate(slots) if s == k]
            assert len(rows) == n
            seen[k] += rows
    for k in WEIGHTS:
        expected = alone[k].take(len(seen[k]), range(len(seen[k])))[:, :-1]
        assert np.array_equal(np.stack(seen[k]), expected), k


def test_data_parallel_ranks_tile_the_global_batch(root):
    one = MixtureLoader(loaders(root, WEIGHTS), WEIGHTS, batch_size=6)
    ranks = [MixtureLoader(loaders(root, WEIGHTS, dp_rank=r, dp_world=3), WEIGHTS, batch_size=2, dp_rank=r,
                           dp_world=3) for r in range(3)]
    for _ in range(4):
        together = one.next_batch()[0].numpy()
        assert np.array_equal(np.concatenate([r.next_batch()[0].numpy() for r in ranks]), together)


def test_a_mixture_resumes_exactly_and_refuses_other_weights(root):
    first = MixtureLoader(loaders(root, WEIGHTS), WEIGHTS, batch_size=8)
    for _ in range(5):
        first.next_batch()
    state = json.loads(json.dumps(first.state_dict()))
    resumed = MixtureLoader(loaders(root, WEIGHTS), WEIGHTS, batch_size=8)
    resumed.load_state_dict(state)
    for _ in range(3):
        assert np.array_equal(resumed.next_batch()[0], first.next_batch()[0])
    other = {"all": 0.6, "all[rarity:0-0.5]": 0.2, "all[rarity:0.5-1]": 0.2}
    with pytest.raises(DataError, match="mixture weights"):
        MixtureLoader(loaders(root, WEIGHTS), other, batch_size=8).load_state_dict(state)
    with pytest.raises(DataError, match="same data mixture"):
        MixtureLoader(loaders(root, ["all"]), {"all": 1.0}, batch_size=8).load_state_dict(state)


def test_new_weights_keep_each_sources_position(root):
    mixture = MixtureLoader(loaders(root, WEIGHTS), WEIGHTS, batch_size=8)
    for _ in range(3):
        mixture.next_batch()
    positions = {k: l.position for k, l in mixture.loaders.items()}
    mixture.set_weights({"all": 1.0})
    x, _ = mixture.next_batch()
    assert mixture.drawn == {"all": 8, "all[rarity:0-0.5]": 0, "all[rarity:0.5-1]": 0}
    assert mixture.loaders["all[rarity:0-0.5]"].position == positions["all[rarity:0-0.5]"]
    assert mixture.loaders["all"].position == positions["all"] + 8 * 32


@pytest.mark.parametrize("weights, message", [
    ({"a": 0.5, "b": 0.4}, "sum to 0.9"), ({"a": 1.0, "b": float("nan")}, "a number >= 0"),
    ({"a[rarity:0.2-0.1]": 1.0}, "LOW < HIGH"), ({"a b": 1.0}, "NAME or NAME"), ({}, "a mapping")])
def test_bad_mixtures_are_refused_with_the_fix(weights, message):
    with pytest.raises(ConfigError, match=message):
        check_weights(weights, "training.data")


def test_source_keys_round_trip():
    assert str(SourceKey.parse("wiki[rarity:0-0.5]")) == "wiki[rarity:0-0.5]"
    assert SourceKey.parse("stories") == SourceKey("stories")
