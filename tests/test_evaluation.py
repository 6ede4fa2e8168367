import math

import pytest

from pipeline.evaluation import accuracy_at_budget, budget_curve, majority_correct, pass_at_k, sample_metrics


def test_pass_at_k_matches_hand_computed_values():
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(1 - 3 / 6)  # C(3,2)/C(4,2) = 3/6
    assert pass_at_k(5, 2, 3) == pytest.approx(1 - 1 / 10)  # C(3,3)/C(5,3) = 1/10
    assert pass_at_k(4, 0, 4) == 0.0 and pass_at_k(4, 3, 2) == 1.0
    with pytest.raises(ValueError):
        pass_at_k(2, 3, 1)


def test_majority_vote_ignores_unparsed_and_breaks_ties_by_first_seen():
    assert majority_correct([("2", True), ("3", False), ("3", False)]) is False
    assert majority_correct([(None, False), (None, False), ("2", True)]) is True
    assert majority_correct([("3", False), ("2", True)]) is False  # tie: first seen wins
    assert majority_correct([(None, False)]) is False


def _prefix(index, tokens, answer, j):
    return {"trace_id": "t", "prefix_index": index, "prefix_tokens": tokens, "mean_answer_tokens": answer, "j_hat": j}


def test_accuracy_against_budget_uses_the_last_prefix_that_fits():
    prefixes = [_prefix(0, 0, 10, 0.25), _prefix(1, 40, 10, 0.5), _prefix(2, 90, 10, 1.0)]
    assert accuracy_at_budget(prefixes, 5) == 0.0  # not even a direct answer fits
    assert accuracy_at_budget(prefixes, 10) == 0.25
    assert accuracy_at_budget(prefixes, 49) == 0.25
    assert accuracy_at_budget(prefixes, 50) == 0.5
    assert accuracy_at_budget(prefixes, 1000) == 1.0
    other = [dict(p, trace_id="u", j_hat=0.0) for p in prefixes]
    curve = budget_curve(prefixes + other, [10, 50, 100])
    assert curve == [{"budget_tokens": 10, "accuracy": 0.125}, {"budget_tokens": 50, "accuracy": 0.25},
                     {"budget_tokens": 100, "accuracy": 0.5}]


def test_sample_metrics_by_hand():
    def trace(pid, i, answer, correct, tokens):
        grade = "unparsed" if answer is None else ("correct" if correct else "incorrect")
        return {"problem_id": pid, "sample_index": i, "extracted": answer, "grade": grade, "correct": correct, "n_tokens": tokens}

    traces = [trace("a", 0, "2", True, 10), trace("a", 1, "3", False, 20), trace("a", 2, "2", True, 30), trace("a", 3, None, False, 40),
              trace("b", 0, "5", False, 10), trace("b", 1, "5", False, 10), trace("b", 2, "4", True, 10), trace("b", 3, "4", True, 10)]
    metrics = sample_metrics(traces, [1, 2, 4, 8])
    assert metrics["pass@1"] == pytest.approx((0.5 + 0.5) / 2)
    assert metrics["pass@2"] == pytest.approx(1 - (1 / 6 + 1 / 6) / 2)  # each problem: C(2,2)/C(4,2)
    assert metrics["maj@1"] == pytest.approx(0.5)  # a: "2" right; b: "5" wrong
    assert metrics["maj@4"] == pytest.approx(0.5)  # a: "2" x2 wins; b: tie 5/4, "5" first
    assert "pass@8" not in metrics
    assert metrics["mean_tokens"] == pytest.approx(17.5)
    assert metrics["tokens_per_correct"] == pytest.approx(140 / 4)
    assert math.isclose(metrics["unparsed_rate"], 1 / 8)
