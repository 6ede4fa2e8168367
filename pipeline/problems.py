"""Load problem sets, validate every row, and build disjoint, decontaminated train and eval splits.

Sources: seeded `reasoning-gym` generators (offline default), a Hugging Face dataset, or a
Parquet / JSONL file, each read through a column mapping; plus held-out benchmarks by name
(`pipeline.heldout`) added to the eval split. A row that cannot be used goes to a rejects
table with its reason, never silently away; training problems that overlap an eval problem
are rejected the same way and replaced from the rest of the pool.

A large source is sampled before it is validated: rows are drawn in seeded rounds of
positions (`visit_rounds`) and read as Arrow or raw lines, so preparing 10k problems from a
million-row source validates about 10k rows, not a million (see docs/problems.md).
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from dataclasses import dataclass, field
from itertools import chain, islice
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import pyarrow as pa

from pipeline.heldout import load_benchmark, prose_issue, sampled_order
from pipeline.config import BenchmarkConfig, ProblemsConfig
from pipeline.decontamination import EvalIndex, exact_key, fold
from pipeline.grading import Grader, default_grader
from pipeline.io import stable_hash
from pipeline.problem_files import (
    Columns,
    ListRows,
    ProblemSourceError,
    RawRow,
    RowSource,
    dataset_rows,
    jsonl_rows,
    load_saved_dataset,
    parquet_rows,
)
from pipeline.tables import PROBLEMS, REJECTS, from_rows

__all__ = ["PreparedProblems", "ProblemSourceError", "load_problems", "normalize_text", "prepare_problems", "problem_id"]


def normalize_text(text: str) -> str:
    """Case- and spacing-insensitive form used for ids and de-duplication (`1+1` equals `1 + 1`)."""
    return exact_key(text)


def problem_id(source: str, problem: str) -> str:
    """Stable id of a problem without one: a hash of its source and case- and whitespace-folded text."""
    folded = " ".join(fold(problem).split())
    return stable_hash({"source": source, "problem": folded})


def _reasoning_gym_source(config: ProblemsConfig) -> ListRows:
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
    return ListRows(f"reasoning_gym/{task}", rows)


def _file_source(config: ProblemsConfig) -> RowSource:
    """The configured file or dataset, read lazily by position (see `pipeline.problem_files`)."""
    path = config.path or ""
    columns = Columns(config.columns.problem, config.columns.answer, config.columns.id)
    name = f"{config.source}:{Path(path).name}"
    if config.source == "parquet":
        return parquet_rows(name, Path(path), columns)
    if config.source == "jsonl":
        return jsonl_rows(name, Path(path), columns)
    import datasets

    try:
        if Path(path).exists():
            dataset = load_saved_dataset(Path(path), config.hf_split)
        else:
            dataset = datasets.load_dataset(path, config.hf_config, split=config.hf_split)
    except ProblemSourceError:
        raise
    except Exception as error:
        raise ProblemSourceError(f"problems.path: cannot load dataset {path!r}: {error}") from error
    return dataset_rows(name, dataset, columns, path)


def visit_rounds(n: int, need: int, seed: int) -> Iterator[list[int]]:
    """Positions of a source's rows in the order they are checked: a seeded sample of `need`
    rows plus a reserve for rejects (a quarter, at least 64), in file order; then, if that
    yields too few usable problems, twice as many more, and so on until the source is used up.
    A source no larger than the first round is read whole, in file order."""
    order = np.random.default_rng(seed).permutation(n)
    size, start = min(n, need + max(need // 4, 64)), 0
    while start < n:
        yield sorted(order[start : start + size].tolist())
        start, size = start + size, size * 2


# -- row validation -------------------------------------------------------------------------

# What each reject reason starts with -> its kind in the metrics.
REASON_KINDS = {
    "missing or empty": "missing",
    "problem text is": "wrong_type",
    "answer is": "wrong_type",
    "undecodable": "undecodable",
    "too long": "too_long",
    "problem text contains the tokenizer's special token": "special_tokens",
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
        # ASCII JSON (the default): a lone surrogate is written as an escape, never fails the table.
        "row": json.dumps(data, default=str)[:500],
    }


def _unencodable(text: str) -> int | None:
    """Position of the first character UTF-8 cannot encode (a lone surrogate), or None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        return error.start
    return None


