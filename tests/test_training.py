"""The train stage: SFT in this process, or relaunched under `accelerate launch` on several processes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pipeline.config import ConfigError, Params
from pipeline.io import write_table
from pipeline.models import REF_FILE, ModelRef, fingerprint
from pipeline.tables import SELECTED, from_rows
from pipeline.training import write_pointer
from stages import train
from stages.common import layout

# Two worker processes on this machine's CPU, all-reducing over gloo: the path DeepSpeed takes on
# 8 GPUs. accelerate's own CPU setting starts one process (it expects mpirun), so the test uses the
# torchrun launcher and ACCELERATE_USE_CPU=true makes trl's Trainer set up CPU data parallelism.
TWO_PROCESSES = """\
compute_environment: LOCAL_MACHINE
distributed_type: MULTI_GPU
num_processes: 2
num_machines: 1
machine_rank: 0
mixed_precision: 'no'
use_cpu: false
main_training_function: main
rdzv_backend: static
same_network: true
"""


def _selected_rows(tokenizer, count: int = 8) -> list[dict]:
    """Rows of equal token length, so one batch of 4 and two of 2 average the same loss."""
    rows = []
    for index in range(count):
        prompt, completion = f"What is 1+{index}?", f"<think>one plus {index}</think> \\boxed{{{index + 1}}}"
        rows.append({
            "trace_id": f"t{index}", "problem_id": f"p{index}", "round": 0, "method": "mrt",
            "prompt": prompt, "completion": completion,
            "prompt_ids": tokenizer(prompt, add_special_tokens=False)["input_ids"],
            "completion_ids": tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id],
            "best_prefix": 0, "n_episodes": 1, "j_best": 1.0, "total_gain": 0.0, "regret": 0.0, "model": "tiny",
        })
    assert len({len(r["prompt_ids"]) + len(r["completion_ids"]) for r in rows}) == 1
    return rows


def _params(root: Path, **train) -> Params:
    settings = {"epochs": 1, "batch_size": 2, "grad_accum": 1, "learning_rate": 1e-3, "warmup_ratio": 0.0,
                "lr_scheduler": "constant", "logging_steps": 1, "gradient_checkpointing": False, **train}
    return Params.model_validate({"data_dir": str(root / "data"), "metrics_dir": str(root / "metrics"), "train": settings})


@pytest.fixture()
def workspace(tmp_path, tiny_model_dir, tokenizer, monkeypatch):
    """A data folder with the base model (a pointer to the tiny model) and round 0's selection."""
    monkeypatch.chdir(tmp_path)
    paths = layout(_params(tmp_path))
    write_pointer(ModelRef(str(tiny_model_dir)), paths.base_model)
    paths.selected(0).parent.mkdir(parents=True, exist_ok=True)
    write_table(from_rows(_selected_rows(tokenizer), SELECTED), paths.selected(0))
    return tmp_path


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def _train_like(done: Params, other: Params) -> Path:
    """Train `other` on a copy of `done`'s inputs (base model pointer and selection); its model folder."""
    shutil.copytree(layout(done).root, layout(other).root, ignore=shutil.ignore_patterns("model"))
    train.run(other, 0, "mrt")
    return layout(other).model(0)


def _train_metrics(params: Params) -> dict:
    return json.loads(layout(params).train_metrics(0).read_text())


