"""Progress (information gain) per episode and cumulative regret per trace.

Progress of episode j is J(j) - J(j-1). Normalized regret against the comparator J* = 1
over a token budget C0 is 1 - (area under the J-vs-tokens curve up to C0) / C0, where a
prefix costs its thinking tokens plus its mean answer tokens, the curve starts at (0, 0),
stays flat after its last point and is interpolated at C0 (trapezoid rule).

The curve keeps prefix order. A prefix's cost is not monotone in j (a short prefix can draw
long forced answers), so the x of prefix j is the running maximum of the costs of prefixes
0..j: a prefix never moves ahead of an earlier one, and a later prefix that costs less than
an earlier one sits at the same x (a vertical step, no area). Sorting by cost instead
reorders the episodes and changes the area.
"""

from __future__ import annotations

import json
import math

from pipeline.stats import binomial_variance


def monotone_points(costs_and_j: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """(x, J) in the given order, x the running maximum of the costs, starting at (0, 0)."""
    points, x = [(0.0, 0.0)], 0.0
    for cost, j in costs_and_j:
        x = max(x, float(cost))
        points.append((x, j))
    return points


def curve_points(prefixes: list[dict]) -> list[tuple[float, float]]:
    """(tokens, J) of a trace's prefixes in prefix order (see the module docstring)."""
    ordered = sorted(prefixes, key=lambda p: p["prefix_index"])
    return monotone_points([(p["prefix_tokens"] + p["mean_answer_tokens"], p["j_hat"]) for p in ordered])


def area_up_to(points: list[tuple[float, float]], budget: float) -> float:
    """Area under a piecewise-linear curve from 0 to `budget`, flat after its last point.

    `points` must have non-decreasing x (a vertical step adds no area)."""
    if any(x1 < x0 for (x0, _), (x1, _) in zip(points, points[1:])):
        raise ValueError(f"curve x values must not decrease: {[x for x, _ in points]}")
    area = 0.0
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x0 >= budget:
            return area
        if x1 > budget:
            y_at = y0 + (y1 - y0) * (budget - x0) / (x1 - x0)
            return area + (y0 + y_at) / 2 * (budget - x0)
        area += (y0 + y1) / 2 * (x1 - x0)
    last_x, last_y = points[-1]
    return area + last_y * max(0.0, budget - last_x)


def regret_of_points(points: list[tuple[float, float]], budget: float) -> float:
    """1 - area up to `budget` / `budget` for a curve from `monotone_points`."""
    if budget <= 0:
        raise ValueError("regret budget must be positive")
    return 1.0 - area_up_to(points, budget) / budget


def normalized_regret(prefixes: list[dict], budget: float) -> float:
    return regret_of_points(curve_points(prefixes), budget)


def episode_progress(prefixes: list[dict]) -> list[dict]:
    """Rows of the progress table for one trace (prefixes of that trace, any order)."""
    ordered = sorted(prefixes, key=lambda p: p["prefix_index"])
    rows = []
    for before, after in zip(ordered, ordered[1:]):
        variance = binomial_variance(before["j_hat"], before["n_samples"]) + binomial_variance(
            after["j_hat"], after["n_samples"]
        )
        rows.append(
            {
                "trace_id": after["trace_id"],
                "episode_index": after["prefix_index"],
                "progress": after["j_hat"] - before["j_hat"],
                "progress_se": math.sqrt(variance),
                "j_before": before["j_hat"],
                "j_after": after["j_hat"],
            }
        )
    return rows


def trace_regret(prefixes: list[dict], budgets: list[float]) -> dict:
    """One row of the regret table: J summary, best prefix and regret at every budget."""
    ordered = sorted(prefixes, key=lambda p: p["prefix_index"])
    j_values = [p["j_hat"] for p in ordered]
    best = max(range(len(ordered)), key=lambda i: (j_values[i], -i))  # earliest maximum
    by_budget = {str(int(round(b))): normalized_regret(ordered, b) for b in budgets}
    return {
        "trace_id": ordered[0]["trace_id"],
        "problem_id": ordered[0]["problem_id"],
        "n_episodes": ordered[0]["n_episodes"],
        "j_direct": j_values[0],
        "j_final": j_values[-1],
        "j_best": j_values[best],
        "best_prefix": ordered[best]["prefix_index"],
        "total_gain": j_values[-1] - j_values[0],
        "regret": normalized_regret(ordered, max(budgets)),
        "regret_by_budget": json.dumps(by_budget),
    }
