"""Batch grading with a hard per-answer time limit, from any thread.

math-verify's own timeout uses SIGALRM, which only works in a process's main thread, and
cannot stop C-level arithmetic. Here answers are judged in worker processes: each answer
gets `timeout_seconds` from the moment the worker could start it; a worker that misses the
deadline is killed and replaced, its answer is recorded as `unparsed` with reason `timeout`,
and the rest of its batch goes back in the queue. Identical (gold, answer) pairs are judged
once (an LRU cache), and answers are extracted in the parent, so a thousand completions
that all end in `\\boxed{2}` cost one judgement.
"""

from __future__ import annotations

import atexit
import json
import os
import subprocess
import sys
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from pathlib import Path
from typing import Sequence

from pipeline.grading.equivalence import CORRECT, MAX_ANSWER_CHARS, UNPARSED
from pipeline.grading.extraction import DEFAULT_FALLBACKS, extract_answer
from pipeline.grading.worker import judge_task

STARTUP_SECONDS = 30.0  # allowance for a new worker's imports, on top of the per-answer limit
_WORKER_MAIN = "from pipeline.grading.worker import main; main()"
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


@dataclass(frozen=True)
class Grade:
    """One graded answer. `reason` says why a grade is `unparsed`:
    no_answer, too_long, unparsed_gold, unparsed_prediction, timeout or error."""

    grade: str
    extracted: str | None
    reason: str | None = None

    @property
    def correct(self) -> bool:
        return self.grade == CORRECT


@dataclass
class GraderStats:
    requested: int = 0
    judged: int = 0  # sent to a worker (the rest came from the cache or needed no judgement)
    timeouts: int = 0
    workers_replaced: int = 0
    slowest_seconds: float = 0.0


@dataclass
class _Worker:
    process: subprocess.Popen
    pending: deque = field(default_factory=deque)
    deadline: float = 0.0
    buffer: bytes = b""
    started: bool = False  # has said it is ready (imports done)

    def send(self, batch: list) -> None:
        self.process.stdin.write((json.dumps(batch) + "\n").encode())
        self.process.stdin.flush()

    def receive(self) -> list[list]:
        """Complete replies available now (call when stdout is readable); EOFError if it died."""
        chunk = os.read(self.process.stdout.fileno(), 1 << 16)
        if not chunk:
            raise EOFError
        self.buffer += chunk
        *lines, self.buffer = self.buffer.split(b"\n")
        return [json.loads(line) for line in lines if line]


