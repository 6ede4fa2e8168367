import itertools
import math
import random
from collections import Counter

import pytest

from pipeline.evaluation import accuracy_at_budget, budget_curve, pass_at_k, sample_metrics, string_labels
from pipeline.grading import default_grader
from pipeline.majority import grader_equivalence, maj_at_k, vote_labels


def test_pass_at_k_matches_hand_computed_values():
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(1 - 3 / 6)  # C(3,2)/C(4,2) = 3/6
    assert pass_at_k(5, 2, 3) == pytest.approx(1 - 1 / 10)  # C(3,3)/C(5,3) = 1/10
    assert pass_at_k(4, 0, 4) == 0.0 and pass_at_k(4, 3, 2) == 1.0
    with pytest.raises(ValueError):
        pass_at_k(2, 3, 1)


def brute_force_maj(labels, k):
    """Mean over every size-k subset of the vote's worth: 1/t when the gold class (0) is one of t
    classes tied at the top count, else 0; nobody votes: 0."""
    worths = []
    for subset in itertools.combinations(labels, k):
        counts = Counter(label for label in subset if label is not None)
        top = max(counts.values(), default=0)
        leaders = [label for label, count in counts.items() if count == top]
        worths.append(1 / len(leaders) if top and 0 in leaders else 0.0)
    return sum(worths) / len(worths)


def test_maj_at_k_matches_brute_force_over_all_subsets():
    rng = random.Random(8)
    for _ in range(60):
        n = rng.randint(1, 9)
        labels = [rng.choice([None, 0, 0, 1, 2, 3]) for _ in range(n)]
        for k in range(1, n + 1):
            assert maj_at_k(labels, k) == pytest.approx(brute_force_maj(labels, k), abs=1e-12), (labels, k)


def test_maj_at_k_by_hand():
    assert maj_at_k([0, 1, 1], 3) == 0.0  # the wrong class has 2 votes
    assert maj_at_k([None, None, 0], 3) == 1.0  # unparsed samples do not vote
    assert maj_at_k([1, 0], 2) == 0.5  # a tie between two classes is worth 1/2
    assert maj_at_k([None], 1) == 0.0
    # [0, 0, 1], k = 2: subsets {0,0} -> 1, {0,1} twice -> 1/2 each: (1 + 1/2 + 1/2) / 3.
    assert maj_at_k([0, 0, 1], 2) == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        maj_at_k([0], 2)


def _trace(pid, i, answer, grade):
    return {"trace_id": f"{pid}{i}", "problem_id": pid, "sample_index": i, "extracted": answer, "grade": grade,
            "correct": grade == "correct", "n_tokens": 10}


def test_vote_labels_group_answers_the_grader_finds_equivalent():
    traces = [_trace("a", 0, "0.5", "incorrect"), _trace("a", 1, "\\frac12", "incorrect"), _trace("a", 2, "1/2", "incorrect"),
              _trace("a", 3, "3", "incorrect"), _trace("a", 4, "2", "correct"), _trace("a", 5, "4/2", "correct"),
              _trace("a", 6, None, "unparsed"), _trace("b", 0, "0.5", "incorrect")]
    labels = vote_labels(traces, grader_equivalence(default_grader()))
    assert labels["a4"] == labels["a5"] == 0 and labels["a6"] is None
    assert labels["a0"] == labels["a1"] == labels["a2"] != labels["a3"]
    assert 0 not in (labels["a0"], labels["a3"]) and labels["b0"] == 1
    # Three equivalent wrong answers against two right ones: the vote is wrong for k = 7.
    assert maj_at_k([labels[t["trace_id"]] for t in traces if t["problem_id"] == "a"], 7) == 0.0
    # By exact strings the wrong answers would have split 1/1/1 and lost to the correct pair.
    by_string = string_labels(traces)
    assert maj_at_k([by_string[t["trace_id"]] for t in traces if t["problem_id"] == "a"], 7) == 1.0


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
        return {"trace_id": f"{pid}{i}", "problem_id": pid, "sample_index": i, "extracted": answer, "grade": grade, "correct": correct, "n_tokens": tokens}

    traces = [trace("a", 0, "2", True, 10), trace("a", 1, "3", False, 20), trace("a", 2, "2", True, 30), trace("a", 3, None, False, 40),
              trace("b", 0, "5", False, 10), trace("b", 1, "5", False, 10), trace("b", 2, "4", True, 10), trace("b", 3, "4", True, 10)]
    metrics = sample_metrics(traces, [1, 2, 4, 8])
    assert metrics["pass@1"] == pytest.approx((0.5 + 0.5) / 2)
    assert metrics["pass@2"] == pytest.approx(1 - (1 / 6 + 1 / 6) / 2)  # each problem: C(2,2)/C(4,2)
    assert metrics["maj@1"] == pytest.approx((2 / 4 + 2 / 4) / 2)  # a single sample votes: its own correctness
    assert metrics["maj@4"] == pytest.approx((1 + 0.5) / 2)  # a: "2" x2 wins; b: tie 5/4 worth 1/2
    assert "pass@8" not in metrics
    assert metrics["mean_tokens"] == pytest.approx(17.5)
    assert metrics["tokens_per_correct"] == pytest.approx(140 / 4)
    assert math.isclose(metrics["unparsed_rate"], 1 / 8)
