"""The grading worker: a separate Python process that judges answers under a soft CPU-time limit.

Started by `pipeline.grading.pool` with the soft limit in CPU seconds as its argument. It reads
one JSON array of tasks `[task_id, kind, gold, predicted]` per line on stdin and writes one JSON
result `[task_id, grade, reason, cpu_seconds]` per task on stdout. JSON, not pickle: nothing a
worker receives can execute code. The limit is counted in this process's CPU time (an
`ITIMER_PROF` timer raising inside sympy's Python code), not in wall time, so a busy machine
does not turn a slow-but-fine answer into `timeout`: the same answer gets the same grade under
any load. The pool's hard limit, also in this process's CPU time, kills the process for what
the timer cannot interrupt (C-level arithmetic).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

from pipeline.grading.equivalence import UNPARSED, judge, parse_gold


# Typical answers judged once at start-up: the LaTeX parser (ANTLR) builds its prediction tables
# lazily, and the first few hundred parses of a process cost several times the later ones. Paying
# that before the worker says it is ready keeps it out of every answer's time limit.
WARMUP = [
    (r"\frac{3}{4}", "0.75"), (r"\dfrac{7}{2}", r"\frac{14}{4}"), (r"2\sqrt{3}", r"\sqrt{12}"),
    (r"\frac{\pi}{3}", r"\frac{2\pi}{6}"), ("x^2 + 3x + 2", "(x+1)(x+2)"), ("x = 3", "3"),
    (r"\{1, 2\}", "2, 1"), ("(1, -2)", "(1,-2)"), (r"[1, 2)", r"1 \le x < 2"), (r"(-\infty, 3)", "x < 3"),
    (r"10\%", "0.1"), (r"30^\circ", "30"), (r"5\text{ cm}", "5"), (r"\begin{pmatrix}1&2\\3&4\end{pmatrix}", r"\begin{pmatrix}1&2\\3&4\end{pmatrix}"),
    (r"\frac{2}{3}", r"\frac{3}{2}"), (r"\sqrt{2}/2", r"\frac{1}{\sqrt{2}}"), ("e^{2}", r"\ln 8"), (r"\text{(B)}", "B"),
    (r"-\frac{1}{2}", r"-0.5"), (r"4\sqrt{5}", r"\sqrt{80}"), (r"\frac{5\pi}{4}", r"\frac{5}{4}\pi"), ("x^2 + 2x + 5", "5 + 2x + x^2"),
]


class _SoftDeadline(BaseException):
    """Raised by the timer; a BaseException so math-verify's `except Exception` cannot swallow it."""


def _on_timer(signum, frame):  # noqa: ARG001 - signal handler signature
    raise _SoftDeadline


def judge_task(kind: str, gold: str, predicted: str | None) -> tuple[str, str | None]:
    """`grade`: judge a prediction; `gold`: only check that the gold answer parses."""
    if kind == "gold":
        return ("correct", None) if parse_gold(gold) else (UNPARSED, "unparsed_gold")
    return judge(gold, predicted or "")


def judge_with_deadline(kind: str, gold: str, predicted: str | None, soft_seconds: float) -> tuple[str, str | None]:
    """Judge one task within `soft_seconds` of CPU time; must run in a main thread (SIGPROF)."""
    try:
        signal.setitimer(signal.ITIMER_PROF, soft_seconds)
        return judge_task(kind, gold, predicted)
    except _SoftDeadline:
        return UNPARSED, "timeout"
    except Exception:  # a grading bug or odd input must not take the worker down
        return UNPARSED, "error"
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)


def main() -> None:
    try:
        _serve()
    except BrokenPipeError:  # the caller is gone (killed): nothing to answer, exit quietly
        os._exit(0)


def _serve() -> None:
    soft_seconds = float(sys.argv[-1])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    signal.signal(signal.SIGPROF, _on_timer)
    sys.setrecursionlimit(10_000)
    for gold, predicted in WARMUP:
        judge_with_deadline("grade", gold, predicted, soft_seconds)
    sys.stdout.write(json.dumps(["ready"]) + "\n")  # imports done: per-answer deadlines start now
    sys.stdout.flush()
    for line in sys.stdin:
        for task_id, kind, gold, predicted in json.loads(line):
            started = time.process_time()
            try:
                grade, reason = judge_with_deadline(kind, gold, predicted, soft_seconds)
            except _SoftDeadline:  # the timer fired between the judgement and its reset
                grade, reason = UNPARSED, "timeout"
            reply = [task_id, grade, reason, time.process_time() - started]
            sys.stdout.write(json.dumps(reply) + "\n")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
