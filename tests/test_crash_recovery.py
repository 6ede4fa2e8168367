"""Nothing lost, nothing hangs: `mrt sample` and `mrt prove` killed and resumed as real processes.

An uninterrupted reference run (prepare, sample, split, prove) gives the expected traces and
prover tables. Each stage is then run again in a second folder and brought down again and
again: SIGKILL while a shard file is half written (the process is frozen with SIGSTOP the
moment a temporary shard file appears, and killed only if that file is still there), SIGKILL at
seeded random points of its progress, and Ctrl-C (SIGINT to the process group, as a terminal
sends it). After every crash the folder reads as complete shards of the reference and nothing
else, and no grader worker outlives the stage. The last rerun skips the shards already written
and ends with exactly the reference table: same rows, same order, no duplicates. A second run
from scratch gives identical tables, and a changed parameter replaces stale shards instead of
mixing them. Small shards (one problem, two traces) make several crash points per run.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.io import COMPLETE, MANIFEST, IncompleteShardsError, read_table
from pipeline.tables import PROVER, TRACES

pytestmark = [pytest.mark.skipif(sys.platform != "linux", reason="signals, process groups and /proc"), pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
PROBLEMS = [
    ("Calculate 1 + 1.", "2"), ("Calculate 3 - 1.", "2"), ("Calculate 0 + 2.", "2"), ("Calculate 4 - 2.", "2"),
    ("Calculate 5 - 3.", "2"), ("Calculate 6 - 4.", "2"), ("Calculate 2 + 3.", "5"), ("Calculate 7 - 2.", "5"),
    ("Calculate 8 - 6.", "2"), ("Calculate 9 - 4.", "5"),
]
N_TRACES = 16  # 8 training problems x 2 samples
SAMPLE_SHARDS = 8  # one problem per shard
PROVER_SHARDS = 8  # two traces per shard
TRACES_DIR = Path("data/rounds/0/traces")
PROVER_DIR = Path("data/rounds/0/prover")
INTERRUPTED = "interrupted: completed shards are kept; rerun to resume"
# One thread per process: the stage and its grader workers share two cores with the test.
ENV = dict(
    os.environ,
    PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    OMP_NUM_THREADS="1",
    TOKENIZERS_PARALLELISM="false",
)


def write_params(workdir: Path, model_dir: Path) -> Path:
    problems = workdir / "problems.jsonl"
    problems.write_text("".join(json.dumps({"question": q, "solution": a}) + "\n" for q, a in PROBLEMS))
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["model"]["name_or_path"] = str(model_dir)
    params["problems"].update(source="jsonl", path=str(problems), columns={"problem": "question", "answer": "solution"},
                              train_size=8, eval_size=2, eval_benchmarks=[])
    params["sample"].update(n=2, max_tokens=24, shard_size=1)
    params["episodes"].update(window_tokens=8)
    params["prover"].update(k=2, max_answer_tokens=12, shard_size=2)
    params["grading"].update(workers=1)  # each worker start imports math-verify: one per launch is enough here
    (workdir / "params.yaml").write_text(yaml.safe_dump(params))
    return workdir


def mrt(workdir: Path, *args: str) -> str:
    """Run one `mrt` command to completion; its summary line (stdout)."""
    done = subprocess.run(["mrt", *args], cwd=workdir, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"mrt {' '.join(args)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    assert "Traceback" not in done.stderr
    return done.stdout


def shard_names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("part-*.parquet")) if folder.exists() else []


def temp_names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp")) if folder.exists() else []


def stamps(folder: Path) -> dict[str, tuple[int, int]]:
    return {name: ((folder / name).stat().st_ino, (folder / name).stat().st_mtime_ns) for name in shard_names(folder)}


def manifest_hash(folder: Path) -> str:
    return json.loads((folder / MANIFEST).read_text())["fingerprint_hash"]


def inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return None


def descendants(pid: int) -> set[int]:
    """Every process below `pid` (the grader workers), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Launch:
    """One `mrt` process in its own session, so that a Ctrl-C can reach its whole process group."""

    def __init__(self, workdir: Path, *args: str):
        self.workdir, self.args = workdir, args
        self.stdout, self.stderr = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
        # A shell starts background jobs with SIGINT ignored, and children inherit that (Python then
        # installs no KeyboardInterrupt handler): give the stage the default, as in a terminal.
        self.process = subprocess.Popen(["mrt", *args], cwd=workdir, env=ENV, stdout=self.stdout, stderr=self.stderr,
                                        start_new_session=True, preexec_fn=_default_sigint)
        self.workers: set[int] = set()
        _LAUNCHED.append(self)

    def running(self) -> bool:
        return self.process.poll() is None

    def wait_for(self, condition, what: str, timeout: float = 120.0, poll: float = 0.002) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert self.running(), f"mrt {' '.join(self.args)} ended ({self.process.returncode}) before {what}:\n{self.err()[-3000:]}"
            if time.monotonic() > deadline:
                self.process.kill()
                pytest.fail(f"mrt {' '.join(self.args)}: no {what} after {timeout} s")
            time.sleep(poll)

    def send(self, signum: int, group: bool = False) -> None:
        assert self.running(), f"mrt {' '.join(self.args)} ended before the signal: no crash to recover from"
        self.workers |= descendants(self.process.pid)
        (os.killpg if group else os.kill)(self.process.pid, signum)
        folder = self.workdir / (TRACES_DIR if self.args[0] == "sample" else PROVER_DIR)
        print(f"mrt {' '.join(self.args)}: {signal.Signals(signum).name} with {len(shard_names(folder))} shard(s) "
              f"done and {len(self.workers)} grader worker(s) running")  # shown when a test fails

    def finish(self, timeout: float = 120.0) -> int:
        """Exit status; fails if the stage hangs or a grader worker outlives it."""
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            pytest.fail(f"mrt {' '.join(self.args)} hangs:\n{self.err()[-3000:]}")
        deadline = time.monotonic() + 15
        while (left := sorted(p for p in self.workers if alive(p))) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not left, f"processes {left} outlived mrt {' '.join(self.args)}"
        return code

    def loaded(self) -> bool:
        """The progress bar is up: the model is loaded and work begins."""
        return f"{self.args[0]} r0:" in self.err()

    def err(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read()


_LAUNCHED: list[Launch] = []


@pytest.fixture(autouse=True)
def no_stray_stage():
    """A failed test must not leave a stage (and its workers) running or stopped behind."""
    yield
    while _LAUNCHED:
        launch = _LAUNCHED.pop()
        if launch.running():
            os.killpg(launch.process.pid, signal.SIGKILL)
            launch.process.wait()


def progressed(folder: Path, shards: int):
    """True once this launch has written its manifest (a new file) and `folder` holds `shards` shards."""
    before = inode(folder / MANIFEST)
    return lambda: inode(folder / MANIFEST) not in (None, before) and len(shard_names(folder)) >= shards


def kill_at_random(workdir: Path, folder: Path, args: tuple[str, ...], rng: random.Random, total: int) -> Launch:
    """Start the stage, let it write 1-2 more shards, wait a random instant, SIGKILL it.

    At least 3 shards are left to write (a kill must interrupt work); where fewer are left, the
    kill comes while the model loads.
    """
    done = len(shard_names(folder))
    more = min(rng.randint(1, 2), max(0, total - done - 3))
    launch = Launch(workdir, *args)
    launch.wait_for(progressed(folder, done + more), f"{more} new shard(s)")
    time.sleep(rng.uniform(0.0, 0.3))
    launch.send(signal.SIGKILL)
    return launch


def kill_mid_write(workdir: Path, folder: Path, args: tuple[str, ...]) -> Launch:
    """SIGKILL while a shard's temporary file exists: freeze at the first sight of one, kill if it is still there."""
    stale = set(temp_names(folder))
    launch = Launch(workdir, *args)
    launch.wait_for(launch.loaded, "a progress bar", poll=0.02)
    while True:  # polled fast only now, not to slow the stage down while it loads
        assert launch.running(), "the stage ended without a shard write caught in flight"
        writing = [n for n in temp_names(folder) if n.startswith(".part-") and n not in stale]
        if writing:
            os.kill(launch.process.pid, signal.SIGSTOP)
            if (folder / writing[0]).exists():
                launch.send(signal.SIGKILL)
                return launch
            os.kill(launch.process.pid, signal.SIGCONT)
        time.sleep(0.0002)


def check_crashed(folder: Path, reference_shards: dict[str, list[dict]], schema) -> None:
    """A crashed folder reads as complete reference shards, in order, and nothing else."""
    names = shard_names(folder)
    for name in names:
        assert pq.read_table(folder / name).to_pylist() == reference_shards[name], f"{name} differs from the reference"
    with pytest.raises(IncompleteShardsError):  # an unfinished folder is never read as the whole table
        read_table(folder, schema)


def check_final(folder: Path, reference, reference_rows: list[dict], schema) -> None:
    rows = read_table(folder, schema).to_pylist()
    assert [r["trace_id"] for r in rows] == [r["trace_id"] for r in reference_rows]
    assert rows == reference_rows
    keys = [(r["trace_id"], r.get("prefix_index")) for r in rows]
    assert len(keys) == len(set(keys)), "duplicate rows"
    assert set(os.listdir(folder)) == set(reference.shards(folder.name)) | {MANIFEST, COMPLETE}
    # Byte for byte the clean run's folder, so DVC hashes it the same and reruns nothing downstream.
    clean = reference.workdir / (TRACES_DIR if folder.name == "traces" else PROVER_DIR)
    assert {n: (folder / n).read_bytes() for n in os.listdir(folder)} == {n: (clean / n).read_bytes() for n in os.listdir(clean)}


class Reference:
    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.traces = read_table(workdir / TRACES_DIR).to_pylist()
        self.prover = read_table(workdir / PROVER_DIR).to_pylist()
        self.trace_shards = {n: pq.read_table(workdir / TRACES_DIR / n).to_pylist() for n in shard_names(workdir / TRACES_DIR)}
        self.prover_shards = {n: pq.read_table(workdir / PROVER_DIR / n).to_pylist() for n in shard_names(workdir / PROVER_DIR)}

    def shards(self, folder_name: str) -> list[str]:
        return list(self.trace_shards if folder_name == "traces" else self.prover_shards)

    def copy(self, workdir: Path, *paths: str) -> Path:
        """A folder with the same params.yaml and the given reference outputs."""
        shutil.copy(self.workdir / "params.yaml", workdir / "params.yaml")
        for path in ("data/base_model", "data/problems", *paths):
            source = self.workdir / path
            (shutil.copytree if source.is_dir() else shutil.copy)(source, workdir / path)
        return workdir


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model_dir) -> Reference:
    """The uninterrupted run every crashed run must reproduce."""
    workdir = write_params(tmp_path_factory.mktemp("reference"), tiny_model_dir)
    mrt(workdir, "prepare")
    assert f"sampled {N_TRACES} traces in {SAMPLE_SHARDS} shard(s)" in mrt(workdir, "sample", "-r", "0")
    mrt(workdir, "split", "-r", "0")
    assert f"proved {N_TRACES} traces" in mrt(workdir, "prove", "-r", "0")
    ref = Reference(workdir)
    assert len(ref.trace_shards) == SAMPLE_SHARDS and len(ref.prover_shards) == PROVER_SHARDS
    assert len({t["trace_id"] for t in ref.traces}) == N_TRACES
    assert len({tuple(t["completion_ids"]) for t in ref.traces}) > 1  # the comparisons below mean something
    assert {p["trace_id"] for p in ref.prover} == {t["trace_id"] for t in ref.traces}
    return ref


