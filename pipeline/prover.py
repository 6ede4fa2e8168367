"""The meta-prover: how often the model answers correctly if forced to stop after each prefix.

For a trace with E episodes there are E+1 prefixes: j = 0 is an empty thinking block,
j = 1..E-1 end at an episode boundary, and both are followed by the forced-termination
text; j = E is the whole thinking block closed with `</think>` only. K answers are sampled
after every prefix and only the answers are graded. All prefixes of all traces in a shard
go to the backend in one call, so engines can share work between them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from pipeline.backends.base import Backend, Request, SamplingParams
from pipeline.config import ProverConfig
from pipeline.grading import grade_completion
from pipeline.sampling import request_seed
from pipeline.stats import wilson_interval
from pipeline.templates import PromptBuilder
from pipeline.tokens import decode


@dataclass(frozen=True)
class Prefix:
    index: int
    thinking_tokens: int  # how many thinking tokens of the trace it keeps
    tail_ids: tuple[int, ...]  # appended after those tokens: forced stop or `</think>`
    forced: bool


def thinking_ids(trace: dict) -> list[int]:
    end = trace["thinking_end"]
    ids = list(trace["completion_ids"])
    return ids if end is None or end < 0 else ids[:end]


def separator(tokenizer, ids: list[int]) -> str:
    """Blank line to put between a prefix and the text that follows it."""
    if not ids:
        return ""
    tail = decode(tokenizer, ids[-4:])
    return "" if tail.endswith("\n\n") else "\n" if tail.endswith("\n") else "\n\n"


def build_prefixes(trace: dict, episode_ends: list[int], prompts: PromptBuilder) -> list[Prefix]:
    """Prefixes j = 0..E of one trace; `episode_ends` are the episodes' token ends."""
    thinking = thinking_ids(trace)
    prefixes = [Prefix(0, 0, tuple(prompts.forced_stop_ids), True)]
    for j, end in enumerate(episode_ends, start=1):
        if j < len(episode_ends):
            tail = prompts.encode(separator(prompts.tokenizer, thinking[:end]) + prompts.forced_stop_text)
            prefixes.append(Prefix(j, end, tuple(tail), True))
        else:
            tail = prompts.encode(separator(prompts.tokenizer, thinking) + prompts.close_text)
            prefixes.append(Prefix(j, len(thinking), tuple(tail), False))
    return prefixes


def prove_traces(
    traces: list[dict],
    episode_ends: dict[str, list[int]],
    answers: dict[str, str],
    backend: Backend,
    prompts: PromptBuilder,
    config: ProverConfig,
    on_done: Callable[[int], None] | None = None,
) -> list[dict]:
    """Rows of the prover table for `traces` (see `pipeline.tables.PROVER`)."""
    jobs: list[tuple[dict, Prefix, int]] = []
    requests: list[Request] = []
    for trace in traces:
        ends = episode_ends.get(trace["trace_id"], [])
        thinking = thinking_ids(trace)
        for prefix in build_prefixes(trace, ends, prompts):
            seed = request_seed(config.seed, prefix.index, trace["trace_id"])
            params = SamplingParams(config.k, config.temperature, config.top_p, config.max_answer_tokens, (), seed)
            ids = list(trace["prompt_ids"]) + thinking[: prefix.thinking_tokens] + list(prefix.tail_ids)
            requests.append(Request(ids, params))
            jobs.append((trace, prefix, len(ends)))
    outputs = backend.generate(requests, on_done=on_done)
    rows = []
    for (trace, prefix, n_episodes), completions in zip(jobs, outputs):
        gold = answers[trace["problem_id"]]
        grades = [grade_completion(gold, c.text) for c in completions]
        n_correct = sum(g.correct for g in grades)
        first_correct = next((c for c, g in zip(completions, grades) if g.correct), None)
        low, high = wilson_interval(n_correct, len(grades), config.confidence)
        rows.append(
            {
                "trace_id": trace["trace_id"],
                "problem_id": trace["problem_id"],
                "prefix_index": prefix.index,
                "n_episodes": n_episodes,
                "prefix_tokens": prefix.thinking_tokens,
                "forced": prefix.forced,
                "n_samples": len(grades),
                "n_correct": n_correct,
                "n_unparsed": sum(g.grade == "unparsed" for g in grades),
                "j_hat": n_correct / len(grades),
                "j_low": low,
                "j_high": high,
                "mean_answer_tokens": sum(c.n_tokens for c in completions) / len(completions),
                "correct_answer": first_correct.text if first_correct else None,
                "correct_answer_ids": first_correct.token_ids if first_correct else None,
            }
        )
    return rows
