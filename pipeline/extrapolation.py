"""Extrapolation by budget forcing: does accuracy keep rising past the sampling budget?

MRT's claim is a model that keeps making progress when given more tokens than it was trained
with. Here a finished trace is not allowed to stop: the continuation marker ("Wait") is
appended after its thinking (in place of `</think>`) and the model thinks on for up to
`tokens` more, `times` times; a trace the budget cut off simply continues. After each
continuation the model is forced to answer (`</think>`, K samples, graded like the
meta-prover's last prefix). J after e continuations, against the thinking tokens spent,
extends the accuracy-vs-tokens curve beyond the budget that sampling and training saw.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from statistics import fmean
from typing import Callable

from pipeline.backends.base import Backend, Request, SamplingParams
from pipeline.config import ExtrapolateConfig, ProverConfig, SampleConfig
from pipeline.grading import Grader
from pipeline.prover import separator, thinking_ids
from pipeline.sampling import close_offset, request_seed
from pipeline.templates import THINK_CLOSE, PromptBuilder


@dataclass
class _Thread:
    """One trace being extended: its thinking so far and how the last piece ended."""

    trace: dict
    thinking: list[int]
    cut_by_length: bool


def _continuation_prefix(thread: _Thread, prompts: PromptBuilder, marker: str) -> list[int]:
    """Marker ids to append before continuing; none when the budget cut the thinking mid-way."""
    if thread.cut_by_length:
        return []
    return prompts.encode(separator(prompts.tokenizer, thread.thinking) + marker)


def extrapolate_traces(
    traces: list[dict],
    answers: dict[str, str],
    backend: Backend,
    prompts: PromptBuilder,
    config: ExtrapolateConfig,
    sample: SampleConfig,
    prover: ProverConfig,
    grader: Grader,
    on_done: Callable[[int], None] | None = None,
) -> list[dict]:
    """Rows of the extrapolation table (`pipeline.tables.EXTRAPOLATION`) for `traces`.

    Every continuation step sends all traces to the backend in one call, then all forced
    answers in one call, so engines batch across traces.
    """
    tokens = config.tokens or sample.max_tokens
    threads = [
        _Thread(t, thinking_ids(t), t["thinking_end"] < 0 and t["finish_reason"] == "length") for t in traces
    ]
    rows: list[dict] = []
    for extension in range(1, config.times + 1):
        prefixes = [_continuation_prefix(thread, prompts, config.marker) for thread in threads]
        requests = [
            Request(
                list(thread.trace["prompt_ids"]) + thread.thinking + prefix,
                SamplingParams(1, sample.temperature, sample.top_p, tokens, (THINK_CLOSE,),
                               request_seed(sample.seed, extension, f"{thread.trace['trace_id']}#extend")),
            )
            for thread, prefix in zip(threads, prefixes)
        ]
        continued = backend.generate(requests, on_done=on_done)
        added = []
        for thread, prefix, (completion,) in zip(threads, prefixes, continued):
            cut = close_offset(prompts.tokenizer, completion.token_ids)
            new = completion.token_ids if cut < 0 else completion.token_ids[:cut]
            thread.thinking = thread.thinking + prefix + list(new)
            thread.cut_by_length = cut < 0 and completion.finish_reason == "length"
            added.append(len(prefix) + len(new))
        answer_requests = [
            Request(
                list(thread.trace["prompt_ids"]) + thread.thinking
                + prompts.encode(separator(prompts.tokenizer, thread.thinking) + prompts.close_text),
                SamplingParams(prover.k, prover.temperature, prover.top_p, prover.max_answer_tokens, (),
                               request_seed(prover.seed, extension, f"{thread.trace['trace_id']}#extend")),
            )
            for thread in threads
        ]
        outputs = backend.generate(answer_requests, on_done=on_done)
        grades = iter(grader.grade_completions(
            [answers[thread.trace["problem_id"]] for thread, out in zip(threads, outputs) for _ in out],
            [completion.text for out in outputs for completion in out],
        ))
        for thread, n_added, out in zip(threads, added, outputs):
            judged = [next(grades) for _ in out]
            n_correct = sum(g.correct for g in judged)
            rows.append({
                "trace_id": thread.trace["trace_id"],
                "problem_id": thread.trace["problem_id"],
                "extension": extension,
                "thinking_tokens": len(thread.thinking),
                "added_tokens": n_added,
                "closed": not thread.cut_by_length,
                "n_samples": len(out),
                "n_correct": n_correct,
                "n_unparsed": sum(g.grade == "unparsed" for g in judged),
                "j_hat": n_correct / len(out),
                "mean_answer_tokens": fmean(c.n_tokens for c in out),
            })
    return rows


def extrapolation_curve(prover_rows: list[dict], extension_rows: list[dict]) -> list[dict]:
    """Mean accuracy and tokens after e = 0..times continuations (e = 0: the traces as sampled).

    Point 0 is each trace's last meta-prover prefix (its whole thinking, closed); the others
    come from `extrapolate_traces`. Tokens are thinking plus mean answer tokens.
    """
    finals: dict[str, dict] = {}
    for row in prover_rows:
        if row["trace_id"] not in finals or row["prefix_index"] > finals[row["trace_id"]]["prefix_index"]:
            finals[row["trace_id"]] = row
    points: dict[int, list[tuple[float, float]]] = defaultdict(list)
    for row in finals.values():
        points[0].append((row["prefix_tokens"] + row["mean_answer_tokens"], row["j_hat"]))
    for row in extension_rows:
        points[row["extension"]].append((row["thinking_tokens"] + row["mean_answer_tokens"], row["j_hat"]))
    return [
        {"extensions": e, "traces": len(values), "mean_tokens": round(fmean(t for t, _ in values), 3),
         "accuracy": round(fmean(j for _, j in values), 6)}
        for e, values in sorted(points.items())
    ]
