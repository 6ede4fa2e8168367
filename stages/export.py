"""Stage `export`: the selected targets as Parquet for any trainer."""

from __future__ import annotations

from pipeline.config import Params
from pipeline.export import messages_table, prompt_completion_table
from pipeline.io import read_table, write_table
from pipeline.tables import SELECTED
from stages.common import layout, policy_prompts, rows


def run(params: Params, round_index: int, arm: str | None = None) -> str:
    paths = layout(params, arm)
    selected = read_table(paths.selected(round_index), SELECTED)
    prompts = policy_prompts(params, round_index, arm)
    problems = {p["problem_id"]: p["problem"] for p in rows(paths.problems_split("train"))}
    messages = {pid: prompts.messages(problems[pid]) for pid in set(selected.column("problem_id").to_pylist())}
    out = paths.exports(round_index)
    write_table(prompt_completion_table(selected), out / "prompt_completion.parquet")
    write_table(messages_table(selected, messages), out / "messages.parquet")
    return f"round {round_index}: exported {selected.num_rows} examples to {out}"
