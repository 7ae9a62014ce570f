"""bench/annealed_family.py's reading of the alone runs: the figure at a branch's FLOPs and the FLOPs alone needs to
reach an annealed figure, bounded (never extrapolated) outside the two runs."""
from __future__ import annotations

import math
import sys

import pytest

from helpers import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import annealed_family  # noqa: E402


def _run(flops, figure):
    return dict(flops=flops, final_evals=[dict(step=10, bpb=figure, nats=[figure * math.log(2) * 100],
                                               n_bytes=[100])])


def test_alone_is_read_in_log_flops_between_its_two_runs_and_only_bounded_outside():
    alone = [_run(4e12, 2.30), _run(1e12, 2.40)]                 # any order
    assert annealed_family.alone_at(alone, 2e12) == pytest.approx(2.35)
    assert annealed_family.alone_flops_to(alone, 2.35) == (pytest.approx(2e12), "")
    assert annealed_family.alone_flops_to(alone, 2.20) == (pytest.approx(4e12), ">=")    # below both: at least
    assert annealed_family.alone_flops_to(alone, 2.50) == (pytest.approx(1e12), "<=")    # above both: at most
    flat = [_run(1e12, 2.3), _run(2e12, 2.3)]
    assert annealed_family.alone_flops_to(flat, 2.25)[1] == ">="


def test_member_steps_are_each_generations_span():
    spec = annealed_family.schedule_spec("g3@25-vocab", 0.05, 3e-3)
    spans = annealed_family.member_steps(spec)
    assert len(spans) == 4 and spans[0][0] == 0 and all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    assert spans[-1][1] == spec["training"]["steps"] and all(a < b for a, b in spans)
