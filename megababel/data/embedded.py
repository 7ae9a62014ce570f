"""The embedded default corpus and a byte-level stand-in tokenizer for the demo job.

The corpus is the docstrings of a fixed list of Python standard-library modules: real English text that every
machine running megababel already has, so the main job needs no download and no ../shared. Real data and the Llama 2
tokenizer come with the data pipeline; until then the demo encodes UTF-8 bytes (ids 0-255, BOS 256, EOS 257).
"""
from __future__ import annotations

import importlib
import inspect
import warnings

import torch

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


def encode_bytes(docs: list[str]) -> torch.Tensor:
    """One stream of byte ids, each document wrapped in BOS ... EOS."""
    ids = []
    for doc in docs:
        ids.append(BOS)
        ids.extend(doc.encode("utf-8"))
        ids.append(EOS)
    return torch.tensor(ids, dtype=torch.long)


def decode_bytes(ids) -> str:
    return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


def random_windows(stream: torch.Tensor, batch: int, seq: int, generator: torch.Generator):
    """(inputs, targets) of shape [batch, seq]: random windows of the stream, targets shifted by one."""
    starts = torch.randint(0, len(stream) - seq - 1, (batch,), generator=generator)
    windows = torch.stack([stream[s: s + seq + 1] for s in starts.tolist()])
    return windows[:, :-1], windows[:, 1:]
