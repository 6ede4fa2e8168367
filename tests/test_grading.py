"""Grader machinery: extraction edge cases, the worker pool's hard limits, adversarial input,
property-based checks, and `mrt grade`. The hand-checked equivalence table is in
test_grading_cases.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
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
    GraderUnavailableError,
    answer_part,
    extract_answer,
    grade_completion,
    last_boxed,
    plain_to_latex,
    readings,
)
from pipeline.grading.pool import BACKSTOP_FACTOR, BACKSTOP_SECONDS

LIMIT = 1.0  # CPU seconds per answer
SLOW = r"(x+1)^{3000} - (x+1)^{2999}"  # sympy expands it for far longer than any limit here
BACKSTOP = BACKSTOP_FACTOR * LIMIT + BACKSTOP_SECONDS  # wall-clock bound per attempt at an answer


@pytest.fixture(scope="module")
def grader():
    with Grader(workers=2, timeout_seconds=LIMIT) as pool:
        pool.grade_answers(["1", "2"], ["x^0", "2x^0"])  # start-up (imports) outside the timed checks
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
    assert elapsed < 2 * BACKSTOP, f"{name} took {elapsed:.1f} s"  # a timeout is judged twice
    assert grader.stats.slowest_seconds <= LIMIT  # CPU seconds: the limit itself holds under any load
    if name == "megabyte of text":
        assert grade.grade == CORRECT  # the box at the end is still found


@pytest.mark.slow  # kills and replaces a worker process
def test_hard_limit_kills_a_stuck_worker_and_requeues_the_rest():
    """A stopped worker uses no CPU: the wall-clock backstop kills it; its answer, retried by a
    fresh worker alone, gets its real grade, and the rest of its batch is requeued."""
    with Grader(workers=1, timeout_seconds=1.0) as pool:
        pool.grade_answers(["1"], ["x^0"])  # plain numbers never reach a worker: start one
        stuck = pool._pool[0].process
        os.kill(stuck.pid, signal.SIGSTOP)  # a worker that no timer can wake
        started = time.perf_counter()
        grades = pool.grade_answers(["2", "3", "4"], [r"\frac{4}{2}", r"\frac{6}{2}", r"\frac{10}{2}"])
        assert time.perf_counter() - started < BACKSTOP_FACTOR * 1.0 + BACKSTOP_SECONDS + 30  # + a fresh worker's start
        assert [g.grade for g in grades] == [CORRECT, CORRECT, INCORRECT]
        assert pool.stats.retried == 1 and pool.stats.timeouts == 0
        assert pool.stats.workers_replaced == 1 and stuck.poll() is not None


@pytest.mark.slow  # waits out real timeouts
def test_a_timeout_is_retried_alone_before_it_is_recorded():
    with Grader(workers=2, timeout_seconds=1.0) as pool:
        grades = pool.grade_answers(["1", "3", "3"], [SLOW, "3", "4"])
        assert [(g.grade, g.reason) for g in grades] == [(UNPARSED, "timeout"), (CORRECT, None), (INCORRECT, None)]
        assert pool.stats.retried == 1 and pool.stats.timeouts == 1


def test_too_complex_answers_cost_no_worker_time(grader):
    before = grader.stats.judged
    grades = grader.grade_answers(["1", "1", "2", "1024"], [r"10^{10^{10}}", r"(x+1)^{100000}", r"2^{2017}", r"2^{2^{3+1}}"])
    assert [(g.grade, g.reason) for g in grades][:2] == [(UNPARSED, "too_complex")] * 2
    assert [g.grade for g in grades[2:]] == [INCORRECT, INCORRECT]  # big but computable: judged
    assert grader.stats.judged - before == 2


@pytest.mark.slow  # kills and replaces a worker process
def test_a_worker_killed_while_idle_is_replaced_and_no_answer_is_charged():
    """Killed between batches (the OOM killer, a stray signal), it held no answer: the next batch
    goes whole to a fresh worker and every answer gets its real grade."""
    with Grader(workers=1, timeout_seconds=2.0) as pool:
        pool.grade_answers(["1"], ["x^0"])
        dead = pool._pool[0].process
        os.kill(dead.pid, signal.SIGKILL)
        dead.wait()  # the kill has landed before the next batch
        grades = pool.grade_answers(["2", "3"], [r"\frac{4}{2}", r"\frac{6}{2}"])
        assert [(g.grade, g.reason) for g in grades] == [(CORRECT, None), (CORRECT, None)]
        assert pool.stats.workers_replaced == 1


@pytest.mark.slow  # kills and replaces a worker process
def test_a_worker_that_dies_between_the_check_and_the_write_is_replaced(monkeypatch):
    """The write to a dead worker's pipe fails (EPIPE): the batch goes to a fresh worker, whole."""
    with Grader(workers=1, timeout_seconds=2.0) as pool:
        pool.grade_answers(["1"], ["x^0"])
        dead = pool._pool[0].process
        os.kill(dead.pid, signal.SIGKILL)
        dead.wait()
        monkeypatch.setattr(dead, "poll", lambda: None)  # it still looks alive when the batch is sent
        grades = pool.grade_answers(["2", "3"], [r"\frac{4}{2}", r"\frac{7}{2}"])
        assert [(g.grade, g.reason) for g in grades] == [(CORRECT, None), (INCORRECT, None)]
        assert pool.stats.workers_replaced == 1


