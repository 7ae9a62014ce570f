"""What every tool's command line shares: argparse `type=` helpers that refuse values a numeric flag cannot take
(zero, negative, NaN, infinite) when the command line is parsed, with argparse's one-line error
(`prog: error: argument --seq-len: ...`, exit status 2) instead of a traceback later; and `entry_point`, which makes a
`main(argv=None)` that returns what it computed safe as a console script.

    @entry_point
    def main(argv=None) -> dict:
        p = argparse.ArgumentParser()
        p.add_argument("--seq-len", type=positive_int, default=1024)
        p.add_argument("--valid-every", type=non_negative_int, default=100)
        p.add_argument("--tokens", type=positive_float)
"""
from __future__ import annotations

import argparse
import functools
import math


def entry_point(main):
    """A console script runs `sys.exit(main())`: a returned object would be printed to stderr and the exit status be
    1. So `main()` on the command line (argv None) returns None (exit status 0); `main([...])` returns what it
    computed, for tests and scripts."""
    @functools.wraps(main)
    def wrapper(argv=None):
        result = main(argv)
        return None if argv is None else result
    return wrapper


def _int(text: str, what: str) -> int:
    try:
        return int(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None


def _float(text: str, what: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1."""
    value = _int(text, "a positive integer")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0."""
    value = _int(text, "an integer >= 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0 (not nan, not inf)."""
    value = _float(text, "a finite positive number")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    """A finite number >= 0 (not nan, not inf)."""
    value = _float(text, "a finite number >= 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}")
    return value


def check_divisible(parser: argparse.ArgumentParser, world: int, world_flag: str, degree: int, degree_flag: str):
    """parser.error unless `degree` divides `world` (e.g. --world by --tp)."""
    if world % degree:
        parser.error(f"{world_flag} {world} is not divisible by {degree_flag} {degree}: give a multiple of {degree} "
                     f"ranks (data parallel = {world_flag.lstrip('-')} / {degree_flag.lstrip('-')})")
