"""Supervised fine-tuning with trl on the selected targets.

The dataset is passed to `SFTTrainer` already tokenized (`input_ids` + `completion_mask`):
prompt and target ids come straight from the traces, so nothing is decoded and
re-encoded, no BOS is doubled, and the loss covers the completion (thinking included) only.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path

from pipeline.config import TrainConfig
from pipeline.models import REF_FILE, ModelRef, load_causal_lm, load_tokenizer


def sft_dataset(rows: list[dict], max_length: int):
    """A tokenized `datasets.Dataset` for trl from selected rows."""
    from datasets import Dataset

    records = []
    for row in rows:
        prompt, completion = list(row["prompt_ids"]), list(row["completion_ids"])
        ids = (prompt + completion)[:max_length]
        mask = ([0] * len(prompt) + [1] * len(completion))[:max_length]
        records.append({"input_ids": ids, "completion_mask": mask})
    return Dataset.from_list(records)


def write_pointer(init: ModelRef, out_dir: Path) -> None:
    """Nothing to train on: the round's model is its starting model, recorded as a pointer."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / REF_FILE).write_text(json.dumps(init.__dict__, indent=2) + "\n")


def checkpointing_argument(config_class, enabled: bool) -> dict:
    """Gradient checkpointing under the name this transformers knows: `activation_checkpointing` from
    about 5.2x on (the old name warns), `gradient_checkpointing` in 5.19, the version vLLM pins."""
    names = {field.name for field in dataclasses.fields(config_class)}
    return {"activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing": enabled}


def train_sft(rows: list[dict], init: ModelRef, out_dir: Path, config: TrainConfig, dtype: str = "float32") -> dict:
    """Fine-tune `init` on `rows` and save the model to `out_dir`; returns training metrics."""
    if not rows:
        raise ValueError(f"no selected rows to train {out_dir} on (the train stage writes a pointer instead)")
    from transformers.trainer import TRAINING_ARGS_NAME
    from trl import SFTConfig, SFTTrainer

    tokenizer = load_tokenizer(init)
    model = load_causal_lm(init, dtype=dtype, device="cpu")
    model.train()
    dataset = sft_dataset(rows, config.max_length)
    with tempfile.TemporaryDirectory(prefix="mrt-sft-") as scratch:
        args = SFTConfig(
            output_dir=scratch,
            num_train_epochs=config.epochs,
            learning_rate=config.learning_rate,
            per_device_train_batch_size=config.batch_size,
            gradient_accumulation_steps=config.grad_accum,
            warmup_steps=config.warmup_ratio,
            lr_scheduler_type=config.lr_scheduler,
            bf16=config.bf16,
            **checkpointing_argument(SFTConfig, config.gradient_checkpointing),
            seed=config.seed,
            data_seed=config.seed,
            logging_steps=config.logging_steps,
            save_strategy="no",
            report_to="none",
            completion_only_loss=True,
            max_length=config.max_length,
            dataset_num_proc=None,
            disable_tqdm=False,
        )
        trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
        result = trainer.train()
        trainer.save_model(str(out_dir))  # every rank calls it (ZeRO-3 gathers shards); rank 0 writes, tokenizer too
    if trainer.is_world_process_zero():
        # The Trainer also pickles its arguments, scratch folder name included: not part of the model, it
        # would change the folder's hash (and rerun every later stage) on an identical rerun.
        (out_dir / TRAINING_ARGS_NAME).unlink(missing_ok=True)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return {
        "examples": len(rows),
        "trained": True,
        "processes": args.world_size,
        "effective_batch": config.batch_size * config.grad_accum * args.world_size,
        "steps": trainer.state.global_step,
        "train_loss": result.training_loss,
        "first_logged_loss": losses[0] if losses else None,
        "last_logged_loss": losses[-1] if losses else None,
    }
