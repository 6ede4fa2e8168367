"""Data parallelism for the vLLM backend: several engines, one per worker process.

vLLM's offline engine runs data parallelism as one process per replica (`vllm.LLM` refuses
`data_parallel_size > 1` in a single process), so `backend.data_parallel_size: D` starts D
worker processes, each with its own `VLLMBackend` on its own GPUs (`CUDA_VISIBLE_DEVICES`
slice of `tensor_parallel_size x pipeline_parallel_size` devices). A `generate` call splits
the requests into D contiguous runs of about equal cost, so the prefixes of one trace (which
the prover sends next to each other) mostly land on one engine and keep sharing its prefix
cache. Every request carries its own seed, so results do not depend on D.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import traceback
from multiprocessing.connection import Connection, wait

from pipeline.backends.base import Completion, GenerationStats, ProgressCallback, Request


def split_by_cost(requests: list[Request], parts: int) -> list[tuple[int, int]]:
    """`parts` contiguous (start, end) runs of `requests` with about equal cost (n x (prompt + max_tokens))."""
    costs = [r.params.n * (len(r.prompt_ids) + r.params.max_tokens) for r in requests]
    total, runs, start, spent = sum(costs), [], 0, 0
    for part in range(1, parts):
        end = start
        while end < len(requests) and spent + costs[end] <= total * part / parts:
            spent += costs[end]
            end += 1
        runs.append((start, end))
        start = end
    runs.append((start, len(requests)))
    return runs


def _visible_devices(rank: int, per_engine: int) -> str:
    """This rank's GPUs, taken from the parent's CUDA_VISIBLE_DEVICES (or 0..N-1)."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    devices = listed.split(",") if listed else [str(i) for i in range(rank * per_engine + per_engine)]
    return ",".join(devices[rank * per_engine : (rank + 1) * per_engine])


def _worker(rank: int, conn: Connection, ref, backend, model) -> None:
    """One engine: serve `generate` requests until told to close."""
    try:
        per_engine = backend.tensor_parallel_size * backend.pipeline_parallel_size
        os.environ["CUDA_VISIBLE_DEVICES"] = _visible_devices(rank, per_engine)
        from pipeline.backends.vllm_backend import VLLMBackend, on_cpu_platform
        from pipeline.models import load_tokenizer

        cores = sorted(os.sched_getaffinity(0))
        if on_cpu_platform() and "VLLM_CPU_OMP_THREADS_BIND" not in os.environ and len(cores) >= backend.data_parallel_size:
            share = len(cores) // backend.data_parallel_size  # vllm-cpu: each engine on its own cores
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(map(str, cores[rank * share : (rank + 1) * share]))

        engine = VLLMBackend.open(ref, backend.model_copy(update={"data_parallel_size": 1}), model, load_tokenizer(ref))
        conn.send(("ready", None))
    except Exception:
        conn.send(("error", traceback.format_exc()))
        return
    while True:
        command, payload = conn.recv()
        if command == "close":
            engine.close()
            conn.send(("closed", None))
            return
        try:
            before = dict(engine.stats.__dict__)
            outputs = engine.generate(payload, on_done=lambda k: conn.send(("progress", k)))
            delta = {key: value - before[key] for key, value in engine.stats.__dict__.items()}
            conn.send(("result", (outputs, delta)))
        except Exception:
            conn.send(("error", traceback.format_exc()))


def _exit_cause(code: int | None) -> str:
    """A dead worker's exit code in words, with the usual reason for the common signals."""
    if code is None or code >= 0:
        return f"exit code {code}"
    name = signal.Signals(-code).name
    usual = {"SIGKILL": ": usually the out-of-memory killer", "SIGSEGV": ": a crash in native code (driver, engine)",
             "SIGABRT": ": a crash in native code (driver, engine)"}
    return f"killed by {name}{usual.get(name, '')}"


