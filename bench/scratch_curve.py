"""Scratch's curve of final bits/byte against training FLOPs, and what a run saved against it.

A run's compute-equivalent saving is 1 - its FLOPs / the FLOPs scratch needs to reach the run's final bits/byte.
The curve is measured only at a few budgets (scratch trained to each), so the FLOPs between them are read two ways:
- interpolated: linear in log FLOPs between the two budgets around the figure (flops_to_reach; bench/clock.py's
  saving);
- bounded: a loss curve of the usual form (a constant plus a power of FLOPs) is convex in log FLOPs, so the chord
  between two budgets lies above it, and the line through a neighbouring pair of budgets, extended, lies below it.
  The chord then gives the most FLOPs scratch can need and the extended neighbours the least (needed_flops_bounds).
  Beyond the largest budget only the least is known. The bounds hold only as far as the measured points are on a
  convex curve: noise of the final figures, or an LR that was not tuned at some budget, can break that.
"""
from __future__ import annotations

import math


def lower_curve(points) -> list[tuple[float, float]]:
    """(FLOPs, bits/byte) points sorted by FLOPs, each bits/byte the lowest reached at or below its FLOPs (a larger
    budget that ended higher, e.g. from noise, does not make the curve rise)."""
    out, best = [], math.inf
    for flops, bpb in sorted(points):
        best = min(best, bpb)
        out.append((flops, best))
    return out


def flops_to_reach(curve, bpb: float) -> tuple[float | None, str]:
    """The FLOPs scratch needs to reach `bpb` on `curve` (lower_curve's points): linear in log FLOPs between the
    bracketing budgets. Outside the curve, (None, "below") when even the largest budget ends higher than `bpb` (the
    saving is at least the bound against the largest), (None, "above") when the smallest budget already reaches it."""
    flops, values = [c[0] for c in curve], [c[1] for c in curve]
    if bpb < values[-1]:
        return None, "below"
    if bpb > values[0]:
        return None, "above"
    for i in range(1, len(curve)):
        if values[i] <= bpb:
            (f0, b0), (f1, b1) = curve[i - 1], curve[i]
            if b1 == bpb:
                return f1, ""
            return float(math.exp(math.log(f0) + (math.log(f1) - math.log(f0)) * (b0 - bpb) / (b0 - b1))), ""
    return flops[0], ""


def compute_equivalent_saving(flops: float, bpb: float, curve) -> tuple[float | None, str]:
    """1 - flops / (scratch's FLOPs to reach bpb); outside the curve (None, "> X%") or (None, "< X%") bounds."""
    needed, where = flops_to_reach(curve, bpb)
    if needed is not None:
        return 1 - flops / needed, ""
    if where == "below":
        return None, f"> {round(100 * (1 - flops / curve[-1][0])):d}%"       # round() to an int: never "-0"
    return None, f"< {round(100 * (1 - flops / curve[0][0])):d}%"


def _crossing_of_line(p, q, bpb: float) -> float | None:
    """log FLOPs where the line through curve points p and q (log FLOPs, bits/byte) reaches bpb; None if it is flat
    or rising (noise), or the two have the same FLOPs: such a pair bounds nothing."""
    (x0, y0), (x1, y1) = p, q
    if x1 == x0:
        return None
    slope = (y1 - y0) / (x1 - x0)
    return None if slope >= 0 else x0 + (bpb - y0) / slope


def needed_flops_bounds(curve, bpb: float) -> tuple[float | None, float | None]:
    """(least, most) FLOPs scratch needs to reach `bpb`, if its curve is convex in log FLOPs (module docstring);
    None where unbounded: no most beyond the largest budget, no least before the smallest with a single point."""
    points = [(math.log(f), b) for f, b in curve]
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    if bpb < ys[-1]:                                   # past the largest budget
        least = [xs[-1]] + ([_crossing_of_line(points[-2], points[-1], bpb)] if len(points) > 1 else [])
        return math.exp(max(x for x in least if x is not None)), None
    if bpb > ys[0]:                                    # the smallest budget already reaches it
        least = _crossing_of_line(points[0], points[1], bpb) if len(points) > 1 else None
        return (None if least is None else math.exp(least)), math.exp(xs[0])
    i = next(i for i in range(len(points)) if ys[i] <= bpb)
    if ys[i] == bpb:                                   # a budget's own figure (scratch itself)
        return math.exp(xs[i]), math.exp(xs[i])
    most = _crossing_of_line(points[i - 1], points[i], bpb)
    least = [xs[i - 1]]
    if i >= 2:                                          # the segment before, extended forward
        least.append(_crossing_of_line(points[i - 2], points[i - 1], bpb))
    if i + 1 < len(points):                             # the segment after, extended backward
        least.append(_crossing_of_line(points[i], points[i + 1], bpb))
    return math.exp(max(x for x in least if x is not None)), math.exp(most)


def compute_equivalent_bounds(flops: float, bpb: float, curve) -> tuple[float | None, float | None]:
    """(least, most) compute-equivalent saving of a run of `flops` that ends at `bpb`, from needed_flops_bounds;
    None where unbounded."""
    least, most = needed_flops_bounds(curve, bpb)
    return (None if least is None else 1 - flops / least), (None if most is None else 1 - flops / most)
