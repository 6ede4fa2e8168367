"""The schema of every table the pipeline writes: defined once, used by writers and tests."""

from __future__ import annotations

import pyarrow as pa

ids = pa.list_(pa.int32())

PROBLEMS = pa.schema(
    [
        ("problem_id", pa.string()),
        ("source", pa.string()),
        ("split", pa.string()),
        ("problem", pa.string()),
        ("answer", pa.string()),
        ("source_index", pa.int64()),
        ("provenance", pa.string()),  # JSON: generator config or file + row
    ]
)

REJECTS = pa.schema(
    [
        ("source", pa.string()),
        ("source_index", pa.int64()),
        ("problem_id", pa.string()),
        ("reason", pa.string()),
        ("row", pa.string()),  # JSON of the offending row, truncated
    ]
)

TRACES = pa.schema(
    [
        ("trace_id", pa.string()),
        ("problem_id", pa.string()),
        ("round", pa.int32()),
        ("sample_index", pa.int32()),
        ("seed", pa.int64()),
        ("prompt_ids", ids),  # chat-templated prompt including the pre-filled think tag
        ("completion_ids", ids),
        ("completion", pa.string()),
        ("n_tokens", pa.int32()),
        ("finish_reason", pa.string()),  # stop | length
        ("thinking_end", pa.int32()),  # token offset where `</think>` starts; -1 when never closed
        ("answer_text", pa.string()),  # what the grader saw (after the only `</think>`); null when not well formed
        ("extracted", pa.string()),  # the extracted final answer, null when none
        ("grade", pa.string()),  # correct | incorrect | unparsed
        ("grade_reason", pa.string()),  # why unparsed: unclosed_thinking, multiple_think_close, think_open_in_answer, or the grader's
        ("correct", pa.bool_()),
        ("model", pa.string()),
    ]
)

EPISODES = pa.schema(
    [
        ("trace_id", pa.string()),
        ("episode_index", pa.int32()),
        ("token_start", pa.int32()),  # offsets into the trace's completion_ids (thinking block only)
        ("token_end", pa.int32()),
        ("char_start", pa.int32()),  # offsets into the decoded completion, for reading
        ("char_end", pa.int32()),
        ("marker", pa.string()),  # what opened the episode: a marker, `window`, `regex` or `start`
        ("rule", pa.string()),
    ]
)

PROVER = pa.schema(
    [
        ("trace_id", pa.string()),
        ("problem_id", pa.string()),
        ("prefix_index", pa.int32()),  # j: 0 = no thinking, E = the whole thinking block
        ("n_episodes", pa.int32()),
        ("prefix_tokens", pa.int32()),  # thinking tokens kept in this prefix
        ("forced", pa.bool_()),  # True when the forced-termination text was appended
        ("n_samples", pa.int32()),
        ("n_correct", pa.int32()),
        ("n_unparsed", pa.int32()),
        ("n_length_cut", pa.int32()),  # answers cut by max_answer_tokens (never used as the solution)
        ("j_hat", pa.float64()),
        ("j_low", pa.float64()),
        ("j_high", pa.float64()),
        ("mean_answer_tokens", pa.float64()),
        ("correct_answer", pa.string()),  # the first correct answer that ended on its own (EOS), null when none
        ("correct_answer_ids", ids),  # its ids exactly as generated (no EOS added)
    ]
)

PROGRESS = pa.schema(
    [
        ("trace_id", pa.string()),
        ("episode_index", pa.int32()),  # episode j spans prefixes j-1 -> j (1-based)
        ("progress", pa.float64()),
        ("progress_se", pa.float64()),
        ("j_before", pa.float64()),
        ("j_after", pa.float64()),
    ]
)

REGRET = pa.schema(
    [
        ("trace_id", pa.string()),
        ("problem_id", pa.string()),
        ("n_episodes", pa.int32()),
        ("j_direct", pa.float64()),
        ("j_final", pa.float64()),
        ("j_best", pa.float64()),
        ("best_prefix", pa.int32()),
        ("total_gain", pa.float64()),
        ("regret", pa.float64()),  # normalized regret at the full sampling budget
        ("regret_by_budget", pa.string()),  # JSON {budget_tokens: regret}
    ]
)

EXTRAPOLATION = pa.schema(
    [
        ("trace_id", pa.string()),
        ("problem_id", pa.string()),
        ("extension", pa.int32()),  # continuations appended after the trace's own thinking (>= 1)
        ("thinking_tokens", pa.int32()),  # thinking so far: the trace's own plus every continuation
        ("added_tokens", pa.int32()),  # tokens this continuation added (marker included)
        ("closed", pa.bool_()),  # the model ended this continuation itself (closed thinking or EOS)
        ("n_samples", pa.int32()),
        ("n_correct", pa.int32()),
        ("n_unparsed", pa.int32()),
        ("j_hat", pa.float64()),  # forced-answer accuracy after this continuation
        ("mean_answer_tokens", pa.float64()),
    ]
)

SELECTED = pa.schema(
    [
        ("trace_id", pa.string()),
        ("problem_id", pa.string()),
        ("round", pa.int32()),
        ("method", pa.string()),
        ("prompt", pa.string()),
        ("completion", pa.string()),
        ("prompt_ids", ids),
        ("completion_ids", ids),
        ("best_prefix", pa.int32()),
        ("n_episodes", pa.int32()),
        ("j_best", pa.float64()),
        ("total_gain", pa.float64()),
        ("regret", pa.float64()),
        ("model", pa.string()),
    ]
)


def from_rows(rows: list[dict], schema: pa.Schema) -> pa.Table:
    """Build a table with exactly `schema`; a missing or extra column is a programming error."""
    return pa.Table.from_pylist(rows, schema=schema)
