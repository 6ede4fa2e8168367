"""Stage `prove`: J(j) for every prefix of every trace, in resumable shards."""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict

import pyarrow as pa

from pipeline.config import Params
from pipeline.io import ShardedWriter, read_table
from pipeline.models import fingerprint
from pipeline.prover import prove_traces
from pipeline.tables import EPISODES, PROVER, TRACES, from_rows
from stages.common import layout, lazy_policy, open_grader, progress, require_scored, rows


def _inputs_hash(traces: pa.Table, episode_ends: dict[str, list[int]]) -> str:
    """Hash of what the prover reads, computed batch by batch (no Python copy of the whole table)."""
    digest = hashlib.sha256()
    for batch in traces.select(["trace_id", "completion_ids"]).to_batches(max_chunksize=256):
        for trace_id, ids in zip(batch.column(0).to_pylist(), batch.column(1).to_pylist()):
            digest.update(json.dumps([trace_id, ids, episode_ends.get(trace_id)]).encode())
    return digest.hexdigest()[:16]


def run(params: Params, round_index: int, arm: str | None = None) -> str:
    require_scored(params, round_index, arm)
    paths = layout(params, arm)
    traces = read_table(paths.traces(round_index), TRACES)  # Arrow; shards become Python rows one at a time
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
        "inputs": _inputs_hash(traces, episode_ends),
    }
    writer = ShardedWriter(paths.prover(round_index), fingerprint_data, {"policy_folder": str(policy)})
    size = params.prover.shard_size
    trace_ids = traces.column("trace_id").to_pylist()
    n_shards = len(range(0, traces.num_rows, size))
    mine = set(writer.todo(n_shards))  # this node's share (--shard-index/--num-shards), not yet written
    shards = [(i, start) for i, start in enumerate(range(0, traces.num_rows, size)) if i in mine]
    if not shards:
        if not writer.finish(n_shards):
            return f"round {round_index}: {writer.progress_note(n_shards)}"
        return f"round {round_index}: all prover shards already complete"
    total = sum(len(episode_ends.get(t, [])) + 1 for _, start in shards for t in trace_ids[start : start + size]) * params.prover.k
    name = f"r{round_index}" if round_index == 0 else f"{paths.arm} r{round_index}"
    # The backend is closed on any exit, so a failed or interrupted stage leaves no engine process behind.
    with lazy_policy(params, round_index, arm) as engine, open_grader(params) as grader:
        _, prompts, backend = engine()
        with progress(total, f"prove {name}") as update:
            for index, start in shards:
                chunk = traces.slice(start, size).to_pylist()
                table_rows = prove_traces(
                    chunk, episode_ends, answers, backend, prompts, params.prover, on_done=update, grader=grader
                )
                writer.write(index, from_rows(table_rows, PROVER))
        # This process's generation counters go to the log, not into the table's folder: they cover only
        # the shards this process wrote (a resumed or multi-node run) and hold a timing, so a folder
        # holding them would differ between identical runs and make DVC rerun every stage after `prove`.
        stats = backend.stats
    finished = writer.finish(n_shards)
    saved = 1 - stats.prefill_tokens / max(1, stats.prompt_tokens)
    return ("" if finished else writer.progress_note(n_shards) + "\n") + (
        f"round {round_index}: proved {sum(len(trace_ids[s : s + size]) for _, s in shards)} traces ({total} answers); "
        f"prefill computed {stats.prefill_tokens} of {stats.prompt_tokens} prompt tokens ({saved:.0%} reused)"
    )
