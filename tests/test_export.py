"""Exports that trainers use exactly: the ids SFT trains on, prompts with one BOS, thinking kept or flagged."""

from __future__ import annotations

import copy

import pyarrow as pa
import pytest

from pipeline.export import messages_table, prompt_completion_table, tokenized_table, trainer_prompt
from pipeline.io import write_table
from pipeline.tables import SELECTED, from_rows
from pipeline.templates import PromptBuilder
from pipeline.training import sft_dataset

# DeepSeek-R1-Distill's template in the part that matters: a BOS string first, and assistant turns
# rendered from the text after their last `</think>` only (the thinking is dropped). R1's role tags
# `<｜User｜>` / `<｜Assistant｜>` are special tokens; two of SmolLM2's special tokens stand in for them.
USER_TAG, ASSISTANT_TAG = "<filename>", "<file_sep>"
R1_LIKE_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '" + USER_TAG + "' + message['content'] }}"
    "{% elif message['role'] == 'assistant' %}{% set content = message['content'] %}"
    "{% if '</think>' in content %}{% set content = content.split('</think>')[-1] %}{% endif %}"
    "{{ '" + ASSISTANT_TAG + "' + content + eos_token }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '" + ASSISTANT_TAG + "' }}{% endif %}"
)

PROBLEMS = {f"p{i}": {"problem": f"What is {i} + 1?", "answer": str(i + 1)} for i in range(3)}


def r1_like(tokenizer):
    """SmolLM2's tokenizer made to add its BOS by itself (as Llama/Qwen-R1 tokenizers do), with the R1-like template."""
    from tokenizers.processors import TemplateProcessing

    r1 = copy.deepcopy(tokenizer)
    bos = r1.bos_token
    r1._tokenizer.post_processor = TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, r1.bos_token_id)])
    r1.chat_template = R1_LIKE_TEMPLATE
    assert r1("x")["input_ids"][0] == r1.bos_token_id != r1("x", add_special_tokens=False)["input_ids"][0]
    return r1


def selected_rows(prompts: PromptBuilder) -> list[dict]:
    """Targets built from ids as selection builds them: `<think>\\n` + thinking + `</think>\\n\\n` + answer + EOS,
    each piece encoded on its own (so re-tokenizing the decoded text may merge across the joins)."""
    from pipeline.tokens import decode

    rows = []
    for i, pid in enumerate(PROBLEMS):
        prompt_ids = prompts.sft_prompt_ids(PROBLEMS[pid]["problem"])
        completion_ids = (prompts.think_open_ids + prompts.encode(f"I add {i} and 1.\n\nWait, check: {i}+1.\n")
                          + prompts.close_ids + prompts.encode(f"The answer is \\boxed{{{i + 1}}}.") + prompts.eos_ids)
        row = {"trace_id": f"t{i}", "problem_id": pid, "round": 0, "method": "mrt",
               "prompt": decode(prompts.tokenizer, prompt_ids), "completion": decode(prompts.tokenizer, completion_ids[:-1]),
               "prompt_ids": prompt_ids, "completion_ids": completion_ids, "best_prefix": 1, "n_episodes": 2,
               "j_best": 1.0, "total_gain": 0.5, "regret": 0.25, "model": "tiny"}
        rows.append({name: row.get(name) for name in SELECTED.names})
    return rows


def _load(table: pa.Table, path):
    import datasets

    write_table(table, path)
    return datasets.load_dataset("parquet", data_files=str(path))["train"]


@pytest.fixture(scope="module")
def small_model(tokenizer):
    """Any causal LM on the tokenizer's vocabulary: trl's data preparation never runs it."""
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                                        num_attention_heads=1, num_key_value_heads=1))


def _trl_prepared(dataset, tokenizer, model, scratch):
    """The dataset as trl's SFTTrainer prepares it for training (tokenized, labels from the completion mask)."""
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(output_dir=str(scratch / "unused"), report_to="none", completion_only_loss=True, max_length=512,
                     dataset_num_proc=None, use_cpu=True)
    return SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer).train_dataset


