"""Paired bootstrap intervals between policies and the report's comparison table."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from pipeline.comparison import compare, comparison_pairs, headline_metrics, level_intervals
from pipeline.report import write_report
from pipeline.stats import paired_bootstrap


def ones(n):
    return [1.0] * n


def test_identical_arms_give_the_zero_interval():
    values = [random.Random(1).random() for _ in range(30)]
    result = paired_bootstrap((values, ones(30)), (values, ones(30)), resamples=500, seed=3)
    assert result["difference"] == 0 and result["low"] == 0 and result["high"] == 0
    assert not result["excludes_zero"] and result["resamples"] == 500 and result["problems"] == 30


def test_a_constant_shift_per_problem_gives_that_shift():
    rng = random.Random(2)
    b = [rng.random() for _ in range(25)]
    a = [v + 0.125 for v in b]
    result = paired_bootstrap((a, ones(25)), (b, ones(25)), resamples=500)
    assert result["difference"] == pytest.approx(0.125)
    assert result["low"] == pytest.approx(0.125) and result["high"] == pytest.approx(0.125)
    assert result["excludes_zero"]


def test_interval_matches_a_reference_bootstrap_written_from_the_definition():
    rng = random.Random(5)
    a, b = [rng.random() for _ in range(12)], [rng.random() for _ in range(12)]
    result = paired_bootstrap((a, ones(12)), (b, ones(12)), resamples=300, seed=7)
    draws = np.random.default_rng(7).integers(0, 12, size=(300, 12))
    reference = sorted(np.mean([a[i] for i in row]) - np.mean([b[i] for i in row]) for row in draws)
    assert result["low"] == pytest.approx(np.quantile(reference, 0.025))
    assert result["high"] == pytest.approx(np.quantile(reference, 0.975))
    assert result["low"] <= result["difference"] <= result["high"]


def test_ratio_statistic_is_a_ratio_of_sums_and_skips_empty_resamples():
    # Tokens per correct: A spends twice B's tokens on every problem with the same correct counts.
    tokens_b, correct = [10.0, 30.0, 20.0], [1.0, 2.0, 0.0]
    result = paired_bootstrap(([2 * t for t in tokens_b], correct), (tokens_b, correct), resamples=400)
    assert result["difference"] == pytest.approx(60 / 3)  # 120 / 3 - 60 / 3
    assert 0 < result["resamples"] < 400  # draws of only the third problem have no correct sample
    assert result["low"] > 0 and result["excludes_zero"]
    with pytest.raises(ValueError, match="same non-zero number of problems"):
        paired_bootstrap(([1.0], [1.0]), ([1.0, 2.0], [1.0, 1.0]))


def problem_rows(values: dict[str, float], **extra) -> list[dict]:
    return [{"problem_id": pid, "source": "gym", "samples": 2, "correct": 1, "tokens": 20, "pass@1": v, "maj@1": v,
             "regret": 1 - v, "j_after_0": v, "regret_after_0": 1 - v, "j_after_1": v, "regret_after_1": 1 - v, **extra}
            for pid, v in values.items()]


def test_compare_pairs_problems_by_id_and_covers_every_headline_metric():
    a = problem_rows({"p1": 1.0, "p2": 0.5, "p3": 0.0})
    b = problem_rows({"p2": 0.25, "p1": 0.75, "p9": 1.0})  # p3 and p9 are not shared
    names = [m.name for m in headline_metrics(a)]
    assert names == ["pass@1", "maj@1", "regret", "tokens per correct", "J after 1 extension", "regret after 1 extension"]
    rows = {row["metric"]: row for row in compare(a, b, resamples=200)}
    assert rows["pass@1"]["problems"] == 2
    assert rows["pass@1"]["a_value"] == pytest.approx(0.75) and rows["pass@1"]["b_value"] == pytest.approx(0.5)
    # Both shared problems moved by +0.25: the interval is that shift.
    assert rows["pass@1"]["low"] == pytest.approx(0.25) and rows["pass@1"]["high"] == pytest.approx(0.25)
    assert rows["regret"]["difference"] == pytest.approx(-0.25) and rows["regret"]["lower_is_better"]
    assert rows["tokens per correct"]["difference"] == 0 and not rows["tokens per correct"]["excludes_zero"]


def test_comparison_pairs_arms_against_star_and_every_policy_against_base():
    policies = [("base model", "base"), ("mrt after 1 round", "mrt/1"), ("mrt after 2 rounds", "mrt/2"),
                ("star after 1 round", "star/1"), ("star after 2 rounds", "star/2")]
    assert comparison_pairs(policies) == [
        ("mrt after 1 round", "star after 1 round"), ("mrt after 2 rounds", "star after 2 rounds"),
        ("mrt after 1 round", "base model"), ("star after 1 round", "base model"),
        ("mrt after 2 rounds", "base model"), ("star after 2 rounds", "base model"),
    ]


def test_report_writes_the_comparison_table_and_json(tmp_path):
    metrics = tmp_path / "metrics"
    values = {"base": {"p1": 0.0, "p2": 0.5}, "mrt/1": {"p1": 1.0, "p2": 1.0}, "star/1": {"p1": 0.5, "p2": 0.5}}
    for policy, per_problem in values.items():
        folder = metrics / "eval" / policy
        folder.mkdir(parents=True)
        (folder / "per_problem.json").write_text(json.dumps(problem_rows(per_problem)))
        (folder / "metrics.json").write_text(json.dumps({"problems": 2, "pass@1": sum(per_problem.values()) / 2}))
        (folder / "extrapolation.json").write_text(json.dumps([
            {"extensions": 0, "mean_tokens": 10.0, "accuracy": 0.5, "regret": 0.6},
            {"extensions": 1, "mean_tokens": 20.0, "accuracy": 0.5, "regret": 0.4}]))
    report = write_report(metrics, tmp_path / "report").read_text()
    assert "## Differences with 95% bootstrap intervals" in report
    header = "| metric | mrt after 1 round − star after 1 round | mrt after 1 round − base model | star after 1 round − base model |"
    assert header in report
    # pass@1: mrt - star = +0.5 on both problems; mrt - base = +1.0, +0.5; star - base = +0.5, 0.
    line = next(line for line in report.splitlines() if line.startswith("| pass@1 |"))
    assert line.startswith("| pass@1 | **+0.500 [+0.500, +0.500]** | **+0.750 [+0.500, +1.000]** |")
    assert line.endswith("| +0.250 [+0.000, +0.500] |")  # includes 0: not bold
    assert "| regret (lower is better) | **-0.500 [-0.500, -0.500]** |" in report
    assert "0.60 → 0.40" in report  # regret at the budgets past the sampling budget
    saved = json.loads((tmp_path / "report" / "comparison.json").read_text())
    assert saved["resamples"] == 2000 and len(saved["comparisons"]) == 3 * 6
    assert {(c["a"], c["b"]) for c in saved["comparisons"]} == {
        ("mrt after 1 round", "star after 1 round"), ("mrt after 1 round", "base model"), ("star after 1 round", "base model")}


def test_level_intervals_of_one_policy():
    rows = problem_rows({"p1": 0.5, "p2": 0.5, "p3": 0.5})
    levels = level_intervals(rows, resamples=200)
    assert levels["pass@1"] == {"value": 0.5, "low": 0.5, "high": 0.5, "problems": 3}  # constant: no spread
    assert levels["tokens per correct"]["value"] == 20.0
    rows[0]["pass@1"] = 1.0
    spread = level_intervals(rows, resamples=2000)["pass@1"]
    assert spread["value"] == pytest.approx(2 / 3)
    # A resample's pass@1 is 0.5 + 0.5 * (copies of p1) / 3, copies ~ Binomial(3, 1/3): P(0) = 8/27 > 2.5 %
    # and P(3) = 1/27 > 2.5 %, so the interval runs from 0 copies to 3 copies.
    assert spread["low"] == 0.5 and spread["high"] == 1.0
