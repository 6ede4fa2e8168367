"""Stage `train`: SFT of the round's starting model on the selected targets."""

from __future__ import annotations

from pipeline.config import Params
from pipeline.io import write_json
from pipeline.models import resolve
from pipeline.tables import SELECTED
from pipeline.training import train_sft
from stages.common import layout, rows


def run(params: Params, round_index: int, arm: str | None = None) -> str:
    paths = layout(params, arm)
    start = paths.base_model if params.train.init == "base" else paths.policy(round_index)
    init = resolve(start, params.model.trust_remote_code)
    selected = rows(paths.selected(round_index), SELECTED)
    metrics = train_sft(selected, init, paths.model(round_index), params.train, params.model.dtype)
    write_json({"round": round_index, "arm": paths.arm, "init": str(start), **metrics}, paths.train_metrics(round_index))
    if not metrics["trained"]:
        return f"round {round_index}: nothing selected; the round's model is {start} unchanged"
    return f"round {round_index}: trained on {len(selected)} examples -> {paths.model(round_index)}"