def test_sample_survives_sigkill_and_ctrl_c(tmp_path, reference):
    """Killed mid-write, killed twice more, interrupted with Ctrl-C, resumed: the reference traces."""
    workdir = reference.copy(tmp_path)
    folder, args = workdir / TRACES_DIR, ("sample", "-r", "0")

    launch = kill_mid_write(workdir, folder, args)
    assert launch.finish() == -signal.SIGKILL
    assert any(n.startswith(".part-") for n in temp_names(folder)), "a half-written shard file was left to test"
    check_crashed(folder, reference.trace_shards, TRACES)
    workers_seen = bool(launch.workers)

    for seed in (1, 2):
        launch = kill_at_random(workdir, folder, args, random.Random(seed), SAMPLE_SHARDS)
        assert launch.finish() == -signal.SIGKILL
        check_crashed(folder, reference.trace_shards, TRACES)
        workers_seen |= bool(launch.workers)

    # Ctrl-C (SIGINT to the process group, as from a terminal) while the grader worker is starting
    # or grading: exit status 130 and one line saying what happened, no traceback from anyone.
    # Leave enough work that the stage is still running when Ctrl-C arrives on a fast machine:
    # drop the completed shards (a rerun must redo missing shards anyway).
    for name in shard_names(folder):
        (folder / name).unlink()
    done = len(shard_names(folder))
    launch = Launch(workdir, *args)
    launch.wait_for(launch.loaded, "a progress bar", poll=0.02)
    launch.wait_for(lambda: descendants(launch.process.pid) or len(shard_names(folder)) > done, "a grader worker", poll=0.01)
    # Freeze the stage, queue the Ctrl-C, thaw it: the interrupt lands mid-run however fast the machine.
    os.kill(launch.process.pid, signal.SIGSTOP)
    launch.send(signal.SIGINT, group=True)
    os.kill(launch.process.pid, signal.SIGCONT)
    assert launch.finish() == 130, launch.err()[-3000:]
    err = launch.err()
    assert "Traceback" not in err and err.rstrip().splitlines()[-1] == INTERRUPTED, err[-3000:]
    check_crashed(folder, reference.trace_shards, TRACES)
    workers_seen |= bool(launch.workers)
    assert workers_seen, "no crash happened while grader workers were running"

    done = stamps(folder)
    assert len(done) < SAMPLE_SHARDS, "the crashes left nothing to resume"
    out = mrt(workdir, *args)
    assert f"sampled {(SAMPLE_SHARDS - len(done)) * 2} traces in {SAMPLE_SHARDS - len(done)} shard(s)" in out
    assert {n: stamps(folder)[n] for n in done} == done, "completed shards were rewritten"
    check_final(folder, reference, reference.traces, TRACES)
    assert "all trace shards already complete" in mrt(workdir, *args)


