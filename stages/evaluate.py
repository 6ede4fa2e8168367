"""Stage `evaluate`: an arm's policy after r rounds (r = 0: the base model) on the eval split.

Samples `eval.n` traces per eval problem, splits them into episodes, runs the meta-prover
on every prefix (forced termination at each episode boundary), extends every trace past
the sampling budget by budget forcing (`eval.extrapolate`), and writes pass@k, maj@k, token
use, regret, progress and the accuracy-vs-tokens curves (DVC metrics and plots), and one row
of metrics per problem (`per_problem.json`, for the report's bootstrap intervals). Traces,
prover rows and extensions are written in resumable shards like the training stages.
"""

from __future__ import annotations

from pipeline.config import Params
from pipeline.episodes import split_token_ids
from pipeline.evaluation import summarize
from pipeline.extrapolation import continuation_markers, extrapolate_traces
from pipeline.io import ShardedWriter, stable_hash, write_json
from pipeline.majority import grader_equivalence, vote_labels
from pipeline.models import fingerprint
from pipeline.prover import prove_traces, thinking_ids
from pipeline.sampling import sample_traces
from pipeline.tables import EXTRAPOLATION, PROVER, TRACES
from stages.common import layout, lazy_policy, open_grader, policy_prompts, problems_hash, rows, write_missing_shards


def run(params: Params, round_index: int, arm: str | None = None) -> str:
    paths = layout(params, arm)
    problems = rows(paths.problems_split("eval"))
    if not problems:
        raise ValueError("evaluate: the eval split is empty; set problems.eval_size > 0")
    answers = {p["problem_id"]: p["answer"] for p in problems}
    sample_config = params.sample.model_copy(
        update={"n": params.eval.n, "seed": params.eval.seed, "max_tokens": params.eval.max_tokens or params.sample.max_tokens}
    )
    # The eval prover measures J along eval traces (budget curve, regret, extensions); it may use
    # fewer answers per prefix than the training rounds' prover, whose J picks the targets.
    prover = params.prover.model_copy(update={"k": params.eval.prover_k or params.prover.k})
    policy = paths.policy(round_index)
    base = {"round": round_index, "model": params.model.model_dump(mode="json"), "policy": fingerprint(policy),
            "grading": params.grading.model_dump(mode="json", exclude={"workers", "cache_size"})}
    name = paths.eval_dir(round_index).relative_to(paths.root / "eval")

    with lazy_policy(params, round_index, arm) as engine, open_grader(params) as grader:
        def sample(chunk, update):
            ref, prompts, backend = engine()
            return sample_traces(chunk, backend, prompts, sample_config, round_index, ref.label, update, grader)

        write_missing_shards(
            ShardedWriter(paths.eval_traces(round_index), {**base, "sample": sample_config.model_dump(mode="json"),
                          "problems": problems_hash(problems)}),
            problems, sample_config.shard_size, TRACES, sample, lambda c: len(c) * sample_config.n,
            f"eval sample {name}", engine, wait=True,  # other nodes' shards are read next
        )
        traces = rows(paths.eval_traces(round_index), TRACES)
        inputs = stable_hash([(t["trace_id"], t["completion_ids"]) for t in traces])
        tokenizer = policy_prompts(params, round_index, arm).tokenizer
        ends = {t["trace_id"]: [e.token_end for e in split_token_ids(tokenizer, thinking_ids(t), params.episodes)[0]]
                for t in traces}

        def prove(chunk, update):
            _, prompts, backend = engine()
            return prove_traces(chunk, ends, answers, backend, prompts, prover, update, grader)

        write_missing_shards(
            ShardedWriter(paths.eval_prover(round_index), {**base, "prover": prover.model_dump(mode="json"),
                          "episodes": params.episodes.model_dump(mode="json"), "inputs": inputs}),
            traces, prover.shard_size, PROVER, prove,
            lambda c: sum(len(ends.get(t["trace_id"], [])) + 1 for t in c) * prover.k,
            f"eval prove {name}", engine, wait=True,  # other nodes' shards are read next
        )

        markers = continuation_markers(params.eval.extrapolate, params.episodes)

        def extend(chunk, update):
            _, prompts, backend = engine()
            return extrapolate_traces(chunk, answers, backend, prompts, params.eval.extrapolate, sample_config,
                                      prover, grader, update, markers)

        write_missing_shards(
            ShardedWriter(paths.eval_extrapolation(round_index), {
                **base, "extrapolate": params.eval.extrapolate.model_dump(mode="json"), "markers": markers, "inputs": inputs,
                "sample": sample_config.model_dump(mode="json"), "prover": prover.model_dump(mode="json")}),
            traces if params.eval.extrapolate.times else [], prover.shard_size, EXTRAPOLATION, extend,
            lambda c: len(c) * params.eval.extrapolate.times * (1 + prover.k), f"eval extrapolate {name}", engine, wait=True,
        )
        labels = vote_labels(traces, grader_equivalence(grader))
    prover_rows = rows(paths.eval_prover(round_index), PROVER)
    extension_rows = rows(paths.eval_extrapolation(round_index), EXTRAPOLATION)
    metrics, curves, problem_rows = summarize(traces, prover_rows, problems, params, labels, extension_rows)
    reports = paths.eval_reports(round_index)
    write_json({"round": round_index, "arm": paths.arm if round_index else None, "policy": str(policy), **metrics},
               reports / "metrics.json")
    for curve, points in curves.items():
        write_json(points, reports / f"{curve}.json")
    write_json(problem_rows, reports / "per_problem.json")
    return (f"eval {name}: pass@1 {metrics['pass@1']:.3f} on {metrics['problems']} problems, "
            f"mean {metrics['mean_tokens']:.0f} tokens, regret {metrics['mean_regret']:.3f}")
