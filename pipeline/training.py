"""Supervised fine-tuning with trl on the selected targets.

The dataset is passed to `SFTTrainer` already tokenized (`input_ids` + `completion_mask`):
prompt and target ids come straight from the traces, so nothing is decoded and
re-encoded, no BOS is doubled, and the loss covers the completion (thinking included) only.

Precision: the weights are always loaded in float32 (the master copy the optimizer updates);
`train.bf16` only turns on bf16 autocast for the compute, as trl does by default. Pure bf16
weights cannot take an update of lr 1e-6: it is below bf16's resolution at weight magnitudes
of 0.02, so most weights would never change.

Checkpoints: the trainer saves into a folder next to the model (`checkpoint_folder`); a rerun
of the stage after a crash resumes from the last one if it was written for the same run (same
training parameters, starting model and examples), and the folder is removed once the model
is saved.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import ConfigError, TrainConfig
from pipeline.dvclive_logging import dvclive_callback, split_dvclive
from pipeline.models import ModelNotFoundError, ModelRef, load_tokenizer, torch_dtype, write_pointer_folder

MASTER_WEIGHTS_DTYPE = "float32"  # what the optimizer updates; bf16 is compute only (autocast)


def sft_example(row: dict) -> dict:
    """The exact sequence SFT trains on for one selected row: prompt + completion ids, loss on the completion.
    The export stage writes these same lists, so another trainer can train on what this one does."""
    prompt, completion = list(row["prompt_ids"]), list(row["completion_ids"])
    return {"input_ids": prompt + completion, "completion_mask": [0] * len(prompt) + [1] * len(completion)}


def sft_examples(rows: list[dict], max_length: int) -> tuple[list[dict], dict]:
    """The examples that fit in `max_length` tokens, and counts of what was dropped.

    An over-length example is dropped, never sliced: a slice would keep the thinking and cut the
    answer and EOS, teaching the model to think without ever answering.
    """
    examples, dropped, longest = [], [], 0
    for row in rows:
        example = sft_example(row)
        length = len(example["input_ids"])
        longest = max(longest, length)
        if length > max_length:
            dropped.append(row.get("trace_id", "?"))
        else:
            examples.append(example)
    stats = {"examples": len(rows), "dropped_over_length": len(dropped), "longest_example_tokens": longest,
             "max_length": max_length}
    if dropped:
        print(f"WARNING: SFT drops {len(dropped)} of {len(rows)} examples longer than train.max_length={max_length} "
              f"tokens (longest: {longest}; e.g. trace {dropped[0]}); raise train.max_length to keep them",
              file=sys.stderr, flush=True)
    return examples, stats


def sft_dataset(rows: list[dict], max_length: int):
    """A tokenized `datasets.Dataset` for trl from selected rows (over-length rows dropped), and its counts."""
    from datasets import Dataset

    examples, stats = sft_examples(rows, max_length)
    if not examples:
        raise ValueError(f"train.max_length={max_length}: all {len(rows)} selected examples are longer "
                         f"(longest: {stats['longest_example_tokens']} tokens); raise train.max_length")
    return Dataset.from_list(examples), stats


def write_pointer(init: ModelRef, out_dir: Path) -> None:
    """Nothing to train on: the round's model is its starting model, recorded as a pointer (written whole,
    replacing any weights of an earlier run)."""
    write_pointer_folder(init, out_dir)


def checkpointing_argument(config_class, enabled: bool) -> dict:
    """Gradient checkpointing under the name this transformers knows: `activation_checkpointing` from
    about 5.2x on (the old name warns), `gradient_checkpointing` in 5.19, the version vLLM pins."""
    names = {field.name for field in dataclasses.fields(config_class)}
    return {"activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing": enabled}


# SFTConfig fields the pipeline sets from its own keys (a `train.sft_args` entry for them is an error).
OWNED = {
    "output_dir": "the train stage (checkpoints next to the model)", "resume_from_checkpoint": "the train stage (it resumes by itself)",
    "num_train_epochs": "train.epochs", "learning_rate": "train.learning_rate",
    "per_device_train_batch_size": "train.batch_size", "gradient_accumulation_steps": "train.grad_accum",
    "warmup_steps": "train.warmup_ratio", "warmup_ratio": "train.warmup_ratio", "lr_scheduler_type": "train.lr_scheduler",
    "bf16": "train.bf16", "gradient_checkpointing": "train.gradient_checkpointing",
    "activation_checkpointing": "train.gradient_checkpointing", "seed": "train.seed", "data_seed": "train.seed",
    "logging_steps": "train.logging_steps", "max_length": "train.max_length",
    "completion_only_loss": "the pipeline (the loss is on the completion: thinking and answer)",
}
# Defaults of the pipeline that `train.sft_args` may override: checkpoints every 10 % of the steps,
# only the last kept (with optimizer state, so a resumed run continues exactly), no logging service.
DEFAULTS = {"save_strategy": "steps", "save_steps": 0.1, "save_total_limit": 1, "report_to": "none",
            "dataset_num_proc": None, "disable_tqdm": False}
MODEL_INIT_OWNED = {"dtype", "torch_dtype", "revision", "trust_remote_code"}


def check_sft_args(sft_args: dict[str, Any], config_class=None) -> None:
    """Every `train.sft_args` key must be a field of the installed trl's SFTConfig and not one the pipeline sets."""
    if config_class is None:
        from trl import SFTConfig as config_class
    fields = {field.name for field in dataclasses.fields(config_class)}
    for key in sft_args:
        if key in OWNED:
            raise ConfigError(f"train.sft_args.{key}: set by {OWNED[key]}; set that instead")
        if key not in fields:
            raise ConfigError(f"train.sft_args.{key}: not a field of the installed trl's SFTConfig "
                              "(see `python -c 'from trl import SFTConfig; help(SFTConfig)'`)")
    for key in sft_args.get("model_init_kwargs") or {}:
        if key in MODEL_INIT_OWNED:
            raise ConfigError(f"train.sft_args.model_init_kwargs.{key}: set by the pipeline (float32 master "
                              "weights, model.revision, model.trust_remote_code)")


