"""Supervised fine-tuning with trl on the selected targets.

The dataset is passed to `SFTTrainer` already tokenized (`input_ids` + `completion_mask`):
prompt and target ids come straight from the traces, so nothing is decoded and
re-encoded, no BOS is doubled, and the loss covers the completion (thinking included) only.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
from pathlib import Path

from pipeline.config import TrainConfig
from pipeline.models import REF_FILE, ModelRef, load_causal_lm, load_tokenizer


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
    dataset, counts = sft_dataset(rows, config.max_length)
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
        **counts,
        "trained": True,
        "processes": args.world_size,
        "effective_batch": config.batch_size * config.grad_accum * args.world_size,
        "steps": trainer.state.global_step,
        "train_loss": result.training_loss,
        "first_logged_loss": losses[0] if losses else None,
        "last_logged_loss": losses[-1] if losses else None,
    }
