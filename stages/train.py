"""Stage `train`: SFT of the round's starting model on the selected targets.

With `train.accelerate_config` set, the stage relaunches itself on several processes
(`pipeline.launch`); the workers come back here with it cleared and train.
"""

from __future__ import annotations

from pipeline.config import Params
from pipeline.io import write_json
from pipeline.launch import accelerate_config_file, is_main_process, launch_training
from pipeline.models import resolve_output, staged_model_folder
from pipeline.tables import SELECTED
from pipeline.training import check_sft_args, checkpoint_folder, train_sft, write_pointer
from stages.common import layout, rows


def run(params: Params, round_index: int, arm: str | None = None) -> str:
    paths = layout(params, arm)
    start = paths.base_model if params.train.init == "base" else paths.policy(round_index)
    init = resolve_output(start, params.model.trust_remote_code)
    selected = rows(paths.selected(round_index), SELECTED)
    out = paths.model(round_index)
    if not selected:
        write_pointer(init, out)
        write_json({"round": round_index, "arm": paths.arm, "init": str(start), "examples": 0, "trained": False},
                   paths.train_metrics(round_index))
        return f"round {round_index}: nothing selected; the round's model is {start} unchanged"
    check_sft_args(params.train.sft_args)  # a typo stops the stage before any model loads or process starts
    launcher = accelerate_config_file(params)
    if launcher is not None:
        with staged_model_folder(out):  # the launched workers write into it; marked and swapped in after
            launch_training(params, launcher, round_index, paths.arm)
        return f"round {round_index}: trained on {len(selected)} examples under accelerate ({launcher}) -> {out}"
    with staged_model_folder(out) as staging:  # a kill leaves `out` unmarked (refused), never half-written
        metrics = train_sft(selected, init, staging, params.train, checkpoints=checkpoint_folder(out),
                            log_dir=paths.train_metrics(round_index).with_name("dvclive"))
    if is_main_process():
        write_json({"round": round_index, "arm": paths.arm, "init": str(start), **metrics}, paths.train_metrics(round_index))
    return f"round {round_index}: trained on {len(selected)} examples -> {out}"
