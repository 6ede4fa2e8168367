"""Budget forcing past the sampling budget: what is appended, what is kept, what is measured."""

from __future__ import annotations

from pipeline.backends.base import Completion, GenerationStats
import pytest

from pipeline.config import EpisodesConfig, ExtrapolateConfig, ProverConfig, SampleConfig
from pipeline.extrapolation import (
    continuation_markers,
    drop_unfinished_paragraph,
    extension_points,
    extrapolate_traces,
    extrapolation_curve,
)
from pipeline.grading import default_grader
from pipeline.prover import separator
from pipeline.sampling import request_seed
from pipeline.templates import PromptBuilder
from test_prover_selection import make_trace


class ScriptedBackend:
    """Answers continuation requests (they carry a stop string) and answer requests from scripts,
    recording every request so the test can read the exact prompts."""

    def __init__(self, prompts: PromptBuilder, continuations: list[str], answer: str):
        self.prompts, self.continuations, self.answer = prompts, list(continuations), answer
        self.requests: list = []
        self.calls: list[list] = []  # the requests of each generate call
        self.stats = GenerationStats()

    def generate(self, requests, on_done=None):
        self.calls.append(list(requests))
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


def test_continuations_rotate_the_markers_and_force_answers(tokenizer):
    prompts = PromptBuilder(tokenizer, "chatml_think")
    trace = dict(make_trace(tokenizer, prompts), finish_reason="stop")
    thinking = trace["completion_ids"][: trace["thinking_end"]]
    backend = ScriptedBackend(prompts, ["Let me check: 1 + 1 = 2.\n</think>", " It is 2 indeed, so", " Yes.\n</think>"],
                              "The answer is \\boxed{2}.")
    config = ExtrapolateConfig(times=3, tokens=20, markers=["Wait", "But wait"])
    rows = extrapolate_traces([trace], {"p1": "2"}, backend, prompts, config, SampleConfig(max_tokens=32),
                              ProverConfig(k=3, max_answer_tokens=16), default_grader())

    # The answers after continuation e go out in one call with continuation e + 1 (same thinking).
    (first,), (second, answer1), (third, answer2), (answer3,) = backend.calls
    prompt = trace["prompt_ids"]
    assert first.prompt_ids == prompt + thinking + prompts.encode(separator(tokenizer, thinking) + "Wait")
    assert first.params.stop == ("</think>",) and first.params.max_tokens == 20 and first.params.n == 1
    # The continuation is kept up to </think>; then the model is forced to answer after </think>.
    extended = first.prompt_ids[len(prompt):] + kept_before_close(prompts, "Let me check: 1 + 1 = 2.\n</think>")
    close = prompts.encode(separator(tokenizer, extended) + prompts.close_text)
    assert answer1.prompt_ids == prompt + extended + close
    assert answer1.params.n == 3 and not answer1.params.stop
    # Each answer keeps the seed of its own extension, whichever call carries it.
    assert [a.params.seed for a in (answer1, answer2, answer3)] == [
        request_seed(ProverConfig().seed, e, f"{trace['trace_id']}#extend") for e in (1, 2, 3)]
    # The second continuation gets the next marker of the rotation.
    assert second.prompt_ids == prompt + extended + prompts.encode(separator(tokenizer, extended) + "But wait")
    assert tokenizer.decode(answer2.prompt_ids[len(prompt):]).count("</think>") == 1

    assert [r["extension"] for r in rows] == [1, 2, 3]
    assert tokenizer.decode(answer3.prompt_ids[len(third.prompt_ids):]).startswith(" Yes.")
    assert rows[0]["closed"] and not rows[1]["closed"]  # the second one ran out of tokens
    assert rows[0]["thinking_tokens"] == len(extended) and rows[0]["added_tokens"] == len(extended) - len(thinking)
    # Cut by length without a paragraph break: kept whole, then a blank line before the next marker.
    extended = second.prompt_ids[len(prompt):] + prompts.encode(" It is 2 indeed, so")
    assert answer2.prompt_ids == prompt + extended + prompts.encode(separator(tokenizer, extended) + prompts.close_text)
    assert rows[1]["thinking_tokens"] == len(extended)
    assert third.prompt_ids == prompt + extended + prompts.encode("\n\nWait")  # the rotation starts over
    assert all(r["n_samples"] == 3 and r["n_correct"] == 3 and r["j_hat"] == 1.0 for r in rows)


def kept_before_close(prompts: PromptBuilder, text: str) -> list[int]:
    """The ids of a continuation before the token where `</think>` starts."""
    ids, char = prompts.encode(text), text.index("</think>")
    return next(ids[:end] for end in range(len(ids), -1, -1) if len(prompts.tokenizer.decode(ids[:end])) <= char)


