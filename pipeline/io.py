"""Atomic outputs: every file or folder a stage writes is whole, current and from one run, or refused.

- A file is written to a temporary sibling named after this host and process
  (`.NAME~HOST~PID.tmp`) and renamed into place: a name without that suffix is always whole.
  Temporary files of dead processes on this host are removed by the next writer; another
  host's are left alone (its process may be alive) unless no one else holds the folder.
- A set of files that belong together (train/eval/rejects, score's two tables, export's
  files) carries one set id in every member's Parquet metadata; a reader of any member checks
  that every member exists with that id, so a kill between two files is refused.
- A long stage writes numbered shards into a folder (`ShardedWriter`). `_manifest.json`
  holds the fingerprint (parameters, code version, hash of every input) and every shard
  carries it in its metadata; `_complete.json` is written once all shards exist. A reader
  refuses a folder without both marks agreeing, or with a shard of another fingerprint.
  Writers hold a lock beside the folder: writers with the same fingerprint share it (several
  nodes on disjoint shards), a writer with a different one is refused while they run.
Readers skip names starting with `.` or `_`.
"""

from __future__ import annotations

import ast
import contextvars
import errno
import fcntl
import hashlib
import json
import os
import platform
import shutil
import socket
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.paths import writer_command

MANIFEST = "_manifest.json"
COMPLETE = "_complete.json"  # written once every shard of a folder exists
FINGERPRINT_KEY = b"mrt.fingerprint"  # a shard's fingerprint, in its Parquet metadata
SET_KEY = b"mrt.set"  # {"id", "members"} of a file written as part of a set
HOST = socket.gethostname()
_SEP = "~"
_VERSIONED_PACKAGES = ("torch", "transformers", "trl", "datasets", "math-verify", "pyarrow", "vllm")
_CODE_ROOT = Path(__file__).resolve().parents[1]


class IncompleteShardsError(FileNotFoundError):
    """A shard folder whose stage has not finished (crashed or interrupted): rerun that stage."""


class IncompleteOutputError(FileNotFoundError):
    """An output that is not whole or not from one run (a file set cut by a kill): rerun its stage."""


class ConcurrentRunError(RuntimeError):
    """Another run with a different fingerprint is writing the same folder."""


