"""Load problem sets, validate every row, and split them into disjoint train and eval sets.

Sources: seeded `reasoning-gym` generators (offline default), a Hugging Face dataset, or a
Parquet / JSONL file, each read through a column mapping. A row that cannot be used goes
to a rejects table with its reason, never silently away.
"""

from __future__ import annotations

import json
import math
import random
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa

from pipeline.config import ProblemsConfig
from pipeline.grading import Grader, default_grader
from pipeline.io import stable_hash
from pipeline.tables import PROBLEMS, REJECTS, from_rows


class ProblemSourceError(ValueError):
    """The problem source itself cannot be read (missing file, wrong columns, empty)."""


@dataclass
class RawRow:
    index: int
    data: dict[str, Any]


def normalize_text(text: str) -> str:
    """Case- and whitespace-insensitive form used for ids and de-duplication."""
    return " ".join(unicodedata.normalize("NFKC", text).lower().split())


def problem_id(source: str, problem: str) -> str:
    return stable_hash({"source": source, "problem": normalize_text(problem)})


def _reasoning_gym_rows(config: ProblemsConfig) -> tuple[str, list[RawRow]]:
    import reasoning_gym

    task = config.reasoning_gym.task
    # Generate a generous pool: small generators repeat problems, and duplicates are dropped.
    pool = 4 * (config.train_size + config.eval_size)
    try:
        dataset = reasoning_gym.create_dataset(task, size=pool, seed=config.seed, **config.reasoning_gym.options)
    except Exception as error:  # unknown task or option: name the key
        raise ProblemSourceError(f"problems.reasoning_gym: cannot create {task!r}: {error}") from error
    rows = [RawRow(i, {"problem": item["question"], "answer": item["answer"]}) for i, item in enumerate(dataset)]
    return f"reasoning_gym/{task}", rows


def _enough(config: ProblemsConfig, accepted: int) -> bool:
    """Generated pools are oversized on purpose: stop reading once the splits are full."""
    return config.source == "reasoning_gym" and accepted >= config.train_size + config.eval_size


def _file_rows(config: ProblemsConfig) -> tuple[str, list[RawRow]]:
    path = config.path or ""
    if config.source == "hf":
        import datasets

        local = Path(path)
        try:
            if local.exists():
                dataset = datasets.load_from_disk(str(local))
                if isinstance(dataset, datasets.DatasetDict):
                    dataset = dataset[config.hf_split]
            else:
                dataset = datasets.load_dataset(path, config.hf_config, split=config.hf_split)
        except Exception as error:
            raise ProblemSourceError(f"problems.path: cannot load dataset {path!r}: {error}") from error
        records: Iterable[dict] = dataset
    else:
        file = Path(path)
        if not file.exists():
            raise ProblemSourceError(f"problems.path: {file} does not exist")
        try:
            if config.source == "parquet":
                import pyarrow.parquet as pq

                records = pq.read_table(file).to_pylist()
            else:
                records = []
                for line_number, line in enumerate(file.read_text().splitlines(), start=1):
                    if line.strip():
                        try:
                            record = json.loads(line)
                        except ValueError as error:  # bad JSON, or an integer too long to convert
                            raise ProblemSourceError(f"{file}:{line_number}: not valid JSON: {error}") from error
                        if not isinstance(record, dict):
                            raise ProblemSourceError(
                                f"{file}:{line_number}: expected a JSON object per line, got {type(record).__name__}"
                            )
                        records.append(record)
        except ProblemSourceError:
            raise
        except Exception as error:
            raise ProblemSourceError(f"problems.path: cannot read {file} as {config.source}: {error}") from error
    rows = [RawRow(i, dict(record)) for i, record in enumerate(records)]
    if not rows:
        raise ProblemSourceError(f"problems.path: {path} holds no rows")
    wanted = [config.columns.problem, config.columns.answer] + ([config.columns.id] if config.columns.id else [])
    # Any row may lack a key (JSONL): such rows are rejected one by one; a column that no row has is an error.
    available = set().union(*(row.data for row in rows))
    missing = [c for c in wanted if c not in available]
    if missing:
        raise ProblemSourceError(
            f"problems.columns: column(s) {missing} not found in {path}; it has {sorted(map(str, available))}"
        )
    mapped = []
    for row in rows:
        data = {"problem": row.data.get(config.columns.problem), "answer": row.data.get(config.columns.answer)}
        if config.columns.id:
            data["id"] = row.data.get(config.columns.id)
        mapped.append(RawRow(row.index, data))
    return f"{config.source}:{Path(path).name}", mapped


