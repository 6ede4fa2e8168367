"""`train.sft_args.report_to: [dvclive]`: SFT loss and learning rate as DVC plots beside train.json.

transformers' own DVCLive integration (`report_to: dvclive`) creates `Live()` with its defaults:
it writes to `./dvclive` (one folder shared by every round and arm, which a second train stage
wipes) and rewrites the repository's `dvc.yaml` to add its plots, changing the pipeline file that
`dvc repro` is running. The pipeline takes the `dvclive` entry out of `report_to` and logs through
the same callback into the round's metrics folder instead, with no dvc.yaml edits and no DVC
experiment commits (`dvc plots show <folder>/plots/metrics` plots it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.config import ConfigError

DVCLIVE = "dvclive"


def report_targets(report_to: Any) -> list[str]:
    """`report_to` as a list of integration names ("none" and None: no integration)."""
    if report_to in (None, "none"):
        return []
    if report_to == "all":
        raise ConfigError("train.sft_args.report_to: 'all' would let transformers start DVCLive with its defaults "
                          "(it rewrites dvc.yaml); list the integrations, e.g. [dvclive, tensorboard]")
    return [report_to] if isinstance(report_to, str) else list(report_to)


def split_dvclive(sft_args: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """`sft_args` without the dvclive entry of `report_to`, and whether it was there."""
    if "report_to" not in sft_args:
        return sft_args, False
    targets = report_targets(sft_args["report_to"])
    others = [target for target in targets if target != DVCLIVE]
    return {**sft_args, "report_to": others or "none"}, len(others) < len(targets)


def dvclive_callback(folder: Path, resume: bool):
    """transformers' DVCLive callback writing to `folder` (rank 0 only; continued when SFT resumes)."""
    try:
        from dvclive import Live
    except ImportError as error:
        raise ConfigError("train.sft_args.report_to: dvclive is not installed (pip install dvclive)") from error
    from transformers.integrations import DVCLiveCallback

    class FolderDVCLiveCallback(DVCLiveCallback):
        def setup(self, args, state, model):
            if state.is_world_process_zero and self.live is None:
                self.live = Live(dir=str(folder), resume=resume, save_dvc_exp=False, dvcyaml=False)
            super().setup(args, state, model)

    return FolderDVCLiveCallback()
