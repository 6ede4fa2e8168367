"""The grading worker: a separate Python process that judges answers under a soft deadline.

Started by `pipeline.grading.pool` with the soft limit in seconds as its argument. It reads one JSON array of tasks
`[task_id, kind, gold, predicted]` per line on stdin and writes one JSON result
`[task_id, grade, reason, seconds]` per task on stdout. JSON, not pickle: nothing a worker
receives can execute code. A soft deadline (an interval timer raising inside sympy's
Python code) turns most slow answers into `timeout` without losing the process; the pool's
hard deadline kills the process for what the timer cannot interrupt (C-level arithmetic).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

from pipeline.grading.equivalence import UNPARSED, judge, parse_gold


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
    """Judge one task; must run in a main thread (it uses SIGALRM)."""
    try:
        signal.setitimer(signal.ITIMER_REAL, soft_seconds)
        return judge_task(kind, gold, predicted)
    except _SoftDeadline:
        return UNPARSED, "timeout"
    except Exception:  # a grading bug or odd input must not take the worker down
        return UNPARSED, "error"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def main() -> None:
    try:
        _serve()
    except BrokenPipeError:  # the caller is gone (killed): nothing to answer, exit quietly
        os._exit(0)


def _serve() -> None:
    soft_seconds = float(sys.argv[-1])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    signal.signal(signal.SIGALRM, _on_timer)
    sys.setrecursionlimit(10_000)
    sys.stdout.write(json.dumps(["ready"]) + "\n")  # imports done: per-answer deadlines start now
    sys.stdout.flush()
    for line in sys.stdin:
        for task_id, kind, gold, predicted in json.loads(line):
            started = time.perf_counter()
            try:
                grade, reason = judge_with_deadline(kind, gold, predicted, soft_seconds)
            except _SoftDeadline:  # the timer fired between the judgement and its reset
                grade, reason = UNPARSED, "timeout"
            reply = [task_id, grade, reason, time.perf_counter() - started]
            sys.stdout.write(json.dumps(reply) + "\n")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