def test_prove_survives_sigkill(tmp_path, reference):
    """Killed mid-write and twice more, resumed: the reference prover rows."""
    workdir = reference.copy(tmp_path, "data/rounds/0/traces", "data/rounds/0/episodes.parquet")
    folder, args = workdir / PROVER_DIR, ("prove", "-r", "0")

    launch = kill_mid_write(workdir, folder, args)
    assert launch.finish() == -signal.SIGKILL
    assert any(n.startswith(".part-") for n in temp_names(folder)), "a half-written shard file was left to test"
    check_crashed(folder, reference.prover_shards, PROVER)
    workers_seen = bool(launch.workers)

    for seed in (1, 2):
        launch = kill_at_random(workdir, folder, args, random.Random(seed), PROVER_SHARDS)
        assert launch.finish() == -signal.SIGKILL
        check_crashed(folder, reference.prover_shards, PROVER)
        workers_seen |= bool(launch.workers)
    if not workers_seen:  # plain numbers are judged in the caller, so workers start only when an answer needs one:
        launch = Launch(workdir, *args)  # kill once more the moment one runs
        launch.wait_for(lambda: bool(descendants(launch.process.pid)), "a grader worker", poll=0.005)
        launch.send(signal.SIGKILL)
        assert launch.finish() == -signal.SIGKILL
        check_crashed(folder, reference.prover_shards, PROVER)
        workers_seen |= bool(launch.workers)
    assert workers_seen, "no crash happened while grader workers were running"

    done = stamps(folder)
    assert len(done) < PROVER_SHARDS, "the crashes left nothing to resume"
    out = mrt(workdir, *args)
    assert f"proved {(PROVER_SHARDS - len(done)) * 2} traces" in out
    assert {n: stamps(folder)[n] for n in done} == done, "completed shards were rewritten"
    check_final(folder, reference, reference.prover, PROVER)
    assert "all prover shards already complete" in mrt(workdir, *args)


