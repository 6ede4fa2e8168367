"""The meta-prover: how often the model answers correctly if forced to stop after each prefix.

For a trace with E episodes there are E+1 prefixes: j = 0 is an empty thinking block,
j = 1..E-1 end at an episode boundary, and both are followed by a blank line (where the
text does not already end in one) and the forced-termination text. j = E is the whole
thinking block: for a trace that closed its thinking, the model's own ids through its own
`</think>`, nothing inserted; for an unclosed trace (cut by the budget) the separator and
`</think>` close it. K answers are sampled after every prefix and only the answers are
graded. Each answer's finish reason is kept: the solution offered to selection is the
first correct answer that ended on its own (EOS), never one cut by `max_answer_tokens`.
All prefixes of all traces in a shard go to the backend in one call, so engines can
share work between them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from pipeline.adaptive import adaptive_settings, job_counts, plan_draws
from pipeline.backends.base import Backend, Request, SamplingParams
from pipeline.config import ProverConfig
from pipeline.grading import Grader, default_grader
from pipeline.sampling import THINK_OPEN_TAG, close_span, request_seed
from pipeline.stats import wilson_interval
from pipeline.templates import THINK_CLOSE, PromptBuilder
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


def own_close_ids(trace: dict, tokenizer) -> list[int]:
    """The ids a closed trace wrote from the end of its thinking through its `</think>`.

    Where the token that ends the tag also holds answer text (SmolLM2 merges `>\\` when the
    answer follows with no space), the trace's own text through the tag is encoded instead:
    still nothing the model did not write, and no answer character leaks into the prefix."""
    ids = list(trace["completion_ids"])
    span = close_span(tokenizer, ids)
    if span is None or span[0] != trace["thinking_end"]:
        raise ValueError(f"trace {trace['trace_id']}: thinking_end {trace['thinking_end']} does not mark its `</think>`")
    own = ids[span[0] : span[1]]
    text = decode(tokenizer, own)
    if text.endswith(THINK_CLOSE):
        return own
    return list(tokenizer(text[: text.index(THINK_CLOSE) + len(THINK_CLOSE)], add_special_tokens=False)["input_ids"])


def closing_ids(trace: dict, thinking_tokens: int, forced: bool, prompts: PromptBuilder, forced_text: bool = True) -> list[int]:
    """What follows the first `thinking_tokens` thinking ids in a prefix (and in its target).

    The whole thinking of a closed trace (`not forced`): its own `</think>` ids. A cut prefix:
    separator + forced-stop text (or `</think>\\n\\n` when `forced_text` is False, the target's
    default). The whole thinking of an unclosed trace: separator + `</think>\\n\\n`."""
    thinking = thinking_ids(trace)
    if not forced and trace["thinking_end"] is not None and trace["thinking_end"] >= 0:
        if thinking_tokens != len(thinking):
            raise ValueError(f"trace {trace['trace_id']}: an unforced prefix must keep all {len(thinking)} thinking tokens")
        return own_close_ids(trace, prompts.tokenizer)
    text = prompts.forced_stop_text if forced and forced_text else prompts.close_text
    return prompts.encode(separator(prompts.tokenizer, thinking[:thinking_tokens]) + text)


def build_prefixes(trace: dict, episode_ends: list[int], prompts: PromptBuilder) -> list[Prefix]:
    """Prefixes j = 0..E of one trace; `episode_ends` are the episodes' token ends."""
    n_thinking = len(thinking_ids(trace))
    prefixes = [Prefix(0, 0, tuple(closing_ids(trace, 0, True, prompts)), True)]
    for j, end in enumerate(episode_ends, start=1):
        forced = j < len(episode_ends)
        tokens = end if forced else n_thinking
        prefixes.append(Prefix(j, tokens, tuple(closing_ids(trace, tokens, forced, prompts)), forced))
    return prefixes


def is_solution(completion, grade) -> bool:
    """A forced answer that may close an SFT target: correct, ended on its own (not cut by
    `max_answer_tokens`), and one answer only (it opens or closes no thinking block)."""
    return (
        grade.correct
        and completion.finish_reason == "stop"
        and THINK_CLOSE not in completion.text
        and THINK_OPEN_TAG not in completion.text
    )


@dataclass
class _Job:
    """One prefix of one trace and the answers sampled after it so far."""

    trace: dict
    prefix: Prefix
    n_episodes: int
    prompt_ids: list[int]
    grades: list = field(default_factory=list)
    completions: list = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.grades)

    @property
    def n_correct(self) -> int:
        return sum(g.correct for g in self.grades)


