"""The method's rules for what a correct trace, a prefix and a target are (DESIGN.md, section 1).

Each rule is checked against values worked out by hand: literal token ids of SmolLM2's
tokenizer (`<think>\\n` = [44, 17400, 46, 198], `</think>` = [9617, 17400, 46],
`</think>\\n\\n` = [9617, 17400, 46, 1116], EOS `<|im_end|>` = 2) and literal target texts.
No model is run: generation is a stub that returns fixed completions.
"""

from __future__ import annotations

from collections import Counter

import pytest

from pipeline.backends.base import Completion, GenerationStats
from pipeline.config import EpisodesConfig, SampleConfig, SelectConfig
from pipeline.episodes import split_episodes, split_token_ids, window_cuts
from pipeline.grading import CORRECT, INCORRECT, Grade, Grader
from pipeline.metrics import round_metrics
from pipeline.prover import Prefix, _Job, _row, build_prefixes, closing_ids
from pipeline.sampling import sample_traces
from pipeline.selection import mrt_target_ids, select_mrt, select_star
from pipeline.templates import PromptBuilder
from pipeline.tokens import decode

THINK_OPEN = [44, 17400, 46, 198]
CLOSE = [9617, 17400, 46]
CLOSE_BLANK = [9617, 17400, 46, 1116]
EOS = 2
THINKING = "I add.\n\nWait, check.\n\nDone.\n"
ANSWER = "\n\nThe answer is \\boxed{2}."


@pytest.fixture(scope="module")
def prompts(tokenizer):
    return PromptBuilder(tokenizer, "chatml_think")


@pytest.fixture(scope="module")
def grader():
    with Grader(workers=1) as pool:
        yield pool


class StubBackend:
    """Returns the given completion texts (encoded) for every request, finished as given."""

    def __init__(self, prompts, outputs: list[tuple[str, str]]):
        self.prompts, self.outputs, self.stats = prompts, outputs, GenerationStats()

    def generate(self, requests, on_done=None):
        return [[Completion(self.prompts.encode(text), text, reason) for text, reason in self.outputs] for _ in requests]

    def close(self):
        pass


@pytest.fixture
def trace_of(prompts, grader):
    """A traces-table row for a completion text, through the real sampling and grading code."""

    def make(text: str, finish: str = "stop", trace_id: str = "p1-r0-s0", index: int = 0) -> dict:
        rows = sample_traces([{"problem_id": "p1", "problem": "Calculate 1 + 1.", "answer": "2"}],
                             StubBackend(prompts, [(text, finish)]), prompts, SampleConfig(), 0, "stub", grader=grader)
        return dict(rows[0], trace_id=trace_id, sample_index=index)

    return make


def prover_row(trace, j, prefix_tokens, forced, answer_ids, j_hat=1.0, n_episodes=2):
    return {"trace_id": trace["trace_id"], "problem_id": "p1", "prefix_index": j, "n_episodes": n_episodes,
            "prefix_tokens": prefix_tokens, "forced": forced, "n_samples": 4, "n_correct": int(4 * j_hat),
            "n_unparsed": 0, "n_length_cut": 0, "j_hat": j_hat, "j_low": 0.0, "j_high": 1.0, "mean_answer_tokens": 9.0,
            "correct_answer": "x" if answer_ids else None, "correct_answer_ids": answer_ids}


def score(trace, best, j_direct=0.0):
    return {trace["trace_id"]: {"best_prefix": best, "n_episodes": 2, "j_best": 1.0, "j_direct": j_direct,
                                "total_gain": 1.0, "regret": 0.5}}


PROBLEMS = {"p1": {"problem_id": "p1", "problem": "Calculate 1 + 1."}}


# Rule 1: a sampled trace is correct only if it closed its thinking exactly once and its answer part is right.

def test_well_formed_trace_is_graded_on_its_answer_part(prompts, trace_of):
    trace = trace_of(THINKING + "</think>" + ANSWER)
    assert (trace["grade"], trace["correct"], trace["extracted"], trace["grade_reason"]) == (CORRECT, True, "2", None)
    assert trace["answer_text"] == ANSWER
    boxed_in_thinking = trace_of("It is \\boxed{2}.\n</think>\n\nI am not sure.")
    assert not boxed_in_thinking["correct"] and boxed_in_thinking["extracted"] is None


def test_two_closing_tags_are_never_correct(prompts, trace_of):
    trace = trace_of("A.\n</think>\\boxed{7} Hmm.\n</think>\\boxed{2}")
    assert (trace["grade"], trace["correct"], trace["extracted"], trace["grade_reason"]) == (
        "unparsed", False, None, "multiple_think_close")
    assert trace["answer_text"] is None