def test_changed_parameter_replaces_stale_shards_and_reruns_are_identical(tmp_path, reference):
    """`--set sample.temperature` resamples every shard; the same parameters from scratch give the same tables."""
    workdir = reference.copy(tmp_path, "data/rounds/0/traces", "data/rounds/0/episodes.parquet")
    folder = workdir / TRACES_DIR
    # Stale state: the reference's first three shards (as if that run had crashed), then a new temperature.
    for name in shard_names(folder)[3:]:
        (folder / name).unlink()
    stale_hash = manifest_hash(folder)
    started = time.time_ns()
    out = mrt(workdir, "sample", "-r", "0", "--set", "sample.temperature=1.3")
    assert f"sampled {N_TRACES} traces in {SAMPLE_SHARDS} shard(s)" in out  # none of the stale shards reused
    assert all(mtime >= started for _, mtime in stamps(folder).values())
    hot = read_table(folder).to_pylist()
    assert [t["trace_id"] for t in hot] == [t["trace_id"] for t in reference.traces]
    assert [t["completion_ids"] for t in hot] != [t["completion_ids"] for t in reference.traces]
    assert manifest_hash(folder) != stale_hash

    # Determinism: back to the reference parameters, the shards of temperature 1.3 are stale in
    # turn; this second run from scratch gives the reference tables exactly.
    out = mrt(workdir, "sample", "-r", "0")
    assert f"sampled {N_TRACES} traces in {SAMPLE_SHARDS} shard(s)" in out
    assert manifest_hash(folder) == stale_hash
    assert read_table(folder).to_pylist() == reference.traces
    assert f"proved {N_TRACES} traces" in mrt(workdir, "prove", "-r", "0")  # no prover folder yet: from scratch
    assert read_table(workdir / PROVER_DIR).to_pylist() == reference.prover
