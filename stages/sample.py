"""Stage `sample`: traces for every training problem, graded, in resumable shards."""

from __future__ import annotations

from pipeline.config import Params
from pipeline.io import ShardedWriter
from pipeline.models import fingerprint
from pipeline.sampling import sample_traces
from pipeline.tables import TRACES
from stages.common import layout, lazy_policy, open_grader, problems_hash, rows, shards_note, write_missing_shards


def run(params: Params, round_index: int, arm: str | None = None) -> str:
    if round_index == 0 and params.sample.traces_source is not None:  # round 0 from the user's traces
        from stages import import_traces

        return import_traces.run(params)
    paths = layout(params, arm)
    problems = rows(paths.problems_split("train"))
    policy = paths.policy(round_index)
    fingerprint_data = {
        "round": round_index,
        "sample": params.sample.model_dump(mode="json"),
        "grading": params.grading.model_dump(mode="json", exclude={"workers", "cache_size"}),
        "model": params.model.model_dump(mode="json"),
        "policy": fingerprint(policy),
        "problems": problems_hash(problems),
    }
    writer = ShardedWriter(paths.traces(round_index), fingerprint_data, {"policy_folder": str(policy)})

    with lazy_policy(params, round_index, arm) as engine, open_grader(params) as grader:
        def sample(chunk, update):
            ref, prompts, backend = engine()
            return sample_traces(chunk, backend, prompts, params.sample, round_index, ref.label, update, grader)

        name = f"r{round_index}" if round_index == 0 else f"{paths.arm} r{round_index}"
        shards, computed = write_missing_shards(writer, problems, params.sample.shard_size, TRACES, sample,
                                                lambda chunk: len(chunk) * params.sample.n, f"sample {name}", engine)
    if note := shards_note(writer, len(problems), params.sample.shard_size):
        return f"sampled {computed * params.sample.n} traces in {shards} shard(s). {note}"
    if not shards:
        return f"{paths.traces(round_index)}: all trace shards already complete"
    return f"{paths.traces(round_index)}: sampled {computed * params.sample.n} traces in {shards} shard(s)"