def test_unclosed_trace_with_a_box_in_its_thinking_is_not_correct(prompts, trace_of):
    trace = trace_of("So the sum is \\boxed{2}. Let me check", finish="length")
    assert (trace["grade"], trace["correct"], trace["extracted"], trace["grade_reason"]) == (
        "unparsed", False, None, "unclosed_thinking")
    assert trace["thinking_end"] == -1
    ended = trace_of("The sum is \\boxed{2}.", finish="stop")  # EOS without ever closing
    assert not ended["correct"] and ended["grade_reason"] == "unclosed_thinking"


def test_a_second_thinking_block_in_the_answer_is_not_correct(prompts, trace_of):
    trace = trace_of("A.\n</think>\n\n<think>\nmore \\boxed{2}")
    assert not trace["correct"] and trace["grade_reason"] == "think_open_in_answer"


def test_round_metrics_count_malformed_traces(prompts, trace_of):
    traces = [trace_of(THINKING + "</think>" + ANSWER),
              trace_of("\\boxed{2}", finish="length"),
              trace_of("A</think>\\boxed{7}</think>\\boxed{2}")]
    metrics = round_metrics(traces, [], [], [], "star", Counter(not_correct=2), [])
    assert metrics["unclosed_thinking"] == 1 and metrics["multiple_think_close"] == 1
    assert metrics["unparsed_by_reason"] == {"multiple_think_close": 1, "unclosed_thinking": 1}
    assert metrics["accuracy"] == pytest.approx(1 / 3) and metrics["selection_drops"] == {"not_correct": 2}


# Rule 2: STaR keeps closed, once-closed, correct traces that ended on their own; the target is their own ids.

def test_star_target_is_the_traces_own_ids(prompts, trace_of):
    trace = trace_of(THINKING + "</think>" + ANSWER)
    (row,) = select_star([trace], {}, PROBLEMS, prompts, SelectConfig())
    assert row["completion_ids"] == THINK_OPEN + list(trace["completion_ids"]) + [EOS]
    empty = trace_of("</think>" + ANSWER)  # correct, but nothing thought: STaR has no prefix to fall back to
    assert empty["correct"] and select_star([empty], {}, PROBLEMS, prompts, SelectConfig()) == []
    assert len(select_star([empty], {}, PROBLEMS, prompts, SelectConfig(empty_thinking="keep"))) == 1
    assert row["completion"] == "<think>\n" + THINKING + "</think>" + ANSWER


def test_star_never_keeps_malformed_or_cut_traces(prompts, trace_of):
    drops = Counter()
    traces = [
        trace_of("A.\n</think>\\boxed{7} Hmm.\n</think>\\boxed{2}", trace_id="a", index=0),
        trace_of("So \\boxed{2}. Let me", finish="length", trace_id="b", index=1),
        # Closed and correct, but the budget cut the answer part: EOS must not be appended to it.
        trace_of("A.\n</think>\n\nThe answer is \\boxed{2}. Also", finish="length", trace_id="c", index=2),
    ]
    assert traces[2]["correct"]
    assert select_star(traces, {}, PROBLEMS, prompts, SelectConfig(), drops) == []
    assert drops == Counter(not_correct=2, answer_cut=1)


def test_star_does_not_trust_a_stale_correct_flag(prompts, trace_of):
    trace = dict(trace_of("\\boxed{2}</think>\\boxed{7}</think>\\boxed{2}"), correct=True)
    drops = Counter()
    assert select_star([trace], {}, PROBLEMS, prompts, SelectConfig(), drops) == []
    assert drops == Counter(not_well_formed=1)


# Rule 3: prefixes and targets at j* = 0, 0 < j* < E and j* = E, closed and unclosed.

def _episode_ends(prompts, trace):
    from pipeline.prover import thinking_ids

    episodes, _ = split_token_ids(prompts.tokenizer, thinking_ids(trace), EpisodesConfig(min_gap_paragraphs=0))
    return [e.token_end for e in episodes]


