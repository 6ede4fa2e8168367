"""Stage `import-traces`: round 0's traces from `sample.traces_source` instead of sampling.

Also what `mrt sample -r 0` runs when `sample.traces_source` is set, so the DVC graph is
unchanged. Writes the traces folder in the sample stage's shards, the rejected rows beside it
(`trace_rejects.parquet`) and the counts to `<metrics_dir>/import_traces.json`.
"""

from __future__ import annotations

from pipeline.config import ConfigError, Params
from pipeline.io import ShardedWriter, write_json, write_table
from pipeline.models import fingerprint
from pipeline.own_traces import file_signature, import_traces, summary, trace_rows
from pipeline.tables import REJECTS, TRACES, from_rows
from stages.common import (layout, open_grader, policy_tokenizer, problems_hash, prompt_builder, rows, shards_note,
                           write_missing_shards)


def run(params: Params) -> str:
    source = params.sample.traces_source
    if source is None:
        raise ConfigError("sample.traces_source is not set: give the file of traces to import "
                          "(path and columns; see docs/own-traces.md)")
    paths = layout(params)
    problems = rows(paths.problems_split("train"))
    policy = paths.policy(0)
    prompts = prompt_builder(params, policy_tokenizer(params, 0))
    imported = import_traces(source, problems, prompts)
    counts = summary(imported, problems)
    rejects_file = paths.trace_rejects
    write_table(from_rows(imported.rejects, REJECTS), rejects_file)
    write_json(counts, paths.reports / "import_traces.json")
    if not counts["imported"]:
        raise ValueError(f"{source.path}: no usable trace of a training problem ({counts['rows']} rows, "
                         f"{counts['rejected']} rejected, see {rejects_file}; {counts.get('not_in_train', 0)} "
                         "of problems outside the train split: prepare problems from the same file)")
    fingerprint_data = {
        "round": 0,
        "traces_source": source.model_dump(mode="json"),
        "file": file_signature(source),
        "grading": params.grading.model_dump(mode="json", exclude={"workers", "cache_size"}),
        "model": params.model.model_dump(mode="json"),
        "policy": fingerprint(policy),
        "problems": problems_hash(problems),
    }
    writer = ShardedWriter(paths.traces(0), fingerprint_data, {"policy_folder": str(policy), "imported_from": source.path})
    label = f"imported:{source.path}"
    with open_grader(params) as grader:
        def work(chunk, update):
            out = trace_rows(chunk, imported, prompts, grader, label)
            update(len(out))
            return out

        shards, _ = write_missing_shards(writer, problems, params.sample.shard_size, TRACES, work,
                                         lambda chunk: imported.for_problems([p["problem_id"] for p in chunk]),
                                         "import r0")
    told = (f"{counts['imported']} traces of {counts['problems_with_traces']}/{len(problems)} training problems "
            f"from {source.path} ({counts['rejected']} rows rejected, see {rejects_file}; "
            f"{counts.get('not_in_train', 0)} rows of other problems skipped)")
    if note := shards_note(writer, len(problems), params.sample.shard_size):
        return f"{told}. {note}"
    if not shards:
        return f"{paths.traces(0)}: all trace shards already complete; {told}"
    return f"{paths.traces(0)}: imported {told} in {shards} shard(s)"
