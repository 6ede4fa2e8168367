"""Stage `prepare`: the base model folder and the train/eval problem tables."""

from __future__ import annotations

from pipeline.config import Params
from pipeline.io import write_json, write_table_set
from pipeline.models import prepare_base_model
from stages.common import layout, open_grader, prompt_builder


def run_model(params: Params) -> str:
    out = layout(params).base_model
    ref = prepare_base_model(params.model, out)
    return f"base model {params.model.name_or_path} -> {out} (loads from {ref.label})"


def run_problems(params: Params) -> str:
    """Write data/problems/{train,eval,rejects}.parquet and the counts to <metrics_dir>/problems.json.

    The three files are one set: a kill between them leaves files that readers refuse, never a
    new train split beside an old eval split (eval problems inside train)."""
    from tqdm.auto import tqdm

    from pipeline.problem_screen import model_screen
    from pipeline.problems import prepare_problems

    paths = layout(params)
    budget = max(params.sample.max_tokens, params.eval.max_tokens or 0)  # a prompt must leave room for it
    screen = model_screen(paths.base_model, params.model, lambda tok: prompt_builder(params, tok), budget,
                          params.backend.max_model_len)
    target = params.problems.train_size + params.problems.eval_size
    bars: list = []  # opened at the first usable problem: a source that fails to read prints only its error

    def found(n: int) -> None:
        if not bars:
            bars.append(tqdm(total=target, desc="usable problems", unit="problem", dynamic_ncols=True))
        bars[0].update(n)

    try:
        with open_grader(params) as grader:
            prepared = prepare_problems(params.problems, grader, screen, found)
    finally:
        for bar in bars:
            bar.close()
    write_table_set({paths.problems_split("train"): prepared.train, paths.problems_split("eval"): prepared.eval,
                     paths.problem_rejects: prepared.rejects})
    metrics_file = paths.problem_metrics
    write_json(prepared.metrics, metrics_file)
    m = prepared.metrics
    sources = ", ".join(f"{n} {s}" for s, n in m["eval_by_source"].items())
    message = (
        f"problems: {m['train']} train, {m['eval']} eval ({sources}), {m['rejected']} rejected "
        f"({m['decontamination']['removed']} for overlapping eval; see {paths.problem_rejects}); counts in {metrics_file}"
    )
    if m["train_shortfall"] > 0:
        message += f"\nwarning: the pool ran out: {m['train_shortfall']} fewer training problems than problems.train_size"
    return message
