"""Load problem sets, validate every row, and build disjoint, decontaminated train and eval splits.

Sources: seeded `reasoning-gym` generators (offline default), a Hugging Face dataset, or a
Parquet / JSONL file, each read through a column mapping; plus held-out benchmarks by name
(`pipeline.benchmarks`) added to the eval split. A row that cannot be used goes to a rejects
table with its reason, never silently away; training problems that overlap an eval problem
are rejected the same way and replaced from the rest of the pool.
"""

from __future__ import annotations

import json
import math
import random
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from itertools import chain, islice
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import pyarrow as pa

from pipeline.benchmarks import load_benchmark, prose_issue, sampled_order
from pipeline.config import BenchmarkConfig, ProblemsConfig
from pipeline.decontamination import EvalIndex, exact_key
from pipeline.grading import Grader, default_grader
from pipeline.io import stable_hash
from pipeline.problem_files import (
    ProblemSourceError,
    RawRow,
    available_columns,
    load_saved_dataset,
    map_columns,
    read_file_records,
)
from pipeline.tables import PROBLEMS, REJECTS, from_rows

__all__ = ["PreparedProblems", "ProblemSourceError", "load_problems", "normalize_text", "prepare_problems", "problem_id"]


def normalize_text(text: str) -> str:
    """Case- and spacing-insensitive form used for ids and de-duplication (`1+1` equals `1 + 1`)."""
    return exact_key(text)


def problem_id(source: str, problem: str) -> str:
    """Stable id of a problem without one: a hash of its source and case- and whitespace-folded text."""
    folded = " ".join(unicodedata.normalize("NFKC", problem).lower().split())
    return stable_hash({"source": source, "problem": folded})


def _reasoning_gym_rows(config: ProblemsConfig) -> tuple[str, list[RawRow]]:
    import reasoning_gym

    task = config.reasoning_gym.task
    # Generate a generous pool: small generators repeat problems, and duplicates and
    # contaminated problems are dropped; the splits are filled from what is left.
    pool = 4 * (config.train_size + config.eval_size)
    try:
        dataset = reasoning_gym.create_dataset(task, size=pool, seed=config.seed, **config.reasoning_gym.options)
    except Exception as error:  # unknown task or option: name the key
        raise ProblemSourceError(f"problems.reasoning_gym: cannot create {task!r}: {error}") from error
    rows = [RawRow(i, {"problem": item["question"], "answer": item["answer"]}) for i, item in enumerate(dataset)]
    return f"reasoning_gym/{task}", rows


def _file_records(config: ProblemsConfig) -> Iterable[dict]:
    path = config.path or ""
    if config.source != "hf":
        return read_file_records(Path(path), config.source)
    import datasets

    try:
        if Path(path).exists():
            return load_saved_dataset(Path(path), config.hf_split)
        return datasets.load_dataset(path, config.hf_config, split=config.hf_split)
    except Exception as error:
        raise ProblemSourceError(f"problems.path: cannot load dataset {path!r}: {error}") from error


def _file_rows(config: ProblemsConfig) -> tuple[str, list[RawRow]]:
    path = config.path or ""
    records = [dict(record) for record in _file_records(config)]
    if not records:
        raise ProblemSourceError(f"problems.path: {path} holds no rows")
    wanted = [config.columns.problem, config.columns.answer] + ([config.columns.id] if config.columns.id else [])
    # Any row may lack a key (JSONL): such rows are rejected one by one; a column that no row has is an error.
    available = available_columns(records)
    missing = [c for c in wanted if c not in available]
    if missing:
        raise ProblemSourceError(
            f"problems.columns: column(s) {missing} not found in {path}; it has {sorted(map(str, available))}"
        )
    rows = map_columns(records, config.columns.problem, config.columns.answer, config.columns.id)
    return f"{config.source}:{Path(path).name}", rows


# -- row validation -------------------------------------------------------------------------

# What each reject reason starts with -> its kind in the metrics.
REASON_KINDS = {
    "missing or empty": "missing",
    "problem text is": "wrong_type",
    "answer is": "wrong_type",
    "duplicate of": "duplicate",
    "gold answer cannot be parsed": "gold_unparsed",
    "gold answer timed out": "gold_timeout",
    "gold answer is prose": "gold_prose",
    "contaminated": "contaminated",
}


def reason_kind(reason: str) -> str:
    return next((kind for prefix, kind in REASON_KINDS.items() if reason.startswith(prefix)), "other")


