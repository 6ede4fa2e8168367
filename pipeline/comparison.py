"""Paired differences between evaluated policies, with bootstrap intervals over problems.

Each policy's eval stage writes one row per eval problem (`per_problem.json`). Two policies are
compared on the problems both evaluated: every headline metric is a statistic over problems
(a mean, or for tokens per correct a ratio of sums), and its difference gets a percentile
bootstrap interval from resampling the problems with replacement, the same draw for both
policies (`pipeline.stats.paired_bootstrap`). An interval that excludes 0 is a difference the
eval set resolves; one that contains 0 is not, whatever the point estimate says.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.stats import bootstrap_interval, paired_bootstrap

RESAMPLES = 2000
SEED = 0
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Metric:
    """A headline metric: sum(numerator) / sum(denominator) over problems (denominator None: a mean)."""

    name: str
    numerator: str
    denominator: str | None = None
    lower_is_better: bool = False


def headline_metrics(rows: list[dict]) -> list[Metric]:
    """pass@k, maj@k, regret, tokens per correct, J and regret after each extension: those the rows carry."""
    keys = set().union(*(row.keys() for row in rows)) if rows else set()

    def numbered(prefix: str) -> list[int]:
        return sorted(int(key[len(prefix):]) for key in keys if key.startswith(prefix) and key[len(prefix):].isdigit())

    metrics = [Metric(f"pass@{k}", f"pass@{k}") for k in numbered("pass@")]
    metrics += [Metric(f"maj@{k}", f"maj@{k}") for k in numbered("maj@")]
    if "regret" in keys:
        metrics.append(Metric("regret", "regret", lower_is_better=True))
    if {"tokens", "correct"} <= keys:
        metrics.append(Metric("tokens per correct", "tokens", "correct", lower_is_better=True))
    extensions = [e for e in numbered("j_after_") if e > 0]
    metrics += [Metric(f"J after {e} extension{'s' if e > 1 else ''}", f"j_after_{e}") for e in extensions]
    metrics += [Metric(f"regret after {e} extension{'s' if e > 1 else ''}", f"regret_after_{e}", lower_is_better=True)
                for e in extensions]
    return metrics


def _paired_values(a: list[dict], b: list[dict], metric: Metric) -> tuple[tuple[list, list], tuple[list, list]]:
    """(numerators, denominators) of both policies on the problems where both have the metric."""
    by_id = {row["problem_id"]: row for row in b}
    keys = [metric.numerator] + ([metric.denominator] if metric.denominator else [])
    pairs = [(row, by_id[row["problem_id"]]) for row in sorted(a, key=lambda r: r["problem_id"])
             if row["problem_id"] in by_id
             and all(row.get(key) is not None and by_id[row["problem_id"]].get(key) is not None for key in keys)]

    def side(rows: list[dict]) -> tuple[list, list]:
        numerators = [float(row[metric.numerator]) for row in rows]
        return numerators, [float(row[metric.denominator]) if metric.denominator else 1.0 for row in rows]

    return side([p for p, _ in pairs]), side([q for _, q in pairs])


def compare(a: list[dict], b: list[dict], resamples: int = RESAMPLES, seed: int = SEED,
            confidence: float = CONFIDENCE) -> list[dict]:
    """One row per headline metric both policies carry: values of A and B on their shared
    problems, the difference A - B and its bootstrap interval."""
    rows = []
    shared = {m.name for m in headline_metrics(b)}
    for metric in headline_metrics(a):
        if metric.name not in shared:
            continue
        (a_num, a_den), (b_num, b_den) = _paired_values(a, b, metric)
        if not a_num:
            continue
        result = paired_bootstrap((a_num, a_den), (b_num, b_den), resamples, seed, confidence)
        a_value = sum(a_num) / sum(a_den) if sum(a_den) else None
        b_value = sum(b_num) / sum(b_den) if sum(b_den) else None
        rows.append({"metric": metric.name, "lower_is_better": metric.lower_is_better, "a_value": a_value, "b_value": b_value,
                     **result})
    return rows


def comparison_pairs(policies: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Which (A, B) policy labels to compare, from (label, kind) with kind `base` or `arm/round`:
    each arm's round against the base model, and at each round every arm against `star`."""
    base = [label for label, kind in policies if kind == "base"]
    by_round: dict[str, dict[str, str]] = {}
    for label, kind in policies:
        if kind != "base":
            arm, round_index = kind.split("/")
            by_round.setdefault(round_index, {})[arm] = label
    pairs = []
    for round_index in sorted(by_round, key=int):
        arms = by_round[round_index]
        if "star" in arms:
            pairs += [(label, arms["star"]) for arm, label in sorted(arms.items()) if arm != "star"]
    for round_index in sorted(by_round, key=int):
        pairs += [(label, base[0]) for _, label in sorted(by_round[round_index].items())] if base else []
    return pairs


def level_intervals(rows: list[dict], resamples: int = RESAMPLES, seed: int = SEED, confidence: float = CONFIDENCE) -> dict:
    """{metric: value and bootstrap interval over problems} of one policy's headline metrics."""
    out = {}
    for metric in headline_metrics(rows):
        keys = [metric.numerator] + ([metric.denominator] if metric.denominator else [])
        kept = [row for row in rows if all(row.get(key) is not None for key in keys)]
        if kept:
            values = ([float(r[metric.numerator]) for r in kept],
                      [float(r[metric.denominator]) if metric.denominator else 1.0 for r in kept])
            out[metric.name] = {k: (round(v, 6) if isinstance(v, float) else v)
                                for k, v in bootstrap_interval(values, resamples, seed, confidence).items()}
    return out
