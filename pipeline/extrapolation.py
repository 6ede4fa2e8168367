"""Extrapolation by budget forcing: does accuracy keep rising past the sampling budget?

MRT's claim is a model that keeps making progress when given more tokens than it was trained
with. Here the thinking is not allowed to stop: continuation e (1-based) appends the next marker
of a rotation (`ExtrapolateConfig.markers`, by default the episode rule's markers: "Wait",
"But wait", "Alternatively", ..., as the authors rotate theirs) after the thinking so far, in
place of `</think>`, and the model thinks on for up to `tokens` more, `times` times. Every
marker opens a new paragraph (a blank line before it where the text does not end in one), also
after thinking that the budget cut mid-sentence. A continuation that the budget cut loses its
unfinished last paragraph (its text after its last blank line, when it has one), as in the
authors' code; the sampled trace is kept whole, so the e = 0 point (its last meta-prover
prefix) is the start of every extension. After each continuation the model is forced to answer
(`</think>`, K samples, graded like the meta-prover's last prefix).

Measured: J after e continuations against the tokens spent, and the trace's normalized regret
at the budget C0 = sampling budget + e * continuation tokens, over the curve of its prefixes
(`pipeline.regret`) followed by its continuations, in that order.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from statistics import fmean
from typing import Callable, Sequence

from pipeline.backends.base import Backend, Request, SamplingParams
from pipeline.config import EpisodesConfig, ExtrapolateConfig, ProverConfig, SampleConfig
from pipeline.episodes import paragraph_starts
from pipeline.grading import Grader
from pipeline.prover import separator, thinking_ids
from pipeline.regret import monotone_points, regret_of_points
from pipeline.sampling import close_offset, request_seed
from pipeline.templates import THINK_CLOSE, PromptBuilder
from pipeline.tokens import decode, token_at_or_before, token_char_starts


@dataclass
class _Thread:
    """One trace being extended: its thinking so far and whether the last piece closed itself."""

    trace: dict
    thinking: list[int]
    cut_by_length: bool


def drop_unfinished_paragraph(tokenizer, ids: list[int], piece_start: int) -> list[int]:
    """`ids` without the text after the last paragraph break of `ids[piece_start:]`.

    The cut is at the token boundary at or before where that paragraph starts (never inside a
    character); a piece without a paragraph break is kept whole."""
    piece = ids[piece_start:]
    starts = paragraph_starts(decode(tokenizer, piece))
    if len(starts) < 2:
        return list(ids)
    char_starts = token_char_starts(tokenizer, piece)
    token = token_at_or_before(char_starts, starts[-1])
    while 0 < token and char_starts[token - 1] == char_starts[token]:
        token -= 1
    return list(ids[: piece_start + token])


def continuation_markers(config: ExtrapolateConfig, episodes: EpisodesConfig) -> list[str]:
    """The markers rotated over the continuations: the config's own, else the episode rule's."""
    return list(config.markers or episodes.markers)


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
    markers: Sequence[str] | None = None,
) -> list[dict]:
    """Rows of the extrapolation table (`pipeline.tables.EXTRAPOLATION`) for `traces`.

    `markers` are rotated over the continuations (default: `continuation_markers` with the
    default episode rule). The forced answers after continuation e and continuation e + 1 both
    start from the thinking after e, so they go to the backend in one call, for all traces:
    `times + 1` calls instead of `2 * times`, and the short answer rows fill the decoding batch
    beside the long continuation rows (a continuation call alone leaves a CPU batch a third
    empty; every sample keeps its own seed, so the outputs do not change).
    """
    markers = list(markers or continuation_markers(config, EpisodesConfig()))
    tokens = config.tokens or sample.max_tokens
    threads = [
        _Thread(t, thinking_ids(t), t["thinking_end"] < 0 and t["finish_reason"] == "length") for t in traces
    ]
    rows: list[dict] = []
    added = [0] * len(threads)  # tokens the last continuation added to each thread
    for extension in range(1, config.times + 2):
        marker = markers[(extension - 1) % len(markers)]
        continuing = threads if extension <= config.times else []
        prefixes = [prompts.encode(separator(prompts.tokenizer, thread.thinking) + marker) for thread in continuing]
        requests = [
            Request(
                list(thread.trace["prompt_ids"]) + thread.thinking + prefix,
                SamplingParams(1, sample.temperature, sample.top_p, tokens, (THINK_CLOSE,),
                               request_seed(sample.seed, extension, f"{thread.trace['trace_id']}#extend")),
            )
            for thread, prefix in zip(threads, prefixes)
        ]
        if extension > 1:  # the forced answers after continuation extension - 1
            requests += [
                Request(
                    list(thread.trace["prompt_ids"]) + thread.thinking
                    + prompts.encode(separator(prompts.tokenizer, thread.thinking) + prompts.close_text),
                    SamplingParams(prover.k, prover.temperature, prover.top_p, prover.max_answer_tokens, (),
                                   request_seed(prover.seed, extension - 1, f"{thread.trace['trace_id']}#extend")),
                )
                for thread in threads
            ]
        outputs = backend.generate(requests, on_done=on_done)
        if extension > 1:
            rows += _answer_rows(threads, added, outputs[len(prefixes):], extension - 1, answers, grader)
        for i, (thread, prefix, (completion,)) in enumerate(zip(threads, prefixes, outputs)):
            cut = close_offset(prompts.tokenizer, completion.token_ids)
            new = completion.token_ids if cut < 0 else completion.token_ids[:cut]
            before = len(thread.thinking) + len(prefix)
            thread.thinking = thread.thinking + prefix + list(new)
            thread.cut_by_length = cut < 0 and completion.finish_reason == "length"
            if thread.cut_by_length:
                thread.thinking = drop_unfinished_paragraph(prompts.tokenizer, thread.thinking, before)
            added[i] = len(prefix) + len(thread.thinking) - before
    return rows


def _answer_rows(threads: list[_Thread], added: list[int], outputs: list[list], extension: int,
                 answers: dict[str, str], grader: Grader) -> list[dict]:
    """Rows for the forced answers after continuation `extension` (threads as that continuation left them)."""
    grades = iter(grader.grade_completions(
        [answers[thread.trace["problem_id"]] for thread, out in zip(threads, outputs) for _ in out],
        [completion.text for out in outputs for completion in out],
    ))
    rows = []
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


def extension_points(
    prover_rows: list[dict], extension_rows: list[dict], sample_budget: float, extension_tokens: float
) -> dict[str, dict[int, dict]]:
    """{trace_id: {e: point}} for e = 0 (the trace as sampled: its last prefix) and every
    continuation: tokens (thinking + mean answer tokens), J, the budget C0 = sample_budget +
    e * extension_tokens and the normalized regret at C0 of the trace's curve up to point e."""
    prefixes: dict[str, list[dict]] = defaultdict(list)
    for row in prover_rows:
        prefixes[row["trace_id"]].append(row)
    extensions: dict[str, list[dict]] = defaultdict(list)
    for row in extension_rows:
        extensions[row["trace_id"]].append(row)
    points: dict[str, dict[int, dict]] = {}
    for trace_id, rows in prefixes.items():
        ordered = sorted(rows, key=lambda p: p["prefix_index"])
        costs = [(p["prefix_tokens"] + p["mean_answer_tokens"], p["j_hat"]) for p in ordered]
        steps = [(0, costs[-1])] + [
            (row["extension"], (row["thinking_tokens"] + row["mean_answer_tokens"], row["j_hat"]))
            for row in sorted(extensions.get(trace_id, []), key=lambda r: r["extension"])
        ]
        points[trace_id] = {}
        for e, (cost, j) in steps:
            if e:
                costs.append((cost, j))
            budget = sample_budget + e * extension_tokens
            points[trace_id][e] = {"tokens": cost, "j_hat": j, "budget_tokens": budget,
                                   "regret": regret_of_points(monotone_points(costs), budget)}
    return points


def extrapolation_curve(points: dict[str, dict[int, dict]]) -> list[dict]:
    """Mean tokens, accuracy and regret over traces after e = 0..times continuations (from
    `extension_points`; e = 0: the traces as sampled, at the sampling budget)."""
    by_extension: dict[int, list[dict]] = defaultdict(list)
    for trace_points in points.values():
        for e, point in trace_points.items():
            by_extension[e].append(point)
    return [
        {"extensions": e, "traces": len(values), "mean_tokens": round(fmean(p["tokens"] for p in values), 3),
         "accuracy": round(fmean(p["j_hat"] for p in values), 6),
         "budget_tokens": int(round(values[0]["budget_tokens"])),
         "regret": round(fmean(p["regret"] for p in values), 6)}
        for e, values in sorted(by_extension.items())
    ]
