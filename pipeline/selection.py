"""Choose SFT targets: MRT-STaR (truncate at the best prefix) or STaR (correct traces).

MRT-STaR, per trace: cut at j* = the earliest prefix with the highest J; keep the trace
only if a correct answer was sampled after stopping there (that answer becomes the
solution); optionally require J(j*) - J(0) >= `min_gain`. Per problem keep the
`per_problem` traces with the lowest regret (ties: fewer tokens).
STaR: keep traces whose own final answer is correct, first `per_problem` per problem.
Targets are built from token ids: `<think>\\n` + thinking[:cut] + closing text + answer + EOS.
"""

from __future__ import annotations

from collections import defaultdict

from pipeline.config import SelectConfig
from pipeline.prover import separator, thinking_ids
from pipeline.templates import PromptBuilder
from pipeline.tokens import decode


def _strip_eos(ids: list[int], eos_ids: list[int]) -> list[int]:
    """Text columns hold the target without EOS (trainers add their own); id columns keep it."""
    return ids[: -len(eos_ids)] if eos_ids and ids[-len(eos_ids) :] == eos_ids else ids


def _target_row(trace: dict, problem: str, completion_ids: list[int], prompts: PromptBuilder, method: str, score: dict) -> dict:
    prompt_ids = prompts.sft_prompt_ids(problem)
    return {
        "trace_id": trace["trace_id"],
        "problem_id": trace["problem_id"],
        "round": trace["round"],
        "method": method,
        "prompt": decode(prompts.tokenizer, prompt_ids),
        "completion": decode(prompts.tokenizer, _strip_eos(completion_ids, prompts.eos_ids)),
        "prompt_ids": prompt_ids,
        "completion_ids": completion_ids,
        "best_prefix": score.get("best_prefix"),
        "n_episodes": score.get("n_episodes"),
        "j_best": score.get("j_best"),
        "total_gain": score.get("total_gain"),
        "regret": score.get("regret"),
        "model": trace["model"],
    }


def mrt_target_ids(trace: dict, best: dict, prompts: PromptBuilder, keep_forced_stop_text: bool) -> list[int]:
    """Completion ids for a trace truncated at its best prefix and closed with a correct answer."""
    thinking = thinking_ids(trace)[: best["prefix_tokens"]]
    if best["forced"] and keep_forced_stop_text:
        closing = separator(prompts.tokenizer, thinking) + prompts.forced_stop_text
    else:
        closing = separator(prompts.tokenizer, thinking) + prompts.close_text
    return prompts.think_open_ids + thinking + prompts.encode(closing) + list(best["correct_answer_ids"]) + prompts.eos_ids


def select_mrt(
    traces: list[dict],
    prover_rows: list[dict],
    regrets: dict[str, dict],
    problems: dict[str, dict],
    prompts: PromptBuilder,
    config: SelectConfig,
) -> list[dict]:
    by_trace: dict[str, dict[int, dict]] = defaultdict(dict)
    for row in prover_rows:
        by_trace[row["trace_id"]][row["prefix_index"]] = row
    candidates: dict[str, list[tuple[float, int, dict]]] = defaultdict(list)
    for trace in traces:
        score = regrets.get(trace["trace_id"])
        if score is None:
            continue
        best = by_trace[trace["trace_id"]][score["best_prefix"]]
        if best["n_correct"] == 0 or best["correct_answer_ids"] is None:
            continue
        if config.min_gain is not None and score["j_best"] - score["j_direct"] < config.min_gain:
            continue
        ids = mrt_target_ids(trace, best, prompts, config.keep_forced_stop_text)
        row = _target_row(trace, problems[trace["problem_id"]]["problem"], ids, prompts, "mrt", score)
        candidates[trace["problem_id"]].append((score["regret"], len(ids), row))
    return _best_per_problem(candidates, config.per_problem)


def select_star(
    traces: list[dict], regrets: dict[str, dict], problems: dict[str, dict], prompts: PromptBuilder, config: SelectConfig
) -> list[dict]:
    candidates: dict[str, list[tuple[float, int, dict]]] = defaultdict(list)
    for trace in traces:
        if not trace["correct"]:
            continue
        ids = prompts.think_open_ids + list(trace["completion_ids"]) + prompts.eos_ids
        score = regrets.get(trace["trace_id"], {})
        row = _target_row(trace, problems[trace["problem_id"]]["problem"], ids, prompts, "star", score)
        candidates[trace["problem_id"]].append((float(trace["sample_index"]), 0, row))
    return _best_per_problem(candidates, config.per_problem)


def _best_per_problem(candidates: dict[str, list[tuple[float, int, dict]]], per_problem: int) -> list[dict]:
    selected = []
    for problem_id in sorted(candidates):
        ranked = sorted(candidates[problem_id], key=lambda item: (item[0], item[1], item[2]["trace_id"]))
        selected.extend(row for _, _, row in ranked[:per_problem])
    return selected
