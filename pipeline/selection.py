"""Choose SFT targets: MRT-STaR (truncate at the best prefix) or STaR (correct traces).

Every target is `<think>\\n` + thinking + closing ids + one answer + EOS, built from token
ids, and has exactly one thinking block and one non-empty answer part (`target_form`);
a candidate that would break this is dropped and counted, never trained on.

MRT-STaR, per trace: cut at j* = the earliest prefix with the highest J; keep the trace
only if the prover sampled a solution there (a correct answer that ended on its own, see
`pipeline.prover.is_solution`); optionally require J(j*) - J(0) >= `min_gain`. The closing
ids are the prover's own (`pipeline.prover.closing_ids`): at j* = E of a closed trace the
model's own `</think>`, elsewhere the separator and `</think>\\n\\n` (or the forced-stop
text with `keep_forced_stop_text`). j* = 0 would give an empty thinking block: what
happens then is `select.empty_thinking` (docs/method.md). Per problem keep the
`per_problem` traces with the lowest regret (ties: fewer tokens).
STaR: keep traces whose own final answer is correct (which requires a well-formed trace,
`pipeline.sampling.thinking_form`) and that ended on their own; the target ids are the
trace's own ids. First `per_problem` per problem.
Drop reasons are counted in `drops` when one is given (round metrics).
"""

from __future__ import annotations

from collections import Counter, defaultdict

from pipeline.config import SelectConfig
from pipeline.prover import closing_ids, thinking_ids
from pipeline.sampling import THINK_OPEN_TAG, thinking_form
from pipeline.templates import THINK_CLOSE, PromptBuilder
from pipeline.tokens import decode


def _strip_eos(ids: list[int], eos_ids: list[int]) -> list[int]:
    """Text columns hold the target without EOS (trainers add their own); id columns keep it."""
    return ids[: -len(eos_ids)] if eos_ids and ids[-len(eos_ids) :] == eos_ids else ids


def with_eos(ids: list[int], eos_ids: list[int]) -> list[int]:
    """`ids` ending in EOS exactly once: appended unless the model's ids already end with it."""
    ids = list(ids)
    return ids if eos_ids and ids[-len(eos_ids) :] == eos_ids else ids + list(eos_ids)


def target_form(text: str) -> str | None:
    """Why a target text (without EOS, starting with `<think>`) is not one thinking block
    followed by one non-empty answer, or None when it is."""
    if text.count(THINK_OPEN_TAG) != 1 or text.count(THINK_CLOSE) != 1:
        return "not_one_thinking_block"
    if not text[text.index(THINK_CLOSE) + len(THINK_CLOSE) :].strip():
        return "empty_answer"
    return None


def target_thinking(text: str) -> str:
    """The thinking text of a target text (between its `<think>` and its first `</think>`)."""
    start = text.find(THINK_OPEN_TAG)
    start = 0 if start < 0 else start + len(THINK_OPEN_TAG)
    end = text.find(THINK_CLOSE, start)
    return text[start : len(text) if end < 0 else end]


def has_empty_thinking(tokenizer, ids: list[int]) -> bool:
    return not decode(tokenizer, ids).strip()


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
    """Completion ids for a trace truncated at prefix `best` (a prover row) and closed with its solution."""
    thinking = thinking_ids(trace)[: best["prefix_tokens"]]
    closing = closing_ids(trace, best["prefix_tokens"], best["forced"], prompts, forced_text=keep_forced_stop_text)
    return with_eos(prompts.think_open_ids + thinking + closing + list(best["correct_answer_ids"]), prompts.eos_ids)


def _best_nonempty(prefixes: dict[int, dict], tokenizer, trace: dict) -> dict | None:
    """The earliest prefix with the highest J among those that keep some thinking text."""
    thinking = thinking_ids(trace)
    rows = [row for j, row in sorted(prefixes.items()) if j > 0 and not has_empty_thinking(tokenizer, thinking[: row["prefix_tokens"]])]
    return max(rows, key=lambda row: (row["j_hat"], -row["prefix_index"])) if rows else None


