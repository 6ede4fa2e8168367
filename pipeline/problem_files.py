"""Read problem rows from a file or a saved dataset, and map their columns.

Shared by the training/eval source (`problems.source`) and the held-out benchmarks
(`problems.eval_benchmarks`), so both accept the same files and fail with the same
messages: the file, line or column is always named.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable


class ProblemSourceError(ValueError):
    """The problem source itself cannot be read (missing file, wrong columns, empty)."""


@dataclass
class RawRow:
    """One source row, mapped to `problem`, `answer` and optionally `id`; `index` is its position in the source."""

    index: int
    data: dict[str, Any]


def _jsonl_records(file: Path) -> list[dict]:
    records = []
    for line_number, line in enumerate(file.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as error:  # bad JSON, or an integer too long to convert
            raise ProblemSourceError(f"{file}:{line_number}: not valid JSON: {error}") from error
        if not isinstance(record, dict):
            raise ProblemSourceError(f"{file}:{line_number}: expected a JSON object per line, got {type(record).__name__}")
        records.append(record)
    return records


def read_file_records(file: Path, kind: str, key: str = "problems.path") -> list[dict]:
    """Records of a `parquet` or `jsonl` file; any failure names the file."""
    if not file.exists():
        raise ProblemSourceError(f"{key}: {file} does not exist")
    try:
        if kind == "parquet":
            import pyarrow.parquet as pq

            return pq.read_table(file).to_pylist()
        return _jsonl_records(file)
    except ProblemSourceError:
        raise
    except Exception as error:
        raise ProblemSourceError(f"{key}: cannot read {file} as {kind}: {error}") from error


def load_saved_dataset(folder: Path, split: str | None) -> Iterable[dict]:
    """A `save_to_disk` folder: a Dataset, or one split of a DatasetDict (the only one when `split` is None)."""
    import datasets

    dataset = datasets.load_from_disk(str(folder))
    if isinstance(dataset, datasets.DatasetDict):
        if split is None and len(dataset) == 1:
            split = next(iter(dataset))
        if split not in dataset:
            raise ProblemSourceError(f"{folder}: no split {split!r}; it has {sorted(dataset)}")
        dataset = dataset[split]
    return dataset


def local_records(path: Path, split: str | None, key: str) -> list[dict]:
    """Records of a local parquet / jsonl file or a saved dataset folder, chosen by what `path` is."""
    if path.is_dir():
        try:
            return [dict(record) for record in load_saved_dataset(path, split)]
        except ProblemSourceError:
            raise
        except Exception as error:
            raise ProblemSourceError(f"{key}: cannot load {path} as a saved dataset folder: {error}") from error
    kind = "parquet" if path.suffix == ".parquet" else "jsonl"
    return read_file_records(path, kind, key)


def available_columns(records: list[dict]) -> set[str]:
    """Every key any record has (JSONL rows need not share keys)."""
    return set().union(*(record.keys() for record in records)) if records else set()


def map_columns(records: list[dict], problem: str, answer: str, id_column: str | None) -> list[RawRow]:
    """Rows with the source columns renamed to `problem`, `answer` (and `id`); a missing key stays None."""
    rows = []
    for index, record in enumerate(records):
        data = {"problem": record.get(problem), "answer": record.get(answer)}
        if id_column:
            data["id"] = record.get(id_column)
        rows.append(RawRow(index, data))
    return rows