def _text_issue(value: Any, what: str, allowed: str, max_chars: int | None = None) -> str | None:
    """Why a value cannot serve as the problem or answer text (None when it can)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return f"missing or empty {what}"
    if not isinstance(value, str):
        return f"{what} is {type(value).__name__}, not {allowed}"
    if max_chars is not None and len(value) > max_chars:  # before anything costly reads it
        return f"too long: the {what} has {len(value)} characters (problems.max_problem_chars: {max_chars})"
    bad = _unencodable(value)
    if bad is not None:
        return f"undecodable: the {what} is not valid Unicode (lone surrogate at character {bad})"
    return None


def _row_id(value: Any) -> str | None:
    """The source's id as text; missing, empty, NaN or infinite ids are None (a derived id is used)."""
    if value is None or value == "" or (isinstance(value, float) and not math.isfinite(value)):
        return None
    text = str(value)
    return text if _unencodable(text) is None else None


def _validate(source: str, row: RawRow, max_chars: int | None, screen: ProblemScreen | None) -> tuple[dict | None, dict | None]:
    if row.error:
        return None, _reject(source, row.index, row.data, f"undecodable: {row.error}")
    problem, answer = row.data.get("problem"), row.data.get("answer")
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        # Numbers are fine as answers; NaN or infinity (e.g. a missing value in a float column) is not.
        answer = None if isinstance(answer, float) and not math.isfinite(answer) else str(answer)
    issue = _text_issue(problem, "problem text", "text", max_chars)
    if issue:
        return None, _reject(source, row.index, row.data, issue)
    pid = _row_id(row.data.get("id")) or problem_id(source, problem)
    issue = _text_issue(answer, "answer", "text or a number", max_chars) or (screen(problem.strip()) if screen else None)
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
ProblemScreen = Callable[[str], "str | None"]  # why a problem cannot be prompted to the model (None: it can)


# A wrong answer every gold is compared with once: `10^{10^{10}}` parses and equals itself at
# once, but comparing it with any other number times out, so every sample would be `unparsed`.
_PROBE_ANSWER = "0"


def _gold_failure(grade) -> str | None:
    """Why a gold answer is unusable, from grading `_PROBE_ANSWER` against it: the gold must
    parse, and the comparison must finish within the grader's time limit."""
    if grade.reason == "unparsed_gold":
        return "cannot be parsed"
    if grade.reason == "timeout":
        return "timed out"
    return None


@dataclass
class _Checker:
    """Validates and de-duplicates the rows of one source, lazily; bad rows and duplicates (by
    normalized text or id) are appended to `rejects` as they are met. Gold answers are checked in
    batches by the grader, so a row is only ever graded when its batch is read."""

    source: str
    grader: Grader
    rejects: list[dict]
    gold_check: GoldCheck | None = None
    batch_size: int = _GOLD_CHECK_BATCH
    max_chars: int | None = None
    screen: ProblemScreen | None = None
    on_usable: Callable[[int], None] | None = None
    checked: int = 0
    first_row: dict[str, int] = field(default_factory=dict)  # normalized text or id -> first row index

    def _validated(self, rows: Iterable[RawRow]):
        """(row, clean, reject) in row order."""
        rows = iter(rows)
        while batch_rows := list(islice(rows, self.batch_size)):
            self.checked += len(batch_rows)
            batch = [(row, *_validate(self.source, row, self.max_chars, self.screen)) for row in batch_rows]
            if self.gold_check:  # a gold that fails the extra check is rejected before the grader sees it
                for i, (row, clean, reject) in enumerate(batch):
                    issue = self.gold_check(clean["answer"]) if clean else None
                    if issue:
                        batch[i] = (row, None, _reject(self.source, row.index, row.data, issue, clean["problem_id"]))
            golds = [clean["answer"] for _, clean, _ in batch if clean]
            grades = iter(self.grader.grade_answers(golds, [_PROBE_ANSWER] * len(golds)))
            for row, clean, reject in batch:
                failure = _gold_failure(next(grades)) if clean else None
                if failure:
                    reason = f"gold answer {failure}: {clean['answer'][:80]!r}"
                    yield row, None, _reject(self.source, row.index, row.data, reason, clean["problem_id"])
                else:
                    yield row, clean, reject

    def unique(self, rows: Iterable[RawRow]) -> Iterator[dict]:
        """Usable, first-seen rows, in order."""
        for row, clean, reject in self._validated(rows):
            if reject:
                self.rejects.append(reject)
                continue
            keys = (normalize_text(clean["problem"]), "id:" + clean["problem_id"])
            duplicate_of = next((self.first_row[k] for k in keys if k in self.first_row), None)
            if duplicate_of is not None:
                reason = f"duplicate of row {duplicate_of}"
                self.rejects.append(_reject(self.source, row.index, row.data, reason, clean["problem_id"]))
                continue
            self.first_row.update({k: row.index for k in keys})
            if self.on_usable:
                self.on_usable(1)
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


