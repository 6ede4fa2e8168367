"""Read problem rows from a file or a saved dataset, and map their columns.

Shared by the training/eval source (`problems.source`) and the held-out benchmarks
(`problems.eval_benchmarks`), so both accept the same files and fail with the same
messages: the file, line or column is always named.

The training source is read as a `RowSource`: rows are fetched by position, so a large
source is sampled without turning every row into a Python dict. Parquet and saved datasets
stay Arrow (only the mapped columns); a JSONL file is kept as raw lines and a line is decoded
only when it is used, so one undecodable line is one reject naming its line, not a failed file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import pyarrow as pa


class ProblemSourceError(ValueError):
    """The problem source itself cannot be read (missing file, wrong columns, empty)."""


@dataclass
class RawRow:
    """One source row, mapped to `problem`, `answer` and optionally `id`; `index` is its position in the source.
    `error` says why the row could not be decoded at all (then `data` holds what is known of it)."""

    index: int
    data: dict[str, Any]
    error: str | None = None


def _decode_line(file: Path, line_number: int, raw: bytes) -> tuple[dict | None, str | None]:
    """(record, None) or (None, why) for one JSONL line; the reason names the file and line."""
    where = f"{file}:{line_number}"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        return None, f"{where}: not valid UTF-8 (byte {raw[error.start]:#04x} at column {error.start + 1})"
    try:
        record = json.loads(text)
    except (ValueError, RecursionError) as error:  # bad JSON, an integer too long, nesting too deep
        return None, f"{where}: not valid JSON: {str(error)[:200]}"
    if not isinstance(record, dict):
        return None, f"{where}: expected a JSON object per line, got {type(record).__name__}"
    return record, None


def _jsonl_lines(file: Path) -> list[tuple[int, bytes]]:
    """(line number, raw bytes) of every non-blank line."""
    return [(number, line) for number, line in enumerate(file.read_bytes().splitlines(), start=1) if line.strip()]


def _jsonl_records(file: Path) -> list[dict]:
    records = []
    for line_number, raw in _jsonl_lines(file):
        record, error = _decode_line(file, line_number, raw)
        if error:
            raise ProblemSourceError(error)
        records.append(record)
    return records


def _check_exists(file: Path, key: str) -> None:
    if not file.exists():
        raise ProblemSourceError(f"{key}: {file} does not exist")


def read_file_records(file: Path, kind: str, key: str = "problems.path") -> list[dict]:
    """Records of a `parquet` or `jsonl` file; any failure names the file."""
    _check_exists(file, key)
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


def _mapped(record: dict, problem: str, answer: str, id_column: str | None) -> dict[str, Any]:
    data = {"problem": record.get(problem), "answer": record.get(answer)}
    if id_column:
        data["id"] = record.get(id_column)
    return data


def map_columns(records: list[dict], problem: str, answer: str, id_column: str | None) -> list[RawRow]:
    """Rows with the source columns renamed to `problem`, `answer` (and `id`); a missing key stays None."""
    return [RawRow(index, _mapped(record, problem, answer, id_column)) for index, record in enumerate(records)]


# -- row sources: rows fetched by position ------------------------------------------------------


@dataclass(frozen=True)
class Columns:
    problem: str
    answer: str
    id: str | None = None

    @property
    def wanted(self) -> list[str]:
        return [self.problem, self.answer] + ([self.id] if self.id else [])


def _missing_columns(columns: Columns, available: Iterable[str], where: str) -> None:
    available = set(available)
    missing = [c for c in columns.wanted if c not in available]
    if missing:
        raise ProblemSourceError(
            f"problems.columns: column(s) {missing} not found in {where}; it has {sorted(map(str, available))}"
        )


class RowSource:
    """Rows of a source by position: `len(source)` rows, `source.rows(positions)` yields them in that order."""

    name: str

    def __len__(self) -> int:
        raise NotImplementedError

    def rows(self, positions: Sequence[int]) -> Iterator[RawRow]:
        raise NotImplementedError


class ListRows(RowSource):
    """Rows already in memory (a generated pool)."""

    def __init__(self, name: str, rows: list[RawRow]):
        self.name, self._rows = name, rows

    def __len__(self) -> int:
        return len(self._rows)

    def rows(self, positions: Sequence[int]) -> Iterator[RawRow]:
        return (self._rows[p] for p in positions)


class ArrowRows(RowSource):
    """Rows of an Arrow-backed source (a Parquet file or a `datasets.Dataset`), converted to Python a
    chunk at a time; `take(positions)` returns those rows as a `pa.Table` of the mapped columns."""

    CHUNK = 1024

    def __init__(self, name: str, length: int, take: Callable[[list[int]], pa.Table], columns: Columns):
        self.name, self._length, self._take, self._columns = name, length, take, columns

    def __len__(self) -> int:
        return self._length

    def rows(self, positions: Sequence[int]) -> Iterator[RawRow]:
        c = self._columns
        for start in range(0, len(positions), self.CHUNK):
            chunk = [int(p) for p in positions[start : start + self.CHUNK]]
            for position, record in zip(chunk, self._take(chunk).to_pylist()):
                yield RawRow(position, _mapped(record, c.problem, c.answer, c.id))


class JsonlRows(RowSource):
    """A JSONL file kept as raw lines; a line is decoded when its row is used. A line that is not
    UTF-8, not JSON or not an object becomes a row with `error` naming the file and line."""

    COLUMN_CHECK_ROWS = 1000  # a mapped column absent from all of these is a wrong mapping, not bad rows

    def __init__(self, name: str, file: Path, columns: Columns):
        self.name, self._file, self._columns = name, file, columns
        self._lines = _jsonl_lines(file)
        if not self._lines:
            raise ProblemSourceError(f"problems.path: {file} holds no rows")
        seen: set[str] = set()
        decoded = 0
        for line_number, raw in self._lines:
            record, _ = _decode_line(file, line_number, raw)
            if record is not None:
                seen.update(map(str, record))
                decoded += 1
                if decoded >= self.COLUMN_CHECK_ROWS:
                    break
        if decoded:  # a file with no decodable line at all gives one reject per line instead
            _missing_columns(columns, seen, str(file))

    def __len__(self) -> int:
        return len(self._lines)

    def rows(self, positions: Sequence[int]) -> Iterator[RawRow]:
        c = self._columns
        for position in positions:
            line_number, raw = self._lines[position]
            record, error = _decode_line(self._file, line_number, raw)
            if error:
                yield RawRow(int(position), {"line": line_number, "text": raw[:300].decode("utf-8", "replace")}, error)
            else:
                yield RawRow(int(position), _mapped(record, c.problem, c.answer, c.id))


def parquet_rows(name: str, file: Path, columns: Columns, key: str = "problems.path") -> ArrowRows:
    """A Parquet file read as Arrow, only the mapped columns."""
    import pyarrow.parquet as pq

    _check_exists(file, key)
    try:
        schema = pq.read_schema(file)
    except Exception as error:
        raise ProblemSourceError(f"{key}: cannot read {file} as parquet: {error}") from error
    _missing_columns(columns, schema.names, str(file))
    try:
        table = pq.read_table(file, columns=sorted(set(columns.wanted)))
    except Exception as error:
        raise ProblemSourceError(f"{key}: cannot read {file} as parquet: {error}") from error
    if table.num_rows == 0:
        raise ProblemSourceError(f"{key}: {file} holds no rows")
    return ArrowRows(name, table.num_rows, table.take, columns)


def jsonl_rows(name: str, file: Path, columns: Columns, key: str = "problems.path") -> JsonlRows:
    _check_exists(file, key)
    try:
        return JsonlRows(name, file, columns)
    except ProblemSourceError:
        raise
    except Exception as error:  # a folder, unreadable permissions
        raise ProblemSourceError(f"{key}: cannot read {file} as jsonl: {error}") from error


def dataset_rows(name: str, dataset, columns: Columns, where: str) -> ArrowRows:
    """A `datasets.Dataset` (memory-mapped Arrow): rows gathered by position in Arrow format."""
    _missing_columns(columns, dataset.column_names, where)
    if len(dataset) == 0:
        raise ProblemSourceError(f"problems.path: {where} holds no rows")
    arrow = dataset.select_columns(sorted(set(columns.wanted))).with_format("arrow")
    return ArrowRows(name, len(dataset), lambda positions: arrow[positions], columns)