def test_a_length_cut_continuation_drops_its_unfinished_paragraph(tokenizer):
    prompts = PromptBuilder(tokenizer, "chatml_think")
    trace = dict(make_trace(tokenizer, prompts), finish_reason="stop")
    thinking = trace["completion_ids"][: trace["thinking_end"]]
    backend = ScriptedBackend(prompts, [" I check again.\n\nSo the sum is", " It is 2.\n</think>"], "\\boxed{2}")
    rows = extrapolate_traces([trace], {"p1": "2"}, backend, prompts, ExtrapolateConfig(times=2, tokens=40),
                              SampleConfig(max_tokens=16), ProverConfig(k=1), default_grader(), markers=["Wait", "Alternatively"])
    (first,), (second, answer1), (_,) = backend.calls
    prompt = trace["prompt_ids"]
    piece = prompts.encode(" I check again.\n\nSo the sum is")  # the model's own ids: "\n", "\n" here
    kept_piece = next(piece[:end] for end in range(len(piece) + 1) if tokenizer.decode(piece[:end]) == " I check again.\n\n")
    kept = first.prompt_ids[len(prompt):] + kept_piece
    assert tokenizer.decode(kept).endswith("Wait I check again.\n\n")
    assert answer1.prompt_ids == prompt + kept + prompts.encode(prompts.close_text)  # no unfinished "So the sum is"
    assert second.prompt_ids == prompt + kept + prompts.encode("Alternatively")
    assert not rows[0]["closed"] and rows[0]["thinking_tokens"] == len(kept)
    assert rows[0]["added_tokens"] == len(kept) - len(thinking)


def test_a_trace_cut_by_the_budget_is_kept_whole_and_the_marker_opens_a_new_paragraph(tokenizer):
    prompts = PromptBuilder(tokenizer, "chatml_think")
    trace = dict(make_trace(tokenizer, prompts), thinking_end=-1, finish_reason="length")
    trace["completion_ids"] = prompts.encode("I add the numbers.\n\nThen I carry the")
    backend = ScriptedBackend(prompts, [" get 2.\n</think>"], "\\boxed{3}")
    rows = extrapolate_traces([trace], {"p1": "2"}, backend, prompts, ExtrapolateConfig(times=1), SampleConfig(max_tokens=16),
                              ProverConfig(k=2), default_grader())
    assert backend.requests[0].prompt_ids == trace["prompt_ids"] + trace["completion_ids"] + prompts.encode("\n\nWait")
    assert rows[0]["n_correct"] == 0 and rows[0]["j_hat"] == 0.0 and rows[0]["closed"]


def test_drop_unfinished_paragraph_keeps_a_piece_without_a_break(tokenizer):
    prompts = PromptBuilder(tokenizer, "chatml_think")
    head, piece = prompts.encode("Done.\n\n"), prompts.encode("Wait, no break here")
    assert drop_unfinished_paragraph(tokenizer, head + piece, len(head)) == head + piece
    # A break before piece_start is not looked at: only the piece's own last paragraph is dropped.
    two = prompts.encode(" A.\n\nB")
    assert drop_unfinished_paragraph(tokenizer, head + two, len(head)) == head + two[:-1]  # the ids of " A.\n\n"
    assert tokenizer.decode(two[:-1]) == " A.\n\n"


def test_markers_default_to_the_episode_rule():
    assert continuation_markers(ExtrapolateConfig(), EpisodesConfig()) == EpisodesConfig().markers
    assert continuation_markers(ExtrapolateConfig(markers=["Hmm"]), EpisodesConfig()) == ["Hmm"]


def test_regret_past_the_sampling_budget_by_hand():
    prover = [
        {"trace_id": "a", "prefix_index": 0, "prefix_tokens": 0, "mean_answer_tokens": 4.0, "j_hat": 0.0},
        {"trace_id": "a", "prefix_index": 1, "prefix_tokens": 20, "mean_answer_tokens": 4.0, "j_hat": 0.5},
        {"trace_id": "b", "prefix_index": 0, "prefix_tokens": 0, "mean_answer_tokens": 6.0, "j_hat": 1.0},
    ]
    extended = [
        {"trace_id": "a", "extension": 1, "thinking_tokens": 40, "mean_answer_tokens": 4.0, "j_hat": 1.0},
        {"trace_id": "b", "extension": 1, "thinking_tokens": 30, "mean_answer_tokens": 2.0, "j_hat": 0.5},
    ]
    points = extension_points(prover, extended, sample_budget=32, extension_tokens=16)
    # a, C0 = 32: (0,0) (4,0) (24,.5), flat: 0 + 5 + 4 = 9. C0 = 48: + (44,1): 5 + 15 + 4 = 24.
    assert points["a"][0]["regret"] == pytest.approx(1 - 9 / 32) and points["a"][1]["regret"] == pytest.approx(1 - 24 / 48)
    # b, C0 = 32: (0,0) (6,1), flat: 3 + 26 = 29. C0 = 48: + (32,.5): 3 + 19.5 + 8 = 30.5.
    assert points["b"][0]["regret"] == pytest.approx(1 - 29 / 32) and points["b"][1]["regret"] == pytest.approx(1 - 30.5 / 48)
    assert points["b"][1]["budget_tokens"] == 48
    assert extrapolation_curve(points) == [
        {"extensions": 0, "traces": 2, "mean_tokens": 15.0, "accuracy": 0.75, "budget_tokens": 32,
         "regret": round((1 - 9 / 32 + 1 - 29 / 32) / 2, 6)},  # tokens (24 + 6) / 2, J (0.5 + 1) / 2
        {"extensions": 1, "traces": 2, "mean_tokens": 38.0, "accuracy": 0.75, "budget_tokens": 48,
         "regret": round((0.5 + 1 - 30.5 / 48) / 2, 6)},  # tokens (44 + 32) / 2
    ]
