"""Running SFT on several processes: the train stage relaunches itself under `accelerate launch`.

`dvc repro` starts every stage as one process. A model too large for one device (a 7B full
fine-tune) needs several processes, e.g. DeepSpeed ZeRO-3 over 8 GPUs. With
`train.accelerate_config` set, the train stage writes its validated parameters to a temporary
file (with `accelerate_config` cleared, so the workers train instead of relaunching) and runs
`accelerate launch --config_file <it> -m stages.cli train ...`; the workers write the model and
the metrics, rank 0 alone where one copy is wanted.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from pipeline.config import ConfigError, Params


class LaunchError(RuntimeError):
    """The launched training processes failed; the message holds the command to rerun by hand."""


def is_main_process() -> bool:
    """Rank 0 of a launched job, or a plain single process."""
    return int(os.environ.get("RANK", "0")) == 0


def accelerate_config_file(params: Params) -> Path | None:
    """The accelerate config the parameters ask for, checked to exist; None: train in this process."""
    value = params.train.accelerate_config
    if value is None:
        return None
    path = Path(value)
    if not path.is_file():
        raise ConfigError(f"train.accelerate_config: {path}: no such file (an `accelerate config` YAML, e.g. "
                          "configs/accelerate/deepspeed_zero3.yaml)")
    return path


def worker_params(params: Params) -> dict:
    """The same parameters for the launched workers, minus the relaunch."""
    raw = params.model_dump(mode="json")
    raw["train"]["accelerate_config"] = None
    return raw


def accelerate_command(config_file: Path, params_file: Path, round_index: int, arm: str) -> list[str]:
    return [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_file),
        "-m", "stages.cli", "train", "--round", str(round_index), "--arm", arm, "--params", str(params_file),
    ]


def launch_training(params: Params, config_file: Path, round_index: int, arm: str) -> None:
    """Run round `round_index`'s SFT for `arm` under accelerate and wait for it."""
    with tempfile.TemporaryDirectory(prefix="mrt-launch-") as scratch:
        params_file = Path(scratch) / "params.yaml"
        params_file.write_text(yaml.safe_dump(worker_params(params), sort_keys=False))
        command = accelerate_command(config_file, params_file, round_index, arm)
        code = subprocess.run(command).returncode
    if code != 0:
        by_hand = (f"accelerate launch --config_file {config_file} -m stages.cli train --round {round_index} "
                   f"--arm {arm} --set train.accelerate_config=null")
        raise LaunchError(f"train round {round_index} (arm {arm}): the launched workers exited with code {code} "
                          f"(their output above says why); to run them by hand: {by_hand}")
