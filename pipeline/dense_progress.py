"""Dense progress for other trainers: the meta-prover's per-episode progress, exported two ways.

The paper's main use of progress is a dense reward. For every trace of the round that the
meta-prover scored (not only the selected ones: a process reward model needs steps that made
no progress too):

- `progress_steps.parquet`, trl's stepwise-supervision format (`prompt`, `completions`,
  `labels`), as read by trl's PRMTrainer: the steps are the episodes of the thinking block,
  verbatim (they concatenate back to the thinking text; use `step_separator=""` to rebuild it
  exactly), and a step's label is `progress > 0`: the episode raised the meta-prover's success
  probability J. The float `progress` is kept beside the labels for other thresholds. The
  prompt is the sampling prompt (chat template + `<think>\\n`) without a leading BOS string,
  which trl's PRM tokenization prepends itself.
- `progress_rewards.parquet`, for RL trainers: the trace's own `prompt_ids` and
  `completion_ids`, and per episode its token span in `completion_ids`
  (`step_token_starts`/`step_token_ends`) and its reward `step_rewards` = progress
  (J(j) - J(j-1)); put reward j on token `step_token_ends[j] - 1` of the completion.
"""

from __future__ import annotations

from collections import defaultdict

import pyarrow as pa

from pipeline.prover import thinking_ids
from pipeline.tables import ids
from pipeline.tokens import decode

STEPWISE, REWARDS = "progress_steps.parquet", "progress_rewards.parquet"


def _by_trace(rows: list[dict]) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        grouped[row["trace_id"]].append(row)
    return {trace_id: sorted(items, key=lambda r: r["episode_index"]) for trace_id, items in grouped.items()}


def trace_steps(trace: dict, episodes: list[dict], progress: list[dict], tokenizer) -> list[dict]:
    """One dict per episode of `trace`: its text, token span and progress (episodes and progress
    rows matched by `episode_index`, 1-based in both tables)."""
    if [e["episode_index"] for e in episodes] != [p["episode_index"] for p in progress]:
        raise ValueError(f"trace {trace['trace_id']}: episodes {[e['episode_index'] for e in episodes]} and progress rows "
                         f"{[p['episode_index'] for p in progress]} do not match (rerun split, prove and score together)")
    text = decode(tokenizer, thinking_ids(trace))
    return [{"text": text[e["char_start"]:e["char_end"]], "token_start": e["token_start"], "token_end": e["token_end"],
             "progress": p["progress"], "progress_se": p["progress_se"]} for e, p in zip(episodes, progress)]


def scored_traces(traces: list[dict], episodes: list[dict], progress: list[dict], tokenizer) -> list[tuple[dict, list[dict]]]:
    """(trace, steps) for every trace with progress rows, in trace order."""
    episodes_of, progress_of = _by_trace(episodes), _by_trace(progress)
    unknown = sorted(progress_of.keys() - {t["trace_id"] for t in traces})
    if unknown:
        raise KeyError(f"progress rows for trace {unknown[0]!r} (and {len(unknown) - 1} more) that the traces table does not hold")
    return [(t, trace_steps(t, episodes_of.get(t["trace_id"], []), progress_of[t["trace_id"]], tokenizer))
            for t in traces if t["trace_id"] in progress_of]


def prm_prompt(tokenizer, prompt_ids: list[int]) -> str:
    """The sampling prompt as text for trl's PRM tokenization, which prepends BOS itself."""
    text = decode(tokenizer, prompt_ids)
    bos = tokenizer.bos_token
    return text[len(bos):] if bos and text.startswith(bos) else text


def stepwise_table(scored: list[tuple[dict, list[dict]]], selected_ids: set[str], tokenizer) -> pa.Table:
    """trl's stepwise-supervision format: prompt, completions (episodes), labels (progress > 0)."""
    return pa.table({
        "prompt": pa.array([prm_prompt(tokenizer, t["prompt_ids"]) for t, _ in scored], type=pa.string()),
        "completions": pa.array([[s["text"] for s in steps] for _, steps in scored], type=pa.list_(pa.string())),
        "labels": pa.array([[s["progress"] > 0 for s in steps] for _, steps in scored], type=pa.list_(pa.bool_())),
        "progress": pa.array([[s["progress"] for s in steps] for _, steps in scored], type=pa.list_(pa.float64())),
        **_provenance(scored, selected_ids),
    })


def rewards_table(scored: list[tuple[dict, list[dict]]], selected_ids: set[str]) -> pa.Table:
    """Per-episode progress rewards with their token spans in the trace's own completion ids."""
    def column(key: str, kind) -> pa.Array:
        return pa.array([[s[key] for s in steps] for _, steps in scored], type=pa.list_(kind))

    return pa.table({
        "prompt_ids": pa.array([t["prompt_ids"] for t, _ in scored], type=ids),
        "completion_ids": pa.array([t["completion_ids"] for t, _ in scored], type=ids),
        "step_token_starts": column("token_start", pa.int32()),
        "step_token_ends": column("token_end", pa.int32()),
        "step_rewards": column("progress", pa.float64()),
        "step_reward_se": column("progress_se", pa.float64()),
        **_provenance(scored, selected_ids),
    })


def _provenance(scored: list[tuple[dict, list[dict]]], selected_ids: set[str]) -> dict[str, pa.Array]:
    return {
        "trace_id": pa.array([t["trace_id"] for t, _ in scored], type=pa.string()),
        "problem_id": pa.array([t["problem_id"] for t, _ in scored], type=pa.string()),
        "round": pa.array([t["round"] for t, _ in scored], type=pa.int32()),
        "correct": pa.array([t["correct"] for t, _ in scored], type=pa.bool_()),  # the trace's own final answer
        "selected": pa.array([t["trace_id"] in selected_ids for t, _ in scored], type=pa.bool_()),  # an SFT target of this arm
        "model": pa.array([t["model"] for t, _ in scored], type=pa.string()),
    }