class Grader:
    """Grades answers against gold answers; use as a context manager or call `close()`.

    `workers=0` judges in the calling process (no hard limit: for debugging only).
    """

    def __init__(
        self,
        workers: int = 2,
        timeout_seconds: float = 3.0,
        fallbacks: Sequence[str] = DEFAULT_FALLBACKS,
        cache_size: int = 100_000,
        chunk_size: int = 16,
    ) -> None:
        if workers < 0 or timeout_seconds <= 0 or chunk_size <= 0:
            raise ValueError("grader needs workers >= 0, timeout_seconds > 0 and chunk_size > 0")
        self.workers, self.timeout_seconds, self.fallbacks = workers, timeout_seconds, tuple(fallbacks)
        self.chunk_size, self.cache_size = chunk_size, cache_size
        self.stats = GraderStats()
        self._cache: OrderedDict[tuple, tuple[str, str | None]] = OrderedDict()
        self._pool: list[_Worker] = []
        self._lock = threading.Lock()

    # -- public API ---------------------------------------------------------------------

    def grade_completions(self, golds: Sequence[str], completions: Sequence[str]) -> list[Grade]:
        """Extract each completion's final answer (after `</think>`) and grade it."""
        answers = [extract_answer(completion, self.fallbacks) for completion in completions]
        return self.grade_answers(golds, answers)

    def grade_answers(self, golds: Sequence[str], answers: Sequence[str | None]) -> list[Grade]:
        """Grade answers that are already extracted (None means there was no answer)."""
        if len(golds) != len(answers):
            raise ValueError(f"{len(golds)} gold answers for {len(answers)} predictions")
        tasks = [("grade", str(gold), answer) for gold, answer in zip(golds, answers)]
        verdicts = self._judge_all(tasks)
        return [Grade(grade, answer, reason) for (grade, reason), answer in zip(verdicts, answers)]

    def check_golds(self, golds: Sequence[str]) -> list[str | None]:
        """None for each gold answer that parses, else the reason (`unparsed_gold`, `timeout`)."""
        verdicts = self._judge_all([("gold", str(gold), None) for gold in golds])
        return [None if grade == CORRECT else reason for grade, reason in verdicts]

    def close(self) -> None:
        for worker in self._pool:
            try:
                worker.process.stdin.close()  # end of input: the worker exits
                worker.process.wait(timeout=2)
            except (OSError, subprocess.TimeoutExpired):
                worker.process.kill()
                worker.process.wait()
            worker.process.stdout.close()
        self._pool = []

    def __enter__(self) -> "Grader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- internals ----------------------------------------------------------------------

    def _judge_all(self, tasks: list[tuple[str, str, str | None]]) -> list[tuple[str, str | None]]:
        with self._lock:
            self.stats.requested += len(tasks)
            verdicts: list[tuple[str, str | None] | None] = [None] * len(tasks)
            todo: dict[tuple, list[int]] = {}
            for index, task in enumerate(tasks):
                kind, gold, answer = task
                if kind == "grade" and answer is None:
                    verdicts[index] = (UNPARSED, "no_answer")
                elif kind == "grade" and len(answer) > MAX_ANSWER_CHARS:
                    verdicts[index] = (UNPARSED, "too_long")
                elif task in self._cache:
                    self._cache.move_to_end(task)
                    verdicts[index] = self._cache[task]
                else:
                    todo.setdefault(task, []).append(index)
            unique = list(todo)
            judged = self._judge_in_process(unique) if self.workers == 0 else self._judge_in_workers(unique)
            self.stats.judged += len(unique)
            for task, verdict in zip(unique, judged):
                self._remember(task, verdict)
                for index in todo[task]:
                    verdicts[index] = verdict
            return verdicts  # type: ignore[return-value]

    def _remember(self, task: tuple, verdict: tuple[str, str | None]) -> None:
        self._cache[task] = verdict
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def _judge_in_process(self, tasks: list[tuple]) -> list[tuple[str, str | None]]:
        return [judge_task(*task) for task in tasks]

    def _spawn(self) -> _Worker:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [_PACKAGE_ROOT, os.environ.get("PYTHONPATH")])))
        command = [sys.executable, "-c", _WORKER_MAIN, str(0.8 * self.timeout_seconds)]
        # Own process group: a terminal's Ctrl-C is the caller's to handle, not the workers'. A
        # worker exits when its stdin closes, so it never outlives the caller, even after SIGKILL.
        process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd=_PACKAGE_ROOT, process_group=0
        )
        return _Worker(process)

    def _replace(self, worker: _Worker) -> _Worker:
        worker.process.kill()
        worker.process.wait()
        worker.process.stdin.close()
        worker.process.stdout.close()
        self.stats.workers_replaced += 1
        fresh = self._spawn()
        self._pool[self._pool.index(worker)] = fresh
        return fresh

    def _judge_in_workers(self, tasks: list[tuple]) -> list[tuple[str, str | None]]:
        if not tasks:
            return []
        while len(self._pool) < self.workers:
            self._pool.append(self._spawn())
        results: list[tuple[str, str | None] | None] = [None] * len(tasks)
        queue = deque(range(len(tasks)))
        busy: list[_Worker] = []
        while queue or busy:
            for worker in self._pool:
                if worker.pending or not queue:
                    continue
                size = max(1, min(self.chunk_size, -(-len(queue) // len(self._pool))))
                chunk = [queue.popleft() for _ in range(min(size, len(queue)))]
                worker.send([(i, *tasks[i]) for i in chunk])
                worker.pending.extend(chunk)
                # Until a fresh worker says it is ready (imports done), its start-up is allowed for.
                worker.deadline = time.monotonic() + self.timeout_seconds + self._startup_allowance(worker)
                busy.append(worker)
            timeout = max(0.0, min(w.deadline for w in busy) - time.monotonic())
            ready = wait([w.process.stdout for w in busy], timeout=timeout)
            for worker in list(busy):
                if worker.process.stdout in ready:
                    try:
                        replies = worker.receive()
                    except (EOFError, OSError):  # the worker died (e.g. out of memory)
                        self._fail_first(worker, results, queue, "error")
                        busy.remove(worker)
                        continue
                    for reply in replies:
                        if reply == ["ready"]:
                            worker.started = True
                            worker.deadline = time.monotonic() + self.timeout_seconds
                            continue
                        task_index, grade, reason, seconds = reply
                        worker.pending.remove(task_index)
                        results[task_index] = (grade, reason)
                        self.stats.timeouts += reason == "timeout"
                        self.stats.slowest_seconds = max(self.stats.slowest_seconds, seconds)
                        worker.deadline = time.monotonic() + self.timeout_seconds
                    if not worker.pending:
                        busy.remove(worker)
                elif time.monotonic() >= worker.deadline:
                    self._fail_first(worker, results, queue, "timeout")
                    busy.remove(worker)
        return results  # type: ignore[return-value]

    def _startup_allowance(self, worker: _Worker) -> float:
        return 0.0 if worker.started else STARTUP_SECONDS

    def _fail_first(self, worker: _Worker, results: list, queue: deque, reason: str) -> None:
        """Record the worker's current answer as unparsed, requeue the rest, replace the worker."""
        stuck = worker.pending.popleft()
        if not worker.started:
            reason = "error"  # the worker never came up: not the answer's fault
        results[stuck] = (UNPARSED, reason)
        self.stats.timeouts += reason == "timeout"
        self.stats.slowest_seconds = max(self.stats.slowest_seconds, self.timeout_seconds)
        queue.extendleft(reversed(worker.pending))
        self._replace(worker)


_default: Grader | None = None


def default_grader() -> Grader:
    """A process-wide grader with default settings (for one-off calls and notebooks)."""
    global _default
    if _default is None:
        _default = Grader(workers=1)
        atexit.register(_default.close)
    return _default


def grade_completion(gold: str, completion: str) -> Grade:
    """Grade one completion with the default grader."""
    return default_grader().grade_completions([gold], [completion])[0]


def grade_answer(gold: str, answer: str | None) -> Grade:
    """Grade one already extracted answer with the default grader."""
    return default_grader().grade_answers([gold], [answer])[0]