def _reject(source: str, index: int, data: dict, reason: str, pid: str | None = None) -> dict:
    return {
        "source": source,
        "source_index": index,
        "problem_id": pid,
        "reason": reason,
        "row": json.dumps(data, default=str)[:500],
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
        return None, _reject(source, row.index, row.data, issue)
    pid = str(row.data["id"]) if row.data.get("id") not in (None, "") else problem_id(source, problem)
    issue = _text_issue(answer, "answer", "text or a number")
    if issue:
        return None, _reject(source, row.index, row.data, issue, pid)
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
GoldCheck = Callable[[str], "str | None"]


def _validated(source: str, rows: list[RawRow], grader: Grader, gold_check: GoldCheck | None, batch_size: int):
    """(row, clean, reject) in row order; gold answers are parsed in batches by the grader."""
    for start in range(0, len(rows), batch_size):
        batch = [(row, *_validate(source, row)) for row in rows[start : start + batch_size]]
        if gold_check:  # a gold that fails the extra check is rejected before the grader sees it
            for i, (row, clean, reject) in enumerate(batch):
                issue = gold_check(clean["answer"]) if clean else None
                if issue:
                    batch[i] = (row, None, _reject(source, row.index, row.data, issue, clean["problem_id"]))
        problems = [clean for _, clean, _ in batch if clean]
        failures = iter(grader.check_golds([clean["answer"] for clean in problems]))
        for row, clean, reject in batch:
            failure = next(failures) if clean else None
            if failure:
                why = "timed out" if failure == "timeout" else "cannot be parsed"
                reason = f"gold answer {why}: {clean['answer'][:80]!r}"
                yield row, None, _reject(source, row.index, row.data, reason, clean["problem_id"])
            else:
                yield row, clean, reject


def _unique(
    source: str,
    rows: list[RawRow],
    grader: Grader,
    rejects: list[dict],
    gold_check: GoldCheck | None = None,
    batch_size: int = _GOLD_CHECK_BATCH,
) -> Iterator[dict]:
    """Usable rows of one source, lazily and in order; bad rows and duplicates (by normalized
    text or id) are appended to `rejects` as they are met."""
    first_row: dict[str, int] = {}  # normalized text or id -> first row index
    for row, clean, reject in _validated(source, rows, grader, gold_check, batch_size):
        if reject:
            rejects.append(reject)
            continue
        keys = (normalize_text(clean["problem"]), "id:" + clean["problem_id"])
        duplicate_of = next((first_row[k] for k in keys if k in first_row), None)
        if duplicate_of is not None:
            rejects.append(_reject(source, row.index, row.data, f"duplicate of row {duplicate_of}", clean["problem_id"]))
            continue
        first_row.update({k: row.index for k in keys})
        yield clean


def _clean_reject(clean: dict, reason: str) -> dict:
    data = {"problem": clean["problem"], "answer": clean["answer"]}
    return _reject(clean["source"], clean["source_index"], data, reason, clean["problem_id"])


# -- splits ---------------------------------------------------------------------------------


@dataclass
class PreparedProblems:
    """The three tables `mrt prepare-problems` writes, and the counts for its metrics file."""

    train: pa.Table
    eval: pa.Table
    rejects: pa.Table
    metrics: dict = field(default_factory=dict)


def _benchmark(bench: BenchmarkConfig, seed: int, grader: Grader, index: EvalIndex,
               rejects: list[dict]) -> tuple[list[dict], int]:
    """Up to `limit` usable problems of one benchmark in a seeded order (each added to the eval
    index), and how many rows the benchmark has."""
    loaded = load_benchmark(bench)
    rejected_before = len(rejects)
    batch = min(_GOLD_CHECK_BATCH, max(16, 2 * bench.limit)) if bench.limit else _GOLD_CHECK_BATCH
    taken: list[dict] = []
    rows = sampled_order(loaded.rows, seed, bench.name)
    for clean in _unique(bench.name, rows, grader, rejects, prose_issue, batch):
        same = index.exact(clean["problem"])
        if same:
            rejects.append(_clean_reject(clean, f"duplicate of eval problem {same.eval_id} ({same.eval_source})"))
            continue
        clean["provenance"] = json.dumps({"source": bench.name, "row": clean["source_index"], "from": loaded.origin})
        index.add(clean["problem_id"], bench.name, clean["problem"])
        taken.append(clean)
        if bench.limit and len(taken) >= bench.limit:
            break
    if not taken:
        reasons = Counter(r["reason"][:60] for r in rejects[rejected_before:])
        raise ProblemSourceError(
            f"problems.eval_benchmarks[{bench.name}]: no usable problems in {loaded.origin}: "
            f"{len(rejects) - rejected_before} rejected, e.g. " + "; ".join(f"{n}x {why}" for why, n in reasons.most_common(3))
        )
    return taken, len(loaded.rows)


def _fill_train(candidates: Iterable[dict], size: int, index: EvalIndex, config: ProblemsConfig,
                rejects: list[dict]) -> tuple[list[dict], Counter]:
    """The first `size` candidates that overlap no eval problem; the others are rejected, counted by kind."""
    train: list[dict] = []
    removed: Counter = Counter()
    for clean in candidates:
        hit = index.find(clean["problem"]) if config.decontamination.enabled else None
        if hit:
            rejects.append(_clean_reject(clean, hit.reason(index.ngram)))
            removed[hit.kind] += 1
            continue
        train.append(clean)
        if len(train) >= size:  # checked after taking, so the lazy pool is read no further than needed
            break
    return train, removed


def problem_metrics(train: list[dict], evaluation: list[dict], rejects: list[dict], config: ProblemsConfig,
                    removed: Counter, benchmark_rows: dict[str, int]) -> dict:
    """Counts for `metrics/problems.json`: per split and source, rejects by kind and source, decontamination."""
    decon = config.decontamination
    return {
        "train": len(train),
        "eval": len(evaluation),
        "train_shortfall": config.train_size - len(train),  # > 0 when the pool ran out
        "train_by_source": dict(sorted(Counter(r["source"] for r in train).items())),
        "eval_by_source": dict(sorted(Counter(r["source"] for r in evaluation).items())),
        "benchmark_rows": benchmark_rows,  # rows each benchmark has (eval_by_source: used)
        "rejected": len(rejects),
        "rejected_by_reason": dict(sorted(Counter(reason_kind(r["reason"]) for r in rejects).items())),
        "rejected_by_source": dict(sorted(Counter(r["source"] for r in rejects).items())),
        "decontamination": {
            "enabled": decon.enabled,
            "ngram": decon.ngram,
            "removed": sum(removed.values()),
            "exact": removed["exact"],
            "ngram_overlap": removed["ngram"],
        },
    }


def prepare_problems(config: ProblemsConfig, grader: Grader | None = None) -> PreparedProblems:
    """Validated, de-duplicated, disjoint splits; benchmarks added to eval; train decontaminated and refilled."""
    grader = grader or default_grader()
    source, rows = _reasoning_gym_rows(config) if config.source == "reasoning_gym" else _file_rows(config)
    rejects: list[dict] = []
    pool = _unique(source, rows, grader, rejects)
    # A generated pool is read only as far as needed; a file is read whole, so its splits are a random sample.
    head = list(islice(pool, config.train_size + config.eval_size)) if config.source == "reasoning_gym" else list(pool)
    if not head:
        raise ProblemSourceError(f"no usable problems in {source}: all {len(rows)} rows were rejected")
    random.Random(config.seed).shuffle(head)
    evaluation = head[: config.eval_size]
    index = EvalIndex(config.decontamination.ngram)
    for clean in evaluation:
        index.add(clean["problem_id"], clean["source"], clean["problem"])
    available: dict[str, int] = {}
    for bench in config.eval_benchmarks:
        taken, available[bench.name] = _benchmark(bench, config.seed, grader, index, rejects)
        evaluation += taken
    # Candidates: the shuffled rest of the head, then (generated pools) the rows not read yet.
    train, removed = _fill_train(chain(head[config.eval_size :], pool), config.train_size, index, config, rejects)
    if not train:
        raise ProblemSourceError(
            f"problems: {len(head)} usable problems leave none for training after eval_size={config.eval_size}"
            + (f" and decontamination ({sum(removed.values())} removed)" if removed else "")
        )
    metrics = problem_metrics(train, evaluation, rejects, config, removed, available)
    return PreparedProblems(
        from_rows([dict(r, split="train") for r in train], PROBLEMS),
        from_rows([dict(r, split="eval") for r in evaluation], PROBLEMS),
        from_rows(rejects, REJECTS),
        metrics,
    )


def load_problems(config: ProblemsConfig, grader: Grader | None = None) -> tuple[pa.Table, pa.Table, pa.Table]:
    """(train, eval, rejects): see `prepare_problems`."""
    prepared = prepare_problems(config, grader)
    return prepared.train, prepared.eval, prepared.rejects
