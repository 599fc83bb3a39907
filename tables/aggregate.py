"""Mean ± sample std over seeds, formatting, and differences of such summaries."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation (ddof=1; 0.0 when n == 1) of n values."""

    mean: float
    std: float
    n: int


def summarize(values: Iterable[float]) -> Stat | None:
    """Stat of the values, NaN (missing measurements) ignored; None when nothing is left."""
    xs = [float(v) for v in values if not math.isnan(float(v))]
    if not xs:
        return None
    mean = math.fsum(xs) / len(xs)
    if len(xs) == 1:
        return Stat(mean, 0.0, 1)
    var = math.fsum((x - mean) ** 2 for x in xs) / (len(xs) - 1)
    return Stat(mean, math.sqrt(var), len(xs))


def format_stat(stat: Stat, digits: int = 2, signed: bool = False) -> str:
    """'74.21 ± 0.35 (n=3)'; a single value (n=1, std 0) is '74.21 (n=1)'; signed=True writes '+1.20 …'.

    A delta with n=1 may carry the other side's spread and then keeps its '±'.
    """
    sign = "+" if signed else ""
    mean = f"{stat.mean:{sign}.{digits}f}"
    if stat.n == 1 and stat.std == 0.0:
        return f"{mean} (n=1)"
    return f"{mean} ± {stat.std:.{digits}f} (n={stat.n})"


def delta(a: Stat, b: Stat) -> Stat:
    """a − b: difference of means; std = sqrt(std_a² + std_b²), n = min(n_a, n_b).

    The runs behind a and b are independent (different trainings), so the spread of one
    method-run minus one baseline-run is the root sum of squares of the two per-run spreads.
    """
    return Stat(a.mean - b.mean, math.hypot(a.std, b.std), min(a.n, b.n))
