"""Stage `split`: cut every trace's thinking block into episodes."""

from __future__ import annotations

from pipeline.config import Params
from pipeline.episodes import split_token_ids
from pipeline.io import write_table
from pipeline.prover import thinking_ids
from pipeline.tables import EPISODES, TRACES, from_rows
from stages.common import layout, policy_tokenizer, rows


def run(params: Params, round_index: int, arm: str | None = None) -> str:
    paths = layout(params, arm)
    traces = rows(paths.traces(round_index), TRACES)
    tokenizer = policy_tokenizer(params, round_index, arm)
    out = []
    for trace in traces:
        episodes, rule = split_token_ids(tokenizer, thinking_ids(trace), params.episodes)
        out.extend(
            {"trace_id": trace["trace_id"], "episode_index": i, "rule": rule, **episode.__dict__}
            for i, episode in enumerate(episodes, start=1)
        )
    write_table(from_rows(out, EPISODES), paths.episodes(round_index))
    return f"round {round_index}: {len(out)} episodes in {len(traces)} traces"
