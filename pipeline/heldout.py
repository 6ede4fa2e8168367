"""Held-out benchmarks by name: AIME 2024/2025, AMC 2023, MATH-500, MinervaMATH, CHAMP.

Each name knows where its problems live and what its columns are called. A benchmark is
read from `path` when given (parquet, jsonl, or a `save_to_disk` folder laid out like the hub
dataset), else from the Hugging Face hub (or the local `datasets` cache), trying the known
dataset ids in order. `champ` ships inside the PyPI package `champ-dataset`, so it works
offline. Rows come back mapped to `problem`, `answer` and `id` (`<name>:<id>` when the set
has ids) for `pipeline.problems` to validate like any other source.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Protocol

from pipeline.problem_files import ProblemSourceError, RawRow, available_columns, local_records, map_columns


class _Columns(Protocol):
    problem: str
    answer: str
    id: str | None


class BenchmarkConfig(Protocol):
    """What is read of a `pipeline.config.BenchmarkConfig` (a protocol, so this module does not
    import the config, which imports `check_name` from here to validate names)."""

    name: str
    path: str | None
    split: str | None
    columns: _Columns | None


@dataclass(frozen=True)
class ColumnLayout:
    """Column names of one published copy of a benchmark."""

    problem: str
    answer: str
    id: str | None = None  # used when the column exists


@dataclass(frozen=True)
class HubDataset:
    dataset: str
    split: str
    layout: ColumnLayout
    config: str | None = None


@dataclass(frozen=True)
class Benchmark:
    name: str
    title: str
    hub: tuple[HubDataset, ...] = ()
    package: str | None = None  # a PyPI package that ships the problems


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in [
        Benchmark("aime24", "AIME 2024 (30 problems)", (
            HubDataset("HuggingFaceH4/aime_2024", "train", ColumnLayout("problem", "answer", "id")),
            HubDataset("Maxwell-Jia/AIME_2024", "train", ColumnLayout("Problem", "Answer", "ID")),
        )),
        Benchmark("aime25", "AIME 2025 (30 problems)", (
            HubDataset("yentinglin/aime_2025", "train", ColumnLayout("problem", "answer", "id")),
            HubDataset("math-ai/aime25", "test", ColumnLayout("problem", "answer", "id")),
        )),
        Benchmark("amc23", "AMC 2023 (40 problems)", (
            HubDataset("math-ai/amc23", "test", ColumnLayout("question", "answer", "id")),
            HubDataset("knoveleng/AMC-23", "train", ColumnLayout("problem", "answer", "id")),
        )),
        Benchmark("math500", "MATH-500 (500 problems)", (
            HubDataset("HuggingFaceH4/MATH-500", "test", ColumnLayout("problem", "answer", "unique_id")),
        )),
        Benchmark("minerva", "MinervaMATH (272 problems; the gold is the boxed part of the solution)", (
            HubDataset("math-ai/minervamath", "test", ColumnLayout("question", "answer")),
            HubDataset("knoveleng/Minerva-Math", "train", ColumnLayout("problem", "solution")),
        )),
        Benchmark("champ", "CHAMP competition problems (270; PyPI champ-dataset, offline)", package="champ-dataset"),
    ]
}

# Column layouts tried, in order, on a local file: the common ones, then each hub copy's.
_GENERIC = (ColumnLayout("problem", "answer", "id"), ColumnLayout("question", "answer", "id"), ColumnLayout("Problem", "Answer", "ID"))


@dataclass
class LoadedBenchmark:
    name: str
    rows: list[RawRow]  # in the benchmark's own order; `index` is the row's position there
    origin: str  # where the rows came from, for provenance


def check_name(name: str) -> str:
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; choose one of {', '.join(sorted(BENCHMARKS))}")
    return name


def _layouts(benchmark: Benchmark, config: BenchmarkConfig) -> tuple[ColumnLayout, ...]:
    if config.columns is not None:
        return (ColumnLayout(config.columns.problem, config.columns.answer, config.columns.id),)
    return _GENERIC + tuple(h.layout for h in benchmark.hub)


def _mapped(name: str, records: list[dict], layouts: tuple[ColumnLayout, ...], where: str, key: str) -> list[RawRow]:
    """Rows under the first layout whose problem and answer columns exist; ids become `<name>:<id>`."""
    if not records:
        raise ProblemSourceError(f"{key}: {where} holds no rows")
    columns = available_columns(records)
    layout = next((lay for lay in layouts if {lay.problem, lay.answer} <= columns), None)
    if layout is None:
        wanted = " or ".join(f"{lay.problem}/{lay.answer}" for lay in layouts)
        raise ProblemSourceError(
            f"{key}: {where} has none of the column pairs {wanted}; it has {sorted(map(str, columns))} "
            f"(set `columns:` on the benchmark to map them)"
        )
    # The id column of any known layout with the same problem and answer columns (MATH-500's `unique_id`).
    same = [lay.id for lay in layouts if (lay.problem, lay.answer) == (layout.problem, layout.answer)]
    id_column = next((c for c in same if c in columns), None)
    rows = map_columns(records, layout.problem, layout.answer, id_column)
    for row in rows:
        if row.data.get("id") not in (None, ""):
            row.data["id"] = f"{name}:{row.data['id']}"
    return rows


@cache  # 7.6 MB of JSON; the records are never modified (rows are built from copies)
def _champ_records() -> tuple[list[dict], str]:
    try:
        import champ_dataset
    except ImportError as error:
        raise ProblemSourceError("benchmark champ needs the PyPI package champ-dataset: pip install champ-dataset") from error
    from importlib.metadata import version

    dataset = champ_dataset.load("v0")
    records = [{"problem": p.text, "answer": p.answer, "id": p.identifier} for p in dataset.problems.values()]
    return records, f"champ-dataset {version('champ-dataset')} (v0)"


def _hub_records(benchmark: Benchmark, split: str | None, key: str) -> tuple[list[dict], HubDataset]:
    """The first hub copy that loads (hub or local `datasets` cache); else an error listing every attempt."""
    import datasets

    failures = []
    for hub in benchmark.hub:
        try:
            dataset = datasets.load_dataset(hub.dataset, hub.config, split=split or hub.split)
            return [dict(record) for record in dataset], hub
        except Exception as error:  # offline, renamed, gated: try the next copy
            failures.append(f"{hub.dataset} (split {split or hub.split}): {type(error).__name__}: {str(error)[:200]}")
    first = benchmark.hub[0]
    raise ProblemSourceError(
        f"{key}: benchmark {benchmark.name!r} is not available locally and could not be loaded from the hub.\n  tried: "
        + "\n  tried: ".join(failures)
        + f"\n  fix: on a machine with hub access run `datasets.load_dataset({first.dataset!r}, split={first.split!r})"
        f".to_parquet('{benchmark.name}.parquet')`, copy the file here and set `path:` on the benchmark "
        "(parquet, jsonl or a save_to_disk folder)"
    )


def load_benchmark(config: BenchmarkConfig, key: str = "problems.eval_benchmarks") -> LoadedBenchmark:
    """All rows of one benchmark, mapped to `problem`/`answer`/`id`; errors name the benchmark and what was tried."""
    benchmark = BENCHMARKS[check_name(config.name)]
    key = f"{key}[{config.name}]"
    if config.path:
        path = Path(config.path)
        records = local_records(path, config.split, f"{key}.path")
        return LoadedBenchmark(config.name, _mapped(config.name, records, _layouts(benchmark, config), str(path), key), str(path))
    if benchmark.package == "champ-dataset":
        records, origin = _champ_records()
        return LoadedBenchmark(config.name, _mapped(config.name, records, _GENERIC, origin, key), origin)
    records, hub = _hub_records(benchmark, config.split, key)
    layouts = _layouts(benchmark, config) if config.columns else (hub.layout,) + _GENERIC
    origin = f"{hub.dataset} ({config.split or hub.split})"
    return LoadedBenchmark(config.name, _mapped(config.name, records, layouts, origin, key), origin)


def sampled_order(rows: list[RawRow], seed: int, name: str) -> list[RawRow]:
    """The rows in a seeded order, so `limit` takes a spread of the set, not its first topic."""
    order = list(rows)
    random.Random(f"{seed}:{name}").shuffle(order)
    return order


# -- gold answers that are prose ------------------------------------------------------------

_TEXT_GROUP = re.compile(r"\\(?:text|textbf|textit|textrm|mathrm|mathbf|mbox|operatorname)\s*\{[^{}]*\}")
_COMMAND = re.compile(r"\\[A-Za-z]+")
_WORD = re.compile(r"[A-Za-z]{3,}")
_MATH_WORDS = {
    "and", "sqrt", "sin", "cos", "tan", "cot", "sec", "csc", "arcsin", "arccos", "arctan", "log", "exp",
    "max", "min", "gcd", "lcm", "mod", "inf", "infty", "lim", "det", "deg",
}


def prose_issue(answer: str) -> str | None:
    """Why a gold answer is prose rather than math (None when it is math).

    math-verify reads a bare word as a product of one-letter symbols ("No integer solutions"
    becomes E*E*g*i*...), so such a gold would "parse" yet grade nonsense: "No" equals "on".
    Words inside `\\text{...}` are fine (math-verify compares them as one symbol), and so are
    `and`/`or` between values and function names such as `sqrt`.

    The check runs on what the strict gold reader reads (`gold_text`: boxes, answer phrases, a
    text that is only delimited math), so "The answer is \\boxed{12}" is math; a gold it cannot
    read ("0 is the only possible value", "98 values") is checked as the raw text, so it is prose.
    """
    from pipeline.grading import gold_text  # lazily: the config validates names without loading the grader

    text = gold_text(answer)
    bare = _COMMAND.sub(" ", _TEXT_GROUP.sub(" ", text))
    words = [w for w in _WORD.findall(bare) if w.lower() not in _MATH_WORDS]
    if words or bare.strip(" .").lower() in {"yes", "no"}:
        return f"gold answer is prose, not math: {text[:80]!r}"
    return None