def test_training_in_this_process_saves_model_tokenizer_and_metrics(workspace, tiny_model_dir):
    import torch

    params = _params(workspace)
    message = train.run(params, 0, "mrt")
    out = layout(params).model(0)
    metrics = _train_metrics(params)
    assert "trained on 8 examples" in message
    assert metrics["processes"] == 1 and metrics["effective_batch"] == 2 and metrics["steps"] == 4
    assert (out / "tokenizer.json").is_file() and not (out / "training_args.bin").exists()  # no pickle
    before, after = _weights(tiny_model_dir), _weights(out)
    assert any(not (before[name] == after[name]).all() for name in before)

    # An identical rerun writes an identical folder, so DVC does not rerun the stages after it.
    assert fingerprint(_train_like(params, _params(workspace / "again"))) == fingerprint(out)

    # Gradient checkpointing recomputes activations instead of keeping them: same update.
    recomputed = _weights(_train_like(params, _params(workspace / "checkpointed", gradient_checkpointing=True)))
    for name in after:
        torch.testing.assert_close(recomputed[name], after[name], rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.slow  # two `accelerate launch` processes
def test_accelerate_relaunch_trains_on_two_processes_like_one_with_their_joint_batch(workspace, monkeypatch):
    """2 processes x batch 2 all-reduce to the same update as 1 process x batch 4."""
    import torch

    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    config = workspace / "two_processes.yaml"
    config.write_text(TWO_PROCESSES)
    launched = _params(workspace, accelerate_config=str(config))
    message = train.run(launched, 0, "mrt")
    metrics = _train_metrics(launched)
    assert "under accelerate" in message
    assert metrics["processes"] == 2 and metrics["effective_batch"] == 4 and metrics["steps"] == 2
    assert metrics["examples"] == 8 and metrics["trained"] is True
    distributed = _weights(layout(launched).model(0))
    assert (layout(launched).model(0) / "tokenizer.json").is_file()

    alone = _weights(_train_like(launched, _params(workspace / "single", batch_size=4)))
    assert distributed.keys() == alone.keys()
    for name in alone:
        torch.testing.assert_close(distributed[name], alone[name], rtol=1e-4, atol=1e-5, msg=name)


def test_a_missing_accelerate_config_names_the_key_and_path(workspace):
    params = _params(workspace, accelerate_config="configs/accelerate/nope.yaml")
    with pytest.raises(ConfigError, match=r"train.accelerate_config: configs/accelerate/nope.yaml: no such file"):
        train.run(params, 0, "mrt")


def test_an_empty_selection_writes_a_pointer_without_launching(workspace, tiny_model_dir):
    params = _params(workspace, accelerate_config="configs/accelerate/nope.yaml")
    paths = layout(params)
    write_table(from_rows([], SELECTED), paths.selected(0))
    message = train.run(params, 0, "mrt")
    assert "nothing selected" in message
    assert json.loads((paths.model(0) / REF_FILE).read_text())["name_or_path"] == str(tiny_model_dir)
    assert _train_metrics(params) == {"round": 0, "arm": "mrt", "init": str(paths.base_model), "examples": 0, "trained": False}


def test_the_workers_get_the_same_parameters_without_the_relaunch(tmp_path):
    import yaml

    from pipeline.config import load_params
    from pipeline.launch import worker_params

    params = _params(tmp_path, accelerate_config="configs/accelerate/deepspeed_zero3.yaml", batch_size=3)
    params_file = tmp_path / "worker.yaml"
    params_file.write_text(yaml.safe_dump(worker_params(params)))
    reloaded = load_params(params_file)
    assert reloaded.train.accelerate_config is None
    assert reloaded.model_dump() == {**params.model_dump(), "train": {**params.train.model_dump(), "accelerate_config": None}}


def test_failed_workers_stop_the_stage_with_the_command_to_rerun(workspace, monkeypatch):
    import sys

    from pipeline import launch

    config = workspace / "two_processes.yaml"
    config.write_text(TWO_PROCESSES)
    monkeypatch.setattr(launch, "accelerate_command", lambda *args: [sys.executable, "-c", "raise SystemExit(3)"])
    params = _params(workspace, accelerate_config=str(config))
    with pytest.raises(launch.LaunchError, match=r"exited with code 3 .*accelerate launch --config_file .*two_processes.yaml "
                       r"-m stages.cli train --round 0 --arm mrt --set train.accelerate_config=null"):
        train.run(params, 0, "mrt")
    assert not layout(params).train_metrics(0).exists()


def test_over_length_examples_are_dropped_and_counted_never_sliced(workspace, tokenizer, capfd):
    """A target longer than train.max_length would lose its answer and EOS to a slice: it is dropped instead."""
    from pipeline.io import read_table
    from pipeline.training import sft_examples

    params = _params(workspace)
    paths = layout(params)
    short = read_table(paths.selected(0), SELECTED).to_pylist()
    long_row = {**short[0], "trace_id": "long", "completion_ids": short[0]["completion_ids"][:-1] * 40 + [tokenizer.eos_token_id]}
    long_length = len(long_row["prompt_ids"]) + len(long_row["completion_ids"])
    short_length = len(short[0]["prompt_ids"]) + len(short[0]["completion_ids"])
    assert short_length < 100 < long_length
    write_table(from_rows(short + [long_row], SELECTED), paths.selected(0))

    kept, counts = sft_examples(short + [long_row], max_length=short_length)
    assert counts == {"examples": 9, "dropped_over_length": 1, "longest_example_tokens": long_length, "max_length": short_length}
    assert [example["input_ids"] for example in kept] == [r["prompt_ids"] + r["completion_ids"] for r in short]
    assert all(example["input_ids"][-1] == tokenizer.eos_token_id for example in kept)  # the answer's end is trained on
    capfd.readouterr()

    train.run(_params(workspace, max_length=short_length), 0, "mrt")
    metrics = _train_metrics(params)
    assert metrics["examples"] == 9 and metrics["dropped_over_length"] == 1 and metrics["longest_example_tokens"] == long_length
    assert metrics["steps"] == 4  # the 8 examples that fit, batch 2
    assert f"drops 1 of 9 examples longer than train.max_length={short_length}" in capfd.readouterr().err

    with pytest.raises(ValueError, match=r"train.max_length=10: all 9 selected examples are longer"):
        train.run(_params(workspace, max_length=10), 0, "mrt")


def _recipe_train_settings(**overrides):
    """The 1.5B recipe's `train` section, with what one CPU step on the tiny model needs changed."""
    from pipeline.config import load_params

    recipe = load_params(Path(__file__).parents[1] / "configs" / "r1-distill-qwen-1.5b.yaml").train
    return recipe.model_copy(update=overrides)


def _changed_fraction(before: dict, after: dict) -> float:
    """Share of the transformer's weights that moved (the tied embedding is left out: rows of tokens
    absent from the batch get no gradient at all, whatever the precision)."""
    names = [name for name in before if "embed_tokens" not in name and "lm_head" not in name]
    changed = sum(int((before[name].to(after[name].dtype) != after[name]).sum()) for name in names)
    return changed / sum(before[name].numel() for name in names)


def test_a_step_at_lr_1e_6_under_the_recipe_moves_fp32_master_weights_and_not_pure_bf16_ones(tmp_path, tiny_model_dir, tokenizer, monkeypatch):
    """The recipe's lr 1e-6 and bf16, one optimizer step over 8 examples (no warmup: the recipe's warmup
    would make the first step's lr 0). bf16 autocast on fp32 master weights moves nearly every weight;
    pure bf16 weights (the old recipe) round almost every update of 1e-6 away."""
    from pipeline import training

    settings = _recipe_train_settings(epochs=1, batch_size=8, grad_accum=1, warmup_ratio=0.0, lr_scheduler="constant",
                                      max_length=512, gradient_checkpointing=False, logging_steps=1,
                                      sft_args={**_recipe_train_settings().sft_args, "use_cpu": True})  # bf16 autocast on a CPU
    assert settings.learning_rate == 1e-6 and settings.bf16 is True
    rows, before = _selected_rows(tokenizer), _weights(tiny_model_dir)

    metrics = training.train_sft(rows, ModelRef(str(tiny_model_dir)), tmp_path / "fp32_master", settings)
    assert metrics["steps"] == 1
    master = _weights(tmp_path / "fp32_master")
    assert all(tensor.dtype == before[name].dtype for name, tensor in master.items())
    assert _changed_fraction(before, master) > 0.9

    monkeypatch.setattr(training, "MASTER_WEIGHTS_DTYPE", "bfloat16")
    training.train_sft(rows, ModelRef(str(tiny_model_dir)), tmp_path / "pure_bf16", settings)
    assert _changed_fraction(before, _weights(tmp_path / "pure_bf16")) < 0.1


def test_sft_args_reach_trl_and_a_bad_key_names_itself(tmp_path):
    from pipeline.training import check_sft_args, sft_config

    settings = _params(tmp_path, sft_args={"max_grad_norm": 0.5, "save_strategy": "epoch", "report_to": ["tensorboard"]}).train
    args = sft_config(settings, tmp_path / "checkpoints")
    assert (args.max_grad_norm, args.save_strategy, args.report_to) == (0.5, "epoch", ["tensorboard"])
    assert (args.learning_rate, args.completion_only_loss, args.output_dir) == (1e-3, True, str(tmp_path / "checkpoints"))
    assert sft_config(_params(tmp_path).train, tmp_path).save_strategy == "steps"  # the pipeline's default: checkpoints

    for sft_args, message in (
        ({"max_grad_nrom": 1.0}, r"train.sft_args.max_grad_nrom: not a field of the installed trl's SFTConfig"),
        ({"learning_rate": 1.0}, r"train.sft_args.learning_rate: set by train.learning_rate; set that instead"),
        ({"model_init_kwargs": {"dtype": "bfloat16"}}, r"train.sft_args.model_init_kwargs.dtype: set by the pipeline"),
    ):
        with pytest.raises(ConfigError, match=message):
            check_sft_args(sft_args)
    with pytest.raises(ConfigError, match=r"trl's SFTConfig rejects the training settings \(train.sft_args keys: \['save_strategy'\]\)"):
        sft_config(_params(tmp_path, sft_args={"save_strategy": "sometimes"}).train, tmp_path)


def test_a_typo_in_sft_args_stops_the_stage_before_training(workspace):
    params = _params(workspace, sft_args={"warmup_step": 3})
    with pytest.raises(ConfigError, match=r"train.sft_args.warmup_step: not a field"):
        train.run(params, 0, "mrt")
    assert not layout(params).model(0).exists()


def test_a_crashed_sft_resumes_from_its_last_checkpoint_to_the_same_weights(workspace, tiny_model_dir, tokenizer):
    """Stopped right after the checkpoint of step 2 of 4; the rerun resumes there (optimizer, scheduler,
    data order) and ends on the weights of an uninterrupted run."""
    import torch
    from transformers import TrainerCallback

    from pipeline.training import checkpoint_folder, resume_point, train_sft

    class CrashAfterSave(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == 2:
                raise RuntimeError("simulated crash")

    settings = _params(workspace, lr_scheduler="cosine", warmup_ratio=0.25, sft_args={"save_steps": 1}).train
    rows, init = _selected_rows(tokenizer), ModelRef(str(tiny_model_dir))
    out = workspace / "crashed" / "model"
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_sft(rows, init, out, settings, callbacks=[CrashAfterSave()])
    assert (checkpoint_folder(out) / "checkpoint-2").is_dir() and not out.exists()

    resumed = train_sft(rows, init, out, settings)
    assert resumed["resumed_from_step"] == 2 and resumed["steps"] == 4
    assert not checkpoint_folder(out).exists()  # removed once the model is saved
    uninterrupted = train_sft(rows, init, workspace / "whole" / "model", settings)
    assert uninterrupted["resumed_from_step"] is None
    whole, after_crash = _weights(workspace / "whole" / "model"), _weights(out)
    for name in whole:
        torch.testing.assert_close(after_crash[name], whole[name], rtol=1e-5, atol=1e-7, msg=name)

    # Checkpoints of another run (other parameters, model or examples) are not resumed: they are removed.
    stale = checkpoint_folder(workspace / "other" / "model")
    (stale / "checkpoint-3").mkdir(parents=True)
    (stale / "run.json").write_text('{"key": "another run"}')
    assert resume_point(stale, "this run") is None and not (stale / "checkpoint-3").exists()


def test_report_to_dvclive_logs_the_loss_beside_train_json_and_leaves_dvc_yaml_alone(workspace):
    pytest.importorskip("dvclive", reason="dvclive is in the dev extra")
    (workspace / "dvc.yaml").write_text("stages: {}\n")
    params = _params(workspace, sft_args={"report_to": ["dvclive"]})
    train.run(params, 0, "mrt")
    logs = layout(params).train_metrics(0).with_name("dvclive")
    metrics = _train_metrics(params)
    steps = [line.split("\t") for line in (logs / "plots" / "metrics" / "loss.tsv").read_text().splitlines()]
    assert steps[0] == ["step", "loss"] and [int(step) for step, _ in steps[1:]] == [0, 1, 2, 3]  # logging_steps 1
    assert float(steps[1][1]) == pytest.approx(metrics["first_logged_loss"])
    assert float(steps[-1][1]) == pytest.approx(metrics["last_logged_loss"])
    assert json.loads((logs / "metrics.json").read_text())["train"]["loss"] == pytest.approx(metrics["train_loss"])
    assert (workspace / "dvc.yaml").read_text() == "stages: {}\n"  # transformers' default Live() rewrites it
    assert not (workspace / "dvclive").exists()


def test_report_to_dvclive_keeps_the_other_integrations_and_refuses_all(tmp_path):
    from pipeline.dvclive_logging import split_dvclive

    assert split_dvclive({"report_to": ["dvclive", "tensorboard"]}) == ({"report_to": ["tensorboard"]}, True)
    assert split_dvclive({"report_to": "dvclive"}) == ({"report_to": "none"}, True)
    assert split_dvclive({"report_to": "none", "max_grad_norm": 1.0}) == ({"report_to": "none", "max_grad_norm": 1.0}, False)
    assert split_dvclive({}) == ({}, False)
    with pytest.raises(ConfigError, match=r"report_to: 'all' would let transformers start DVCLive with its defaults"):
        split_dvclive({"report_to": "all"})
