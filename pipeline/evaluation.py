"""Held-out evaluation: pass@k, maj@k, token use, and accuracy against a token budget.

- pass@k is the unbiased estimator 1 - C(n-c, k) / C(n, k) from n samples with c correct.
- maj@k is the accuracy of the most frequent extracted answer among the first k samples
  (ties broken by first appearance; unparsed samples do not vote).
- Per source: the same sample metrics for each problem source (reasoning-gym split, each
  benchmark), so one overall pass@1 does not hide a model that solves only the easy source.
- Accuracy against budget B uses the meta-prover on the eval traces: a trace stopped at
  budget B answers from its last prefix that fits in B (prefix thinking tokens plus mean
  answer tokens), with that prefix's J as its expected accuracy; nothing fits, 0.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from statistics import fmean

from pipeline.config import Params
from pipeline.regret import episode_progress, trace_regret


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (Chen et al., 2021)."""
    if not 0 <= c <= n or not 0 < k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 0 < k <= n (n={n}, c={c}, k={k})")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def majority_correct(samples: list[tuple[str | None, bool]]) -> bool:
    """Is the most frequent extracted answer correct? `samples` are (answer, correct) pairs."""
    votes = Counter(answer for answer, _ in samples if answer is not None)
    if not votes:
        return False
    top = max(votes.values())
    winner = next(answer for answer, _ in samples if answer is not None and votes[answer] == top)
    return next(correct for answer, correct in samples if answer == winner)


def accuracy_at_budget(prefixes: list[dict], budget: float) -> float:
    """Expected accuracy of one trace stopped at `budget` tokens (see module docstring)."""
    fitting = [p for p in prefixes if p["prefix_tokens"] + p["mean_answer_tokens"] <= budget]
    if not fitting:
        return 0.0
    return max(fitting, key=lambda p: p["prefix_index"])["j_hat"]


def budget_curve(prover_rows: list[dict], budgets: list[float]) -> list[dict]:
    """Mean accuracy over traces at each budget: the points of the accuracy-vs-tokens plot."""
    by_trace: dict[str, list[dict]] = defaultdict(list)
    for row in prover_rows:
        by_trace[row["trace_id"]].append(row)
    return [
        {"budget_tokens": int(b), "accuracy": round(fmean(accuracy_at_budget(p, b) for p in by_trace.values()), 6)}
        for b in budgets
    ] if by_trace else []


def sample_metrics(traces: list[dict], k_values: list[int]) -> dict:
    """pass@k, maj@k and token use of the eval traces (n per problem, in sample order)."""
    by_problem: dict[str, list[dict]] = defaultdict(list)
    for trace in sorted(traces, key=lambda t: (t["problem_id"], t["sample_index"])):
        by_problem[trace["problem_id"]].append(trace)
    n = min(len(samples) for samples in by_problem.values())
    metrics: dict = {"problems": len(by_problem), "samples_per_problem": n}
    for k in sorted({k for k in k_values if k <= n}):
        metrics[f"pass@{k}"] = round(fmean(
            pass_at_k(len(s), sum(t["correct"] for t in s), k) for s in by_problem.values()), 6)
        metrics[f"maj@{k}"] = round(fmean(
            float(majority_correct([(t["extracted"] if t["grade"] != "unparsed" else None, t["correct"]) for t in s[:k]]))
            for s in by_problem.values()), 6)
    correct = [t for t in traces if t["correct"]]
    metrics["mean_tokens"] = round(fmean(t["n_tokens"] for t in traces), 3)
    metrics["tokens_per_correct"] = round(sum(t["n_tokens"] for t in traces) / len(correct), 3) if correct else None
    metrics["unparsed_rate"] = round(fmean(float(t["grade"] == "unparsed") for t in traces), 6)
    return metrics


def metrics_by_source(traces: list[dict], problems: list[dict], k_values: list[int]) -> dict[str, dict]:
    """{source: sample_metrics(that source's traces)}; a trace whose problem is not in `problems` is an error."""
    source_of = {p["problem_id"]: p["source"] for p in problems}
    groups: dict[str, list[dict]] = defaultdict(list)
    for trace in traces:
        source = source_of.get(trace["problem_id"])
        if source is None:
            raise ValueError(f"trace {trace.get('trace_id')!r}: problem {trace['problem_id']!r} is not in the eval problems table")
        groups[source].append(trace)
    return {source: sample_metrics(group, k_values) for source, group in sorted(groups.items())}


def summarize(
    traces: list[dict], prover_rows: list[dict], problems: list[dict], params: Params
) -> tuple[dict, dict[str, list[dict]]]:
    """Eval metrics (overall and per problem source) and plot data: accuracy and regret against
    budget, progress per episode."""
    max_tokens = params.eval.max_tokens or params.sample.max_tokens
    horizon = max_tokens + params.prover.max_answer_tokens
    budgets = [horizon * (i + 1) / params.eval.budget_points for i in range(params.eval.budget_points)]
    regret_budgets = [f * max_tokens for f in params.regret.budget_fractions]
    by_trace: dict[str, list[dict]] = defaultdict(list)
    for row in prover_rows:
        by_trace[row["trace_id"]].append(row)
    regrets = [trace_regret(p, regret_budgets) for p in by_trace.values()]
    progress_rows = [row for p in by_trace.values() for row in episode_progress(p)]
    accuracy = budget_curve(prover_rows, budgets)
    metrics = sample_metrics(traces, params.eval.k_values)
    metrics.update({
        "mean_regret": round(fmean(r["regret"] for r in regrets), 6),
        "mean_j_direct": round(fmean(r["j_direct"] for r in regrets), 6),
        "mean_j_final": round(fmean(r["j_final"] for r in regrets), 6),
        "mean_progress": round(fmean(p["progress"] for p in progress_rows), 6) if progress_rows else None,
        "accuracy_by_budget": {str(p["budget_tokens"]): p["accuracy"] for p in accuracy},
        "by_source": metrics_by_source(traces, problems, params.eval.k_values),
    })
    curves = {
        "accuracy_by_budget": accuracy,
        "regret_by_budget": [
            {"budget_tokens": int(b), "regret": round(fmean(trace_regret(p, [b])["regret"] for p in by_trace.values()), 6)}
            for b in regret_budgets
        ],
        "progress_by_episode": [
            {"episode_index": p["episode_index"], "progress": round(p["progress"], 6)} for p in progress_rows
        ],
    }
    return metrics, curves
