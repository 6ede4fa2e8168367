"""Stage `export`: the selected targets, and the dense progress of every scored trace, as Parquet for
any trainer (see `pipeline.export` and `pipeline.dense_progress`). A round `scored_arms` leaves
unscored has no progress, so only the SFT tables are written."""

from __future__ import annotations

from pipeline.config import Params
from pipeline.dense_progress import REWARDS, STEPWISE, rewards_table, scored_traces, stepwise_table
from pipeline.export import MESSAGES, PROMPT_COMPLETION, TOKENIZED, messages_table, prompt_completion_table, tokenized_table
from pipeline.io import read_table, remove_output, write_table_set
from pipeline.tables import EPISODES, PROGRESS, SELECTED, TRACES
from stages.common import layout, policy_prompts, rows


def run(params: Params, round_index: int, arm: str | None = None) -> str:
    paths = layout(params, arm)
    selected = read_table(paths.selected(round_index), SELECTED)
    prompts = policy_prompts(params, round_index, arm)
    problems = {p["problem_id"]: p for p in rows(paths.problems_split("train"))}
    wanted = set(selected.column("problem_id").to_pylist()) & problems.keys()
    messages = {pid: prompts.messages(problems[pid]["problem"]) for pid in wanted}
    out = paths.exports(round_index)
    tables = {  # one set: a kill between files leaves files that readers refuse, not a mix
        out / TOKENIZED: tokenized_table(selected, problems),
        out / PROMPT_COMPLETION: prompt_completion_table(selected, problems, prompts.tokenizer),
        out / MESSAGES: messages_table(selected, problems, messages, prompts.tokenizer, prompts.template_args),
    }
    if params.is_scored(paths.arm, round_index):
        scored = scored_traces(rows(paths.traces(round_index), TRACES), rows(paths.episodes(round_index), EPISODES),
                               rows(paths.progress(round_index), PROGRESS), prompts.tokenizer)
        chosen = set(selected.column("trace_id").to_pylist())
        tables |= {out / STEPWISE: stepwise_table(scored, chosen, prompts.tokenizer), out / REWARDS: rewards_table(scored, chosen)}
        done = f"exported {selected.num_rows} SFT examples and the progress of {len(scored)} traces to {out}"
    else:  # no progress to export: say so, and leave no older progress tables beside the new ones
        for name in (STEPWISE, REWARDS):
            remove_output(out / name)
        done = f"exported {selected.num_rows} SFT examples to {out} (not scored: scored_arms, so no progress tables)"
    write_table_set(tables)
    return f"round {round_index}: {done}"