class VLLMPool:
    """`base.Backend` over `backend.data_parallel_size` engines in worker processes."""

    def __init__(self, ref, backend, model):
        self.stats = GenerationStats()
        context = mp.get_context("spawn")  # a CUDA context must not be forked
        self._conns: list[Connection] = []
        self._procs = []
        for rank in range(backend.data_parallel_size):
            parent, child = context.Pipe()
            # Not a daemon: the worker starts vLLM's own engine processes.
            proc = context.Process(target=_worker, args=(rank, child, ref, backend, model), daemon=False)
            proc.start()
            child.close()  # only the worker holds its end now: its death reads as EOF here, never a hang
            self._conns.append(parent)
            self._procs.append(proc)
        self._engine_processes: list = []
        for rank in range(len(self._conns)):
            self._expect(rank, "ready")
        # vLLM's engine-core processes under each worker: a worker that is killed leaves them
        # running (orphans), still holding their memory; `_abort` ends them by these records.
        self._engine_processes = self._descendants()

    def _receive(self, rank: int) -> tuple[str, object]:
        """The worker's next message; a worker that died without one (killed, out of memory, a
        crash in native code) stops every engine and raises an error that names it."""
        try:
            return self._conns[rank].recv()
        except (EOFError, OSError):
            proc = self._procs[rank]
            proc.join(timeout=10)
            code = proc.exitcode
            self._abort()
            raise RuntimeError(
                f"vLLM data-parallel worker {rank} (pid {proc.pid}) died without a message ({_exit_cause(code)}). "
                "Every engine was stopped; completed shards are kept: rerun the stage to resume."
            ) from None

    def _descendants(self) -> list:
        import psutil  # a dependency of vLLM and accelerate

        found = []
        for proc in self._procs:
            try:
                found.extend(psutil.Process(proc.pid).children(recursive=True))
            except psutil.NoSuchProcess:
                pass
        return found

    def _abort(self) -> None:
        """Stop every worker and its engine processes now (after one died): none is left running
        or holding memory, none is waited for longer than 30 s."""
        import psutil

        engines = {p.pid: p for p in self._engine_processes + self._descendants()}.values()
        for proc in self._procs:
            if proc.is_alive():
                proc.terminate()
        for engine in engines:
            try:
                engine.terminate()  # SIGTERM: vLLM's engine core shuts itself and its workers down
            except psutil.NoSuchProcess:
                pass
        _, stuck = psutil.wait_procs(list(engines), timeout=30)
        for engine in stuck:
            try:
                engine.kill()
            except psutil.NoSuchProcess:
                pass
        for proc in self._procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
                proc.join()
        self._conns, self._procs, self._engine_processes = [], [], []

    def _expect(self, rank: int, kind: str):
        message, payload = self._receive(rank)
        if message == "error":
            self.close()
            raise RuntimeError(f"a vLLM data-parallel worker failed:\n{payload}")
        if message != kind:
            raise RuntimeError(f"vLLM data-parallel worker: expected {kind!r}, got {message!r}")
        return payload

    def generate(self, requests: list[Request], on_done: ProgressCallback | None = None) -> list[list[Completion]]:
        runs = [(conn, start, end) for conn, (start, end) in zip(self._conns, split_by_cost(requests, len(self._conns)))
                if end > start]
        for conn, start, end in runs:
            conn.send(("generate", requests[start:end]))
        results: list[list[Completion]] = [[] for _ in requests]
        pending = {conn: (start, end) for conn, start, end in runs}
        while pending:
            for conn in wait(list(pending)):
                message, payload = self._receive(self._conns.index(conn))
                if message == "progress":
                    if on_done:
                        on_done(payload)
                    continue
                if message == "error":
                    raise RuntimeError(f"a vLLM data-parallel worker failed:\n{payload}")
                outputs, delta = payload
                start, _ = pending.pop(conn)
                results[start : start + len(outputs)] = outputs
                for key, value in delta.items():
                    setattr(self.stats, key, getattr(self.stats, key) + value)
        return results

    def close(self) -> None:
        """Close every engine and end the workers."""
        for conn, proc in zip(self._conns, self._procs):
            if proc.is_alive():
                try:
                    conn.send(("close", None))
                    if conn.poll(120):
                        conn.recv()
                except (OSError, EOFError):
                    pass
            proc.join(timeout=30)
            if proc.is_alive():
                proc.terminate()
        self._conns, self._procs = [], []
