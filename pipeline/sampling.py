"""Sample reasoning traces for a round and grade them.

Each problem gets `n` traces from one request whose seed is derived from the run seed, the
round and the problem id, so a trace is the same whichever shard or batch it falls in.

A sampled trace is correct only if it is well formed (`thinking_form`: its thinking closed
with `</think>` exactly once and its answer part opens no new thinking block) and the
grader finds its answer part right. A trace that is not well formed is never sent to the
grader: it is `unparsed` with no extracted answer and `grade_reason` saying why
(`unclosed_thinking`, `multiple_think_close`, `think_open_in_answer`), so a `\\boxed{}`
inside its thinking can neither count as correct nor vote in maj@k.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Callable

from pipeline.backends.base import Backend, Completion, Request, SamplingParams
from pipeline.config import SampleConfig
from pipeline.grading import UNPARSED, Grade, Grader, default_grader
from pipeline.io import stable_hash
from pipeline.templates import THINK_CLOSE, PromptBuilder
from pipeline.tokens import decode, token_at_or_before, token_char_starts


def request_seed(seed: int, round_index: int, key: str) -> int:
    return int(stable_hash({"seed": seed, "round": round_index, "key": key}), 16) % (2**31)


THINK_OPEN_TAG = "<think>"
UNCLOSED, MULTIPLE_CLOSE, OPEN_IN_ANSWER = "unclosed_thinking", "multiple_think_close", "think_open_in_answer"


def thinking_form(text: str) -> str | None:
    """Why a completion cannot be correct whatever its answer says, or None when well formed.

    Well formed: exactly one `</think>`, and no `<think>` after it (one thinking block, one
    answer part). `text` is the decoded completion (the prompt pre-fills `<think>\\n`)."""
    closes = text.count(THINK_CLOSE)
    if closes == 0:
        return UNCLOSED
    if closes > 1:
        return MULTIPLE_CLOSE
    if THINK_OPEN_TAG in text[text.index(THINK_CLOSE) + len(THINK_CLOSE) :]:
        return OPEN_IN_ANSWER
    return None


def close_span(tokenizer, ids: list[int]) -> tuple[int, int] | None:
    """Token offsets (start, end) of the first `</think>` in `ids`, or None when thinking never closes.

    `start` is the token boundary at or before the tag, `end` the first one at or after its
    last character, so `ids[:end]` is the model's own context through its closing tag. Found
    in the decoded ids (not an engine's text, which a stop string may have cut)."""
    text = decode(tokenizer, ids)
    char = text.find(THINK_CLOSE)
    if char < 0:
        return None
    starts = token_char_starts(tokenizer, ids)  # non-decreasing, starts[-1] == len(text)
    return token_at_or_before(starts, char), bisect_left(starts, char + len(THINK_CLOSE))


def close_offset(tokenizer, ids: list[int]) -> int:
    """Token offset where `</think>` starts in `ids`, or -1 when thinking never closes."""
    span = close_span(tokenizer, ids)
    return -1 if span is None else span[0]


def thinking_end(tokenizer, completion: Completion) -> int:
    """Token offset where `</think>` starts in the completion, or -1 when it never closes."""
    return close_offset(tokenizer, completion.token_ids)


def answer_text(text: str) -> str | None:
    """The answer part the grader sees: the text after the only `</think>`; None when not well formed."""
    return None if thinking_form(text) else text[text.index(THINK_CLOSE) + len(THINK_CLOSE) :]


def grade_traces(golds: list[str], texts: list[str], grader: Grader) -> list[Grade]:
    """Grades of decoded completions: the answer part of well-formed ones, `unparsed` for the rest."""
    answers = [answer_text(text) for text in texts]
    judged = iter(grader.grade_completions(
        [gold for gold, answer in zip(golds, answers) if answer is not None], [a for a in answers if a is not None]
    ))
    return [next(judged) if answer is not None else Grade(UNPARSED, None, thinking_form(text))
            for text, answer in zip(texts, answers)]


def trace_row(*, problem_id: str, round_index: int, index: int, seed: int, prompt_ids: list[int], completion_ids: list[int],
              completion: str, n_tokens: int, finish_reason: str, thinking_end_at: int, answer: str | None,
              grade: Grade, model_label: str) -> dict:
    """One row of the traces table (`pipeline.tables.TRACES`), sampled or imported alike (keywords
    only: several arguments are ints or id lists that a positional slip would swap silently)."""
    return {
        "trace_id": f"{problem_id}-r{round_index}-s{index}",
        "problem_id": problem_id,
        "round": round_index,
        "sample_index": index,
        "seed": seed,
        "prompt_ids": prompt_ids,
        "completion_ids": completion_ids,
        "completion": completion,
        "n_tokens": n_tokens,
        "finish_reason": finish_reason,
        "thinking_end": thinking_end_at,
        "answer_text": answer,
        "extracted": grade.extracted,
        "grade": grade.grade,
        "grade_reason": grade.reason,
        "correct": grade.correct,
        "model": model_label,
    }


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
    golds = [problem["answer"] for problem, completions in zip(problems, outputs) for _ in completions]
    texts = [decode(prompts.tokenizer, completion.token_ids) for completions in outputs for completion in completions]
    graded = iter(zip(texts, grade_traces(golds, texts, grader or default_grader())))
    rows = []
    for problem, request, completions in zip(problems, requests, outputs):
        for index, completion in enumerate(completions):
            text, grade = next(graded)
            rows.append(trace_row(
                problem_id=problem["problem_id"], round_index=round_index, index=index, seed=request.params.seed,
                prompt_ids=request.prompt_ids, completion_ids=completion.token_ids, completion=completion.text,
                n_tokens=completion.n_tokens, finish_reason=completion.finish_reason,
                thinking_end_at=thinking_end(prompts.tokenizer, completion), answer=answer_text(text), grade=grade,
                model_label=model_label))
    return rows
