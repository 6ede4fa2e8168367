"""Batch grading with a per-answer limit in CPU time, from any thread.

math-verify's own timeout uses SIGALRM, which only works in a process's main thread, and
cannot stop C-level arithmetic. Here answers are judged in worker processes, and each answer
gets `timeout_seconds` of the worker's own CPU time (read from /proc), so a busy machine does
not change a grade: a soft timer in the worker stops slow Python code at 80 % of the limit, and
a worker whose CPU time passes the limit is killed and replaced (C-level arithmetic). A generous
wall-clock backstop only catches a worker that gets no CPU at all (stopped). An answer that
timed out is judged once more by a worker running alone before it is recorded as `timeout`.
The rest of a killed worker's batch goes back in the queue. Identical (gold, answer) pairs are
judged once (an LRU cache), and answers are extracted in the parent, so a thousand completions
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

from pipeline.grading.equivalence import CORRECT, MAX_ANSWER_CHARS, UNPARSED, plain_numbers_verdict, too_complex
from pipeline.grading.extraction import DEFAULT_FALLBACKS, extract_answer
from pipeline.grading.worker import judge_task

STARTUP_SECONDS = 30.0  # allowance for a new worker's imports, on top of the per-answer limit
SOFT_FRACTION = 0.8  # the worker's own timer stops Python-level work at this share of the limit
BACKSTOP_FACTOR, BACKSTOP_SECONDS = 4.0, 5.0  # wall-clock backstop: 4 x limit + 5 s without CPU progress
POLL_SECONDS = 0.1  # how often a busy worker's CPU time is read
FAILED_STARTS = 3  # workers in a row that exit before they are ready: the environment is broken
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_WORKER_MAIN = "from pipeline.grading.worker import main; main()"
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


def cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system) a process has used, from /proc; None where /proc has no entry."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            data = handle.read()
    except OSError:
        return None
    fields = data[data.rfind(b")") + 2 :].split()  # the command name may hold spaces
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


class GraderUnavailableError(ChildProcessError):
    """Grading workers exit during start-up, before any answer reaches them: grading every answer
    `error` would look like a model that never answers, so the run stops instead."""


@dataclass(frozen=True)
class Grade:
    """One graded answer. `reason` says why a grade is `unparsed`:
    no_answer, too_long, too_complex (`equivalence.too_complex`), unparsed_gold, unparsed_prediction, timeout (over the CPU-time limit
    twice, the second time alone) or error (the worker died while judging it)."""

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
    timeouts: int = 0  # recorded as `timeout` (after the retry)
    retried: int = 0  # timed out once and judged again by a worker alone
    workers_replaced: int = 0
    slowest_seconds: float = 0.0  # CPU seconds of the slowest judgement


@dataclass
class _Worker:
    process: subprocess.Popen
    pending: deque = field(default_factory=deque)
    deadline: float = 0.0  # wall-clock backstop, pushed back while the worker makes CPU progress
    cpu_start: float | None = None  # the worker's CPU time when its current answer started
    cpu_seen: float | None = None  # its CPU time at the last poll
    buffer: bytes = b""
    started: bool = False  # has said it is ready (imports done)

    def start_clock(self, limit: float, startup: float = 0.0) -> None:
        """The current answer starts now: its CPU time counts from here."""
        self.cpu_start = self.cpu_seen = cpu_seconds(self.process.pid)
        self.deadline = time.monotonic() + BACKSTOP_FACTOR * limit + BACKSTOP_SECONDS + startup

    def over_limit(self, limit: float) -> bool:
        """Past the CPU-time limit on its current answer, or stalled past the wall-clock backstop.

        A worker that a busy machine slows down still gains CPU time, so the backstop moves
        with it; only one that gets no CPU at all (stopped, swapping) runs into it."""
        used = cpu_seconds(self.process.pid)
        if used is not None and self.cpu_seen is not None and used > self.cpu_seen:
            self.cpu_seen = used
            self.deadline = max(self.deadline, time.monotonic() + BACKSTOP_FACTOR * limit + BACKSTOP_SECONDS)
        if time.monotonic() >= self.deadline:
            return True
        return self.started and used is not None and self.cpu_start is not None and used - self.cpu_start > limit

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
        self._failed_starts = 0  # workers in a row that exited before they were ready

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
                elif kind == "grade" and (plain := plain_numbers_verdict(gold, answer)) is not None:
                    verdicts[index] = plain
                elif kind == "grade" and too_complex(answer):
                    verdicts[index] = (UNPARSED, "too_complex")
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
        command = [sys.executable, "-c", _WORKER_MAIN, str(SOFT_FRACTION * self.timeout_seconds)]
        # Own process group: a terminal's Ctrl-C is the caller's to handle, not the workers'. A
        # worker exits when its stdin closes, so it never outlives the caller, even after SIGKILL.
        process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd=_PACKAGE_ROOT, process_group=0
        )
        return _Worker(process)

    def _replace(self, worker: _Worker) -> _Worker:
        worker.process.kill()
        worker.process.wait()
        try:
            worker.process.stdin.close()
        except BrokenPipeError:  # a batch that never reached it is still buffered; it goes elsewhere
            pass
        worker.process.stdout.close()
        self.stats.workers_replaced += 1
        fresh = self._spawn()
        self._pool[self._pool.index(worker)] = fresh
        return fresh

    def _judge_in_workers(self, tasks: list[tuple]) -> list[tuple[str, str | None]]:
        """Judge in the pool; an answer that timed out is judged again by one worker alone."""
        if not tasks:
            return []
        while len(self._pool) < self.workers:
            self._pool.append(self._spawn())
        results: list[tuple[str, str | None] | None] = [None] * len(tasks)
        timed_out = self._run(tasks, list(range(len(tasks))), self._pool, results)
        self.stats.retried += len(timed_out)
        for index in timed_out:  # one at a time, the other workers idle: no sibling shares the CPU
            alone = [next((w for w in self._pool if w.started), self._pool[0])]  # one past its imports
            if self._run(tasks, [index], alone, results):
                results[index] = (UNPARSED, "timeout")
                self.stats.timeouts += 1
        return results  # type: ignore[return-value]

    def _run(self, tasks: list[tuple], indices: list[int], pool: list[_Worker], results: list) -> list[int]:
        """Judge `tasks[i]` for i in `indices` with the workers in `pool`; returns those that timed out."""
        queue = deque(indices)
        busy: list[_Worker] = []
        timed_out: list[int] = []
        limit = self.timeout_seconds
        while queue or busy:
            for position in range(len(pool)):
                worker = pool[position]
                if worker.pending or not queue:
                    continue
                size = max(1, min(self.chunk_size, -(-len(queue) // len(pool))))
                chunk = [queue.popleft() for _ in range(min(size, len(queue)))]
                worker = self._send(pool, worker, [(i, *tasks[i]) for i in chunk])
                worker.pending.extend(chunk)
                # Until a fresh worker says it is ready (imports done), its start-up is allowed for.
                worker.start_clock(limit, 0.0 if worker.started else STARTUP_SECONDS)
                busy.append(worker)
            next_deadline = min(w.deadline for w in busy) - time.monotonic()
            ready = wait([w.process.stdout for w in busy], timeout=max(0.0, min(POLL_SECONDS, next_deadline)))
            for worker in list(busy):
                if worker.process.stdout in ready:
                    try:
                        replies = worker.receive()
                    except (EOFError, OSError):  # the worker died (e.g. out of memory)
                        busy.remove(worker)
                        self._swap(pool, worker, self._fail_first(worker, results, queue, "error"))
                        continue
                    for reply in replies:
                        if reply == ["ready"]:
                            worker.started = True
                            self._failed_starts = 0
                            worker.start_clock(limit)
                            continue
                        task_index, grade, reason, seconds = reply
                        worker.pending.remove(task_index)
                        results[task_index] = (grade, reason)
                        if reason == "timeout":
                            timed_out.append(task_index)
                        self.stats.slowest_seconds = max(self.stats.slowest_seconds, seconds)
                        worker.start_clock(limit)
                    if not worker.pending:
                        busy.remove(worker)
                elif worker.over_limit(limit):
                    busy.remove(worker)
                    stuck = worker.pending[0]
                    self._swap(pool, worker, self._fail_first(worker, results, queue, "timeout"))
                    if results[stuck] == (UNPARSED, "timeout"):
                        timed_out.append(stuck)
        return timed_out

    def _restart(self, worker: _Worker) -> _Worker:
        """Replace a worker that exited before it was ready; raise once `FAILED_STARTS` did so in a row."""
        self._failed_starts += 1
        if self._failed_starts >= FAILED_STARTS:
            worker.process.kill()  # no-op if it has exited; then its own exit code is kept
            worker.process.wait()
            raise GraderUnavailableError(
                f"{self._failed_starts} grading workers in a row died or stalled during start-up (the last: exit "
                f"code {worker.process.returncode}), before any answer reached them; their error is printed above. "
                f"Check that `{sys.executable} -c \"{_WORKER_MAIN}\"` runs in this environment."
            )
        return self._replace(worker)

    def _send(self, pool: list[_Worker], worker: _Worker, batch: list) -> _Worker:
        """Hand `batch` to `worker`, or to its replacement if it died while idle; returns the one that took it.

        A worker killed between batches (OOM killer, a stray signal) held no answer, so none is
        charged for it: the batch goes whole to a fresh worker. One that dies while judging is
        caught later, by its closed output (`_fail_first`)."""
        while True:
            if worker.process.poll() is None:
                try:
                    worker.send(batch)
                    return worker
                except BrokenPipeError:  # it died between the poll and the write
                    pass
            fresh = self._replace(worker) if worker.started else self._restart(worker)
            self._swap(pool, worker, fresh)
            worker = fresh

    def _swap(self, pool: list[_Worker], old: _Worker, fresh: _Worker) -> None:
        """`_replace` updated the grader's pool; a sub-pool (the retry's lone worker) follows it."""
        if pool is not self._pool:
            pool[pool.index(old)] = fresh

    def _fail_first(self, worker: _Worker, results: list, queue: deque, reason: str) -> _Worker:
        """Record the worker's current answer as unparsed, requeue the rest; returns its replacement.

        A worker that died or stalled before it was ready (still importing) had read no answer:
        its whole batch goes back in the queue and nothing is recorded."""
        if not worker.started:
            queue.extendleft(reversed(worker.pending))
            return self._restart(worker)
        stuck = worker.pending.popleft()
        results[stuck] = (UNPARSED, reason)
        if reason == "timeout":
            self.stats.slowest_seconds = max(self.stats.slowest_seconds, self.timeout_seconds)
        queue.extendleft(reversed(worker.pending))
        return self._replace(worker)


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