def _benchmark(bench: BenchmarkConfig, config: ProblemsConfig, grader: Grader, index: EvalIndex,
               rejects: list[dict], screen: ProblemScreen | None) -> tuple[list[dict], int]:
    """Up to `limit` usable problems of one benchmark in a seeded order (each added to the eval
    index), and how many rows the benchmark has."""
    loaded = load_benchmark(bench)
    rejected_before = len(rejects)
    batch = min(_GOLD_CHECK_BATCH, max(16, 2 * bench.limit)) if bench.limit else _GOLD_CHECK_BATCH
    checker = _Checker(bench.name, grader, rejects, prose_issue, batch, config.max_problem_chars, screen)
    taken: list[dict] = []
    rows = sampled_order(loaded.rows, config.seed, bench.name)
    for clean in checker.unique(rows):
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
                    removed: Counter, benchmark_rows: dict[str, int], source_rows: dict[str, int]) -> dict:
    """Counts for `metrics/problems.json`: per split and source, rejects by kind and source, decontamination."""
    decon = config.decontamination
    return {
        "source_rows": source_rows,  # rows in the source and how many were read (a sample of a large one)
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


def _pool(source: RowSource, checker: _Checker, config: ProblemsConfig) -> tuple[list[dict], Iterator[dict]]:
    """(head, rest): the usable problems the splits are drawn from, and a lazy supply for refills.
    A generated pool is read in order only as far as needed; a file or dataset is read in
    seeded rounds of positions (`visit_rounds`) until they hold enough, so its splits are a
    random sample and only the sampled rows (plus a reserve) are ever validated."""
    need = config.train_size + config.eval_size
    if isinstance(source, ListRows):
        pool = checker.unique(source.rows(range(len(source))))
        return list(islice(pool, need)), pool
    rounds = visit_rounds(len(source), need, config.seed)
    head: list[dict] = []
    for positions in rounds:
        head += checker.unique(source.rows(positions))
        if len(head) >= need:
            break
    return head, chain.from_iterable(checker.unique(source.rows(positions)) for positions in rounds)


def _no_usable(source: str, checked: int, rejects: list[dict]) -> ProblemSourceError:
    reasons = Counter(r["reason"][:240] for r in rejects)
    examples = "; ".join(f"{n}x {why}" for why, n in reasons.most_common(3))
    return ProblemSourceError(f"no usable problems in {source}: all {checked} rows were rejected, e.g. {examples}")


def prepare_problems(
    config: ProblemsConfig,
    grader: Grader | None = None,
    screen: ProblemScreen | None = None,
    on_usable: Callable[[int], None] | None = None,
) -> PreparedProblems:
    """Validated, de-duplicated, disjoint splits; benchmarks added to eval; train decontaminated and refilled.

    `screen(problem)` says why a problem cannot be prompted to the model (special tokens, too
    long: `pipeline.problem_screen`); `on_usable(n)` is called as usable problems are found (a progress bar).
    """
    grader = grader or default_grader()
    source = _reasoning_gym_source(config) if config.source == "reasoning_gym" else _file_source(config)
    rejects: list[dict] = []
    checker = _Checker(source.name, grader, rejects, None, _GOLD_CHECK_BATCH, config.max_problem_chars, screen, on_usable)
    head, rest = _pool(source, checker, config)
    if not head:
        raise _no_usable(source.name, checker.checked, rejects)
    random.Random(config.seed).shuffle(head)
    evaluation = head[: config.eval_size]
    index = EvalIndex(config.decontamination.ngram)
    for clean in evaluation:
        index.add(clean["problem_id"], clean["source"], clean["problem"])
    available: dict[str, int] = {}
    for bench in config.eval_benchmarks:
        taken, available[bench.name] = _benchmark(bench, config, grader, index, rejects, screen)
        evaluation += taken
    # Candidates: the shuffled rest of the head, then the rows not read yet.
    train, removed = _fill_train(chain(head[config.eval_size :], rest), config.train_size, index, config, rejects)
    if not train:
        raise ProblemSourceError(
            f"problems: {len(head)} usable problems leave none for training after eval_size={config.eval_size}"
            + (f" and decontamination ({sum(removed.values())} removed)" if removed else "")
        )
    rows = {"total": len(source), "checked": checker.checked}
    metrics = problem_metrics(train, evaluation, rejects, config, removed, available, rows)
    return PreparedProblems(
        from_rows([dict(r, split="train") for r in train], PROBLEMS),
        from_rows([dict(r, split="eval") for r in evaluation], PROBLEMS),
        from_rows(rejects, REJECTS),
        metrics,
    )


def load_problems(
    config: ProblemsConfig, grader: Grader | None = None, screen: ProblemScreen | None = None
) -> tuple[pa.Table, pa.Table, pa.Table]:
    """(train, eval, rejects): see `prepare_problems`."""
    prepared = prepare_problems(config, grader, screen)
    return prepared.train, prepared.eval, prepared.rejects