@pytest.mark.slow  # kills and replaces a worker process
def test_a_worker_that_dies_while_judging_charges_that_answer_and_requeues_the_rest():
    """Death mid-judgement (out of memory on that answer) is recorded as `error` for the answer
    it was on; the rest of its batch is judged by a fresh worker."""
    with Grader(workers=1, timeout_seconds=60.0) as pool:
        pool.grade_answers(["1"], ["x^0"])  # started, imports done
        worker = pool._pool[0]
        results = []
        judging = threading.Thread(target=lambda: results.append(pool.grade_answers(["1", "3"], [SLOW, r"\frac{6}{2}"])))
        judging.start()
        deadline = time.monotonic() + 30
        while list(worker.pending) != [0, 1] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert list(worker.pending) == [0, 1], "the batch never reached the worker"
        time.sleep(0.5)  # it is expanding the slow answer, the first of its batch
        os.kill(worker.process.pid, signal.SIGKILL)
        judging.join(timeout=60)
        [grades] = results
        assert [(g.grade, g.reason) for g in grades] == [(UNPARSED, "error"), (CORRECT, None)]
        assert pool.stats.workers_replaced == 1 and pool.stats.timeouts == 0


def test_workers_that_cannot_start_stop_the_run_instead_of_grading_every_answer_error(monkeypatch, tmp_path):
    """A broken environment (math-verify missing, a bad PYTHONPATH) would otherwise record every
    answer as `unparsed`/`error`, which reads like a model that never answers."""
    import pipeline.grading.pool as pool_module
    from typer.testing import CliRunner

    from stages.cli import app

    monkeypatch.setattr(pool_module, "_WORKER_MAIN", "import sys; sys.exit(3)")
    with Grader(workers=2, timeout_seconds=1.0) as pool:
        with pytest.raises(GraderUnavailableError, match=r"3 grading workers in a row .* exit code 3"):
            pool.grade_answers(["x^2"] * 4, ["x^2", "x^3", "x^4", "x^5"])
        assert pool.stats.timeouts == 0
    source = tmp_path / "pairs.jsonl"
    source.write_text(json.dumps({"gold": "x^2", "prediction": "\\boxed{x^2}"}) + "\n")
    result = CliRunner().invoke(app, ["grade", str(source), "--workers", "1"])
    assert result.exit_code == 2 and "during start-up" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "pairs.graded.parquet").exists()


def test_a_worker_that_fails_to_start_once_is_replaced_and_charges_no_answer(monkeypatch, tmp_path):
    import pipeline.grading.pool as pool_module

    monkeypatch.setenv("MRT_TEST_FIRST_START", str(tmp_path / "started-once"))
    flaky = ("import os, sys, pathlib; mark = pathlib.Path(os.environ['MRT_TEST_FIRST_START']); first = not mark.exists(); "
             "mark.touch(); first and sys.exit(1); from pipeline.grading.worker import main; main()")
    monkeypatch.setattr(pool_module, "_WORKER_MAIN", flaky)
    with Grader(workers=1, timeout_seconds=2.0) as pool:
        grades = pool.grade_answers(["x^2", "x^2"], ["x^2", "x^3"])
        assert [(g.grade, g.reason) for g in grades] == [(CORRECT, None), (INCORRECT, None)]
        assert pool.stats.workers_replaced == 1


def test_time_limit_holds_outside_the_main_thread(grader):
    results = []
    worker = threading.Thread(target=lambda: results.append(grader.grade_answers(["1"], [r"10^{10^{10^{10}}}"])))
    started = time.perf_counter()
    worker.start()
    worker.join(timeout=30)
    assert results and results[0][0].grade in (UNPARSED, INCORRECT)
    assert time.perf_counter() - started < 2 * BACKSTOP
    assert grader.stats.slowest_seconds <= LIMIT


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


