"""Atomic, sharded, resumable Parquet I/O.

A long stage splits its work into numbered shards. Each shard is written to a hidden
temporary file and renamed into place, so a file named `part-NNNNN.parquet` is always
complete: a crash loses at most the shard in flight, and the next writer deletes the
temporary file it left. A `_manifest.json` records the hash of everything the shards depend
on; when it changes, stale shards are removed instead of being mixed with new ones. Readers
skip names starting with `.` or `_`.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

MANIFEST = "_manifest.json"
COMPLETE = "_complete.json"  # written once every shard of a folder exists


class IncompleteShardsError(FileNotFoundError):
    """A shard folder whose stage has not finished (crashed or interrupted): rerun that stage."""
_VERSIONED_PACKAGES = ("torch", "transformers", "trl", "datasets", "math-verify", "pyarrow", "vllm")


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


def _atomic_replace(write, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_table(table: pa.Table, path: str | Path) -> None:
    """Write a Parquet file atomically."""
    _atomic_replace(lambda tmp: pq.write_table(table, tmp), Path(path))


def write_json(payload: Any, path: str | Path) -> None:
    def write(tmp: str) -> None:
        Path(tmp).write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")

    _atomic_replace(write, Path(path))


def read_table(path: str | Path, schema: pa.Schema | None = None) -> pa.Table:
    """Read one Parquet file or every complete shard of a folder, in shard order."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: run the stage that writes it first")
    if path.is_dir():
        parts = sorted(p for p in path.glob("part-*.parquet"))
        complete = path / COMPLETE
        expected = json.loads(complete.read_text()).get("shards") if complete.exists() else None
        if (path / MANIFEST).exists() and expected != len(parts):
            raise IncompleteShardsError(
                f"{path}: {len(parts)} shard(s) written but the stage that writes them did not finish; "
                "rerun it (completed shards are kept)"
            )
        if not parts:
            if schema is None:
                raise FileNotFoundError(f"{path} holds no shards")
            return schema.empty_table()
        tables = [pq.read_table(p) for p in parts]
        return pa.concat_tables(tables, promote_options="default")
    return pq.read_table(path)


class ShardedWriter:
    """Write numbered shards into a folder and know which are already done.

    `fingerprint` is everything the shards depend on (parameters, inputs, model). A rerun
    with the same fingerprint skips completed shards; a different one starts afresh.
    """

    def __init__(self, folder: str | Path, fingerprint: dict[str, Any], manifest_extra: dict[str, Any] | None = None):
        self.folder = Path(folder)
        self.fingerprint_hash = stable_hash(fingerprint)
        self.folder.mkdir(parents=True, exist_ok=True)
        manifest_path = self.folder / MANIFEST
        if manifest_path.exists():
            try:
                previous = json.loads(manifest_path.read_text()).get("fingerprint_hash")
            except json.JSONDecodeError:
                previous = None
            if previous != self.fingerprint_hash:
                self.clear()
        else:
            # Shards without a manifest cannot be trusted to match these parameters.
            self.clear()
        self.remove_partial_writes()
        manifest = {
            "fingerprint_hash": self.fingerprint_hash,
            "fingerprint": fingerprint,
            "packages": package_versions(),
            **(manifest_extra or {}),
        }
        write_json(manifest, manifest_path)

    def clear(self) -> None:
        for child in self.folder.iterdir():
            if child.is_dir():
                shutil.rmtree(child)
            else:
                child.unlink()

    def remove_partial_writes(self) -> None:
        """Delete the temporary files of writes cut short by a kill (never read, but kept forever otherwise)."""
        for child in self.folder.glob(".*.tmp"):
            child.unlink(missing_ok=True)

    def shard_path(self, index: int) -> Path:
        return self.folder / f"part-{index:05d}.parquet"

    def is_done(self, index: int) -> bool:
        return self.shard_path(index).exists()

    def write(self, index: int, table: pa.Table) -> None:
        write_table(table, self.shard_path(index))

    def complete(self, n_shards: int) -> None:
        """Mark the folder complete once shards 0..n-1 all exist; readers refuse it before that."""
        missing = [i for i in range(n_shards) if not self.is_done(i)]
        if missing:
            raise RuntimeError(f"{self.folder}: shards {missing[:5]} missing; cannot mark complete")
        write_json({"shards": n_shards, "fingerprint_hash": self.fingerprint_hash}, self.folder / COMPLETE)


def chunked(items: list[Any], size: int) -> Iterable[tuple[int, list[Any]]]:
    for index, start in enumerate(range(0, len(items), size)):
        yield index, items[start : start + size]
