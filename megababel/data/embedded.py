"""The embedded default corpus: what the main job trains on when it is given no data.

The corpus is the docstrings of a fixed list of Python standard-library modules (~2,400 documents, ~0.67 MB of real
English technical prose): every machine that runs megababel already has it, so the main job needs no download, no
network and no ../shared. `build_embedded_dataset` trains a SentencePiece tokenizer on it with the Llama 2 recipe and
preprocesses it into vocabulary stages, exactly as tools/preprocess_data.py does for real corpora; the result is
cached, keyed by the corpus' hash (docstrings differ between Python versions).
"""
from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import os
import shutil
import warnings
from pathlib import Path

STDLIB_MODULES = (
    "argparse", "ast", "asyncio", "bisect", "calendar", "codecs", "collections", "concurrent.futures",
    "configparser", "contextlib", "copy", "csv", "dataclasses", "datetime", "decimal", "difflib", "doctest", "email",
    "enum", "fractions", "ftplib", "functools", "gettext", "glob", "gzip", "heapq", "http.client", "http.server",
    "imaplib", "inspect", "io", "ipaddress", "itertools", "json", "locale", "logging", "mailbox", "mimetypes",
    "numbers", "optparse", "os", "pathlib", "pdb", "pickle", "platform", "plistlib", "pprint", "queue", "random",
    "re", "sched", "selectors", "shelve", "shlex", "shutil", "smtplib", "socket", "sqlite3", "ssl", "statistics",
    "string", "subprocess", "tarfile", "tempfile", "textwrap", "threading", "timeit", "tokenize", "traceback",
    "typing", "unittest", "urllib.parse", "urllib.request", "uuid", "wave", "weakref", "xml.dom.minidom", "zipfile",
    "zoneinfo",
)
BYTE_VOCAB = 258
BOS, EOS = 256, 257


def embedded_corpus() -> list[str]:
    """Docstrings (module, classes, functions, methods) of STDLIB_MODULES, in a fixed order, one per document."""
    docs, seen = [], set()

    def add(obj):
        doc = inspect.getdoc(obj)
        if doc and len(doc) > 40 and doc not in seen:
            seen.add(doc)
            docs.append(doc)

    with warnings.catch_warnings():  # some modules warn when their deprecated members are touched
        warnings.simplefilter("ignore")
        for name in STDLIB_MODULES:
            _add_module(importlib.import_module(name), add)
    return docs


def _add_module(module, add):
    add(module)
    for _, member in sorted(vars(module).items()):
        if getattr(member, "__module__", None) != module.__name__:
            continue
        add(member)
        if inspect.isclass(member):
            for _, method in sorted(vars(member).items()):
                if callable(method):
                    add(method)


EMBEDDED_TOKENIZER_SIZE = 4000
EMBEDDED_STAGES = (1000, 2000, 4000)


def default_cache_dir() -> Path:
    return Path(os.environ.get("MEGABABEL_CACHE", Path.home() / ".cache" / "megababel"))


def build_embedded_dataset(cache_dir: str | os.PathLike | None = None, progress: bool = False) -> Path:
    """The embedded corpus as a dataset directory (tokenizer, ranking, vocab_1000/2000/4000), built once."""
    from megababel.data.tokenizer import train_sentencepiece
    from megababel.data.preprocess import preprocess
    from megababel.data.shards import INDEX

    docs = embedded_corpus()
    digest = hashlib.sha256("\x00".join(docs).encode()).hexdigest()[:12]
    out = Path(cache_dir or default_cache_dir()) / f"embedded-{digest}"
    if all((out / f"vocab_{size}" / INDEX).is_file() for size in EMBEDDED_STAGES):
        return out
    work = out.with_name(f"{out.name}.building-{os.getpid()}")     # one per process: tests build it in parallel
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    (work / "docs.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    tokenizer = train_sentencepiece(docs, EMBEDDED_TOKENIZER_SIZE, work / "source_tokenizer.model")
    preprocess([str(work / "docs.jsonl")], work / "dataset", tokenizer, list(EMBEDDED_STAGES), valid_every=20,
               progress=progress)
    complete = lambda: all((out / f"vocab_{size}" / INDEX).is_file() for size in EMBEDDED_STAGES)  # noqa: E731
    if not complete():
        shutil.rmtree(out, ignore_errors=True)
        try:
            os.replace(work / "dataset", out)           # appears complete or not at all
        except OSError:                                 # another process's build landed first: use that one
            if not complete():
                raise
    shutil.rmtree(work)
    return out