@pytest.mark.slow  # starts `mrt grade` processes
def test_mrt_grade_cli(tmp_path):
    """Both modes of `mrt grade` on another pipeline's file: whole completions, and bare answers."""
    from typer.testing import CliRunner

    from stages.cli import app

    source = tmp_path / "pairs.jsonl"
    rows = [
        {"gold": "2", "prediction": "<think>hm</think> \\boxed{2}"},
        {"gold": 0.5, "prediction": "The final answer is \\frac{1}{2}."},
        {"gold": "abc?", "prediction": "\\boxed{abc?}"},
        {"gold": "3", "prediction": None},
        {"gold": "$28\\%$", "prediction": "<think>2 + 26</think>So it is 28 percent."},
        {"gold": "4", "prediction": "<think>The answer is 4.</think> I am not sure."},
    ]
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "graded.jsonl"
    result = CliRunner().invoke(app, ["grade", str(source), "-o", str(out), "--workers", "1"])
    assert result.exit_code == 0, result.output
    graded = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["grade"] for r in graded] == [CORRECT, CORRECT, UNPARSED, UNPARSED, CORRECT, UNPARSED]
    assert [r["grade_reason"] for r in graded] == [None, None, "unparsed_gold", "no_answer", None, "no_answer"]
    assert graded[4]["extracted"] == "28\\%"

    answers = tmp_path / "answers.parquet"  # another pipeline's extracted answers, other column names
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"answer": ["7", "\\frac{3}{4}", "the answer is 10", "I do not know"],
                             "pred": ["7.0", "0.75", "11", "5"]}), answers)
    result = CliRunner().invoke(app, ["grade", str(answers), "--mode", "answer", "--workers", "1", "--gold-column", "answer",
                                      "--prediction-column", "pred", "-o", str(tmp_path / "a.jsonl")])
    assert result.exit_code == 0, result.output
    graded = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert [r["grade"] for r in graded] == [CORRECT, CORRECT, INCORRECT, UNPARSED]
    assert graded[3]["grade_reason"] == "unparsed_gold"  # prose with no answer in it is not a gold
    in_answer_mode = CliRunner().invoke(app, ["grade", str(source), "--mode", "answer", "--workers", "1", "-o", str(out)])
    assert in_answer_mode.exit_code == 0  # the <think> text is not cut off: the whole text is the answer
    assert [json.loads(line)["grade"] for line in out.read_text().splitlines()][0] == CORRECT  # only one box

    missing = CliRunner().invoke(app, ["grade", str(source), "--gold-column", "answer"])
    assert missing.exit_code == 2 and "no column 'answer'" in missing.output
    (tmp_path / "bad.jsonl").write_text('{"gold": "1"}\n{oops\n')
    bad = CliRunner().invoke(app, ["grade", str(tmp_path / "bad.jsonl")])
    assert bad.exit_code == 2 and "line 2" in bad.output
    wrong_mode = CliRunner().invoke(app, ["grade", str(source), "--mode", "whole"])
    assert wrong_mode.exit_code == 2


@pytest.mark.slow  # starts fresh worker processes
def test_first_answer_of_a_fresh_worker_gets_the_same_limit():
    """The limit starts when the worker is ready, so a hang in the first answer is cut short too:
    it is stopped on its CPU time, well before the wall-clock backstop."""
    with Grader(workers=1, timeout_seconds=1.0) as pool:
        started = time.perf_counter()
        [grade] = pool.grade_answers(["1"], [SLOW])
        assert grade.grade == UNPARSED and grade.reason == "timeout"
        assert pool.stats.retried == 1 and pool.stats.slowest_seconds <= 1.0  # CPU seconds
        assert time.perf_counter() - started < 2 * (BACKSTOP_FACTOR * 1.0 + BACKSTOP_SECONDS)


# Answers that each take 0.03-0.6 s of CPU to judge: under a wall-clock limit of 1.5 s with three
# busy processes sharing two cores, the slow ones ran out of time; in CPU time they never do.
LOAD_CASES = [
    ("x^2/4 + y^2/3 = 1", "x^2/16 + y^2/12 = 1/4"),
    ("2x+4y-3=0", r"y=-\frac{1}{2}x+\frac{3}{4}"),
    (r"-2 \le x \le 7", "[-2, 7]"),
    (r"(-\infty,-1)\cup(2,\infty)", r"x<-1 \text{ or } x>2"),
    (r"x \in [-2, 7]", r"-2 < x \le 7"),
    (r"\{(2,2),(6,2)\}", "(6, 2), (2, 2)"),
    (r"\tan^2(y)+1", r"\sec^2(y)"),
    ("(a-b)^3", "a^3-3a^2b+3ab^2-b^3"),
    (r"\frac{1}{x}+\frac{1}{y}", r"\frac{x+y}{xy}"),
    ("34x+45y-20z+100=0", "-34x-45y+20z-100=0"),
    (r"1 - \frac{1}{\mathrm{e}}", "1-e^{-1}"),
    (r"\sin^2 x+\cos^2 x", "1"),
]


def _grade_load_cases() -> tuple[list[tuple[str, str | None]], int]:
    with Grader(workers=1, timeout_seconds=1.5, cache_size=0) as pool:
        grades = pool.grade_answers([g for g, _ in LOAD_CASES], [p for _, p in LOAD_CASES])
        return [(g.grade, g.reason) for g in grades], pool.stats.timeouts + pool.stats.retried


@pytest.mark.slow  # grading workers under a CPU hog
def test_grades_do_not_depend_on_machine_load():
    """The same answers graded on a quiet machine and beside busy processes get the same grades."""
    quiet, quiet_timeouts = _grade_load_cases()
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(3)]
    try:
        busy, busy_timeouts = _grade_load_cases()
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
    assert busy == quiet
    assert quiet_timeouts == busy_timeouts == 0
    assert [grade for grade, _ in quiet].count(CORRECT) == len(LOAD_CASES) - 1  # (-2, 7] is not [-2, 7]
