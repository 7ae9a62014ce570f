"""Documents from txt, jsonl and parquet files, local Hugging Face datasets, or a Hub dataset by name (when online).

Local Hugging Face datasets (needs `datasets`): a directory written by `Dataset.save_to_disk` (or a DatasetDict's,
then DIR:split, default train), read from its memory-mapped Arrow files; or a directory of .parquet / .jsonl /
.json shards (a Hub dataset's files, downloaded), streamed by `datasets` in name order, so inputs larger than
memory work.

Every reader yields plain strings, one per document, in file order, so the same documents stored in any of the
formats produce identical token shards. Errors name the file, the place in it, and the fix.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterator

TXT_MODES = ("paragraph", "line", "file")
TEXT_SUFFIXES = (".txt", ".text", ".raw", ".md")


class DataError(ValueError):
    pass


def _read_text(path: Path, errors: str) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8", errors=errors)
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid UTF-8 at byte {e.start} ({data[e.start:e.start + 4]!r}); fix the file "
                        f"or pass --encoding-errors replace") from None


def read_txt(path: Path, mode: str = "paragraph", errors: str = "strict") -> Iterator[str]:
    """paragraph: documents separated by blank lines; line: one document per line; file: the whole file."""
    if mode not in TXT_MODES:
        raise DataError(f"txt mode {mode!r} is not one of {TXT_MODES}")
    text = _read_text(path, errors)
    if mode == "file":
        parts = [text]
    elif mode == "line":
        parts = text.split("\n")
    else:
        parts = re.split(r"\n[ \t]*\n", text)
    for part in parts:
        part = part.strip("\n")
        if part.strip():
            yield part


def read_jsonl(path: Path, text_key: str = "text", errors: str = "strict") -> Iterator[str]:
    for number, line in enumerate(_read_text(path, errors).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{number}: not valid JSON ({e.msg}); each line must be one JSON object") from None
        if not isinstance(record, dict) or text_key not in record:
            keys = sorted(record) if isinstance(record, dict) else type(record).__name__
            raise DataError(f"{path}:{number}: no field {text_key!r} (found {keys}); pass --text-key")
        if not isinstance(record[text_key], str):
            raise DataError(f"{path}:{number}: field {text_key!r} is {type(record[text_key]).__name__}, not text")
        if record[text_key].strip():
            yield record[text_key]


def read_parquet(path: Path, text_key: str = "text", batch_rows: int = 4096) -> Iterator[str]:
    import pyarrow.parquet as pq

    try:
        file = pq.ParquetFile(path)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types
        raise DataError(f"{path}: cannot read as parquet ({e})") from None
    columns = file.schema_arrow.names
    if text_key not in columns:
        raise DataError(f"{path}: no column {text_key!r} (columns: {columns}); pass --text-key")
    for batch in file.iter_batches(batch_size=batch_rows, columns=[text_key]):
        for value in batch.column(0).to_pylist():
            if value is not None and value.strip():
                yield value


def read_hf_dataset(name: str, text_key: str = "text") -> Iterator[str]:
    """`owner/name` or `owner/name:split` (default split train), streamed; needs `datasets` and a network."""
    repo, _, split = name.partition(":")
    try:
        import datasets
    except ImportError:
        raise DataError(f"hf:{name}: reading Hub datasets needs the `datasets` package (pip install datasets), "
                        f"or download the files and pass them as txt/jsonl/parquet") from None
    try:
        stream = datasets.load_dataset(repo, split=split or "train", streaming=True)
        for record in stream:
            if text_key not in record:
                raise DataError(f"hf:{name}: no field {text_key!r} (found {sorted(record)}); pass --text-key")
            if record[text_key].strip():
                yield record[text_key]
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001
        raise DataError(f"hf:{name}: cannot load from the Hugging Face Hub ({type(e).__name__}: {e}); offline, "
                        f"download the files and pass them as txt/jsonl/parquet") from None


SHARD_SUFFIXES = {".parquet": "parquet", ".jsonl": "json", ".json": "json"}


def _local_dataset(source: str) -> tuple[Path, str | None] | None:
    """(directory, split) when `source` is a local Hugging Face dataset directory (DIR or DIR:split), else None."""
    path, split = Path(source), None
    if not path.is_dir() and ":" in source:
        head, _, tail = source.rpartition(":")
        if Path(head).is_dir() and "/" not in tail:
            path, split = Path(head), tail
    return (path, split) if path.is_dir() else None


def _import_datasets(source: str):
    try:
        import datasets
    except ImportError:
        raise DataError(f"{source}: a dataset directory needs the `datasets` package (pip install datasets)") from None
    return datasets


def read_local_dataset(path: Path, split: str | None, text_key: str = "text") -> Iterator[str]:
    """A save_to_disk directory (Dataset or DatasetDict), or a directory of parquet / json(l) shards (streamed)."""
    datasets = _import_datasets(str(path))
    if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
        data = datasets.load_from_disk(str(path))
        if isinstance(data, datasets.DatasetDict):
            if (split or "train") not in data:
                raise DataError(f"{path}: no split {split or 'train'!r} (splits: {sorted(data)}); pass {path}:SPLIT")
            data = data[split or "train"]
    else:
        shards = sorted(p for p in path.rglob("*") if p.suffix in SHARD_SUFFIXES)
        kinds = {SHARD_SUFFIXES[p.suffix] for p in shards}
        if len(kinds) != 1:
            raise DataError(f"{path}: a dataset directory holds a save_to_disk dataset or .parquet / .jsonl shards of "
                            f"one kind (found {sorted(kinds) or 'none'})")
        data = datasets.load_dataset(kinds.pop(), data_files=[str(p) for p in shards], split="train",
                                     streaming=True)
    if text_key not in (data.column_names or []):
        raise DataError(f"{path}: no column {text_key!r} (columns: {data.column_names}); pass --text-key")
    for record in data.select_columns([text_key]):
        value = record[text_key]
        if value is not None and value.strip():
            yield value


def check_source(source: str) -> None:
    """Fail early (before any compute) on a missing, empty or unknown input."""
    if source.startswith("hf:"):
        return
    local = _local_dataset(source)
    if local is not None:
        _import_datasets(source)
        return
    path = Path(source)
    if not path.is_file():
        raise DataError(f"{source}: no such file or dataset directory")
    if path.stat().st_size == 0:
        raise DataError(f"{source}: the file is empty")
    if path.suffix not in TEXT_SUFFIXES + (".jsonl", ".json", ".parquet"):
        raise DataError(f"{source}: unknown format {path.suffix!r}; use text ({', '.join(TEXT_SUFFIXES)}), .jsonl "
                        f"or .parquet, or hf:owner/name")


def read_documents(source: str, text_key: str = "text", txt_mode: str = "paragraph",
                   errors: str = "strict") -> Iterator[str]:
    """Documents of one input: a .txt/.jsonl/.parquet path, a local dataset directory (DIR[:split]), or
    hf:owner/name[:split]."""
    check_source(source)
    if source.startswith("hf:"):
        return read_hf_dataset(source[3:], text_key)
    local = _local_dataset(source)
    if local is not None:
        return read_local_dataset(*local, text_key)
    path = Path(source)
    if path.suffix in TEXT_SUFFIXES:
        return read_txt(path, txt_mode, errors)
    if path.suffix in (".jsonl", ".json"):
        return read_jsonl(path, text_key, errors)
    return read_parquet(path, text_key)