def sft_config(config: TrainConfig, output_dir: Path):
    """trl's SFTConfig: the pipeline's keys, its defaults, then `train.sft_args` (validated)."""
    from trl import SFTConfig

    check_sft_args(config.sft_args, SFTConfig)
    owned = {
        "output_dir": str(output_dir), "num_train_epochs": config.epochs, "learning_rate": config.learning_rate,
        "per_device_train_batch_size": config.batch_size, "gradient_accumulation_steps": config.grad_accum,
        "warmup_steps": config.warmup_ratio, "lr_scheduler_type": config.lr_scheduler, "bf16": config.bf16,
        **checkpointing_argument(SFTConfig, config.gradient_checkpointing), "seed": config.seed, "data_seed": config.seed,
        "logging_steps": config.logging_steps, "completion_only_loss": True, "max_length": config.max_length,
    }
    extra = {key: value for key, value in config.sft_args.items() if key != "model_init_kwargs"}
    try:
        return SFTConfig(**{**DEFAULTS, **extra, **owned})
    except (TypeError, ValueError) as error:
        raise ConfigError(f"train: trl's SFTConfig rejects the training settings (train.sft_args keys: {sorted(extra)}): "
                          f"{error}") from error


def load_for_training(init: ModelRef, model_init_kwargs: dict[str, Any] | None = None):
    """The starting model with float32 master weights (bf16, if asked for, is autocast compute)."""
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(
            init.name_or_path, revision=init.revision, trust_remote_code=init.trust_remote_code,
            dtype=torch_dtype(MASTER_WEIGHTS_DTYPE), **(model_init_kwargs or {}),
        )
    except OSError as error:
        raise ModelNotFoundError(f"cannot load model from {init.label}: {error}") from error
    return model.train()


def checkpoint_folder(model_dir: Path) -> Path:
    """Where SFT of `model_dir` keeps its checkpoints: a sibling, untouched when DVC clears the model."""
    return model_dir.with_name(model_dir.name + ".checkpoints")


