"""Stage `sample`: traces for every training problem, graded, in resumable shards."""

from __future__ import annotations

from pipeline.config import Params
from pipeline.io import ShardedWriter, chunked, stable_hash
from pipeline.models import fingerprint
from pipeline.sampling import sample_traces
from pipeline.tables import TRACES, from_rows
from stages.common import layout, open_grader, open_policy, progress, rows


def run(params: Params, round_index: int) -> str:
    paths = layout(params)
    problems = rows(paths.problems_split("train"))
    policy = paths.policy(round_index)
    fingerprint_data = {
        "round": round_index,
        "sample": params.sample.model_dump(mode="json"),
        "grading": params.grading.model_dump(mode="json", exclude={"workers", "cache_size"}),
        "model": params.model.model_dump(mode="json"),
        "policy": fingerprint(policy),
        "problems": stable_hash([(p["problem_id"], p["answer"]) for p in problems]),
    }
    writer = ShardedWriter(paths.traces(round_index), fingerprint_data, {"policy_folder": str(policy)})
    all_shards = list(chunked(problems, params.sample.shard_size))
    shards = [(i, chunk) for i, chunk in all_shards if not writer.is_done(i)]
    if not shards:
        writer.complete(len(all_shards))
        return f"round {round_index}: all trace shards already complete"
    ref, prompts, backend = open_policy(params, round_index)
    total = sum(len(chunk) for _, chunk in shards) * params.sample.n
    with progress(total, f"sample r{round_index}") as update, open_grader(params) as grader:
        for index, chunk in shards:
            table_rows = sample_traces(
                chunk, backend, prompts, params.sample, round_index, ref.label, on_done=update, grader=grader
            )
            writer.write(index, from_rows(table_rows, TRACES))
    writer.complete(len(all_shards))
    backend.close()
    return f"round {round_index}: sampled {total} traces in {len(shards)} shard(s)"
