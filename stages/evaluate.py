"""Stage `evaluate`: round r's policy on the held-out eval split.

Samples `eval.n` traces per eval problem, splits them into episodes, runs the meta-prover
on every prefix (forced termination at each episode boundary), and writes pass@k, maj@k,
token use, regret and progress, plus the accuracy-vs-token-budget curve (DVC plots).
Traces and prover rows are written in resumable shards like the training stages.
"""

from __future__ import annotations

from statistics import fmean

from pipeline.config import Params
from pipeline.episodes import split_token_ids
from pipeline.evaluation import budget_curve, sample_metrics
from pipeline.io import ShardedWriter, chunked, stable_hash, write_json
from pipeline.models import fingerprint, load_tokenizer
from pipeline.prover import prove_traces, thinking_ids
from pipeline.regret import episode_progress, trace_regret
from pipeline.sampling import sample_traces
from pipeline.tables import PROVER, TRACES, from_rows
from stages.common import layout, open_grader, open_policy, progress, rows


def _episode_ends(traces: list[dict], tokenizer, params: Params) -> dict[str, list[int]]:
    return {
        trace["trace_id"]: [e.token_end for e in split_token_ids(tokenizer, thinking_ids(trace), params.episodes)[0]]
        for trace in traces
    }


def run(params: Params, round_index: int) -> str:
    paths = layout(params)
    problems = rows(paths.problems_split("eval"))
    if not problems:
        raise ValueError("evaluate: the eval split is empty; set problems.eval_size > 0")
    sample_config = params.sample.model_copy(
        update={"n": params.eval.n, "seed": params.eval.seed, "max_tokens": params.eval.max_tokens or params.sample.max_tokens}
    )
    policy = paths.policy(round_index)
    base = {"round": round_index, "model": params.model.model_dump(mode="json"), "policy": fingerprint(policy),
            "grading": params.grading.model_dump(mode="json", exclude={"workers", "cache_size"})}
    trace_writer = ShardedWriter(
        paths.eval_traces(round_index),
        {**base, "sample": sample_config.model_dump(mode="json"),
         "problems": stable_hash([(p["problem_id"], p["answer"]) for p in problems])},
    )
    ref, prompts, backend = open_policy(params, round_index)
    with open_grader(params) as grader:
        all_shards = list(chunked(problems, sample_config.shard_size))
        todo = [(i, c) for i, c in all_shards if not trace_writer.is_done(i)]
        with progress(sum(len(c) for _, c in todo) * sample_config.n, f"eval sample r{round_index}") as update:
            for index, chunk in todo:
                table = sample_traces(chunk, backend, prompts, sample_config, round_index, ref.label, update, grader)
                trace_writer.write(index, from_rows(table, TRACES))
        trace_writer.complete(len(all_shards))
        traces = rows(paths.eval_traces(round_index), TRACES)
        ends = _episode_ends(traces, prompts.tokenizer, params)
        answers = {p["problem_id"]: p["answer"] for p in problems}
        prover_writer = ShardedWriter(
            paths.eval_prover(round_index),
            {**base, "prover": params.prover.model_dump(mode="json"), "episodes": params.episodes.model_dump(mode="json"),
             "inputs": stable_hash([(t["trace_id"], t["completion_ids"]) for t in traces])},
        )
        all_shards = list(chunked(traces, params.prover.shard_size))
        todo = [(i, c) for i, c in all_shards if not prover_writer.is_done(i)]
        total = sum(len(ends[t["trace_id"]]) + 1 for _, c in todo for t in c) * params.prover.k
        with progress(total, f"eval prove r{round_index}") as update:
            for index, chunk in todo:
                table = prove_traces(chunk, ends, answers, backend, prompts, params.prover, update, grader)
                prover_writer.write(index, from_rows(table, PROVER))
        prover_writer.complete(len(all_shards))
    backend.close()
    prover_rows = rows(paths.eval_prover(round_index), PROVER)
    metrics, curves = summarize(traces, prover_rows, params)
    reports = paths.eval_reports(round_index)
    write_json({"round": round_index, "policy": str(policy), **metrics}, reports / "metrics.json")
    for name, points in curves.items():
        write_json(points, reports / f"{name}.json")
    return (f"eval r{round_index}: pass@1 {metrics['pass@1']:.3f} on {metrics['problems']} problems, "
            f"mean {metrics['mean_tokens']:.0f} tokens, regret {metrics['mean_regret']:.3f}")


def summarize(traces: list[dict], prover_rows: list[dict], params: Params) -> tuple[dict, dict[str, list[dict]]]:
    """Round metrics and the plot data (accuracy and regret against budget, progress per episode)."""
    max_tokens = params.eval.max_tokens or params.sample.max_tokens
    horizon = max_tokens + params.prover.max_answer_tokens
    budgets = [horizon * (i + 1) / params.eval.budget_points for i in range(params.eval.budget_points)]
    regret_budgets = [f * max_tokens for f in params.regret.budget_fractions]
    by_trace: dict[str, list[dict]] = {}
    for row in prover_rows:
        by_trace.setdefault(row["trace_id"], []).append(row)
    regrets = [trace_regret(p, regret_budgets) for p in by_trace.values()]
    progress_rows = [row for p in by_trace.values() for row in episode_progress(p)]
    metrics = sample_metrics(traces, params.eval.k_values)
    metrics.update({
        "mean_regret": round(fmean(r["regret"] for r in regrets), 6),
        "mean_j_direct": round(fmean(r["j_direct"] for r in regrets), 6),
        "mean_j_final": round(fmean(r["j_final"] for r in regrets), 6),
        "mean_progress": round(fmean(p["progress"] for p in progress_rows), 6) if progress_rows else None,
        "accuracy_by_budget": {str(p["budget_tokens"]): p["accuracy"] for p in budget_curve(prover_rows, budgets)},
    })
    curves = {
        "accuracy_by_budget": budget_curve(prover_rows, budgets),
        "regret_by_budget": [
            {"budget_tokens": int(b), "regret": round(fmean(trace_regret(p, [b])["regret"] for p in by_trace.values()), 6)}
            for b in regret_budgets
        ],
        "progress_by_episode": [
            {"episode_index": p["episode_index"], "progress": round(p["progress"], 6)} for p in progress_rows
        ],
    }
    return metrics, curves