def test_closed_trace_targets_by_hand(prompts, tokenizer, trace_of):
    trace = trace_of(THINKING + "</think>" + ANSWER)
    own = list(trace["completion_ids"])
    assert own[:5] == [57, 803, 30, 198, 198]  # 'I', ' add', '.', '\n', '\n': episode 1 ends after the blank line
    thinking_len = trace["thinking_end"]
    assert decode(tokenizer, own[:thinking_len]) == THINKING and own[thinking_len : thinking_len + 3] == CLOSE
    assert _episode_ends(prompts, trace) == [5, thinking_len]
    answer = prompts.encode("The answer is \\boxed{2}.")

    # j* = 0: empty thinking, `</think>\n\n`, the answer, EOS.
    j0 = prover_row(trace, 0, 0, True, answer)
    assert mrt_target_ids(trace, j0, prompts, False) == THINK_OPEN + CLOSE_BLANK + answer + [EOS]
    # 0 < j* < E: the thinking already ends in a blank line, so no separator; `</think>\n\n` follows.
    j1 = prover_row(trace, 1, 5, True, answer)
    assert mrt_target_ids(trace, j1, prompts, False) == THINK_OPEN + own[:5] + CLOSE_BLANK + answer + [EOS]
    with_stop = mrt_target_ids(trace, j1, prompts, True)
    assert decode(tokenizer, with_stop) == "<think>\nI add.\n\n" + prompts.forced_stop_text + "The answer is \\boxed{2}.<|im_end|>"
    # j* = E: the trace's own ids through its own `</think>`, nothing inserted (not `Done.\n\n</think>`).
    own_answer = own[thinking_len + 3 :]
    jE = prover_row(trace, 2, thinking_len, False, own_answer)
    target = mrt_target_ids(trace, jE, prompts, False)
    assert target == THINK_OPEN + own + [EOS]  # the model's own answer after its own context: the STaR target
    assert decode(tokenizer, target) == "<think>\n" + THINKING + "</think>" + ANSWER + "<|im_end|>"

    # The prover's prompts are the same ids as the targets' prefixes.
    prefixes = build_prefixes(trace, [5, thinking_len], prompts)
    assert [list(p.tail_ids) for p in prefixes] == [prompts.forced_stop_ids, prompts.forced_stop_ids, CLOSE]
    assert [p.thinking_tokens for p in prefixes] == [0, 5, thinking_len] and [p.forced for p in prefixes] == [True, True, False]


def test_unclosed_trace_targets_by_hand(prompts, tokenizer, trace_of):
    cut = "I add.\n\nWait, check.\n\nDone"
    trace = trace_of(cut, finish="length")
    own = list(trace["completion_ids"])
    answer = prompts.encode("The answer is \\boxed{2}.")
    # j* = E of an unclosed trace: all its ids, then a blank line (it ends mid-line) and `</think>\n\n`.
    jE = prover_row(trace, 2, len(own), False, answer)
    target = mrt_target_ids(trace, jE, prompts, False)
    assert target[4 : 4 + len(own)] == own
    assert decode(tokenizer, target) == "<think>\n" + cut + "\n\n</think>\n\nThe answer is \\boxed{2}.<|im_end|>"
    assert closing_ids(trace, len(own), False, prompts) == prompts.encode("\n\n</think>\n\n")
    # 0 < j* < E and j* = 0 cut the same way as in a closed trace.
    assert mrt_target_ids(trace, prover_row(trace, 1, 5, True, answer), prompts, False) == (
        THINK_OPEN + own[:5] + CLOSE_BLANK + answer + [EOS])
    assert mrt_target_ids(trace, prover_row(trace, 0, 0, True, answer), prompts, False) == THINK_OPEN + CLOSE_BLANK + answer + [EOS]


def test_answer_ids_ending_in_eos_get_no_second_eos(prompts, trace_of):
    trace = trace_of(THINKING + "</think>" + ANSWER)
    answer = prompts.encode("The answer is \\boxed{2}.") + [EOS]
    own = list(trace["completion_ids"])
    assert mrt_target_ids(trace, prover_row(trace, 1, 5, True, answer), prompts, False) == THINK_OPEN + own[:5] + CLOSE_BLANK + answer


def test_multiple_close_trace_is_never_a_star_target_and_mrt_keeps_one_block(prompts, tokenizer, trace_of):
    trace = trace_of("A.\n\nWait, B.\n</think>\\boxed{7} Hmm.\n</think>\\boxed{2}")
    answer = prompts.encode("\n\n\\boxed{2}")
    rows = [prover_row(trace, 0, 0, True, answer, j_hat=0.0), prover_row(trace, 1, trace["thinking_end"], False, answer)]
    (row,) = select_mrt([trace], rows, score(trace, 1), PROBLEMS, prompts, SelectConfig())
    # SmolLM2 wrote `>\\` as one token here: the prefix ends at the tag, the answer's `\\` is not in it.
    assert tokenizer.convert_ids_to_tokens(trace["completion_ids"][trace["thinking_end"] + 2]) == ">\\"
    assert closing_ids(trace, trace["thinking_end"], False, prompts) == CLOSE
    assert row["completion"] == "<think>\nA.\n\nWait, B.\n</think>\n\n\\boxed{2}"
    assert select_star([trace], {}, PROBLEMS, prompts, SelectConfig()) == []


