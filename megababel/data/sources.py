"""What a data mixture reads, without torch: its sources and their weights, as a schedule states them and checks them.

    key = SourceKey.parse("wiki[rarity:0-0.5]")      # the easier half of dataset `wiki`, by vocabulary rarity
    weights = check_weights({"wiki": 0.7, "stories": 0.3}, "growths[0].data")

A source is a dataset's name (the run's `--data NAME=DIR`), optionally narrowed to a quantile range of its
documents ranked by a difficulty metric (data/difficulty.py): `NAME[METRIC:LOW-HIGH]`. data/mixture.py reads them.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from megababel.config import ConfigError

_KEY = re.compile(r"(?P<name>[A-Za-z_][\w.-]*)(\[(?P<metric>[A-Za-z_]\w*):(?P<low>[0-9.]+)-(?P<high>[0-9.]+)\])?")


@dataclass(frozen=True)
class SourceKey:
    name: str                      # the dataset's name
    metric: str | None = None      # a difficulty metric, and the quantile range of its documents
    low: float = 0.0
    high: float = 1.0

    @classmethod
    def parse(cls, text, where: str = "data") -> "SourceKey":
        match = _KEY.fullmatch(text) if isinstance(text, str) else None
        if match is None:
            raise ConfigError(f"{where}: source {text!r} is not NAME or NAME[METRIC:LOW-HIGH] (e.g. wiki or "
                              f"wiki[rarity:0-0.5])")
        if match["metric"] is None:
            return cls(match["name"])
        try:
            low, high = float(match["low"]), float(match["high"])
        except ValueError:
            low = high = -1.0
        if not 0 <= low < high <= 1:
            raise ConfigError(f"{where}: source {text!r}: the quantile range must satisfy 0 <= LOW < HIGH <= 1")
        return cls(match["name"], match["metric"], low, high)

    def __str__(self) -> str:
        return self.name if self.metric is None else f"{self.name}[{self.metric}:{self.low:g}-{self.high:g}]"


def check_weights(weights, where: str) -> dict[str, float]:
    """A mixture {source: weight}: sources well formed, weights finite and >= 0, summing to 1."""
    if not isinstance(weights, dict) or not weights:
        raise ConfigError(f"{where}: a mixture is a mapping source: weight, e.g. {{wiki: 0.7, stories: 0.3}}")
    out = {}
    for key, weight in weights.items():
        SourceKey.parse(key, where)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not (0 <= weight < float("inf")):
            raise ConfigError(f"{where}.{key}: the weight must be a number >= 0, got {weight!r}")
        out[key] = float(weight)
    if abs(sum(out.values()) - 1) > 1e-6:
        raise ConfigError(f"{where}: the weights sum to {sum(out.values()):g}, not 1: scale them so that they do")
    return out
