"""Stage `prepare`: the base model folder and the train/eval problem tables."""

from __future__ import annotations

from pipeline.config import Params
from pipeline.io import write_table
from pipeline.models import prepare_base_model
from stages.common import layout, open_grader


def run_model(params: Params) -> str:
    out = layout(params).base_model
    ref = prepare_base_model(params.model, out)
    return f"base model {params.model.name_or_path} -> {out} (loads from {ref.label})"


def run_problems(params: Params) -> str:
    from pipeline.problems import load_problems

    paths = layout(params)
    with open_grader(params) as grader:
        train, evaluation, rejects = load_problems(params.problems, grader)
    write_table(train, paths.problems_split("train"))
    write_table(evaluation, paths.problems_split("eval"))
    write_table(rejects, paths.problem_rejects)
    return f"problems: {train.num_rows} train, {evaluation.num_rows} eval, {rejects.num_rows} rejected (see {paths.problem_rejects})"