def select_mrt(
    traces: list[dict],
    prover_rows: list[dict],
    regrets: dict[str, dict],
    problems: dict[str, dict],
    prompts: PromptBuilder,
    config: SelectConfig,
    drops: Counter | None = None,
) -> list[dict]:
    drops = Counter() if drops is None else drops
    by_trace: dict[str, dict[int, dict]] = defaultdict(dict)
    for row in prover_rows:
        by_trace[row["trace_id"]][row["prefix_index"]] = row
    candidates: dict[str, list[tuple[float, int, dict]]] = defaultdict(list)
    for trace in traces:
        score = regrets.get(trace["trace_id"])
        if score is None:
            drops["not_scored"] += 1
            continue
        best = by_trace[trace["trace_id"]][score["best_prefix"]]
        if has_empty_thinking(prompts.tokenizer, thinking_ids(trace)[: best["prefix_tokens"]]):
            if config.empty_thinking == "drop":
                drops["empty_thinking"] += 1
                continue
            if config.empty_thinking == "best_nonempty":
                best = _best_nonempty(by_trace[trace["trace_id"]], prompts.tokenizer, trace)
                if best is None:
                    drops["empty_thinking"] += 1
                    continue
                score = {**score, "best_prefix": best["prefix_index"], "j_best": best["j_hat"]}
        if best["n_correct"] == 0:
            drops["no_correct_answer"] += 1
            continue
        if best["correct_answer_ids"] is None:
            drops["no_complete_answer"] += 1  # correct answers, but every one cut by max_answer_tokens (or malformed)
            continue
        if config.min_gain is not None and score["j_best"] - score["j_direct"] < config.min_gain:
            drops["below_min_gain"] += 1
            continue
        ids = mrt_target_ids(trace, best, prompts, config.keep_forced_stop_text)
        row = _target_row(trace, problems[trace["problem_id"]]["problem"], ids, prompts, "mrt", score)
        reason = target_form(row["completion"])
        if reason:
            drops[reason] += 1
            continue
        candidates[trace["problem_id"]].append((score["regret"], len(ids), row))
    return _best_per_problem(candidates, config.per_problem)


def select_star(
    traces: list[dict],
    regrets: dict[str, dict],
    problems: dict[str, dict],
    prompts: PromptBuilder,
    config: SelectConfig,
    drops: Counter | None = None,
) -> list[dict]:
    drops = Counter() if drops is None else drops
    candidates: dict[str, list[tuple[float, int, dict]]] = defaultdict(list)
    for trace in traces:
        if not trace["correct"]:
            drops["not_correct"] += 1
            continue
        if thinking_form(decode(prompts.tokenizer, trace["completion_ids"])):
            drops["not_well_formed"] += 1  # a table graded before the rule; never a target
            continue
        if trace["finish_reason"] != "stop":
            drops["answer_cut"] += 1  # closed and correct, but the budget cut its answer part
            continue
        if config.empty_thinking != "keep" and has_empty_thinking(prompts.tokenizer, thinking_ids(trace)):
            drops["empty_thinking"] += 1
            continue
        ids = with_eos(prompts.think_open_ids + list(trace["completion_ids"]), prompts.eos_ids)
        score = regrets.get(trace["trace_id"], {})
        row = _target_row(trace, problems[trace["problem_id"]]["problem"], ids, prompts, "star", score)
        reason = target_form(row["completion"])
        if reason:
            drops[reason] += 1
            continue
        candidates[trace["problem_id"]].append((float(trace["sample_index"]), 0, row))
    return _best_per_problem(candidates, config.per_problem)


def _best_per_problem(candidates: dict[str, list[tuple[float, int, dict]]], per_problem: int) -> list[dict]:
    selected = []
    for problem_id in sorted(candidates):
        ranked = sorted(candidates[problem_id], key=lambda item: (item[0], item[1], item[2]["trace_id"]))
        selected.extend(row for _, _, row in ranked[:per_problem])
    return selected
