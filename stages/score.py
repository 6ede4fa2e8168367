"""Stage `score`: progress per episode and regret per trace from the prover table."""

from __future__ import annotations

from collections import defaultdict

from pipeline.config import Params
from pipeline.io import write_table_set
from pipeline.regret import episode_progress, trace_regret
from pipeline.tables import PROGRESS, PROVER, REGRET, from_rows
from stages.common import layout, require_scored, rows


def run(params: Params, round_index: int, arm: str | None = None) -> str:
    require_scored(params, round_index, arm)
    paths = layout(params, arm)
    by_trace: dict[str, list[dict]] = defaultdict(list)
    for row in rows(paths.prover(round_index), PROVER):
        by_trace[row["trace_id"]].append(row)
    budgets = [fraction * params.sample.max_tokens for fraction in params.regret.budget_fractions]
    progress_rows = [row for prefixes in by_trace.values() for row in episode_progress(prefixes)]
    regret_rows = [trace_regret(prefixes, budgets) for prefixes in by_trace.values()]
    write_table_set({paths.progress(round_index): from_rows(progress_rows, PROGRESS),  # read together, or refused
                     paths.regret(round_index): from_rows(regret_rows, REGRET)})
    return f"round {round_index}: scored {len(regret_rows)} traces, {len(progress_rows)} episodes"
