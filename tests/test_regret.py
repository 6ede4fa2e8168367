import json
import random

import pytest

from pipeline.regret import area_up_to, curve_points, episode_progress, normalized_regret, trace_regret


def prefix(j, tokens, answer_tokens, j_hat, n=4):
    return {"trace_id": "t", "problem_id": "p", "prefix_index": j, "n_episodes": 2, "prefix_tokens": tokens,
            "mean_answer_tokens": answer_tokens, "j_hat": j_hat, "n_samples": n}


CURVE = [prefix(0, 0, 10, 0.0), prefix(1, 40, 10, 0.5), prefix(2, 90, 10, 1.0)]


def test_area_trapezoid_interpolation_and_flat_extension():
    points = [(0.0, 0.0), (10.0, 0.0), (50.0, 0.5), (100.0, 1.0)]
    assert area_up_to(points, 10) == 0
    assert area_up_to(points, 50) == pytest.approx(0.25 * 40)
    assert area_up_to(points, 75) == pytest.approx(10 + (0.5 + 0.75) / 2 * 25)
    assert area_up_to(points, 200) == pytest.approx(10 + 37.5 + 100)


def test_regret_values():
    assert normalized_regret(CURVE, 100) == pytest.approx(1 - 47.5 / 100)
    flat_one = [prefix(0, 0, 0, 1.0)]
    assert normalized_regret(flat_one, 100) == pytest.approx(0.0)


def test_progress_telescopes():
    rows = episode_progress(list(reversed(CURVE)))
    assert [r["progress"] for r in rows] == [0.5, 0.5]
    assert sum(r["progress"] for r in rows) == CURVE[-1]["j_hat"] - CURVE[0]["j_hat"]
    assert all(r["progress_se"] > 0 for r in rows)


def test_trace_regret_picks_earliest_best_prefix():
    curve = [prefix(0, 0, 5, 0.25), prefix(1, 20, 5, 0.75), prefix(2, 60, 5, 0.75)]
    row = trace_regret(curve, [50, 100])
    assert row["best_prefix"] == 1 and row["j_best"] == 0.75 and row["total_gain"] == 0.5
    assert set(json.loads(row["regret_by_budget"])) == {"50", "100"}


def reference_regret(prefixes: list[dict], budget: float, steps: int = 20_000) -> float:
    """The definition, integrated numerically: prefixes in prefix order at x = running maximum of
    (thinking + mean answer tokens), a piecewise-linear J from (0, 0), flat after the last point;
    1 - (midpoint-rule integral of J over [0, budget]) / budget."""
    xs, ys, running = [0.0], [0.0], 0.0
    for p in sorted(prefixes, key=lambda p: p["prefix_index"]):
        running = max(running, p["prefix_tokens"] + p["mean_answer_tokens"])
        xs.append(running)
        ys.append(p["j_hat"])

    def j_at(x: float) -> float:
        for i in range(len(xs) - 1):
            if xs[i] <= x < xs[i + 1]:
                return ys[i] + (ys[i + 1] - ys[i]) * (x - xs[i]) / (xs[i + 1] - xs[i])
        return ys[-1]  # past the last point (a vertical step has zero width: never hit)

    width = budget / steps
    return 1 - sum(j_at((i + 0.5) * width) for i in range(steps)) * width / budget


def test_regret_on_random_curves_matches_a_numerical_integral():
    rng = random.Random(13)
    for _ in range(25):
        n = rng.randint(1, 6)
        tokens = sorted(rng.randint(0, 200) for _ in range(n))
        tokens[0] = 0
        curve = [prefix(j, t, rng.choice([0, 1, 5, 20, 90]) + rng.random() * 10, rng.randint(0, 4) / 4, n=4)
                 for j, t in enumerate(tokens)]
        rng.shuffle(curve)  # the order of the rows must not matter, only prefix_index
        for budget in (rng.uniform(1, 150), rng.uniform(150, 400)):
            assert normalized_regret(curve, budget) == pytest.approx(reference_regret(curve, budget), abs=2e-3)


def test_regret_keeps_prefix_order_when_a_long_forced_answer_costs_more_than_a_later_prefix():
    # x: j0 at 0 + 10 = 10, j1 at 20 + 60 = 80 (a long forced answer), j2 at 50 + 5 = 55 -> running max 80.
    curve = [prefix(0, 0, 10, 0.0), prefix(1, 20, 60, 1.0), prefix(2, 50, 5, 0.5)]
    assert curve_points(curve) == [(0, 0), (10, 0.0), (80, 1.0), (80, 0.5)]
    # Area to 100: 0 on [0, 10], (0 + 1) / 2 * 70 = 35 on [10, 80], flat 0.5 * 20 = 10 after: 45.
    assert normalized_regret(curve, 100) == pytest.approx(1 - 45 / 100)
    # Sorting by cost would have put j2 before j1: area 11.25 + 18.75 + 20 = 50, regret 0.5.
    assert normalized_regret(curve, 100) != pytest.approx(0.5)
    # Budget inside the rising segment: (0 + 4/7) / 2 * 40 on [10, 50].
    assert normalized_regret(curve, 50) == pytest.approx(1 - (4 / 7) / 2 * 40 / 50)


def test_area_rejects_a_decreasing_axis():
    with pytest.raises(ValueError, match="must not decrease"):
        area_up_to([(0.0, 0.0), (10.0, 1.0), (5.0, 1.0)], 20)
