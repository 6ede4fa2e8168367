"""The meta-prover: how often the model answers correctly if forced to stop after each prefix.

For a trace with E episodes there are E+1 prefixes: j = 0 is an empty thinking block,
j = 1..E-1 end at an episode boundary, and both are followed by the forced-termination
text; j = E is the whole thinking block closed with `</think>` only. K answers are sampled
after every prefix and only the answers are graded. All prefixes of all traces in a shard
go to the backend in one call, so engines can share work between them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from pipeline.backends.base import Backend, Request, SamplingParams
from pipeline.config import ProverConfig
from pipeline.grading import Grader, default_grader
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


def undecided(jobs: list[_Job], k: int, confidence: float) -> list[_Job]:
    """Prefixes of one trace whose estimate could still change which prefix is best.

    The best prefix is the earliest argmax of J. A prefix stays open (until it has k
    samples) while its interval reaches the best prefix's interval, i.e. while it could
    still be, or overtake, the best; the best prefix stays open while any rival does.
    """
    best = max(jobs, key=lambda job: (job.n_correct / job.n, -job.prefix.index))
    best_low, _ = wilson_interval(best.n_correct, best.n, confidence)
    rivals = [
        job for job in jobs
        if job is not best and job.n < k and wilson_interval(job.n_correct, job.n, confidence)[1] >= best_low
    ]
    if rivals and best.n < k:
        rivals.append(best)
    return rivals


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
    `adaptive_initial` per prefix, then `adaptive_step` more for the prefixes that could
    still change the trace's best prefix, until they separate or reach K.
    """
    jobs = _jobs(traces, episode_ends, prompts)
    first = config.adaptive_initial if config.adaptive else config.k
    grader = grader or default_grader()
    _sample_round(jobs, [min(first, config.k)] * len(jobs), 0, answers, backend, config, on_done, grader)
    stage = 1
    while config.adaptive:
        by_trace: dict[str, list[_Job]] = {}
        for job in jobs:
            by_trace.setdefault(job.trace["trace_id"], []).append(job)
        open_jobs = [job for group in by_trace.values() for job in undecided(group, config.k, config.adaptive_confidence)]
        if not open_jobs:
            break
        counts = [min(config.adaptive_step, config.k - job.n) for job in open_jobs]
        _sample_round(open_jobs, counts, stage, answers, backend, config, on_done, grader)
        stage += 1
    return [_row(job, config) for job in jobs]


def _row(job: _Job, config: ProverConfig) -> dict:
    first_correct = next((c for c, g in zip(job.completions, job.grades) if g.correct), None)
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
        "j_hat": job.n_correct / job.n,
        "j_low": low,
        "j_high": high,
        "mean_answer_tokens": sum(c.n_tokens for c in job.completions) / job.n,
        "correct_answer": first_correct.text if first_correct else None,
        "correct_answer_ids": first_correct.token_ids if first_correct else None,
    }
