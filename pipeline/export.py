"""Export selected targets in the forms other trainers read, each with the problem, its gold answer
and provenance (all loadable with `datasets.load_dataset("parquet", data_files=...)`):

- `sft_tokenized.parquet`: `input_ids` + `completion_mask`, exactly what `pipeline.training` trains
  on. trl's SFTTrainer takes such rows as they are (no re-tokenization). Use this to reproduce a run:
  text re-tokenized by a trainer can split differently at the boundaries (`</think>\\n\\n` + answer).
- `prompt_completion.parquet`: the same rows as text. `prompt` is the chat-templated prompt without
  the special tokens the tokenizer adds by itself (BOS for Llama/R1 tokenizers), so a trainer that
  tokenizes with special tokens gets one BOS, not two. `completion` holds the thinking and the
  answer, without EOS (trainers append their own).
- `messages.parquet`: the conversation (system/user turns and the assistant target). Many R1
  chat templates drop everything up to `</think>` from assistant turns; the column
  `template_keeps_thinking` says, per row, whether the policy's own template renders the thinking,
  and the export warns on stderr when it does not (train on one of the files above instead).
"""

from __future__ import annotations

import sys

import pyarrow as pa

from pipeline.tables import ids
from pipeline.training import sft_example
from pipeline.templates import THINK_CLOSE

PROVENANCE = ["trace_id", "problem_id", "round", "method", "best_prefix", "n_episodes", "j_best", "total_gain", "regret", "model"]

TOKENIZED, PROMPT_COMPLETION, MESSAGES = "sft_tokenized.parquet", "prompt_completion.parquet", "messages.parquet"


def problem_columns(selected: pa.Table, problems: dict[str, dict]) -> dict[str, list[str]]:
    """The raw `problem` text and gold `answer` of every selected row, in row order."""
    missing = sorted(set(selected.column("problem_id").to_pylist()) - problems.keys())
    if missing:
        raise KeyError(f"selected rows name problem_id {missing[0]!r} (and {len(missing) - 1} more) "
                       "that the problems table does not hold")
    rows = [problems[pid] for pid in selected.column("problem_id").to_pylist()]
    return {"problem": [r["problem"] for r in rows], "answer": [r["answer"] for r in rows]}


def _with_problem_and_provenance(columns: dict[str, pa.Array], selected: pa.Table, problems: dict[str, dict]) -> pa.Table:
    table = pa.table(columns)
    for name, values in problem_columns(selected, problems).items():
        table = table.append_column(name, pa.array(values, type=pa.string()))
    for name in PROVENANCE:
        table = table.append_column(name, selected.column(name))
    return table


def tokenized_table(selected: pa.Table, problems: dict[str, dict]) -> pa.Table:
    """`input_ids` + `completion_mask` as `pipeline.training.sft_example` builds them (over-length rows
    included: `n_tokens` lets a trainer with another length limit choose)."""
    examples = [sft_example(row) for row in selected.select(["prompt_ids", "completion_ids"]).to_pylist()]
    mask = pa.list_(pa.int8())
    return _with_problem_and_provenance({
        "input_ids": pa.array([e["input_ids"] for e in examples], type=ids),
        "completion_mask": pa.array([e["completion_mask"] for e in examples], type=mask),
        "n_tokens": pa.array([len(e["input_ids"]) for e in examples], type=pa.int32()),
    }, selected, problems)


def added_prefix_text(tokenizer) -> str:
    """The text of the special tokens the tokenizer puts in front of any input by itself ('' for none)."""
    plain = tokenizer("x", add_special_tokens=False)["input_ids"]
    full = tokenizer("x", add_special_tokens=True)["input_ids"]
    start = next((i for i in range(len(full) - len(plain) + 1) if full[i:i + len(plain)] == plain), 0)
    return tokenizer.decode(full[:start], skip_special_tokens=False, clean_up_tokenization_spaces=False)


def trainer_prompt(tokenizer, prompt: str) -> str:
    """The prompt text a trainer should tokenize with special tokens: the chat template's BOS string
    removed when the tokenizer adds that BOS itself."""
    prefix = added_prefix_text(tokenizer)
    return prompt[len(prefix):] if prefix and prompt.startswith(prefix) else prompt


def prompt_completion_table(selected: pa.Table, problems: dict[str, dict], tokenizer) -> pa.Table:
    """trl's standard (text) prompt-completion format."""
    prompts = [trainer_prompt(tokenizer, p) for p in selected.column("prompt").to_pylist()]
    return _with_problem_and_provenance({
        "prompt": pa.array(prompts, type=pa.string()), "completion": selected.column("completion"),
    }, selected, problems)


def template_keeps_thinking(tokenizer, messages: list[dict], completion: str, template_args: dict | None = None) -> bool:
    """Whether the chat template (the tokenizer's, or `template_args["chat_template"]`, with the
    template's switches in `template_args`) renders the assistant turn's thinking (everything up to
    and including `</think>`), not only the answer after it."""
    thinking = completion[: completion.index(THINK_CLOSE) + len(THINK_CLOSE)] if THINK_CLOSE in completion else completion
    conversation = messages + [{"role": "assistant", "content": completion}]
    rendered = tokenizer.apply_chat_template(conversation, tokenize=False, **(template_args or {}))
    return thinking in rendered


def messages_table(selected: pa.Table, problems: dict[str, dict], messages_for_problem: dict[str, list[dict]], tokenizer,
                   template_args: dict | None = None) -> pa.Table:
    """trl's conversational format: system/user turns plus the assistant target (thinking kept in the
    content; whether the policy's template, `PromptBuilder.template_args`, renders it is in
    `template_keeps_thinking`)."""
    rows = selected.select(["problem_id", "completion"]).to_pylist()
    messages = [messages_for_problem[r["problem_id"]] + [{"role": "assistant", "content": r["completion"]}] for r in rows]
    kept = [template_keeps_thinking(tokenizer, m[:-1], r["completion"], template_args) for m, r in zip(messages, rows)]
    if not all(kept):
        print(f"WARNING: {MESSAGES}: the policy's chat template drops the thinking from the assistant turn in "
              f"{kept.count(False)} of {len(kept)} rows (template_keeps_thinking = false): a trainer that renders "
              f"these messages with it learns answers without thinking. Train on {TOKENIZED} or {PROMPT_COMPLETION}, "
              "or give the trainer a chat template that keeps the content before </think>.", file=sys.stderr, flush=True)
    message_type = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
    return _with_problem_and_provenance({
        "messages": pa.array(messages, type=message_type), "template_keeps_thinking": pa.array(kept, type=pa.bool_()),
    }, selected, problems)
