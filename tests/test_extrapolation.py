"""Budget forcing past the sampling budget: what is appended, what is kept, what is measured."""

from __future__ import annotations

from pipeline.backends.base import Completion, GenerationStats
from pipeline.config import ExtrapolateConfig, ProverConfig, SampleConfig
from pipeline.extrapolation import extrapolate_traces, extrapolation_curve
from pipeline.grading import default_grader
from pipeline.prover import separator
from pipeline.templates import PromptBuilder
from test_prover_selection import make_trace


class ScriptedBackend:
    """Answers continuation requests (they carry a stop string) and answer requests from scripts,
    recording every request so the test can read the exact prompts."""

    def __init__(self, prompts: PromptBuilder, continuations: list[str], answer: str):
        self.prompts, self.continuations, self.answer = prompts, list(continuations), answer
        self.requests: list = []
        self.stats = GenerationStats()

    def generate(self, requests, on_done=None):
        out = []
        for request in requests:
            self.requests.append(request)
            if request.params.stop:  # a continuation: text until (and including) </think>, or cut by length
                text = self.continuations.pop(0)
                ids = self.prompts.encode(text)[: request.params.max_tokens]
                reason = "stop" if "</think>" in text else "length"
            else:
                ids, reason = self.prompts.encode(self.answer), "stop"
            out.append([Completion(ids, self.prompts.tokenizer.decode(ids), reason) for _ in range(request.params.n)])
            if on_done:
                on_done(request.params.n)
        return out

    def close(self) -> None:
        pass


def test_continuations_append_the_marker_and_force_answers(tokenizer):
    prompts = PromptBuilder(tokenizer, "chatml_think")
    trace = dict(make_trace(tokenizer, prompts), finish_reason="stop")
    thinking = trace["completion_ids"][: trace["thinking_end"]]
    backend = ScriptedBackend(prompts, ["Let me check: 1 + 1 = 2.\n</think>", " It is 2 indeed, so"], "The answer is \\boxed{2}.")
    config = ExtrapolateConfig(times=2, tokens=20, marker="Wait")
    rows = extrapolate_traces([trace], {"p1": "2"}, backend, prompts, config, SampleConfig(max_tokens=32),
                              ProverConfig(k=3, max_answer_tokens=16), default_grader())

    first, answer1, second, answer2 = backend.requests
    prompt = trace["prompt_ids"]
    assert first.prompt_ids == prompt + thinking + prompts.encode(separator(tokenizer, thinking) + "Wait")
    assert first.params.stop == ("</think>",) and first.params.max_tokens == 20 and first.params.n == 1
    # The continuation is kept up to </think>; then the model is forced to answer after </think>.
    extended = first.prompt_ids[len(prompt):] + kept_before_close(prompts, "Let me check: 1 + 1 = 2.\n</think>")
    close = prompts.encode(separator(tokenizer, extended) + prompts.close_text)
    assert answer1.prompt_ids == prompt + extended + close
    assert answer1.params.n == 3 and not answer1.params.stop
    # The first continuation closed its thinking, so the second one appends the marker again.
    assert second.prompt_ids == prompt + extended + prompts.encode(separator(tokenizer, extended) + "Wait")
    assert tokenizer.decode(answer2.prompt_ids[len(prompt):]).count("</think>") == 1

    assert [r["extension"] for r in rows] == [1, 2]
    assert rows[0]["closed"] and not rows[1]["closed"]  # the second one ran out of tokens
    assert rows[0]["thinking_tokens"] == len(extended) and rows[0]["added_tokens"] == len(extended) - len(thinking)
    extended = second.prompt_ids[len(prompt):] + prompts.encode(" It is 2 indeed, so")  # cut by length: kept whole
    assert answer2.prompt_ids == prompt + extended + prompts.encode(separator(tokenizer, extended) + prompts.close_text)
    assert rows[1]["thinking_tokens"] == len(extended)
    assert all(r["n_samples"] == 3 and r["n_correct"] == 3 and r["j_hat"] == 1.0 for r in rows)


def kept_before_close(prompts: PromptBuilder, text: str) -> list[int]:
    """The ids of a continuation before the token where `</think>` starts."""
    ids, char = prompts.encode(text), text.index("</think>")
    return next(ids[:end] for end in range(len(ids), -1, -1) if len(prompts.tokenizer.decode(ids[:end])) <= char)


def test_a_trace_cut_by_the_budget_continues_without_a_marker(tokenizer):
    prompts = PromptBuilder(tokenizer, "chatml_think")
    trace = dict(make_trace(tokenizer, prompts), thinking_end=-1, finish_reason="length")
    trace["completion_ids"] = prompts.encode("I add the numbers and")
    backend = ScriptedBackend(prompts, [" get 2.\n</think>"], "\\boxed{3}")
    rows = extrapolate_traces([trace], {"p1": "2"}, backend, prompts, ExtrapolateConfig(times=1), SampleConfig(max_tokens=16),
                              ProverConfig(k=2), default_grader())
    assert backend.requests[0].prompt_ids == trace["prompt_ids"] + trace["completion_ids"]
    assert rows[0]["n_correct"] == 0 and rows[0]["j_hat"] == 0.0 and rows[0]["closed"]


def test_extrapolation_curve_starts_from_the_sampled_traces():
    prover = [
        {"trace_id": "a", "prefix_index": 0, "prefix_tokens": 0, "mean_answer_tokens": 4.0, "j_hat": 0.0},
        {"trace_id": "a", "prefix_index": 1, "prefix_tokens": 20, "mean_answer_tokens": 4.0, "j_hat": 0.5},
        {"trace_id": "b", "prefix_index": 0, "prefix_tokens": 0, "mean_answer_tokens": 6.0, "j_hat": 1.0},
    ]
    extended = [
        {"trace_id": "a", "extension": 1, "thinking_tokens": 40, "mean_answer_tokens": 4.0, "j_hat": 1.0},
        {"trace_id": "b", "extension": 1, "thinking_tokens": 30, "mean_answer_tokens": 2.0, "j_hat": 0.5},
    ]
    assert extrapolation_curve(prover, extended) == [
        {"extensions": 0, "traces": 2, "mean_tokens": 15.0, "accuracy": 0.75},  # (24 + 6) / 2, (0.5 + 1) / 2
        {"extensions": 1, "traces": 2, "mean_tokens": 38.0, "accuracy": 0.75},  # (44 + 32) / 2
    ]