# Rule 4: the solution must have ended on its own.

def _job(prompts, completions, grades):
    job = _Job({"trace_id": "t", "problem_id": "p1"}, Prefix(1, 5, (), True), 2, [])
    job.completions, job.grades = completions, grades
    return job


def test_length_cut_correct_answer_is_never_the_solution(prompts):
    from pipeline.config import ProverConfig

    cut = Completion(prompts.encode("\\boxed{2} and so"), "\\boxed{2} and so", "length")
    whole = Completion(prompts.encode("So \\boxed{2}."), "So \\boxed{2}.", "stop")
    wrong = Completion(prompts.encode("\\boxed{3}"), "\\boxed{3}", "stop")
    row = _row(_job(prompts, [cut, wrong, whole], [Grade(CORRECT, "2"), Grade(INCORRECT, "3"), Grade(CORRECT, "2")]), ProverConfig())
    assert (row["n_correct"], row["n_length_cut"], row["correct_answer"]) == (2, 1, "So \\boxed{2}.")
    assert row["correct_answer_ids"] == whole.token_ids
    only_cut = _row(_job(prompts, [cut, wrong], [Grade(CORRECT, "2"), Grade(INCORRECT, "3")]), ProverConfig())
    assert (only_cut["n_correct"], only_cut["n_length_cut"], only_cut["correct_answer_ids"]) == (1, 1, None)


def test_mrt_drops_a_best_prefix_whose_correct_answers_were_all_cut(prompts, trace_of):
    trace = trace_of(THINKING + "</think>" + ANSWER)
    rows = [prover_row(trace, 0, 0, True, None, j_hat=0.0), prover_row(trace, 1, 5, True, None, j_hat=0.5)]
    drops = Counter()
    assert select_mrt([trace], rows, score(trace, 1), PROBLEMS, prompts, SelectConfig(), drops) == []
    assert drops == Counter(no_complete_answer=1)


# Rule 6: j* = 0 (empty thinking) follows `select.empty_thinking`.

def test_empty_thinking_rule(prompts, trace_of):
    trace = trace_of(THINKING + "</think>" + ANSWER)
    answer = prompts.encode("The answer is \\boxed{2}.")
    end = trace["thinking_end"]
    rows = [prover_row(trace, 0, 0, True, answer, j_hat=1.0), prover_row(trace, 1, 5, True, answer, j_hat=0.5),
            prover_row(trace, 2, end, False, answer, j_hat=0.75)]
    drops = Counter()
    assert select_mrt([trace], rows, score(trace, 0), PROBLEMS, prompts, SelectConfig(empty_thinking="drop"), drops) == []
    assert drops == Counter(empty_thinking=1)
    (kept,) = select_mrt([trace], rows, score(trace, 0), PROBLEMS, prompts, SelectConfig(empty_thinking="keep"))
    assert kept["completion_ids"] == THINK_OPEN + CLOSE_BLANK + answer + [EOS] and kept["best_prefix"] == 0
    metrics = round_metrics([trace], [], [], [kept], "mrt")
    assert metrics["empty_thinking_targets"] == 1
    # best_nonempty (the default): the earliest highest J among j >= 1 is j = 2 (0.75 > 0.5), the whole trace.
    (cut,) = select_mrt([trace], rows, score(trace, 0), PROBLEMS, prompts, SelectConfig())
    assert cut["best_prefix"] == 2 and cut["j_best"] == 0.75
    assert cut["completion_ids"] == THINK_OPEN + list(trace["completion_ids"][: end + 3]) + answer + [EOS]
    assert round_metrics([trace], [], [], [cut], "mrt")["empty_thinking_targets"] == 0


# Rule 10: window cuts land at line or sentence ends where the window has one.

def _chars(text):
    return list(range(len(text) + 1))


