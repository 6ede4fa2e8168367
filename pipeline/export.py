"""Export selected targets in the formats other trainers read (trl prompt/completion, messages).

Both files are plain Parquet with provenance columns, loadable with
`datasets.load_dataset("parquet", data_files=...)`.
"""

from __future__ import annotations

import pyarrow as pa

PROVENANCE = ["trace_id", "problem_id", "round", "method", "best_prefix", "n_episodes", "j_best", "total_gain", "regret", "model"]


def prompt_completion_table(selected: pa.Table) -> pa.Table:
    """trl's standard prompt-completion format: the prompt is already chat-templated text."""
    return selected.select(["prompt", "completion", "prompt_ids", "completion_ids"] + PROVENANCE)


def messages_table(selected: pa.Table, messages_for_problem: dict[str, list[dict]]) -> pa.Table:
    """trl's conversational format: system/user turns plus the assistant target (thinking kept)."""
    rows = selected.select(["problem_id", "completion"]).to_pylist()
    messages = [messages_for_problem[r["problem_id"]] + [{"role": "assistant", "content": r["completion"]}] for r in rows]
    message_type = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
    table = selected.select(PROVENANCE)
    return table.add_column(0, "messages", pa.array(messages, type=message_type))
