"""Stage `train`: SFT of the round's starting model on the selected targets.

With `train.accelerate_config` set, the stage relaunches itself on several processes
(`pipeline.launch`); the workers come back here with it cleared and train.
"""

from __future__ import annotations

from pipeline.config import Params
from pipeline.io import write_json
from pipeline.launch import accelerate_config_file, is_main_process, launch_training
from pipeline.models import resolve
from pipeline.tables import SELECTED
from pipeline.training import train_sft, write_pointer
from stages.common import layout, rows


def run(params: Params, round_index: int, arm: str | None = None) -> str:
    paths = layout(params, arm)
    start = paths.base_model if params.train.init == "base" else paths.policy(round_index)
    init = resolve(start, params.model.trust_remote_code)
    selected = rows(paths.selected(round_index), SELECTED)
    out = paths.model(round_index)
    if not selected:
        write_pointer(init, out)
        write_json({"round": round_index, "arm": paths.arm, "init": str(start), "examples": 0, "trained": False},
                   paths.train_metrics(round_index))
        return f"round {round_index}: nothing selected; the round's model is {start} unchanged"
    launcher = accelerate_config_file(params)
    if launcher is not None:
        launch_training(params, launcher, round_index, paths.arm)
        return f"round {round_index}: trained on {len(selected)} examples under accelerate ({launcher}) -> {out}"
    metrics = train_sft(selected, init, out, params.train, params.model.dtype)
    if is_main_process():
        write_json({"round": round_index, "arm": paths.arm, "init": str(start), **metrics}, paths.train_metrics(round_index))
    return f"round {round_index}: trained on {len(selected)} examples -> {out}"