def _jobs(traces: list[dict], episode_ends: dict[str, list[int]], prompts: PromptBuilder) -> list[_Job]:
    jobs = []
    for trace in traces:
        ends = episode_ends.get(trace["trace_id"], [])
        thinking = thinking_ids(trace)
        for prefix in build_prefixes(trace, ends, prompts):
            ids = list(trace["prompt_ids"]) + thinking[: prefix.thinking_tokens] + list(prefix.tail_ids)
            jobs.append(_Job(trace, prefix, len(ends), ids))
    return jobs


def next_draws(jobs: list[_Job], config: ProverConfig, stage: int) -> tuple[list[_Job], list[int]]:
    """The prefixes to draw more answers for after `stage` rounds, and how many (`pipeline.adaptive`)."""
    by_trace: dict[str, list[_Job]] = {}
    for job in jobs:
        by_trace.setdefault(job.trace["trace_id"], []).append(job)
    plans = plan_draws([job_counts(group) for group in by_trace.values()], [f"{config.seed}:{t}" for t in by_trace],
                       stage, adaptive_settings(config))
    chosen = [(job, int(n)) for group, plan in zip(by_trace.values(), plans) for job, n in zip(group, plan) if n > 0]
    return [job for job, _ in chosen], [n for _, n in chosen]


def _sample_round(
    jobs: list[_Job], counts: list[int], stage: int, answers: dict[str, str], backend: Backend, config: ProverConfig, on_done,
    grader: Grader,
) -> None:
    requests = []
    for job, count in zip(jobs, counts):
        key = job.trace["trace_id"] if stage == 0 else f"{job.trace['trace_id']}#{stage}"
        seed = request_seed(config.seed, job.prefix.index, key)
        requests.append(Request(job.prompt_ids, SamplingParams(count, config.temperature, config.top_p, config.max_answer_tokens, (), seed)))
    outputs = backend.generate(requests, on_done=on_done)
    grades = iter(grader.grade_completions(
        [answers[job.trace["problem_id"]] for job, completions in zip(jobs, outputs) for _ in completions],
        [completion.text for completions in outputs for completion in completions],
    ))
    for job, completions in zip(jobs, outputs):
        job.grades.extend(next(grades) for _ in completions)
        job.completions.extend(completions)


def prove_traces(
    traces: list[dict],
    episode_ends: dict[str, list[int]],
    answers: dict[str, str],
    backend: Backend,
    prompts: PromptBuilder,
    config: ProverConfig,
    on_done: Callable[[int], None] | None = None,
    grader: Grader | None = None,
) -> list[dict]:
    """Rows of the prover table for `traces` (see `pipeline.tables.PROVER`).

    Fixed sampling draws K answers per prefix. Adaptive sampling (`config.adaptive`) draws
    `adaptive_initial` per prefix, then `adaptive_step` more where a trace's decision (j*,
    keep) is still open, up to K (`pipeline.adaptive`).
    """
    jobs = _jobs(traces, episode_ends, prompts)
    first = config.adaptive_initial if config.adaptive else config.k
    grader = grader or default_grader()
    _sample_round(jobs, [min(first, config.k)] * len(jobs), 0, answers, backend, config, on_done, grader)
    stage = 1
    while config.adaptive:
        open_jobs, counts = next_draws(jobs, config, stage)
        if not open_jobs:
            break
        _sample_round(open_jobs, counts, stage, answers, backend, config, on_done, grader)
        stage += 1
    return [_row(job, config) for job in jobs]


def _row(job: _Job, config: ProverConfig) -> dict:
    solution = next((c for c, g in zip(job.completions, job.grades) if is_solution(c, g)), None)
    low, high = wilson_interval(job.n_correct, job.n, config.confidence)
    return {
        "trace_id": job.trace["trace_id"],
        "problem_id": job.trace["problem_id"],
        "prefix_index": job.prefix.index,
        "n_episodes": job.n_episodes,
        "prefix_tokens": job.prefix.thinking_tokens,
        "forced": job.prefix.forced,
        "n_samples": job.n,
        "n_correct": job.n_correct,
        "n_unparsed": sum(g.grade == "unparsed" for g in job.grades),
        "n_length_cut": sum(c.finish_reason == "length" for c in job.completions),
        "j_hat": job.n_correct / job.n,
        "j_low": low,
        "j_high": high,
        "mean_answer_tokens": sum(c.n_tokens for c in job.completions) / job.n,
        "correct_answer": solution.text if solution else None,
        "correct_answer_ids": list(solution.token_ids) if solution else None,
    }
