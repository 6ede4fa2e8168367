"""Stage `prove`: J(j) for every prefix of every trace, in resumable shards."""

from __future__ import annotations

from collections import defaultdict

from pipeline.config import Params
from pipeline.io import ShardedWriter, chunked, stable_hash, write_json
from pipeline.models import fingerprint
from pipeline.prover import prove_traces
from pipeline.tables import EPISODES, PROVER, TRACES, from_rows
from stages.common import layout, open_grader, open_policy, progress, rows


def run(params: Params, round_index: int) -> str:
    paths = layout(params)
    traces = rows(paths.traces(round_index), TRACES)
    episode_ends: dict[str, list[int]] = defaultdict(list)
    for episode in sorted(rows(paths.episodes(round_index), EPISODES), key=lambda e: e["episode_index"]):
        episode_ends[episode["trace_id"]].append(episode["token_end"])
    answers = {p["problem_id"]: p["answer"] for p in rows(paths.problems_split("train"))}
    policy = paths.policy(round_index)
    fingerprint_data = {
        "round": round_index,
        "prover": params.prover.model_dump(mode="json"),
        "grading": params.grading.model_dump(mode="json", exclude={"workers", "cache_size"}),
        "model": params.model.model_dump(mode="json"),
        "policy": fingerprint(policy),
        "inputs": stable_hash([(t["trace_id"], t["completion_ids"], episode_ends.get(t["trace_id"])) for t in traces]),
    }
    writer = ShardedWriter(paths.prover(round_index), fingerprint_data, {"policy_folder": str(policy)})
    shards = [(i, chunk) for i, chunk in chunked(traces, params.prover.shard_size) if not writer.is_done(i)]
    if not shards:
        return f"round {round_index}: all prover shards already complete"
    _, prompts, backend = open_policy(params, round_index)
    total = sum(len(episode_ends.get(t["trace_id"], [])) + 1 for _, chunk in shards for t in chunk) * params.prover.k
    with progress(total, f"prove r{round_index}") as update, open_grader(params) as grader:
        for index, chunk in shards:
            table_rows = prove_traces(
                chunk, episode_ends, answers, backend, prompts, params.prover, on_done=update, grader=grader
            )
            writer.write(index, from_rows(table_rows, PROVER))
    stats = backend.stats
    write_json(stats.__dict__, paths.prover(round_index) / "_run_stats.json")
    backend.close()
    saved = 1 - stats.prefill_tokens / max(1, stats.prompt_tokens)
    return (
        f"round {round_index}: proved {sum(len(c) for _, c in shards)} traces ({total} answers); "
        f"prefill computed {stats.prefill_tokens} of {stats.prompt_tokens} prompt tokens ({saved:.0%} reused)"
    )