def test_window_cuts_snap_back_to_sentence_and_line_ends():
    text = "One two three. Four five six seven eight nine ten eleven"
    # Window 20: the sentence end after "three." (char 14) lies in the window's second half [10, 20].
    # The next window [14, 34] holds no line or sentence end: a hard cut at 34, then at 54.
    assert window_cuts(text, _chars(text), 20, 45) == [(14, "window"), (34, "window"), (54, "window")]
    lines = "abcdef\nghijklm\nnopqrstuvwxyz"
    assert [c for c, _ in window_cuts(lines, _chars(lines), 8, 45)] == [7, 15, 23]  # after each "\n", then hard
    early = "Hi. abcdefghijklmnop"  # the only sentence end (char 3) is in the first half of [0, 10]
    assert [c for c, _ in window_cuts(early, _chars(early), 10, 45)] == [10]
    decimal = "It is 2.5 and 3.75 more"  # `.` inside a number is no sentence end
    assert [c for c, _ in window_cuts(decimal, _chars(decimal), 10, 45)] == [10, 20]


def test_window_fallback_episodes_end_at_sentence_ends_with_real_tokens(tokenizer):
    from pipeline.tokens import token_char_starts

    text = "We need the sum. First add the ones. Then the tens are added too. So we get the total now."
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    episodes, rule = split_episodes(decode(tokenizer, ids), token_char_starts(tokenizer, ids), EpisodesConfig(window_tokens=8))
    assert rule == "window"
    pieces = [decode(tokenizer, ids[e.token_start : e.token_end]) for e in episodes]
    assert "".join(pieces) == text
    assert pieces == ["We need the sum.", " First add the ones.", " Then the tens are added too.", " So we get the total now."]


def test_an_unscored_round_selects_by_correctness_and_leaves_no_stale_scores(tmp_path, tiny_model_dir, trace_of):
    """STaR's round 1 under `scored_arms: [mrt]`: select and export run without prover tables, write
    no scores (none made up), remove an earlier scored run's progress tables and J plot, and the
    prover stages refuse the round."""
    import json

    from pipeline.config import ConfigError, ModelConfig, Params
    from pipeline.dense_progress import REWARDS, STEPWISE
    from pipeline.io import ShardedWriter, read_table, write_json, write_table
    from pipeline.models import prepare_base_model
    from pipeline.tables import PROBLEMS, TRACES, from_rows
    from stages import export, prove, score, select
    from stages.common import layout

    params = Params(data_dir=str(tmp_path / "data"), metrics_dir=str(tmp_path / "metrics"))
    paths = layout(params, "star")
    prepare_base_model(ModelConfig(name_or_path=str(tiny_model_dir)), paths.policy(1))
    write_table(from_rows([{"problem_id": "p1", "source": "test", "split": "train", "problem": "Calculate 1 + 1.",
                            "answer": "2", "source_index": 0, "provenance": "{}"}], PROBLEMS), paths.problems_split("train"))
    rows = [dict(trace_of(THINKING + "</think>" + ANSWER), round=1),
            dict(trace_of(THINKING + "</think>\n\n\\boxed{3}", trace_id="p1-r1-s1", index=1), round=1)]
    assert [r["correct"] for r in rows] == [True, False]
    writer = ShardedWriter(paths.traces(1), {"test": 1})
    writer.write(0, from_rows(rows, TRACES))
    writer.complete(1)
    # What an earlier run with STaR scored left behind.
    write_table(from_rows([], TRACES), paths.exports(1) / STEPWISE)
    write_table(from_rows([], TRACES), paths.exports(1) / REWARDS)
    write_json([{"prefix_index": 0, "mean_j": 0.5, "traces": 2}], paths.plots(1) / "j_by_prefix.json")

    assert "not scored" in select.run(params, 1, "star")
    metrics = json.loads(paths.metrics(1).read_text())
    assert metrics["scored"] is False and metrics["traces_kept"] == 1
    assert all(metrics[key] is None for key in ("mean_regret", "mean_progress", "mean_j_best", "best_prefix_zero"))
    assert not (paths.plots(1) / "j_by_prefix.json").exists()
    selected = read_table(paths.selected(1)).to_pylist()
    assert [s["trace_id"] for s in selected] == [rows[0]["trace_id"]]
    assert selected[0]["regret"] is None and selected[0]["j_best"] is None  # no score made up

    assert "no progress tables" in export.run(params, 1, "star")
    assert sorted(p.name for p in paths.exports(1).iterdir()) == ["messages.parquet", "prompt_completion.parquet",
                                                                 "sft_tokenized.parquet"]
    for stage in (prove, score):
        with pytest.raises(ConfigError, match="round 1 of arm star is not scored"):
            stage.run(params, 1, "star")
