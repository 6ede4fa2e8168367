"""Per-round summary metrics (DVC metrics) and plot data (DVC plots)."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from statistics import fmean

from pipeline.sampling import MULTIPLE_CLOSE, UNCLOSED
from pipeline.selection import target_thinking


def _mean(values: list[float]) -> float | None:
    return round(fmean(values), 6) if values else None


def _reason_counts(traces: list[dict]) -> dict[str, int]:
    return dict(sorted(Counter(t.get("grade_reason") or "none" for t in traces if t["grade"] == "unparsed").items()))


def round_metrics(
    traces: list[dict],
    progress: list[dict],
    regrets: list[dict],
    selected: list[dict],
    method: str,
    drops: Counter | None = None,
    prover_rows: list[dict] | None = None,
) -> dict:
    """`drops`: why candidates were not selected (`pipeline.selection`); `prover_rows` adds the
    share of forced answers cut by `max_answer_tokens`."""
    budgets: dict[str, list[float]] = defaultdict(list)
    for row in regrets:
        for budget, value in json.loads(row["regret_by_budget"]).items():
            budgets[budget].append(value)
    return {
        "method": method,
        "traces_sampled": len(traces),
        "problems": len({t["problem_id"] for t in traces}),
        "accuracy": _mean([float(t["correct"]) for t in traces]),
        "unparsed_rate": _mean([float(t["grade"] == "unparsed") for t in traces]),
        "closed_thinking_rate": _mean([float(t["thinking_end"] >= 0) for t in traces]),
        "unclosed_thinking": sum(t.get("grade_reason") == UNCLOSED for t in traces),
        "multiple_think_close": sum(t.get("grade_reason") == MULTIPLE_CLOSE for t in traces),
        "unparsed_by_reason": _reason_counts(traces),
        "mean_tokens": _mean([t["n_tokens"] for t in traces]),
        "mean_episodes": _mean([r["n_episodes"] for r in regrets]),
        "mean_progress": _mean([p["progress"] for p in progress]),
        "mean_j_direct": _mean([r["j_direct"] for r in regrets]),
        "mean_j_final": _mean([r["j_final"] for r in regrets]),
        "mean_j_best": _mean([r["j_best"] for r in regrets]),
        "mean_regret": _mean([r["regret"] for r in regrets]),
        "mean_regret_by_budget": {b: _mean(v) for b, v in sorted(budgets.items(), key=lambda kv: int(kv[0]))},
        "traces_kept": len(selected),
        "mean_kept_completion_tokens": _mean([len(s["completion_ids"]) for s in selected]),
        "best_prefix_zero": sum(r["best_prefix"] == 0 for r in regrets) if regrets else None,  # None: not scored
        "empty_thinking_targets": sum(not target_thinking(s["completion"]).strip() for s in selected),
        "selection_drops": dict(sorted((drops or Counter()).items())),
        "prover_answers_length_cut_rate": (
            round(sum(r["n_length_cut"] or 0 for r in prover_rows) / max(1, sum(r["n_samples"] for r in prover_rows)), 6)
            if prover_rows else None
        ),
    }


def j_by_prefix(prover_rows: list[dict]) -> list[dict]:
    """Mean J and count per prefix index: the data of the `J vs prefix` plot."""
    groups: dict[int, list[float]] = defaultdict(list)
    for row in prover_rows:
        groups[row["prefix_index"]].append(row["j_hat"])
    return [{"prefix_index": j, "mean_j": round(fmean(v), 6), "traces": len(v)} for j, v in sorted(groups.items())]
