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


def _number(text: str, kind: type, minimum, what: str, above: bool = False):
    """`text` as an int or a finite float, >= `minimum` (`above`: > `minimum`)."""
    try:
        value = kind(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    if value < minimum or (above and value == minimum):
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1."""
    return _number(text, int, 1, "a positive integer")


def non_negative_int(text: str) -> int:
    """An integer >= 0."""
    return _number(text, int, 0, "an integer >= 0")


def positive_float(text: str) -> float:
    """A finite number > 0 (not nan, not inf)."""
    return _number(text, float, 0, "a finite positive number", above=True)


def non_negative_float(text: str) -> float:
    """A finite number >= 0 (not nan, not inf)."""
    return _number(text, float, 0, "a finite number >= 0")


def check_divisible(parser: argparse.ArgumentParser, world: int, world_flag: str, degree: int, degree_flag: str):
    """parser.error unless `degree` divides `world` (e.g. --world by --tp)."""
    if world % degree:
        parser.error(f"{world_flag} {world} is not divisible by {degree_flag} {degree}: give a multiple of {degree} "
                     f"ranks (data parallel = {world_flag.lstrip('-')} / {degree_flag.lstrip('-')})")