def _reject(source: str, row: RawRow, reason: str, pid: str | None = None) -> dict:
    return {
        "source": source,
        "source_index": row.index,
        "problem_id": pid,
        "reason": reason,
        "row": json.dumps(row.data, default=str)[:500],
    }


def _text_issue(value: Any, what: str, allowed: str) -> str | None:
    """Why a value cannot serve as the problem or answer text (None when it can)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return f"missing or empty {what}"
    if not isinstance(value, str):
        return f"{what} is {type(value).__name__}, not {allowed}"
    return None


def _validate(source: str, row: RawRow) -> tuple[dict | None, dict | None]:
    problem, answer = row.data.get("problem"), row.data.get("answer")
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        # Numbers are fine as answers; NaN or infinity (e.g. a missing value in a float column) is not.
        answer = None if isinstance(answer, float) and not math.isfinite(answer) else str(answer)
    issue = _text_issue(problem, "problem text", "text")
    if issue:
        return None, _reject(source, row, issue)
    pid = str(row.data["id"]) if row.data.get("id") not in (None, "") else problem_id(source, problem)
    issue = _text_issue(answer, "answer", "text or a number")
    if issue:
        return None, _reject(source, row, issue, pid)
    clean = {
        "problem_id": pid,
        "source": source,
        "problem": problem.strip(),
        "answer": answer.strip(),
        "source_index": row.index,
        "provenance": json.dumps({"source": source, "row": row.index}),
    }
    return clean, None


_GOLD_CHECK_BATCH = 256


def _validated(source: str, rows: list[RawRow], grader: Grader):
    """(row, clean, reject) in row order; gold answers are parsed in batches by the grader."""
    for start in range(0, len(rows), _GOLD_CHECK_BATCH):
        batch = [(row, *_validate(source, row)) for row in rows[start : start + _GOLD_CHECK_BATCH]]
        problems = [clean for _, clean, _ in batch if clean]
        failures = iter(grader.check_golds([clean["answer"] for clean in problems]))
        for row, clean, reject in batch:
            failure = next(failures) if clean else None
            if failure:
                why = "timed out" if failure == "timeout" else "cannot be parsed"
                yield row, None, _reject(source, row, f"gold answer {why}: {clean['answer'][:80]!r}", clean["problem_id"])
            else:
                yield row, clean, reject


def load_problems(config: ProblemsConfig, grader: Grader | None = None) -> tuple[pa.Table, pa.Table, pa.Table]:
    """(train, eval, rejects): validated, de-duplicated, disjoint splits."""
    source, rows = _reasoning_gym_rows(config) if config.source == "reasoning_gym" else _file_rows(config)
    accepted, rejects = [], []
    first_row: dict[str, int] = {}  # normalized text or id -> first row index
    for row, clean, reject in _validated(source, rows, grader or default_grader()):
        if _enough(config, len(accepted)):
            break
        if reject:
            rejects.append(reject)
            continue
        keys = (normalize_text(clean["problem"]), "id:" + clean["problem_id"])
        duplicate_of = next((first_row[k] for k in keys if k in first_row), None)
        if duplicate_of is not None:
            rejects.append(_reject(source, row, f"duplicate of row {duplicate_of}", clean["problem_id"]))
            continue
        first_row.update({k: row.index for k in keys})
        accepted.append(clean)
    if not accepted:
        raise ProblemSourceError(f"no usable problems in {source}: all {len(rows)} rows were rejected")
    random.Random(config.seed).shuffle(accepted)
    eval_rows = [dict(r, split="eval") for r in accepted[: config.eval_size]]
    train_rows = [dict(r, split="train") for r in accepted[config.eval_size : config.eval_size + config.train_size]]
    if not train_rows:
        raise ProblemSourceError(
            f"problems: {len(accepted)} usable problems leave none for training after eval_size={config.eval_size}"
        )
    return from_rows(train_rows, PROBLEMS), from_rows(eval_rows, PROBLEMS), from_rows(rejects, REJECTS)