@dataclass(frozen=True)
class ShardPart:
    """This process's share of a stage's shards: shard i belongs to node `i % count == index`."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"--shard-index {self.index} --num-shards {self.count}: need 0 <= shard-index < num-shards")

    def owns(self, shard: int) -> bool:
        return shard % self.count == self.index

    @property
    def label(self) -> str:
        return "" if self.count == 1 else f" (shard-index {self.index} of {self.count})"


_PART: contextvars.ContextVar[ShardPart] = contextvars.ContextVar("mrt_shard_part", default=ShardPart())


def set_shard_part(part: ShardPart) -> contextvars.Token:
    """Give this process a share of every sharded stage (the CLI's --shard-index/--num-shards)."""
    return _PART.set(part)


def shard_part() -> ShardPart:
    return _PART.get()


def stable_hash(payload: Any, length: int = 16) -> str:
    """Hash of JSON-serialisable data that is stable across runs and machines."""
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _code_of(source: str) -> str:
    """A module's syntax tree without docstrings: editing a comment or a docstring is not a new version."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
                and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree)


_CODE_CACHE_ENTRIES = 16  # code versions remembered (several checkouts may share one cache)


def code_cache_file() -> Path:
    """Where computed code versions are remembered, by the hash of the code's bytes."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mrt-star" / "code-versions.json"


def _code_sources() -> list[Path]:
    return [path for folder in ("pipeline", "stages") for path in sorted((_CODE_ROOT / folder).rglob("*.py"))]


def _computed_code_version(sources: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in sources:
        digest.update(path.relative_to(_CODE_ROOT).as_posix().encode() + b"\0" + _code_of(path.read_text()).encode())
    return digest.hexdigest()[:16]


@cache
def code_version() -> str:
    """Hash of the pipeline's own code (pipeline/ and stages/, comments and docstrings left out): shards
    computed by other code are not reused.

    Parsing the 60-odd modules costs about 0.3 s, in every stage process, so the result is remembered
    in a small cache file keyed by a hash of every file's name and bytes: an entry can only be read
    back for exactly the code it was computed from (this function's own module included), and an
    unreadable or unwritable cache only means computing it again."""
    sources = _code_sources()
    key = hashlib.sha256(b"".join(path.relative_to(_CODE_ROOT).as_posix().encode() + b"\0"
                                  + hashlib.sha256(path.read_bytes()).digest() for path in sources)).hexdigest()
    cache_file: Path | None = None
    try:
        cache_file = code_cache_file()  # Path.home() itself fails where no home can be found
        remembered = json.loads(cache_file.read_text()).get("versions", [])
    except (OSError, ValueError, AttributeError, RuntimeError, KeyError):
        remembered = []
    pairs = [tuple(pair) for pair in remembered if isinstance(pair, list) and len(pair) == 2
             and all(isinstance(part, str) for part in pair)] if isinstance(remembered, list) else []
    for known_key, version in pairs:
        if known_key == key and len(version) == 16:
            return version
    version = _computed_code_version(sources)
    if cache_file is not None:
        try:  # the most recent last, at most _CODE_CACHE_ENTRIES
            write_json({"versions": [list(pair) for pair in pairs[-(_CODE_CACHE_ENTRIES - 1):]] + [[key, version]]}, cache_file)
        except OSError:
            pass  # a read-only home: compute it again next time
    return version


# Temporary names: `.NAME~HOST~PID.tmp`, so that a writer knows which ones are its own or a dead process's.
def temp_sibling(path: Path, tag: str = "") -> Path:
    return path.parent / f".{path.name}{tag}{_SEP}{HOST}{_SEP}{os.getpid()}.tmp"


def _temp_owner(name: str) -> tuple[str, int] | None:
    if not (name.startswith(".") and name.endswith(".tmp")):
        return None
    parts = name[: -len(".tmp")].split(_SEP)
    if len(parts) < 3 or not parts[-1].isdigit():
        return None
    return parts[-2], int(parts[-1])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(folder: Path, everyone: bool = False) -> None:
    """Delete temporary files and folders left by dead processes on this host (`everyone`: all of them).

    Another host's temporary files are kept unless `everyone` (the caller knows no one else is
    writing), since their process may still be running.
    """
    if not folder.is_dir():
        return
    for child in folder.iterdir():
        owner = _temp_owner(child.name)
        legacy = child.name.startswith(".") and child.name.endswith(".tmp") and owner is None
        if owner is None and not legacy:
            continue
        if everyone or legacy or (owner[0] == HOST and owner[1] != os.getpid() and not _pid_alive(owner[1])):
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)


def _atomic_replace(write: Callable[[str], None], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path)
    try:
        write(str(tmp))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _with_metadata(table: pa.Table, extra: dict[bytes, bytes]) -> pa.Table:
    return table.replace_schema_metadata({**(table.schema.metadata or {}), **extra})


def write_table(table: pa.Table, path: str | Path) -> None:
    """Write a Parquet file atomically."""
    _atomic_replace(lambda tmp: pq.write_table(table, tmp), Path(path))


def write_json(payload: Any, path: str | Path) -> None:
    def write(tmp: str) -> None:
        Path(tmp).write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")

    _atomic_replace(write, Path(path))


def remove_output(path: str | Path) -> None:
    """Remove a file an earlier run wrote that this run does not (an unscored round's progress tables
    or J plot), so no stale output stands beside the new ones; absent is fine."""
    Path(path).unlink(missing_ok=True)


def _table_digest(table: pa.Table) -> str:
    """Content hash of a table (its Arrow IPC stream): deterministic, so identical reruns match."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as stream:
        stream.write_table(table)
    return hashlib.sha256(sink.getvalue()).hexdigest()[:16]


def write_table_set(tables: dict[str | Path, pa.Table]) -> str:
    """Write files that belong together (siblings in one folder) so that readers take all or none.

    Every member records the set's id (a hash of all their contents) and the members' names;
    a reader of one member checks the others (`read_table`). Returns the set id.
    """
    paths = {Path(path): table for path, table in tables.items()}
    if len({path.parent for path in paths}) != 1:
        raise ValueError(f"a table set must lie in one folder: {sorted(map(str, paths))}")
    members = sorted(path.name for path in paths)
    set_id = stable_hash({path.name: _table_digest(table) for path, table in paths.items()})
    mark = json.dumps({"id": set_id, "members": members}).encode()
    for path, table in paths.items():
        write_table(_with_metadata(table, {SET_KEY: mark}), path)
    return set_id


def _metadata(path: Path) -> dict[bytes, bytes]:
    return pq.read_schema(path).metadata or {}


def _check_set(path: Path, mark: bytes) -> None:
    data = json.loads(mark)
    for member in data["members"]:
        sibling = path.parent / member
        other = _metadata(sibling).get(SET_KEY) if sibling.exists() else None
        if other is None or json.loads(other)["id"] != data["id"]:
            state = "missing" if not sibling.exists() else "from another run"
            raise IncompleteOutputError(
                f"{path} belongs with {sibling}, which is {state} (a run cut short between the two files): "
                f"run `{writer_command(path)}` again"
            )


def read_table(path: str | Path, schema: pa.Schema | None = None) -> pa.Table:
    """Read one Parquet file, or every shard of a complete shard folder in shard order; refuse partial outputs."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: run `{writer_command(path)}` first")
    if path.is_dir():
        names = check_complete(path)
        if not names:
            if schema is None:
                raise FileNotFoundError(f"{path} holds no shards")
            return schema.empty_table()
        tables = [pq.read_table(path / name) for name in names]
        return pa.concat_tables(tables, promote_options="default")
    mark = _metadata(path).get(SET_KEY)
    if mark is not None:
        _check_set(path, mark)
    return pq.read_table(path)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def shard_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def check_complete(folder: Path) -> list[str]:
    """The shard names of a complete folder, in order; raises IncompleteShardsError otherwise."""
    rerun = f"run `{writer_command(folder)}` again (completed shards are kept)"
    manifest, complete = _read_json(folder / MANIFEST), _read_json(folder / COMPLETE)
    parts = sorted(p.name for p in folder.glob("part-*.parquet"))
    if manifest is None:
        raise IncompleteShardsError(
            f"{folder}: no {MANIFEST} ({len(parts)} shard file(s)): the stage that writes it stopped while starting "
            f"or clearing stale shards; {rerun}"
        )
    fingerprint = manifest.get("fingerprint_hash")
    if complete is None or complete.get("fingerprint_hash") != fingerprint:
        raise IncompleteShardsError(
            f"{folder}: {len(parts)} shard(s) written but the stage that writes them did not finish; {rerun}"
        )
    expected = [shard_name(i) for i in range(int(complete.get("shards", -1)))]
    if parts != expected:
        raise IncompleteShardsError(f"{folder}: shard files {parts[:3]}... differ from the {len(expected)} marked complete; {rerun}")
    for name in parts:
        if _metadata(folder / name).get(FINGERPRINT_KEY, b"").decode() != fingerprint:
            raise IncompleteShardsError(f"{folder}/{name} was written for other parameters or inputs than the folder; {rerun}")
    return parts


