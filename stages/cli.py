"""`mrt`: one command per pipeline stage, reading the same `params.yaml` as DVC."""

from __future__ import annotations

import os
import sys
from enum import Enum
from pathlib import Path
from typing import Callable, get_args

import typer

from pipeline.config import ArmName, ConfigError, Params, load_params
from pipeline.io import ConcurrentRunError, ShardPart, set_shard_part
from pipeline.launch import LaunchError
from pipeline.models import ModelNotFoundError
from pipeline.problem_files import ProblemSourceError

app = typer.Typer(
    help="MRT-STaR: sample reasoning traces, score their episodes with the meta-prover, "
    "select and truncate the traces that make progress, fine-tune, repeat. "
    "Every command reads params.yaml (or --params) and accepts --set key.path=value overrides.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"mrt-star {version('mrt-star')}")
        except PackageNotFoundError:  # run from a checkout that was never installed
            typer.echo("mrt-star (not installed: version unknown)")
        raise typer.Exit()


@app.callback()
def _root(
    show_version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """Options before the command (--version); the help text is the app's."""


ParamsOption = typer.Option(None, "--params", "-p", help="Parameters file (default: ./params.yaml, the one DVC reads).")
DEFAULT_PARAMS = Path("params.yaml")
SetOption = typer.Option(None, "--set", "-s", help="Override a parameter, e.g. --set sample.n=4 (repeatable).")
Arm = Enum("Arm", {name: name for name in get_args(ArmName)}, type=str)  # offered as choices in --help
ArmOption = typer.Option(
    None, "--arm", "-a", show_choices=True,
    help="Arm (selection rule) whose models and data to use; it must be listed in `arms` (default: the first there). "
    "Round 0 samples the base model once for all arms.",
)
# What --round means differs per command: whose samples, which round's samples trained on, which policy evaluated.
ROUND_HELP = {
    "samples": "Round r: the samples of round r, drawn with the policy trained in round r-1 (0: the base model).",
    "trains": "Round r: works on the targets selected from round r's samples; the model trained on them "
    "samples round r+1.",
    "policy": "Round r: evaluates the policy after r rounds of training (0: the base model).",
}

_EXPECTED_ERRORS = (ConfigError, ModelNotFoundError, ProblemSourceError, FileNotFoundError, ValueError, LaunchError,
                    ConcurrentRunError)


# Failures of the machine or the input rather than of the code: a one-line message, exit code 2.
_ENVIRONMENT_ERRORS = (OSError, RecursionError, MemoryError)


def _say(message: str, color: str, err: bool = False) -> None:
    """Print even text the terminal cannot encode (a lone surrogate, a non-UTF-8 locale): escaped, never a traceback."""
    stream = sys.stderr if err else sys.stdout
    encoding = getattr(stream, "encoding", None) or "utf-8"
    typer.secho(message.encode(encoding, "backslashreplace").decode(encoding), fg=color, err=err)


def _describe(error: BaseException, params: Params | None) -> str:
    """What went wrong, naming the path: an OSError carries it when the failing call had one;
    otherwise (a write that hit a full disk) the command's output folders are named."""
    if isinstance(error, OSError) and error.strerror:
        paths = " -> ".join(str(p) for p in (error.filename, error.filename2) if p is not None)
        if paths:
            return f"{error.strerror}: {paths}"
        where = f" (writing under data_dir={params.data_dir}, metrics_dir={params.metrics_dir})" if params else ""
        return f"{error.strerror}{where}"
    if isinstance(error, RecursionError):
        return f"input nested too deeply to read ({error})"
    if isinstance(error, MemoryError):
        return "out of memory" + (f": {error}" if str(error) else "")
    return str(error)


def _run(params_file: Path | None, overrides: list[str] | None, action: Callable[[Params], str]) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    params = None
    try:
        if params_file is not None and not params_file.is_file():
            raise ConfigError(f"--params {params_file}: no such file")  # only ./params.yaml may be absent
        params = load_params(params_file or DEFAULT_PARAMS, overrides or [])
        for warning in params.warnings():
            _say(f"warning: {warning}", typer.colors.YELLOW, err=True)
        message = action(params)
    except _EXPECTED_ERRORS + _ENVIRONMENT_ERRORS as error:
        _say(f"error: {_describe(error, params)}", typer.colors.RED, err=True)
        raise typer.Exit(code=2) from None
    except KeyboardInterrupt:
        _say("interrupted: completed shards are kept; rerun to resume", typer.colors.YELLOW, err=True)
        raise typer.Exit(code=130) from None
    _say(message, typer.colors.GREEN)


@app.command("prepare-model")
def prepare_model(params: Path = ParamsOption, set_: list[str] = SetOption) -> None:
    """Materialize the base model as data/base_model (convert the embedded GGUF, or point at a hub id / folder)."""
    from stages import prepare

    _run(params, set_, prepare.run_model)


@app.command("prepare-problems")
def prepare_problems(params: Path = ParamsOption, set_: list[str] = SetOption) -> None:
    """Load, validate and split problems into data/problems/{train,eval,rejects}.parquet."""
    from stages import prepare

    _run(params, set_, prepare.run_problems)


@app.command("prepare")
def prepare_all(params: Path = ParamsOption, set_: list[str] = SetOption) -> None:
    """Both prepare steps: base model and problems."""
    from stages import prepare

    _run(params, set_, lambda p: prepare.run_model(p) + "\n" + prepare.run_problems(p))


ShardIndexOption = typer.Option(0, "--shard-index", min=0, help="This node's share of the shards: shard i is "
                                "written by the node with i % num-shards == shard-index (SLURM_ARRAY_TASK_ID, a Ray task).")
NumShardsOption = typer.Option(1, "--num-shards", min=1, help="How many nodes share the stage's shards in one folder; "
                               "the last to finish (or a run without these flags) marks the folder complete.")


def _round_command(name: str, module: str, doc: str, rounds: str, sharded: bool = False) -> None:
    RoundOption = typer.Option(0, "--round", "-r", min=0, help=ROUND_HELP[rounds])

    def command(
        round_index: int = RoundOption, arm: Arm = ArmOption, params: Path = ParamsOption, set_: list[str] = SetOption
    ) -> None:
        import importlib

        stage = importlib.import_module(f"stages.{module}")
        _run(params, set_, lambda p: stage.run(p, round_index, arm.value if arm else None))

    def sharded_command(
        round_index: int = RoundOption, arm: Arm = ArmOption, params: Path = ParamsOption, set_: list[str] = SetOption,
        shard_index: int = ShardIndexOption, num_shards: int = NumShardsOption,
    ) -> None:
        try:
            set_shard_part(ShardPart(shard_index, num_shards))
        except ValueError as error:
            typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
            raise typer.Exit(code=2) from None
        command(round_index, arm, params, set_)

    chosen = sharded_command if sharded else command
    chosen.__doc__ = doc
    app.command(name)(chosen)


@app.command("import-traces")
def import_traces(params: Path = ParamsOption, set_: list[str] = SetOption) -> None:
    """Round 0 from traces you already have (sample.traces_source: JSONL/Parquet with problem and completion
    columns) instead of sampling: tokenized, thinking located, graded like sampled traces, sharded."""
    from stages import import_traces as stage

    _run(params, set_, stage.run)


_round_command("sample", "sample", "Sample traces for the training problems with this round's policy; graded, sharded, resumable.", "samples", sharded=True)
_round_command("split", "split", "Split every trace's thinking block into episodes (marker, regex or token-window rule).", "samples")
_round_command("prove", "prove", "Meta-prover: force an answer K times after every episode prefix; estimates J(j). Sharded, resumable.", "samples", sharded=True)
_round_command("score", "score", "Progress per episode (J(j) - J(j-1)) and normalized cumulative regret per trace.", "samples")
_round_command("select", "select", "Select the arm's SFT targets: MRT-STaR (truncate at the best prefix) or STaR; writes round metrics.", "trains")
_round_command("train", "train", "Supervised fine-tuning with trl on the selected targets (loss on the completion only).", "trains")
_round_command("export", "export", "Export for other trainers: SFT targets as token ids, prompt/completion text and messages; per-episode progress as trl stepwise supervision and RL rewards.", "trains")
_round_command("evaluate", "evaluate", "Evaluate the arm's policy after r rounds (0: base model) on the eval split: pass@k, maj@k, tokens, accuracy vs budget, extrapolation.", "policy", sharded=True)


class GradeMode(str, Enum):
    """What the prediction column of `mrt grade` holds."""

    completion = "completion"
    answer = "answer"


@app.command("grade")
def grade(
    input_path: Path = typer.Argument(..., help="Parquet or JSONL file with a gold and a prediction column."),
    output: Path = typer.Option(None, "--output", "-o", help="Where to write (.parquet or .jsonl); default INPUT.graded.parquet."),
    gold_column: str = typer.Option("gold", "--gold-column", help="Column with the gold answers."),
    prediction_column: str = typer.Option("prediction", "--prediction-column", help="Column with the predictions."),
    mode: GradeMode = typer.Option(
        "completion", "--mode", help="completion: whole model outputs, graded on the answer after </think>; answer: bare answers (a sentence is read like a prediction)."
    ),
    timeout: float = typer.Option(3.0, "--timeout", min=0.1, help="Limit per answer, in the grading worker's CPU seconds."),
    workers: int = typer.Option(2, "--workers", min=1, help="Grading processes."),
) -> None:
    """Grade (gold, prediction) pairs from any pipeline: correct / incorrect / unparsed, with the reason."""
    from pipeline.grading import Grader
    from pipeline.grading.files import GradeFileError, grade_file

    output = output or input_path.with_name(input_path.stem + ".graded.parquet")
    try:
        with Grader(workers=workers, timeout_seconds=timeout) as grader:
            counts = grade_file(input_path, output, gold_column, prediction_column, mode.value, grader)
    except (GradeFileError, *_ENVIRONMENT_ERRORS) as error:
        _say(f"error: {_describe(error, None)}", typer.colors.RED, err=True)
        raise typer.Exit(code=2) from None
    summary = ", ".join(f"{key} {value}" for key, value in sorted(counts.items()))
    typer.secho(f"graded {sum(counts[k] for k in ('correct', 'incorrect', 'unparsed'))} rows -> {output} ({summary})", fg=typer.colors.GREEN)


@app.command("report")
def report(params: Path = ParamsOption, set_: list[str] = SetOption) -> None:
    """Write metrics/report/report.md with tables and PNG plots (accuracy vs tokens, regret, progress)."""
    from pipeline.report import write_report

    _run(params, set_, lambda p: f"report -> {write_report(Path(p.metrics_dir), Path(p.metrics_dir) / 'report')}")


@app.command("show-params")
def show_params(params: Path = ParamsOption, set_: list[str] = SetOption) -> None:
    """Print the validated parameters, defaults filled in."""
    import yaml

    _run(params, set_, lambda p: yaml.safe_dump(p.model_dump(mode="json"), sort_keys=False).rstrip())


def main() -> None:
    app()


if __name__ == "__main__":
    main()