def run_key(config: TrainConfig, init: ModelRef, dataset) -> str:
    """What a checkpoint must match to be resumed: training parameters, starting model, examples."""
    digest = hashlib.sha256(json.dumps([config.model_dump(mode="json"), init.__dict__], sort_keys=True).encode())
    for ids, mask in zip(dataset["input_ids"], dataset["completion_mask"]):
        digest.update(np.asarray(ids, dtype=np.int64).tobytes() + b"|" + np.asarray(mask, dtype=np.int8).tobytes() + b";")
    return digest.hexdigest()[:16]


def resume_point(folder: Path, key: str) -> str | None:
    """The last checkpoint of the same run in `folder`, or None (another run's checkpoints are removed)."""
    from transformers.trainer_utils import get_last_checkpoint

    stamp = folder / "run.json"
    if folder.is_dir() and (not stamp.is_file() or json.loads(stamp.read_text()).get("key") != key):
        print(f"removing {folder}: checkpoints of another run (other parameters, model or examples)", file=sys.stderr)
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps({"key": key}) + "\n")
    last = get_last_checkpoint(str(folder))
    if last is not None:
        print(f"resuming SFT from {last}", file=sys.stderr, flush=True)
    return last


def save_model(trainer, out_dir: Path) -> None:
    """Write the trained model and tokenizer to `out_dir` (the one place a model folder is written)."""
    from transformers.trainer import TRAINING_ARGS_NAME

    trainer.save_model(str(out_dir))  # every rank calls it (ZeRO-3 gathers shards); rank 0 writes, tokenizer too
    if trainer.is_world_process_zero():
        # The Trainer also pickles its arguments, checkpoint folder name included: not part of the model, it
        # would change the folder's hash (and rerun every later stage) on an identical rerun.
        (out_dir / TRAINING_ARGS_NAME).unlink(missing_ok=True)


def train_sft(rows: list[dict], init: ModelRef, out_dir: Path, config: TrainConfig,
              checkpoints: Path | None = None, callbacks: list | None = None, log_dir: Path | None = None) -> dict:
    """Fine-tune `init` on `rows` and save the model to `out_dir`; returns training metrics.

    `checkpoints` (default: `checkpoint_folder(out_dir)`) is where the run saves and resumes;
    `callbacks` are extra transformers `TrainerCallback`s; `log_dir` is where `report_to: [dvclive]`
    logs (default: `<out_dir>.dvclive`)."""
    if not rows:
        raise ValueError(f"no selected rows to train {out_dir} on (the train stage writes a pointer instead)")
    from trl import SFTTrainer

    check_sft_args(config.sft_args)  # before loading anything
    dataset, counts = sft_dataset(rows, config.max_length)
    folder = checkpoints or checkpoint_folder(out_dir)
    sft_args, dvclive = split_dvclive(config.sft_args)
    args = sft_config(config.model_copy(update={"sft_args": sft_args}), folder)
    resume = resume_point(folder, run_key(config, init, dataset)) if args.process_index == 0 else None
    if args.world_size > 1:  # every rank resumes from what rank 0 found
        from accelerate.utils import broadcast_object_list

        resume = broadcast_object_list([resume])[0]
    if dvclive:
        callbacks = [*(callbacks or []), dvclive_callback(log_dir or out_dir.with_name(out_dir.name + ".dvclive"), bool(resume))]
    model = load_for_training(init, config.sft_args.get("model_init_kwargs"))
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=load_tokenizer(init), callbacks=callbacks)
    result = trainer.train(resume_from_checkpoint=resume)
    save_model(trainer, out_dir)
    if trainer.is_world_process_zero():
        shutil.rmtree(folder, ignore_errors=True)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return {
        **counts,
        "trained": True,
        "resumed_from_step": int(Path(resume).name.rsplit("-", 1)[1]) if resume else None,
        "processes": args.world_size,
        "effective_batch": config.batch_size * config.grad_accum * args.world_size,
        "steps": trainer.state.global_step,
        "train_loss": result.training_loss,
        "first_logged_loss": losses[0] if losses else None,
        "last_logged_loss": losses[-1] if losses else None,
    }