class _FolderLock:
    """An flock beside the folder (outside it, so DVC never sees it): shared by writers with one
    fingerprint, exclusive while a writer checks or clears the folder. The file lists its holders."""

    def __init__(self, folder: Path):
        self.path = folder.parent / f".{folder.name}.lock"
        self.handle = open(self.path, "a+")

    def try_exclusive(self) -> bool:
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                return False
            raise
        self.handle.truncate(0)
        return True

    def shared(self) -> None:
        fcntl.flock(self.handle, fcntl.LOCK_SH)  # waits while another writer checks the folder (seconds)

    def register(self, fingerprint_hash: str) -> None:
        self.handle.write(json.dumps({"host": HOST, "pid": os.getpid(), "fingerprint": fingerprint_hash}) + "\n")
        self.handle.flush()

    def holders(self) -> list[dict]:
        self.handle.seek(0)
        found = []
        for line in self.handle.read().splitlines():
            try:
                holder = json.loads(line)
            except json.JSONDecodeError:
                continue
            if holder.get("host") != HOST or _pid_alive(int(holder.get("pid", 0))):
                found.append(holder)
        return found

    def close(self) -> None:
        if not self.handle.closed:
            self.handle.close()  # releases the lock


class ShardedWriter:
    """Write numbered shards into a folder, resumably, alone or with other writers of the same fingerprint.

    `fingerprint` is everything the shards depend on (parameters, inputs, model); the code
    version is added. A rerun with the same fingerprint skips completed shards; a different
    one starts afresh, unless another run still writes the folder (ConcurrentRunError).
    `part` (default: the CLI's --shard-index/--num-shards) picks this process's shards.
    """

    def __init__(self, folder: str | Path, fingerprint: dict[str, Any], manifest_extra: dict[str, Any] | None = None,
                 part: ShardPart | None = None):
        self.folder = Path(folder)
        self.part = part or shard_part()
        fingerprint = {**fingerprint, "code": code_version()}
        self.fingerprint_hash = stable_hash(fingerprint)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = _FolderLock(self.folder)
        try:
            registered = self._lock.try_exclusive()
            if registered:
                self._lock.register(self.fingerprint_hash)  # before the manifest appears, so a rival names this pid
                self._take_over(fingerprint, manifest_extra or {})
            self._lock.shared()  # (exclusive -> shared is not atomic: check the manifest again after)
            current = _read_json(self.folder / MANIFEST) or {}
            if current.get("fingerprint_hash") != self.fingerprint_hash:
                others = [h for h in self._lock.holders() if h.get("fingerprint") != self.fingerprint_hash]
                who = "; ".join(f"pid {h['pid']} on {h['host']}, fingerprint {h['fingerprint']}" for h in others) or "unknown"
                raise ConcurrentRunError(
                    f"{self.folder} is being written by another run with other parameters or inputs ({who}); "
                    f"this run's fingerprint is {self.fingerprint_hash}. Wait for that run to end (or stop it), "
                    "or give this one another data_dir"
                )
            if not registered:
                self._lock.register(self.fingerprint_hash)
            remove_stale_temps(self.folder)
        except BaseException:
            self._lock.close()
            raise

    def _take_over(self, fingerprint: dict, extra: dict) -> None:
        """No one else writes the folder: keep it if the fingerprint matches, else start afresh."""
        previous = _read_json(self.folder / MANIFEST)
        if previous is None or previous.get("fingerprint_hash") != self.fingerprint_hash:
            self.clear()  # shards without a (matching) manifest cannot be trusted to match these parameters
        remove_stale_temps(self.folder, everyone=True)
        manifest = {"fingerprint_hash": self.fingerprint_hash, "fingerprint": fingerprint,
                    "packages": package_versions(), **extra}
        write_json(manifest, self.folder / MANIFEST)  # rewritten (same bytes when resuming): a new file per run

    def clear(self) -> None:
        """Remove the marks first, then the shards: a kill midway leaves a folder readers refuse."""
        (self.folder / COMPLETE).unlink(missing_ok=True)
        (self.folder / MANIFEST).unlink(missing_ok=True)
        for child in self.folder.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()

    def close(self) -> None:
        self._lock.close()

    def __enter__(self) -> "ShardedWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        lock = getattr(self, "_lock", None)
        if lock is not None:
            lock.close()

    def shard_path(self, index: int) -> Path:
        return self.folder / shard_name(index)

    def is_done(self, index: int) -> bool:
        """The shard exists and was written for this fingerprint."""
        path = self.shard_path(index)
        try:
            return _metadata(path).get(FINGERPRINT_KEY, b"").decode() == self.fingerprint_hash
        except (OSError, pa.ArrowInvalid):
            return False

    def todo(self, n_shards: int) -> list[int]:
        """This process's shards (its part) not yet written."""
        return [i for i in range(n_shards) if self.part.owns(i) and not self.is_done(i)]

    def write(self, index: int, table: pa.Table) -> None:
        write_table(_with_metadata(table, {FINGERPRINT_KEY: self.fingerprint_hash.encode()}), self.shard_path(index))

    def missing(self, n_shards: int) -> list[int]:
        return [i for i in range(n_shards) if not self.is_done(i)]

    def finish(self, n_shards: int) -> bool:
        """Mark the folder complete if shards 0..n-1 all exist (whichever writer gets here last); False if not yet."""
        if self.missing(n_shards):
            return False
        for extra in self.folder.glob("part-*.parquet"):  # e.g. a shard past the end from a larger input
            if extra.name >= shard_name(n_shards):
                extra.unlink(missing_ok=True)
        write_json({"shards": n_shards, "fingerprint_hash": self.fingerprint_hash}, self.folder / COMPLETE)
        return True

    def complete(self, n_shards: int) -> None:
        """Mark the folder complete once shards 0..n-1 all exist; readers refuse it before that."""
        missing = self.missing(n_shards)
        if missing:
            raise RuntimeError(f"{self.folder}: shards {missing[:5]} missing; cannot mark complete")
        self.finish(n_shards)

    def progress_note(self, n_shards: int) -> str:
        """What a writer of one part says when other parts are still missing."""
        missing = self.missing(n_shards)
        return (f"{self.folder}: this process's shards are written{self.part.label}; {len(missing)} of {n_shards} "
                f"shard(s) still missing (other nodes' share); the last writer marks the folder complete, "
                "or a run without --shard-index writes what is left")


def chunked(items: list[Any], size: int) -> Iterable[tuple[int, list[Any]]]:
    for index, start in enumerate(range(0, len(items), size)):
        yield index, items[start : start + size]
