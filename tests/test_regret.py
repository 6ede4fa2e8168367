import json

import pytest

from pipeline.regret import area_up_to, episode_progress, normalized_regret, trace_regret


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
