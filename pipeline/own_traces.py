"""Bring your own traces: round 0 from long-CoT generations a user already has.

A JSONL or Parquet file with a problem column and a completion column (OpenR1-Math,
OpenThoughts or a user's own generations; the completion may also be a list of texts, one
trace each) becomes the round-0 traces table, so split, prove, score and select run as on
sampled traces. Each row is matched to a training problem (`data/problems/train.parquet`, by
the id column or else by the problem text folded like prepare folds it), tokenized with the
policy's tokenizer after the prompt `PromptBuilder` makes for that problem, and graded under
the same closure rule as a sampled trace (`pipeline.sampling.grade_traces`). The prompt
pre-fills `<think>\\n`, so a completion that opens with `<think>` loses that tag and one that
does not (an R1 dump whose template opened it) is kept whole; the completion is plain text
(a special-token string in it is not a control token). Rows that cannot be used are rejected
one by one, naming file and line (or Parquet row), and counted; rows of problems outside the
train split are only counted.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from pipeline.config import TracesSourceConfig
from pipeline.grading import Grader
from pipeline.problem_files import ProblemSourceError, _decode_line
from pipeline.problems import normalize_text
from pipeline.sampling import answer_text, close_offset, grade_traces, trace_row
from pipeline.templates import THINK_OPEN, PromptBuilder
from pipeline.tokens import decode

FINISH_REASON = "stop"  # the generation as the file holds it, ended; a cut one is unclosed (not correct) anyway
NO_SEED = -1
KEY = "sample.traces_source"
_TOKENIZE_BATCH = 256


@dataclass
class SourceRow:
    """One row of the traces file; `where` is `file:line` (JSONL) or `file:row N` (Parquet, 1-based)."""

    where: str
    index: int
    record: dict[str, Any] | None
    error: str | None = None


@dataclass
class ImportedTraces:
    """The usable completions per training problem id (in file order), the rejects and the counts."""

    traces: dict[str, list[tuple[str, np.ndarray]]] = field(default_factory=dict)  # problem id -> [(where, ids)]
    rejects: list[dict] = field(default_factory=list)  # rows of pipeline.tables.REJECTS
    counts: Counter = field(default_factory=Counter)

    def for_problems(self, problem_ids: list[str]) -> int:
        return sum(len(self.traces.get(pid, ())) for pid in problem_ids)


def file_format(config: TracesSourceConfig) -> str:
    if config.format != "auto":
        return config.format
    return "parquet" if Path(config.path).suffix == ".parquet" else "jsonl"


def file_signature(config: TracesSourceConfig) -> dict[str, Any]:
    """What the traces file is, cheaply (a changed file re-imports): path, size and time."""
    stat = Path(config.path).stat()
    return {"path": str(Path(config.path).resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _wanted(config: TracesSourceConfig) -> dict[str, str]:
    c = config.columns
    return {"problem": c.problem, "completion": c.completion, **({"id": c.id} if c.id else {})}


def read_rows(config: TracesSourceConfig) -> Iterator[SourceRow]:
    """Every row of the file, streamed; an undecodable JSONL line is a row with `error`, not a failed file.
    A mapped column that the file lacks is an error naming its key."""
    path = Path(config.path)
    if not path.is_file():
        raise ProblemSourceError(f"{KEY}.path: {path} does not exist or is not a file")
    wanted = _wanted(config)
    if file_format(config) == "parquet":
        yield from _parquet_rows(path, wanted)
        return
    seen: set[str] = set()
    decoded = 0
    with path.open("rb") as lines:
        for line_number, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            record, error = _decode_line(path, line_number, raw.rstrip(b"\r\n"))
            if record is not None:
                seen.update(record)
                decoded += 1
            yield SourceRow(f"{path}:{line_number}", line_number, record, error)
    if decoded:
        _check_columns(wanted, seen, path)


def _parquet_rows(path: Path, wanted: dict[str, str]) -> Iterator[SourceRow]:
    import pyarrow.parquet as pq

    try:
        file = pq.ParquetFile(path)
    except Exception as error:
        raise ProblemSourceError(f"{KEY}.path: cannot read {path} as parquet: {error}") from None
    _check_columns(wanted, file.schema_arrow.names, path)
    index = 0
    for batch in file.iter_batches(batch_size=1024, columns=sorted(set(wanted.values()))):
        for record in batch.to_pylist():
            index += 1
            yield SourceRow(f"{path}:row {index}", index, record)


def _check_columns(wanted: dict[str, str], available, path: Path) -> None:
    missing = [f"{KEY}.columns.{key}: {name!r}" for key, name in wanted.items() if name not in set(available)]
    if missing:
        raise ProblemSourceError(f"{path} has no column for {', '.join(missing)}; it has {sorted(map(str, available))}")


def _text_issue(value: Any, what: str) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return f"missing_{what}"
    if not isinstance(value, str):
        return f"{what}_not_text"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "undecodable"
    return None


def completion_body(text: str, eos_text: str | None) -> str:
    """The completion after the prompt's pre-filled `<think>\\n`: a leading `<think>` (and its newline)
    is dropped, as is one trailing EOS string left in a dump."""
    stripped = text.lstrip()
    tag = THINK_OPEN.rstrip("\n")
    if stripped.startswith(tag):
        text = stripped[len(tag):]
        text = text[1:] if text.startswith("\n") else text
    if eos_text and text.rstrip().endswith(eos_text):
        text = text.rstrip()[: -len(eos_text)]
    return text


def _problem_keys(problems: list[dict], by_id: bool) -> dict[str, str]:
    return {(p["problem_id"] if by_id else normalize_text(p["problem"])): p["problem_id"] for p in problems}


def _reject(row: SourceRow, reason: str, pid: str | None = None, detail: str | None = None) -> dict:
    shown = row.record if row.record is not None else {"error": row.error}
    text = json.dumps(shown, ensure_ascii=False, default=str)
    text = text.encode("utf-8", "replace").decode("utf-8")
    return {"source": row.where, "source_index": row.index, "problem_id": pid,
            "reason": f"{reason}: {detail}" if detail else reason, "row": text[:500]}


def import_traces(config: TracesSourceConfig, problems: list[dict], prompts: PromptBuilder) -> ImportedTraces:
    """Read the file once: match rows to `problems`, reject unusable ones, tokenize the rest (ids as int32)."""
    by_id = config.columns.id is not None
    keys = _problem_keys(problems, by_id)
    out = ImportedTraces()
    pending: list[tuple[SourceRow, str, str]] = []  # (row, problem id, completion text)

    def flush() -> None:
        if not pending:
            return
        encoded = prompts.tokenizer([text for _, _, text in pending], add_special_tokens=False,
                                    split_special_tokens=True)["input_ids"]
        for (row, pid, _), ids in zip(pending, encoded):
            if config.max_tokens is not None and len(ids) > config.max_tokens:
                out.rejects.append(_reject(row, "too_long", pid, f"{len(ids)} tokens > {KEY}.max_tokens {config.max_tokens}"))
                continue
            out.traces.setdefault(pid, []).append((row.where, np.asarray(ids, dtype=np.int32)))
        pending.clear()

    for row in read_rows(config):
        out.counts["rows"] += 1
        if row.error is not None:
            out.rejects.append(_reject(row, "undecodable", detail=row.error))
            continue
        record = row.record
        problem = record.get(config.columns.problem)
        row_id = record.get(config.columns.id) if by_id else None
        issue = ("missing_id" if row_id is None or row_id == "" else None) if by_id else _text_issue(problem, "problem")
        if issue:
            out.rejects.append(_reject(row, issue))
            continue
        key = str(row_id) if by_id else normalize_text(problem)
        pid = keys.get(key)
        if pid is None:
            out.counts["not_in_train"] += 1  # another split's problem, or one prepare did not keep
            continue
        completions = record.get(config.columns.completion)
        several = isinstance(completions, list)
        texts = (completions or [None]) if several else [completions]
        for element, text in enumerate(texts):
            issue = _text_issue(text, "completion")
            body = completion_body(text, prompts.tokenizer.eos_token) if issue is None else ""
            if issue is None and not body.strip():
                issue = "missing_completion"
            if issue:
                out.rejects.append(_reject(row, issue, pid, f"element {element}" if several else None))
                continue
            pending.append((row, pid, body))
        if len(pending) >= _TOKENIZE_BATCH:
            flush()
    flush()
    out.counts["rejected"] = len(out.rejects)
    out.counts["imported"] = sum(len(v) for v in out.traces.values())
    return out


def trace_rows(problems: list[dict], imported: ImportedTraces, prompts: PromptBuilder, grader: Grader,
               model_label: str, round_index: int = 0) -> list[dict]:
    """Rows of the traces table (`pipeline.tables.TRACES`) for the imported traces of `problems`,
    graded like sampled traces: correct only if thinking closed once and the answer part is right."""
    items = [(problem, index, ids) for problem in problems
             for index, (_, ids) in enumerate(imported.traces.get(problem["problem_id"], ()))]
    texts = [decode(prompts.tokenizer, ids.tolist()) for _, _, ids in items]
    grades = grade_traces([problem["answer"] for problem, _, _ in items], texts, grader)
    prompt_ids = {p["problem_id"]: prompts.sampling_prompt_ids(p["problem"]) for p, index, _ in items if index == 0}
    rows = []
    for (problem, index, ids), text, grade in zip(items, texts, grades):
        token_ids = ids.tolist()
        rows.append(trace_row(
            problem_id=problem["problem_id"], round_index=round_index, index=index, seed=NO_SEED,
            prompt_ids=prompt_ids[problem["problem_id"]], completion_ids=token_ids, completion=text,
            n_tokens=len(token_ids), finish_reason=FINISH_REASON,
            thinking_end_at=close_offset(prompts.tokenizer, token_ids), answer=answer_text(text), grade=grade,
            model_label=model_label))
    return rows


def summary(imported: ImportedTraces, problems: list[dict]) -> dict[str, Any]:
    """Counts for the metrics file: rows read, imported, rejected by reason, problems with and without traces."""
    reasons = Counter(r["reason"].split(":", 1)[0] for r in imported.rejects)
    with_traces = sum(1 for p in problems if imported.traces.get(p["problem_id"]))
    return {**dict(imported.counts), "rejected_by_reason": dict(sorted(reasons.items())),
            "train_problems": len(problems), "problems_with_traces": with_traces,
            "problems_without_traces": len(problems) - with_traces}
