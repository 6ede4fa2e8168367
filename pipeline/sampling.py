"""Sample reasoning traces for a round and grade them.

Each problem gets `n` traces from one request whose seed is derived from the run seed, the
round and the problem id, so a trace is the same whichever shard or batch it falls in.
"""

from __future__ import annotations

from typing import Callable

from pipeline.backends.base import Backend, Completion, Request, SamplingParams
from pipeline.config import SampleConfig
from pipeline.grading import Grader, answer_part, default_grader
from pipeline.io import stable_hash
from pipeline.templates import THINK_CLOSE, PromptBuilder
from pipeline.tokens import decode, token_at_or_before, token_char_starts


def request_seed(seed: int, round_index: int, key: str) -> int:
    return int(stable_hash({"seed": seed, "round": round_index, "key": key}), 16) % (2**31)


def close_offset(tokenizer, ids: list[int]) -> int:
    """Token offset where `</think>` starts in `ids`, or -1 when thinking never closes.

    Found in the decoded ids (not an engine's text, which a stop string may have cut)."""
    char = decode(tokenizer, ids).find(THINK_CLOSE)
    if char < 0:
        return -1
    return token_at_or_before(token_char_starts(tokenizer, ids), char)


def thinking_end(tokenizer, completion: Completion) -> int:
    """Token offset where `</think>` starts in the completion, or -1 when it never closes."""
    return close_offset(tokenizer, completion.token_ids)


def sample_traces(
    problems: list[dict],
    backend: Backend,
    prompts: PromptBuilder,
    config: SampleConfig,
    round_index: int,
    model_label: str,
    on_done: Callable[[int], None] | None = None,
    grader: Grader | None = None,
) -> list[dict]:
    """Rows of the traces table for `problems` (see `pipeline.tables.TRACES`)."""
    requests = []
    for problem in problems:
        seed = request_seed(config.seed, round_index, problem["problem_id"])
        params = SamplingParams(config.n, config.temperature, config.top_p, config.max_tokens, (), seed)
        requests.append(Request(prompts.sampling_prompt_ids(problem["problem"]), params))
    outputs = backend.generate(requests, on_done=on_done)
    grades = iter((grader or default_grader()).grade_completions(
        [problem["answer"] for problem, completions in zip(problems, outputs) for _ in completions],
        [completion.text for completions in outputs for completion in completions],
    ))
    rows = []
    for problem, request, completions in zip(problems, requests, outputs):
        for index, completion in enumerate(completions):
            grade = next(grades)
            rows.append(
                {
                    "trace_id": f"{problem['problem_id']}-r{round_index}-s{index}",
                    "problem_id": problem["problem_id"],
                    "round": round_index,
                    "sample_index": index,
                    "seed": request.params.seed,
                    "prompt_ids": request.prompt_ids,
                    "completion_ids": completion.token_ids,
                    "completion": completion.text,
                    "n_tokens": completion.n_tokens,
                    "finish_reason": completion.finish_reason,
                    "thinking_end": thinking_end(prompts.tokenizer, completion),
                    "answer_text": answer_part(completion.text),
                    "extracted": grade.extracted,
                    "grade": grade.grade,
                    "correct": grade.correct,
                    "model": model_label,
                }
            )
    return rows
