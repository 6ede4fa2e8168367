"""Grade a whole file of (gold, prediction) pairs: the engine behind `mrt grade`.

Reads Parquet or JSONL (any column types), keeps every input column, adds `extracted`, `grade` and
`grade_reason`, and writes Parquet or JSONL (by the output's suffix) atomically.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.grading.pool import Grader
from pipeline.io import _atomic_replace, write_table

SUFFIXES = (".parquet", ".jsonl")
MODES = ("completion", "answer")


class GradeFileError(ValueError):
    """An input file or column that cannot be graded; the message names it."""


def read_rows(path: Path) -> list[dict]:
    """Rows of a Parquet or JSONL file; a bad JSONL line is named by its number."""
    if not path.exists():
        raise GradeFileError(f"{path}: no such file")
    if path.suffix not in SUFFIXES:
        raise GradeFileError(f"{path}: expected a .parquet or .jsonl file")
    if path.suffix == ".parquet":
        try:
            return pq.read_table(path).to_pylist()
        except (pa.ArrowInvalid, OSError) as error:
            raise GradeFileError(f"{path}: not a readable Parquet file ({error})") from error
    rows = []
    with path.open(encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise GradeFileError(f"{path}, line {number}: not valid JSON ({error.msg})") from error
            except RecursionError:
                raise GradeFileError(f"{path}, line {number}: not valid JSON (nested too deeply)") from None
            if not isinstance(row, dict):
                raise GradeFileError(f"{path}, line {number}: expected a JSON object, got {type(row).__name__}")
            try:  # a `\ud800` escape decodes to a lone surrogate, which no output can hold
                json.dumps(row, ensure_ascii=False).encode("utf-8")
            except UnicodeEncodeError as error:
                raise GradeFileError(f"{path}, line {number}: text that is not valid Unicode ({error.reason})") from None
            rows.append(row)
    return rows


def _column(rows: list[dict], name: str, path: Path) -> list[str | None]:
    if rows and not any(name in row for row in rows):
        raise GradeFileError(f"{path}: no column {name!r} (columns: {', '.join(rows[0])})")
    return [None if row.get(name) is None else str(row[name]) for row in rows]


def _to_table(rows: list[dict]) -> pa.Table:
    try:
        return pa.Table.from_pylist(rows)
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed types in a column: keep them as JSON text
        return pa.Table.from_pylist([{k: v if isinstance(v, str) or v is None else json.dumps(v) for k, v in r.items()} for r in rows])


def grade_file(
    input_path: Path, output_path: Path, gold_column: str, prediction_column: str, mode: str, grader: Grader
) -> Counter:
    """Grade every row; returns the count of each grade (and of each unparsed reason).

    `mode`: `completion` (whole model outputs: the answer is read after `</think>`) or `answer`
    (bare answers, as another pipeline extracted them)."""
    if mode not in MODES:
        raise GradeFileError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
    if output_path.suffix not in SUFFIXES:
        raise GradeFileError(f"{output_path}: the output must end in .parquet or .jsonl")
    rows = read_rows(input_path)
    if not rows:
        raise GradeFileError(f"{input_path}: no rows to grade")
    golds = [gold or "" for gold in _column(rows, gold_column, input_path)]
    predictions = _column(rows, prediction_column, input_path)
    if mode == "completion":
        grades = grader.grade_completions(golds, [p or "" for p in predictions])
    else:
        grades = grader.grade_answers(golds, [p if p and p.strip() else None for p in predictions])
    graded = [dict(row, extracted=g.extracted, grade=g.grade, grade_reason=g.reason) for row, g in zip(rows, grades)]
    if output_path.suffix == ".parquet":
        write_table(_to_table(graded), output_path)
    else:
        lines = "".join(json.dumps(row, default=str, ensure_ascii=False) + "\n" for row in graded)
        _atomic_replace(lambda tmp: Path(tmp).write_text(lines, encoding="utf-8"), output_path)
    return Counter(g.grade for g in grades) + Counter(f"unparsed:{g.reason}" for g in grades if g.reason)
