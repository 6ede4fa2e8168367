"""Held-out evaluation: pass@k, maj@k, token use, and accuracy against a token budget.

- pass@k is the unbiased estimator 1 - C(n-c, k) / C(n, k) from n samples with c correct.
- maj@k is the expected accuracy of a majority vote over k of the n samples, answers grouped by
  grader equivalence, ties counted fractionally (`pipeline.majority`).
- Per source: the same sample metrics for each problem source (reasoning-gym split, each
  benchmark), so one overall pass@1 does not hide a model that solves only the easy source.
- Accuracy against budget B uses the meta-prover on the eval traces: a trace stopped at
  budget B answers from its last prefix that fits in B (prefix thinking tokens plus mean
  answer tokens), with that prefix's J as its expected accuracy; nothing fits, 0.
- Per problem: the same sample metrics, mean regret and J / regret after each extension, one
  row per problem, so a comparison between policies can resample problems (`pipeline.report`).
"""

from __future__ import annotations

import math
from collections import defaultdict
from statistics import fmean

from pipeline.comparison import level_intervals
from pipeline.config import Params
from pipeline.extrapolation import extension_points, extrapolation_curve
from pipeline.majority import maj_at_k, vote_labels
from pipeline.regret import episode_progress, trace_regret


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (Chen et al., 2021)."""
    if not 0 <= c <= n or not 0 < k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 0 < k <= n (n={n}, c={c}, k={k})")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


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


def string_labels(traces: list[dict]) -> dict[str, int | None]:
    """Vote classes without a grader: correct answers are one class, incorrect ones are grouped by
    their stripped text. `pipeline.majority.vote_labels` (grader equivalence) is what the eval stage
    uses; this is the fallback for callers that have no grader."""
    return vote_labels(traces, lambda pairs: [a == b for a, b in pairs])


def _by_problem(traces: list[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = defaultdict(list)
    for trace in sorted(traces, key=lambda t: (t["problem_id"], t["sample_index"])):
        groups[trace["problem_id"]].append(trace)
    return groups


def problem_metrics(samples: list[dict], labels: dict[str, int | None], k_values: list[int]) -> dict:
    """pass@k, maj@k and token counts of one problem's samples (k up to the number of samples)."""
    n, correct = len(samples), sum(bool(t["correct"]) for t in samples)
    row: dict = {"samples": n, "correct": correct, "tokens": sum(t["n_tokens"] for t in samples)}
    for k in sorted({k for k in k_values if k <= n}):
        row[f"pass@{k}"] = pass_at_k(n, correct, k)
        row[f"maj@{k}"] = maj_at_k([labels[t["trace_id"]] for t in samples], k)
    return row


def sample_metrics(traces: list[dict], k_values: list[int], labels: dict[str, int | None] | None = None) -> dict:
    """pass@k, maj@k and token use of the eval traces (n per problem), means over problems.

    `labels` are the vote classes of `pipeline.majority.vote_labels`; None: `string_labels`."""
    labels = string_labels(traces) if labels is None else labels
    by_problem = _by_problem(traces)
    n = min(len(samples) for samples in by_problem.values())
    rows = [problem_metrics(samples, labels, [k for k in k_values if k <= n]) for samples in by_problem.values()]
    metrics: dict = {"problems": len(by_problem), "samples_per_problem": n}
    for k in sorted({k for k in k_values if k <= n}):
        metrics[f"pass@{k}"] = round(fmean(r[f"pass@{k}"] for r in rows), 6)
        metrics[f"maj@{k}"] = round(fmean(r[f"maj@{k}"] for r in rows), 6)
    correct = [t for t in traces if t["correct"]]
    metrics["mean_tokens"] = round(fmean(t["n_tokens"] for t in traces), 3)
    metrics["tokens_per_correct"] = round(sum(t["n_tokens"] for t in traces) / len(correct), 3) if correct else None
    metrics["unparsed_rate"] = round(fmean(float(t["grade"] == "unparsed") for t in traces), 6)
    return metrics


