"""Stage `select`: an arm's SFT targets (MRT-STaR or STaR), round metrics and plot data.

A round that `scored_arms` leaves unscored (STaR, r >= 1) is selected by correctness alone: its
metrics carry `scored: false` and no regret or progress, and it has no J-by-prefix plot.
"""

from __future__ import annotations

from collections import Counter

from pipeline.config import Params
from pipeline.io import remove_output, write_json, write_table
from pipeline.metrics import j_by_prefix, round_metrics
from pipeline.selection import select_mrt, select_star
from pipeline.tables import PROGRESS, PROVER, REGRET, SELECTED, TRACES, from_rows
from stages.common import layout, policy_prompts, rows


def run(params: Params, round_index: int, arm: str | None = None) -> str:
    paths = layout(params, arm)
    traces = rows(paths.traces(round_index), TRACES)
    scored = params.is_scored(paths.arm, round_index)  # else STaR by correctness alone, without scores
    prover_rows, regret_rows, progress_rows = (
        (rows(paths.prover(round_index), PROVER), rows(paths.regret(round_index), REGRET),
         rows(paths.progress(round_index), PROGRESS)) if scored else ([], [], [])
    )
    regrets = {r["trace_id"]: r for r in regret_rows}
    problems = {p["problem_id"]: p for p in rows(paths.problems_split("train"))}
    prompts = policy_prompts(params, round_index, arm)
    method = paths.arm  # an arm is named after its selection rule
    drops: Counter = Counter()
    if method == "mrt":
        selected = select_mrt(traces, prover_rows, regrets, problems, prompts, params.select, drops)
    else:
        selected = select_star(traces, regrets, problems, prompts, params.select, drops)
    write_table(from_rows(selected, SELECTED), paths.selected(round_index))
    metrics = round_metrics(traces, progress_rows, regret_rows, selected, method, drops, prover_rows)
    write_json({"round": round_index, "arm": paths.arm, "scored": scored, **metrics}, paths.metrics(round_index))
    plot = paths.plots(round_index) / "j_by_prefix.json"
    if scored:
        write_json(j_by_prefix(prover_rows), plot)
    else:
        remove_output(plot)  # an earlier scored run's plot is not this round's
    note = "" if scored else " (not scored: scored_arms)"
    return f"{paths.arm} round {round_index}: kept {len(selected)} of {len(traces)} traces{note}"