@pytest.fixture(scope="module")
def chatml(tokenizer):
    return PromptBuilder(tokenizer, "chatml_think")


def test_trl_trains_on_exactly_the_ids_training_builds(chatml, tmp_path, small_model):
    rows = selected_rows(chatml)
    loaded = _load(tokenized_table(from_rows(rows, SELECTED), PROBLEMS), tmp_path / "sft_tokenized.parquet")
    trained_on, _ = sft_dataset(rows, max_length=512)
    assert loaded["input_ids"] == trained_on["input_ids"] == [r["prompt_ids"] + r["completion_ids"] for r in rows]
    assert loaded["completion_mask"] == trained_on["completion_mask"]
    assert loaded["problem"] == [PROBLEMS[r["problem_id"]]["problem"] for r in rows] and loaded["answer"] == ["1", "2", "3"]
    assert loaded["n_tokens"] == [len(ids) for ids in loaded["input_ids"]] and loaded["trace_id"] == ["t0", "t1", "t2"]

    prepared = _trl_prepared(loaded, chatml.tokenizer, small_model, tmp_path)
    for row, example in zip(rows, prepared):
        assert example["input_ids"] == row["prompt_ids"] + row["completion_ids"]
        assert example["labels"] == [-100] * len(row["prompt_ids"]) + row["completion_ids"]  # loss on the completion, EOS included


def test_text_prompts_carry_no_bos_a_tokenizer_adds_itself(tokenizer, tmp_path, small_model):
    r1 = r1_like(tokenizer)
    prompts = PromptBuilder(r1, "r1")
    rows = selected_rows(prompts)
    assert rows[0]["prompt"].startswith(r1.bos_token) and rows[0]["prompt_ids"][0] == r1.bos_token_id
    assert r1(rows[0]["prompt"])["input_ids"][:2] == [r1.bos_token_id] * 2  # the raw prompt would get two BOS

    loaded = _load(prompt_completion_table(from_rows(rows, SELECTED), PROBLEMS, r1), tmp_path / "prompt_completion.parquet")
    assert [p for p in loaded["prompt"]] == [r["prompt"][len(r1.bos_token):] for r in rows]
    assert loaded["completion"] == [r["completion"] for r in rows] and loaded["answer"] == ["1", "2", "3"]
    prepared = _trl_prepared(loaded, r1, small_model, tmp_path)
    for row, example in zip(rows, prepared):
        ids = example["input_ids"]
        assert ids[: len(row["prompt_ids"])] == row["prompt_ids"] and ids.count(r1.bos_token_id) == 1
        # the prompt is masked; the thinking and the answer are trained on
        completion = r1.decode([t for t, label in zip(ids, example["labels"]) if label != -100])
        assert completion == row["completion"] + r1.eos_token

    # A tokenizer that adds nothing keeps the template's text as it is.
    chatml_prompt = selected_rows(PromptBuilder(tokenizer, "chatml_think"))[0]["prompt"]
    assert trainer_prompt(tokenizer, chatml_prompt) == chatml_prompt


