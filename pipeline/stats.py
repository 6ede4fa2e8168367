"""Small statistics helpers: binomial confidence intervals, paired bootstrap over problems."""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Sequence

import numpy as np


def wilson_interval(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion; (0, 1) when there are no trials."""
    if trials <= 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def binomial_variance(p: float, trials: int) -> float:
    return p * (1 - p) / trials if trials > 0 else 0.25


def paired_bootstrap(
    a: tuple[Sequence[float], Sequence[float]],
    b: tuple[Sequence[float], Sequence[float]],
    resamples: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict:
    """Percentile bootstrap interval of statistic(A) - statistic(B) over paired problems.

    `a` and `b` are (numerators, denominators), one entry per problem, the same problems in the
    same order; the statistic is sum(numerators) / sum(denominators) over a resample (a mean when
    the denominators are all 1, a ratio of sums such as tokens per correct otherwise). Each
    resample draws the problems with replacement once and applies the draw to both arms, so the
    interval is for the paired difference. Resamples whose denominator sums to 0 are skipped.
    """
    a_num, a_den, b_num, b_den = (np.asarray(v, dtype=float) for v in (*a, *b))
    n = len(a_num)
    if not n or any(len(v) != n for v in (a_den, b_num, b_den)):
        raise ValueError(f"paired bootstrap needs the same non-zero number of problems in both arms (got {n}, {len(b_num)})")
    if resamples <= 0 or not 0 < confidence < 1:
        raise ValueError("paired bootstrap needs resamples > 0 and 0 < confidence < 1")
    draws = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    sums = [v[draws].sum(axis=1) for v in (a_num, a_den, b_num, b_den)]
    valid = (sums[1] > 0) & (sums[3] > 0)
    differences = sums[0][valid] / sums[1][valid] - sums[2][valid] / sums[3][valid]
    point = (a_num.sum() / a_den.sum() - b_num.sum() / b_den.sum()) if a_den.sum() > 0 and b_den.sum() > 0 else None
    if not len(differences):
        return {"difference": point, "low": None, "high": None, "excludes_zero": False, "problems": n, "resamples": 0}
    tail = (1 - confidence) / 2
    low, high = (float(q) for q in np.quantile(differences, [tail, 1 - tail]))
    return {"difference": None if point is None else float(point), "low": low, "high": high,
            "excludes_zero": bool(low > 0 or high < 0), "problems": n, "resamples": int(valid.sum())}


def bootstrap_interval(
    values: tuple[Sequence[float], Sequence[float]], resamples: int = 2000, seed: int = 0, confidence: float = 0.95
) -> dict:
    """Percentile bootstrap interval of sum(numerators) / sum(denominators) over problems: the
    paired interval against an arm that scores 0 on every problem."""
    n = len(values[0])
    result = paired_bootstrap(values, ([0.0] * n, [1.0] * n), resamples, seed, confidence)
    return {"value": result["difference"], "low": result["low"], "high": result["high"], "problems": n}