def metrics_by_source(
    traces: list[dict], problems: list[dict], k_values: list[int], labels: dict[str, int | None] | None = None
) -> dict[str, dict]:
    """{source: sample_metrics(that source's traces)}; a trace whose problem is not in `problems` is an error."""
    source_of = {p["problem_id"]: p["source"] for p in problems}
    groups: dict[str, list[dict]] = defaultdict(list)
    for trace in traces:
        source = source_of.get(trace["problem_id"])
        if source is None:
            raise ValueError(f"trace {trace.get('trace_id')!r}: problem {trace['problem_id']!r} is not in the eval problems table")
        groups[source].append(trace)
    labels = string_labels(traces) if labels is None else labels
    return {source: sample_metrics(group, k_values, labels) for source, group in sorted(groups.items())}


def per_problem(
    traces: list[dict], labels: dict[str, int | None], problems: list[dict], k_values: list[int],
    regrets: dict[str, float], extension_points: dict[str, dict[int, dict]],
) -> list[dict]:
    """One row per eval problem: its sample metrics, mean regret of its traces, and mean J and
    regret after e = 0.. extensions (`extension_points[trace_id][e]`): what the report bootstraps."""
    source_of = {p["problem_id"]: p["source"] for p in problems}
    rows = []
    for problem_id, samples in sorted(_by_problem(traces).items()):
        row = {"problem_id": problem_id, "source": source_of.get(problem_id),
               **problem_metrics(samples, labels, k_values)}
        scored = [regrets[t["trace_id"]] for t in samples if t["trace_id"] in regrets]
        row["regret"] = fmean(scored) if scored else None
        extensions = sorted({e for t in samples for e in extension_points.get(t["trace_id"], {})})
        for e in extensions:
            points = [extension_points[t["trace_id"]][e] for t in samples if e in extension_points.get(t["trace_id"], {})]
            row[f"j_after_{e}"] = fmean(p["j_hat"] for p in points)
            row[f"regret_after_{e}"] = fmean(p["regret"] for p in points)
        rows.append(row)
    return rows


def summarize(
    traces: list[dict], prover_rows: list[dict], problems: list[dict], params: Params,
    labels: dict[str, int | None] | None = None, extension_rows: list[dict] | None = None,
) -> tuple[dict, dict[str, list[dict]], list[dict]]:
    """Eval metrics (overall and per problem source), plot data (accuracy and regret against
    budget, progress per episode, extrapolation) and the per-problem rows."""
    labels = string_labels(traces) if labels is None else labels
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
    extension_tokens = params.eval.extrapolate.tokens or max_tokens
    points = extension_points(prover_rows, extension_rows or [], max_tokens, extension_tokens)
    extrapolation = extrapolation_curve(points)
    metrics = sample_metrics(traces, params.eval.k_values, labels)
    metrics.update({
        "mean_regret": round(fmean(r["regret"] for r in regrets), 6),
        "mean_j_direct": round(fmean(r["j_direct"] for r in regrets), 6),
        "mean_j_final": round(fmean(r["j_final"] for r in regrets), 6),
        "mean_progress": round(fmean(p["progress"] for p in progress_rows), 6) if progress_rows else None,
        "accuracy_by_budget": {str(p["budget_tokens"]): p["accuracy"] for p in accuracy},
        "extrapolation": {str(p["extensions"]): p for p in extrapolation},
        "by_source": metrics_by_source(traces, problems, params.eval.k_values, labels),
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
        "extrapolation": extrapolation,
    }
    problem_rows = per_problem(traces, labels, problems, params.eval.k_values,
                               {r["trace_id"]: r["regret"] for r in regrets}, points)
    metrics["intervals_95"] = level_intervals(problem_rows)
    return metrics, curves, problem_rows
