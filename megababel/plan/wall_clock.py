"""What a growth plan's FLOP saving is worth in time: each generation's FLOPs priced at the throughput its size
reaches on a device.

    table = ThroughputTable.load("h200")      # throughput.json beside this module: measured rows per device
    table.flops_per_s(134e6)                  # model FLOP/s of a 134M model there
    clock = wall_clock(schedule_spec, final, seq_len, tokens_per_step, scratch_steps, table)
    clock.saving(0.09)                        # the wall-clock saving of reaching scratch's loss with 9% fewer FLOPs

Why: small models keep a device less busy than large ones (on the H200 a 125M model trained at 18.8% MFU, a 1B one
at 39.6%), so a plan that spends its early FLOPs on small generations spends them slowly; a FLOP saving can be a
wall-clock loss.

The model: a generation of P parameters trains at the model FLOP/s the table gives for P, interpolated linearly in
log(parameters) and log(FLOP/s) between the measured sizes and clamped outside them (then the estimate says so). The
table's rows are at one sequence length and micro batch per device; a generation at another length or micro batch
is priced as if it were at the table's. Growth steps themselves (seconds each) and validation are not counted.
"""
from __future__ import annotations

import bisect
import json
import math
from dataclasses import dataclass
from importlib import resources

from megababel.config import ConfigError, LlamaConfig
from megababel.model.counters import config_parameters, flops_per_token

THROUGHPUT_FILE = "throughput.json"       # package data of megababel.plan (bench/throughput_table.py, gpu_speed.py)


@dataclass(frozen=True)
class ThroughputTable:
    device: str
    label: str
    rows: tuple          # ((parameters, model FLOP/s), ...) by parameters

    @classmethod
    def load(cls, device: str, text: str | None = None) -> "ThroughputTable":
        data = json.loads(text if text is not None else
                          resources.files("megababel.plan").joinpath(THROUGHPUT_FILE).read_text())
        if device not in data["devices"]:
            raise ConfigError.about("device", f"no throughput table for {device!r}; measured devices: "
                                    f"{sorted(data['devices'])}")
        entry = data["devices"][device]
        rows = tuple(sorted((float(r["parameters"]), float(r["flops_per_s"])) for r in entry["rows"]))
        return cls(device, entry["label"], rows)

    def flops_per_s(self, parameters: float) -> float:
        sizes = [p for p, _ in self.rows]
        if parameters <= sizes[0]:
            return self.rows[0][1]
        if parameters >= sizes[-1]:
            return self.rows[-1][1]
        i = bisect.bisect_right(sizes, parameters)
        (p0, f0), (p1, f1) = self.rows[i - 1], self.rows[i]
        t = math.log(parameters / p0) / math.log(p1 / p0)
        return math.exp(math.log(f0) + t * math.log(f1 / f0))

    def covers(self, parameters: float, slack: float = 1.25) -> bool:
        """Whether `parameters` lies within the measured sizes (give or take `slack`x)."""
        return self.rows[0][0] / slack <= parameters <= self.rows[-1][0] * slack


@dataclass(frozen=True)
class WallClock:
    """A plan's generations priced on one device: per generation (parameters, FLOPs, seconds), and scratch's."""
    table: ThroughputTable
    generations: tuple       # ((parameters, flops, seconds), ...) first to final
    scratch_flops: float
    scratch_seconds: float

    def seconds_to(self, flops: float) -> float:
        """Seconds the plan takes to spend `flops` training FLOPs (generation by generation)."""
        seconds = 0.0
        for _, generation_flops, generation_seconds in self.generations:
            if flops <= generation_flops:
                return seconds + generation_seconds * flops / generation_flops
            flops -= generation_flops
            seconds += generation_seconds
        return seconds + flops / self.table.flops_per_s(self.generations[-1][0])  # past the plan: the final's rate

    def saving(self, flop_saving: float | None) -> float | None:
        """The wall-clock saving of reaching scratch's final loss after (1 - flop_saving) of scratch's FLOPs, against
        scratch's own time; None where the FLOP saving is None (never reached)."""
        if flop_saving is None:
            return None
        return 1 - self.seconds_to((1 - flop_saving) * self.scratch_flops) / self.scratch_seconds

    def relative_speeds(self) -> list[float]:
        """Each generation's FLOP/s over the final model's."""
        final = self.table.flops_per_s(self.generations[-1][0])
        return [self.table.flops_per_s(p) / final for p, _, _ in self.generations]

    def outside(self) -> list[float]:
        """Parameter counts of generations outside the table's measured sizes (priced at the nearest)."""
        return [p for p, _, _ in self.generations if not self.table.covers(p)]


def wall_clock(schedule: dict, final: LlamaConfig, seq_len: int, tokens_per_step: int, scratch_steps: int,
               table: ThroughputTable) -> WallClock:
    """Price a schedule spec (the planner's output) and scratch's run of `scratch_steps` steps of `tokens_per_step`
    tokens at `seq_len` on `table`'s device."""
    from megababel.plan.schedule import parse_schedule
    parsed = parse_schedule(schedule, tokens_per_step)
    configs = [parsed.model] + [g.config for g in parsed.growths]
    starts = [0] + [g.at_step for g in parsed.growths] + [parsed.steps]
    generations = []
    for g, config in enumerate(configs):
        steps = starts[g + 1] - starts[g]
        tokens = steps * (parsed.batch_tokens(g) or tokens_per_step)
        flops = tokens * flops_per_token(config, parsed.generation_seq_len(g) or seq_len)
        parameters = config_parameters(config)
        generations.append((parameters, flops, flops / table.flops_per_s(parameters)))
    scratch_flops = scratch_steps * tokens_per_step * flops_per_token(final, seq_len)
    return WallClock(table, tuple(generations), scratch_flops,
                     scratch_flops / table.flops_per_s(config_parameters(final)))
