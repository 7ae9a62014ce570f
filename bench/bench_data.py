"""The benchmarks' training data: TinyStories through the Llama 2 tokenizer, from ../shared/data, preprocessed once.

    from bench_data import tinystories, wikipedia
    data = tinystories([8000, 32000])      # a dataset directory for RunConfig(data=...), cached
    data = wikipedia([1000, 2000])         # ../shared/data/wikipedia (47M Llama 2 tokens), its own validation file
    simple = simple_stories(data)          # TinyStories with that dataset's model rows: to mix the two in one run

Benchmarks train through megababel's Trainer, so they need a real dataset directory (tokenizer, ranking, one
folder per vocabulary stage), made by the same preprocessing as tools/preprocess_data.py.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
SPEED_STAGES = (8000, 16000, 24000, 32000)   # the speed benchmarks' models use the full Llama 2 vocabulary


def tinystories(stages, cache: Path | None = None, valid_paragraphs: int | None = None) -> Path:
    """TinyStories train.txt at the given vocabulary stages, validation from valid.txt (its first
    `valid_paragraphs` paragraphs, or all); built into `cache` (default: the megababel cache) unless already there."""
    return _corpus("tinystories", stages, cache, valid_paragraphs)


def wikipedia(stages, cache: Path | None = None, valid_articles: int | None = None) -> Path:
    """The Wikipedia build of ../shared/data (train.txt, 28,929 articles; valid.txt, 486 articles never in train) at
    the given vocabulary stages, validation from valid.txt (its first `valid_articles` articles, or all); built into
    `cache` (default: the megababel cache) unless already there. Enough text for ~20 tokens per parameter at a few
    million parameters without repeating any of it."""
    return _corpus("wikipedia", stages, cache, valid_articles)


def simple_stories(main: Path, cache: Path | None = None) -> Path:
    """TinyStories (train.txt, ~0.5M tokens) through `main`'s tokenizer and vocabulary ranking, at `main`'s
    vocabulary stages: the `simple` source of a data mixture (the planner's +simplefirst). Validation: its
    valid.txt."""
    from megababel.data.difficulty import stages
    from megababel.data.preprocess import preprocess
    from megababel.data.tokenizer import Tokenizer
    from megababel.data.shards import INDEX
    wanted = stages(main)
    cache = cache or main.parent / f"{main.name}-simple-stories"
    if all((cache / f"vocab_{s}" / INDEX).is_file() for s in wanted):
        return cache
    train, valid = SHARED / "tinystories" / "train.txt", SHARED / "tinystories" / "valid.txt"
    for path in (train, valid):
        if not path.is_file():
            sys.exit(f"{path} not found: the benchmarks need ../shared/data (see its README)")
    preprocess([str(train)], cache, Tokenizer.load(main / "tokenizer.model"), wanted, valid_sources=[str(valid)],
               overwrite=True, ranking=main / "ranking.json")
    return cache


def with_difficulty(data: Path) -> Path:
    """`data` with its per-document difficulty scores (written once, for datasets made before preprocessing wrote
    them)."""
    from megababel.data.difficulty import score_path, write_difficulty
    if not score_path(data, "train", "rarity").is_file():
        write_difficulty(data)
    return data


def _corpus(name: str, stages, cache: Path | None, valid_documents: int | None) -> Path:
    """../shared/data/<name>/train.txt through the Llama 2 tokenizer at `stages`, validation from its valid.txt (the
    first `valid_documents` blank-line-separated documents, or all)."""
    from megababel.data.embedded import default_cache_dir

    stages = sorted(stages)
    if cache is None:
        cache = default_cache_dir() / (f"bench-{name}-" + "-".join(map(str, stages)) +
                                       (f"-valid{valid_documents}" if valid_documents else ""))
    if all((cache / f"vocab_{s}" / "index.json").is_file() for s in stages):
        return cache
    from megababel.data.preprocess import preprocess
    from megababel.data.tokenizer import Tokenizer
    train, valid = SHARED / name / "train.txt", SHARED / name / "valid.txt"
    llama2 = SHARED / "tokenizers" / "llama2" / "tokenizer.model"
    for path in (train, valid, llama2):
        if not path.is_file():
            sys.exit(f"{path} not found: the benchmarks need ../shared/data (see its README)")
    cache.parent.mkdir(parents=True, exist_ok=True)
    if valid_documents:
        documents = [d for d in valid.read_text().split("\n\n") if d.strip()][:valid_documents]
        valid = cache.parent / f"{cache.name}-valid-subset.txt"      # outside `cache`: preprocess empties it
        valid.write_text("\n\n".join(documents) + "\n")
    preprocess([str(train)], cache, Tokenizer.load(llama2), stages, valid_sources=[str(valid)], overwrite=True)
    return cache
