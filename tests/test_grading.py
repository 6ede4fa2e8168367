"""Grader machinery: extraction edge cases, the worker pool's hard limits, adversarial input,
property-based checks, and `mrt grade`. The hand-checked equivalence table is in
test_grading_cases.py."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.grading import (
    CORRECT,
    INCORRECT,
    UNPARSED,
    Grader,
    answer_part,
    extract_answer,
    grade_completion,
    last_boxed,
    plain_to_latex,
    readings,
)

LIMIT = 2.0


@pytest.fixture(scope="module")
def grader():
    with Grader(workers=2, timeout_seconds=LIMIT) as pool:
        pool.grade_answers(["1"], ["1"])  # start-up (imports) outside the timed checks
        yield pool


def test_last_boxed_counts_nested_braces():
    assert last_boxed(r"so \boxed{\frac{\sqrt{3}}{2}} done") == r"\frac{\sqrt{3}}{2}"
    assert last_boxed(r"\boxed{1} then \fbox{2}") == "2"
    assert last_boxed(r"\boxed{1} then \boxed{2") == "1"  # unbalanced last box
    assert last_boxed("no box") is None


def test_only_the_answer_part_is_graded():
    assert answer_part("<think>\\boxed{2}</think> nothing") == " nothing"
    assert grade_completion("2", "<think>\n\\boxed{2}\n</think>\n\nI do not know.").reason == "no_answer"
    assert grade_completion("2", "<think>\n\\boxed{3}\n</think>\n\n\\boxed{2}").grade == CORRECT


def test_fallbacks_are_parameters():
    text = "Working...\nAnswer: 12"
    assert extract_answer(text) == "12"
    assert extract_answer(text, fallbacks=["final_answer_is"]) is None
    assert extract_answer("so the final answer is 7.", fallbacks=[]) is None


def test_plain_text_rewrites_are_string_rules():
    assert plain_to_latex("C(10, 5)") == r"\binom{10}{5}"
    assert plain_to_latex("sqrt(2)/2") == r"\sqrt{2}/2"
    assert plain_to_latex(r"\sqrt{2}") == r"\sqrt{2}"  # LaTeX is left alone
    assert readings(r"10\%") == (r"\frac{10}{100}", "10")


def test_grader_batches_dedups_and_keeps_order(grader):
    before = grader.stats.judged
    golds = ["2", "0.5", "7", "2", "abc?"]
    completions = [r"\boxed{2}", r"\boxed{\frac{1}{2}}", "I give up", r"\boxed{2}", r"\boxed{abc?}"]
    grades = grader.grade_completions(golds, completions)
    assert [g.grade for g in grades] == [CORRECT, CORRECT, UNPARSED, CORRECT, UNPARSED]
    assert [g.reason for g in grades] == [None, None, "no_answer", None, "unparsed_gold"]
    assert grader.stats.judged - before <= 3  # ("2", "2") judged once; "I give up" needs no judgement
    assert grader.grade_answers(["3"], ["4"])[0].grade == INCORRECT


def test_check_golds_reports_unparseable(grader):
    assert grader.check_golds(["252", "C(10, 5)", "abc?", ""]) == [None, None, "unparsed_gold", "unparsed_gold"]


ADVERSARIAL = {
    "megabyte of text": "<think>x</think>" + "lorem ipsum " * 90_000 + r"\boxed{3}",
    "megabyte inside a box": r"\boxed{" + "1+" * 500_000 + "1}",
    "10,000 nested braces": r"\boxed{" + "{" * 10_000 + "3" + "}" * 10_000 + "}",
    "10,000 unclosed boxes": r"\boxed{" * 10_000,
    "tower of powers": r"\boxed{10^{10^{10^{10}}}}",
    "huge polynomial power": r"\boxed{(x+1)^{100000} - (x+1)^{99999}}",
    "fallback on a megabyte line": "answer is " * 100_000,
}


@pytest.mark.parametrize("name", list(ADVERSARIAL))
def test_adversarial_input_never_hangs(grader, name):
    started = time.perf_counter()
    [grade] = grader.grade_completions(["3"], [ADVERSARIAL[name]])
    elapsed = time.perf_counter() - started
    assert grade.grade in (CORRECT, INCORRECT, UNPARSED)
    assert elapsed < LIMIT + 1.5, f"{name} took {elapsed:.1f} s"
    if name == "megabyte of text":
        assert grade.grade == CORRECT  # the box at the end is still found


def test_hard_limit_kills_a_stuck_worker_and_requeues_the_rest():
    with Grader(workers=1, timeout_seconds=1.0) as pool:
        pool.grade_answers(["1"], ["1"])
        stuck = pool._pool[0].process
        os.kill(stuck.pid, signal.SIGSTOP)  # a worker that no timer can wake
        started = time.perf_counter()
        grades = pool.grade_answers(["2", "3", "4"], ["2", "3", "5"])
        assert time.perf_counter() - started < 15
        assert grades[0].reason == "timeout" and grades[0].grade == UNPARSED
        assert [g.grade for g in grades[1:]] == [CORRECT, INCORRECT]
        assert pool.stats.workers_replaced == 1 and stuck.poll() is not None


def test_a_dead_worker_is_replaced():
    with Grader(workers=1, timeout_seconds=2.0) as pool:
        pool.grade_answers(["1"], ["1"])
        os.kill(pool._pool[0].process.pid, signal.SIGKILL)
        grades = pool.grade_answers(["2", "3"], ["2", "3"])
        assert grades[0].reason == "error" and grades[1].grade == CORRECT


def test_time_limit_holds_outside_the_main_thread(grader):
    results = []
    worker = threading.Thread(target=lambda: results.append(grader.grade_answers(["1"], [r"10^{10^{10^{10}}}"])))
    started = time.perf_counter()
    worker.start()
    worker.join(timeout=30)
    assert results and results[0][0].grade in (UNPARSED, INCORRECT)
    assert time.perf_counter() - started < LIMIT + 1.5


latex_fragments = st.sampled_from(
    ["\\boxed{", "\\fbox{", "{", "}", "\\frac{", "\\sqrt", "^", "_", "x", "=", "3", "0.5", "\\%", "</think>",
     "answer is ", "\nAnswer: ", "$", "\\text{", "\\left(", "\\right)", ",", "\\pi", "\\infty", "\\begin{pmatrix}", "&", "\\\\"]
)
completions = st.one_of(st.text(max_size=300), st.lists(latex_fragments, max_size=60).map("".join))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(gold=st.one_of(st.sampled_from(["2", "\\frac{1}{2}", "x^2", "[1,2)", "C"]), st.text(max_size=20)), completion=completions)
def test_grader_never_raises_and_never_exceeds_its_limit(grader, gold, completion):
    [grade] = grader.grade_completions([gold], [completion])
    assert grade.grade in (CORRECT, INCORRECT, UNPARSED)
    assert (grade.reason is None) == (grade.grade != UNPARSED)
    assert grader.stats.slowest_seconds <= LIMIT


@settings(max_examples=300, deadline=None)
@given(completions)
def test_extraction_never_raises(completion):
    answer = extract_answer(completion)
    assert answer is None or isinstance(answer, str)


def test_mrt_grade_cli(tmp_path):
    from typer.testing import CliRunner

    from stages.cli import app

    source = tmp_path / "pairs.jsonl"
    rows = [
        {"gold": "2", "prediction": "<think>hm</think> \\boxed{2}"},
        {"gold": 0.5, "prediction": "The final answer is \\frac{1}{2}."},
        {"gold": "abc?", "prediction": "\\boxed{abc?}"},
        {"gold": "3", "prediction": None},
    ]
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "graded.jsonl"
    result = CliRunner().invoke(app, ["grade", str(source), "-o", str(out)])
    assert result.exit_code == 0, result.output
    graded = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["grade"] for r in graded] == [CORRECT, CORRECT, UNPARSED, UNPARSED]
    assert [r["grade_reason"] for r in graded] == [None, None, "unparsed_gold", "no_answer"]

    missing = CliRunner().invoke(app, ["grade", str(source), "--gold-column", "answer"])
    assert missing.exit_code == 2 and "no column 'answer'" in missing.output
    (tmp_path / "bad.jsonl").write_text('{"gold": "1"}\n{oops\n')
    bad = CliRunner().invoke(app, ["grade", str(tmp_path / "bad.jsonl")])
    assert bad.exit_code == 2 and "line 2" in bad.output


def test_first_answer_of_a_fresh_worker_gets_the_same_limit():
    """The limit starts when the worker is ready, so a hang in the first answer is cut short too."""
    with Grader(workers=1, timeout_seconds=1.0) as pool:
        started = time.perf_counter()
        [grade] = pool.grade_answers(["1"], ["9^{9^{9^{9}}}"])  # C-level big-integer work
        assert grade.grade == UNPARSED and grade.reason == "timeout"
        assert time.perf_counter() - started < 1.0 + 5.0  # limit + worker start-up