def test_messages_flag_and_warn_when_the_template_drops_the_thinking(tokenizer, tmp_path, small_model, capfd):
    # The R1-like template set on the tokenizer; and given as model.chat_template over ChatML's own.
    configured = PromptBuilder(tokenizer, "chatml_think", chat_template=R1_LIKE_TEMPLATE)
    rows = selected_rows(configured)
    messages = {pid: configured.messages(PROBLEMS[pid]["problem"]) for pid in PROBLEMS}
    table = messages_table(from_rows(rows, SELECTED), PROBLEMS, messages, tokenizer, configured.template_args)
    assert table.column("template_keeps_thinking").to_pylist() == [False] * 3

    for builder, keeps in ((PromptBuilder(tokenizer, "chatml_think"), True), (PromptBuilder(r1_like(tokenizer), "r1"), False)):
        rows = selected_rows(builder)
        messages = {pid: builder.messages(PROBLEMS[pid]["problem"]) for pid in PROBLEMS}
        capfd.readouterr()
        table = messages_table(from_rows(rows, SELECTED), PROBLEMS, messages, builder.tokenizer, builder.template_args)
        warned = capfd.readouterr().err
        loaded = _load(table, tmp_path / f"messages_{keeps}.parquet")
        assert loaded["template_keeps_thinking"] == [keeps] * 3
        assert loaded[0]["messages"][-1] == {"role": "assistant", "content": rows[0]["completion"]}
        assert loaded["problem"][0] == PROBLEMS["p0"]["problem"]
        assert ("drops the thinking from the assistant turn in 3 of 3 rows" in warned) is not keeps

        # What trl trains on when it renders the messages with that template: the thinking is there or gone.
        prepared = _trl_prepared(loaded.select_columns(["messages"]), builder.tokenizer, small_model, tmp_path)
        rendered = builder.tokenizer.decode(prepared[0]["input_ids"])
        assert ("I add 0 and 1." in rendered) is keeps and "The answer is \\boxed{1}." in rendered


def test_a_selected_problem_missing_from_the_problems_names_it(chatml):
    rows = selected_rows(chatml)
    with pytest.raises(KeyError, match=r"problem_id 'p2' .* that the problems table does not hold"):
        tokenized_table(from_rows(rows, SELECTED), {k: v for k, v in PROBLEMS.items() if k != "p2"})


def prm_tokenize_row(features: dict, tokenizer, step_separator: str) -> dict:
    """trl's PRMTrainer.tokenize_row (trl.experimental.prm up to its removal; trl 1.16, installed here, no
    longer ships it), without truncation: prompt without special tokens after BOS, each step plus the
    separator, the step's label on its last token."""
    prompt_ids = tokenizer(features["prompt"], add_special_tokens=False)["input_ids"]
    separator_ids = tokenizer.encode(step_separator, add_special_tokens=False)
    steps = [tokenizer(step, add_special_tokens=False)["input_ids"] + separator_ids for step in features["completions"]]
    labels = [[-100] * (len(step) - 1) + [int(label)] for step, label in zip(steps, features["labels"], strict=True)]
    if tokenizer.bos_token_id is not None:
        prompt_ids = [tokenizer.bos_token_id] + prompt_ids
    return {"input_ids": prompt_ids + [t for step in steps for t in step],
            "labels": [-100] * len(prompt_ids) + [label for step in labels for label in step]}


def _scored_round(prompts: PromptBuilder):
    """Two traces cut into episodes by the pipeline's own rule, with hand-set progress per episode."""
    from pipeline.config import EpisodesConfig
    from pipeline.episodes import split_token_ids
    from pipeline.tables import EPISODES, PROGRESS, TRACES

    thinking = "I add 1 and 1.\n\nWait, that is 2.\n\nAlternatively, count: 1, 2.\n\nBut wait, check once more: 2.\n"
    progress = {"t0": [0.5, 0.0, 0.25, -0.125], "t1": [0.0, 0.0, 0.0, 0.0]}
    traces, episodes, progress_rows = [], [], []
    for trace_id, values in progress.items():
        thinking_ids = prompts.encode(thinking)
        completion_ids = thinking_ids + prompts.close_ids + prompts.encode("The answer is \\boxed{2}.") + prompts.eos_ids
        trace = {"trace_id": trace_id, "problem_id": "p0", "round": 0, "prompt_ids": prompts.sampling_prompt_ids("1 + 1?"),
                 "completion_ids": completion_ids, "thinking_end": len(thinking_ids), "correct": trace_id == "t0", "model": "tiny"}
        traces.append({name: trace.get(name) for name in TRACES.names})
        cut, _ = split_token_ids(prompts.tokenizer, thinking_ids, EpisodesConfig(min_gap_paragraphs=0))
        assert len(cut) == len(values) == 4
        for index, (episode, value) in enumerate(zip(cut, values), start=1):
            episodes.append({"trace_id": trace_id, "episode_index": index, "rule": "markers", **episode.__dict__})
            progress_rows.append({"trace_id": trace_id, "episode_index": index, "progress": value, "progress_se": 0.1,
                                  "j_before": None, "j_after": None})
    for rows, schema in ((traces, TRACES), (episodes, EPISODES), (progress_rows, PROGRESS)):
        from_rows(rows, schema)  # the tables the stages write hold these rows
    return traces, episodes, progress_rows, thinking


