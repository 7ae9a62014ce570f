"""Per-document difficulty scores of a dataset, for data curricula: documents ranked by a metric, sliced by rank.

    write_difficulty(Path("data/wiki"))                    # what megababel-preprocess does at its end
    scores = document_scores(Path("data/wiki"), "train", "rarity")
    documents = documents_in(scores, 0.0, 0.5)             # the easier half, by rarity

Scores live in DATA/difficulty/<metric>.<split>.npy, one float per document, in the dataset's document order (the
same in every vocabulary stage). Built in, from the largest vocabulary stage the dataset has:
  length  the document's length in tokens
  rarity  the mean of log2(1 + row) over its tokens; rows are ranked by frequency (data/tokenizer.py's
          VocabRanking), so a text of common words scores low. Below the full vocabulary, a piece outside the stage
          counts as the smaller pieces it is split into.
Any other metric is a file the user writes there (e.g. a small reference model's loss per document); a schedule
names it like the built-in ones.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from megababel.data.readers import DataError
from megababel.data.shards import INDEX, TokenDataset

BUILT_IN = ("length", "rarity")
FOLDER = "difficulty"


def stages(root: Path) -> list[int]:
    return sorted(int(d.name.removeprefix("vocab_")) for d in Path(root).glob("vocab_*")
                  if d.name.removeprefix("vocab_").isdigit() and (d / INDEX).is_file())


def score_path(root: Path, split: str, metric: str) -> Path:
    return Path(root) / FOLDER / f"{metric}.{split}.npy"


def write_difficulty(root: Path, splits=("train", "valid")) -> list[Path]:
    """The built-in scores of every split, from the dataset's largest vocabulary stage."""
    available = stages(root)
    if not available:
        raise DataError(f"{root}: no vocabulary stage (vocab_*/{INDEX}); make the dataset with megababel-preprocess")
    folder = Path(root) / FOLDER
    folder.mkdir(exist_ok=True)
    written = []
    for split in splits:
        dataset = TokenDataset(Path(root) / f"vocab_{available[-1]}", split)
        rarity = np.array([np.log2(1.0 + dataset.doc(i)).mean() if dataset.doc_length[i] else 0.0
                           for i in range(dataset.n_docs)], dtype=np.float64)
        for metric, values in (("length", dataset.doc_length.astype(np.float64)), ("rarity", rarity)):
            path = score_path(root, split, metric)
            np.save(path.with_suffix(".tmp.npy"), values)
            path.with_suffix(".tmp.npy").replace(path)       # never a half-written score file
            written.append(path)
    return written


def document_scores(root: Path, split: str, metric: str, n_docs: int | None = None) -> np.ndarray:
    """One score per document of `split`; DataError naming the fix when there is none or it does not fit."""
    path = score_path(root, split, metric)
    if not path.is_file():
        fix = (f"megababel-preprocess --difficulty {root}" if metric in BUILT_IN else
               f"write one float per {split} document to {path} (numpy.save)")
        raise DataError(f"{root}: no {metric!r} difficulty scores for the {split} split ({path}); {fix}")
    scores = np.load(path)
    if scores.ndim != 1 or (n_docs is not None and len(scores) != n_docs) or not np.isfinite(scores).all():
        raise DataError(f"{path}: {scores.shape} scores, want one finite score per document ({n_docs}); write it "
                        f"again")
    return scores


def documents_in(scores: np.ndarray, low: float, high: float) -> np.ndarray:
    """Indices of the documents whose rank by score (lowest first, ties by index) lies in the quantile range
    [low, high) of the documents (the last range ends at 1 inclusive)."""
    n = len(scores)
    rank = np.empty(n, dtype=np.int64)
    rank[np.argsort(scores, kind="stable")] = np.arange(n)
    return np.flatnonzero((rank >= round(low * n)) & (rank < round(high * n)))