def test_dense_progress_in_trls_stepwise_format_and_as_token_rewards(chatml, tmp_path):
    from pipeline.dense_progress import rewards_table, scored_traces, stepwise_table

    tokenizer = chatml.tokenizer
    traces, episodes, progress, thinking = _scored_round(chatml)
    scored = scored_traces(traces, episodes, progress, tokenizer)
    steps = _load(stepwise_table(scored, {"t0"}, tokenizer), tmp_path / "progress_steps.parquet")
    assert steps.features["completions"].feature.dtype == "string" and steps.features["labels"].feature.dtype == "bool"
    assert steps["labels"] == [[True, False, True, False], [False] * 4]  # progress > 0
    assert steps["progress"][0] == [0.5, 0.0, 0.25, -0.125] and steps["selected"] == [True, False]
    assert steps["correct"] == [True, False] and steps["trace_id"] == ["t0", "t1"]
    assert "".join(steps[0]["completions"]) == thinking and steps[0]["completions"][1].startswith("Wait")

    # trl's PRM tokenization: the sampled prompt ids (BOS not doubled), the thinking, a label on each episode's last
    # token; for ChatML (BOS string in the template) and for an R1-style tokenizer that adds BOS itself.
    prompt_ids = traces[0]["prompt_ids"]
    for builder in (chatml, PromptBuilder(r1_like(tokenizer), "r1")):
        round_traces, round_episodes, round_progress, _ = _scored_round(builder)
        features = stepwise_table(scored_traces(round_traces, round_episodes, round_progress, builder.tokenizer), set(),
                                  builder.tokenizer).to_pylist()[0]
        row = prm_tokenize_row(features, builder.tokenizer, step_separator="")
        sampled = round_traces[0]["prompt_ids"]
        assert row["input_ids"][: len(sampled)] == sampled and sampled[0] == builder.tokenizer.bos_token_id != sampled[1]
        assert builder.tokenizer.decode(row["input_ids"][len(sampled):]) == thinking
        assert [label for label in row["labels"] if label != -100] == [1, 0, 1, 0]

    rewards = _load(rewards_table(scored, {"t0"}), tmp_path / "progress_rewards.parquet")[0]
    assert rewards["prompt_ids"] == prompt_ids and rewards["completion_ids"] == traces[0]["completion_ids"]
    assert rewards["step_rewards"] == [0.5, 0.0, 0.25, -0.125] and rewards["step_reward_se"] == [0.1] * 4
    spans = list(zip(rewards["step_token_starts"], rewards["step_token_ends"]))
    assert spans[0][0] == 0 and spans[-1][1] == traces[0]["thinking_end"]
    assert all(end == start for (_, end), (start, _) in zip(spans, spans[1:]))  # the episodes tile the thinking
    assert [tokenizer.decode(rewards["completion_ids"][s:e]) for s, e in spans] == steps[0]["completions"]


def test_progress_that_does_not_match_the_episodes_names_the_trace(chatml):
    from pipeline.dense_progress import scored_traces

    traces, episodes, progress, _ = _scored_round(chatml)
    with pytest.raises(ValueError, match=r"trace t1: episodes \[1, 2, 3, 4\] and progress rows \[1, 2, 3\] do not match"):
        scored_traces(traces, episodes, progress[:-1], chatml.tokenizer)
    with pytest.raises(KeyError, match=r"progress rows for trace 't1'"):
        scored_traces(traces[:1], episodes, progress, chatml.tokenizer)
