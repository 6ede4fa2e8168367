"""Train problems that overlap the eval split are removed, named, counted and replaced."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import ProblemsConfig, load_params
from pipeline.decontamination import EvalIndex, exact_key
from pipeline.grading import Grader
from pipeline.problems import ProblemSourceError, prepare_problems

REPO = Path(__file__).resolve().parents[1]

LONG_EVAL = (
    "A bag holds seven red marbles and five blue marbles. Two marbles are drawn at random without "
    "replacement. What is the probability that both marbles drawn are red?"
)
EVAL_ROWS = [
    {"problem": "What is $2 + 3$?", "answer": "5", "unique_id": "test/algebra/1.json"},
    {"problem": LONG_EVAL, "answer": "\\frac{7}{22}", "unique_id": "test/counting/2.json"},
    {"problem": "Find the number of positive integers $n$ less than 100 such that $n^2$ ends in 1.",
     "answer": "20", "unique_id": "test/number_theory/3.json"},
]


@pytest.fixture(scope="module")
def grader():
    with Grader(workers=1, timeout_seconds=3.0) as pool:
        yield pool


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def benchmark_file(tmp_path: Path) -> Path:
    """A local copy of MATH-500's layout (problem / answer / unique_id) holding the eval problems."""
    path = tmp_path / "math500.parquet"
    pq.write_table(pa.Table.from_pylist(EVAL_ROWS), path)
    return path


def config_for(tmp_path: Path, train_rows: list[dict], **kwargs) -> ProblemsConfig:
    """Training problems from a JSONL file, the whole eval split from the local benchmark file."""
    kwargs.setdefault("train_size", len(train_rows))
    return ProblemsConfig(
        source="jsonl", path=str(write_jsonl(tmp_path / "train.jsonl", train_rows)), eval_size=0,
        eval_benchmarks=[{"name": "math500", "path": str(benchmark_file(tmp_path)), "limit": None}], **kwargs,
    )


def reasons(rejects: pa.Table) -> dict[int, str]:
    """Reject reason of each training row, by its index in the training file."""
    return {r["source_index"]: r["reason"] for r in rejects.to_pylist() if r["source"] == "jsonl:train.jsonl"}


# -- the index ------------------------------------------------------------------------------


def test_exact_key_ignores_case_spacing_and_unicode_form_but_not_operators():
    assert exact_key("  What is  $2+3$ ?") == exact_key("what is $2 + 3$?") == exact_key("WHAT IS $２+３$?")
    assert exact_key("Calculate 1 + 5.") != exact_key("Calculate 1 - 5.")
    assert exact_key("(1+2)*3") != exact_key("1+2*3")


def test_index_finds_exact_and_long_ngram_overlaps_only():
    index = EvalIndex(ngram=13)
    index.add("e1", "math500", LONG_EVAL)
    index.add("e2", "math500", "What is $2 + 3$?")
    assert index.find("what is $2+3$ ?").kind == "exact"
    copied = "Consider this. " + " ".join(LONG_EVAL.split()[:14]) + " and then stop."
    hit = index.find(copied)
    assert hit and hit.kind == "ngram" and hit.eval_id == "e1"
    assert "shares a 13-token span with eval problem e1 (math500)" in hit.reason(13)
    twelve = " ".join(LONG_EVAL.split()[:12])  # 12 shared words: below the threshold
    assert index.find(f"Unrelated start. {twelve} purple elephants.") is None
    assert index.find("What is the probability that it rains twice?") is None  # a short shared phrase
    assert EvalIndex(ngram=None).find(copied) is None  # exact-only index


def test_operators_count_in_ngrams():
    base = "Let a be a number so that a + 1 is equal to twice the value of b"  # 18 tokens, `+` the 9th
    index = EvalIndex(ngram=13)
    index.add("e", "s", base)
    assert index.find(base.replace("a + 1", "a - 1")) is None  # every 13-token window holds the operator
    assert index.find("Now: " + base) is not None


# -- prepare_problems -----------------------------------------------------------------------


def test_overlapping_train_problems_are_rejected_with_the_eval_id(tmp_path, grader):
    train_rows = [
        {"problem": "  WHAT is $2+3$ ?", "answer": "5"},  # same text as an eval problem, normalized
        {"problem": "Consider again: " + LONG_EVAL.replace("?", ", given that the bag is shaken?"), "answer": "1/2"},
        {"problem": "Find the number of positive integers $n$ below 50 that are prime.", "answer": "15"},  # short shared phrase
        {"problem": "What is $2 - 3$?", "answer": "-1"},  # differs by the operator
        {"problem": "What is 7 + 8?", "answer": "15"},
    ]
    prepared = prepare_problems(config_for(tmp_path, train_rows, train_size=10), grader)
    why = reasons(prepared.rejects)
    assert why[0] == "contaminated: same text as eval problem math500:test/algebra/1.json (math500)"
    assert set(why) == {0, 1} and why[1].startswith(
        "contaminated: shares a 13-token span with eval problem math500:test/counting/2.json (math500)")
    kept = prepared.train.column("problem").to_pylist()
    assert sorted(kept) == sorted(r["problem"] for r in train_rows[2:])
    assert prepared.eval.column("source").to_pylist() == ["math500"] * 3
    m = prepared.metrics
    assert m["decontamination"] == {"enabled": True, "ngram": 13, "removed": 2, "exact": 1, "ngram_overlap": 1}
    assert m["rejected_by_reason"] == {"contaminated": 2}
    assert m["train"] == 3 and m["train_shortfall"] == 7 and m["eval_by_source"] == {"math500": 3}
    assert m["benchmark_rows"] == {"math500": 3}


def test_removed_problems_are_replaced_from_the_pool(tmp_path, grader):
    clean = [{"problem": f"Compute {i} times {i + 1}.", "answer": str(i * (i + 1))} for i in range(12)]
    dirty = [{"problem": "what is $2 + 3$?", "answer": "5"}, {"problem": LONG_EVAL + " Explain.", "answer": "1"}]
    prepared = prepare_problems(config_for(tmp_path, dirty + clean, train_size=10), grader)
    assert prepared.train.num_rows == 10  # two removed, two more taken from the oversized pool
    assert prepared.metrics["train_shortfall"] == 0
    assert not set(prepared.train.column("problem").to_pylist()) & {r["problem"] for r in dirty}


def test_ngram_size_and_switch_are_parameters(tmp_path, grader):
    rows = [{"problem": "Consider again: " + LONG_EVAL, "answer": "1"}, {"problem": "what is $2+3$?", "answer": "5"}]
    exact_only = prepare_problems(config_for(tmp_path, rows, decontamination={"ngram": None}), grader)
    assert exact_only.metrics["decontamination"]["removed"] == 1 and exact_only.train.num_rows == 1
    off = prepare_problems(config_for(tmp_path, rows, decontamination={"enabled": False}), grader)
    assert off.metrics["decontamination"]["removed"] == 0 and off.train.num_rows == 2
    short = [{"problem": "Two marbles are drawn at random without replacement from a box.", "answer": "1"}]
    assert prepare_problems(config_for(tmp_path, short), grader).train.num_rows == 1  # 11 tokens shared: < 13
    with pytest.raises(ProblemSourceError, match=r"none for training after eval_size=0 and decontamination \(1 removed\)"):
        prepare_problems(config_for(tmp_path, short, decontamination={"ngram": 6}), grader)


def test_default_parameters_fill_both_splits_disjoint_and_decontaminated(grader):
    config = load_params(REPO / "params.yaml").problems
    prepared = prepare_problems(config, grader)
    train, evaluation = prepared.train.to_pylist(), prepared.eval.to_pylist()
    assert len(train) == config.train_size
    limits = sum(b.limit for b in config.eval_benchmarks)
    assert len(evaluation) == config.eval_size + limits
    assert {r["source"] for r in evaluation} == {"reasoning_gym/basic_arithmetic"} | {b.name for b in config.eval_benchmarks}
    ids = [r["problem_id"] for r in train + evaluation]
    assert len(set(ids)) == len(ids)
    eval_keys = {exact_key(r["problem"]) for r in evaluation}
    assert not {exact_key(r["problem"]) for r in train} & eval_keys
    m = prepared.metrics
    assert m["train"] + m["eval"] == len(ids) and m["rejected"] == prepared.rejects.num_rows
    assert sum(m["rejected_by_reason"].values()) == m["rejected"] == sum(m["rejected_by_source"].values())


def test_generated_pool_is_refilled_after_decontamination(tmp_path, grader):
    """Benchmark rows that copy generated problems: train copies are removed and replaced, eval copies dropped."""
    import reasoning_gym

    options = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1, "operators": ["+", "-"]}
    questions = sorted({item["question"] for item in reasoning_gym.create_dataset("basic_arithmetic", size=200, seed=0, **options)})
    copies = write_jsonl(tmp_path / "amc.jsonl", [{"question": q, "answer": "0"} for q in questions[:40]])
    config = ProblemsConfig(
        train_size=30, eval_size=10, reasoning_gym={"task": "basic_arithmetic", "options": options},
        eval_benchmarks=[{"name": "amc23", "path": str(copies), "limit": None}],
    )
    prepared = prepare_problems(config, grader)
    m = prepared.metrics
    assert m["train"] == 30 and m["train_shortfall"] == 0
    assert m["decontamination"]["exact"] > 0
    train = set(prepared.train.column("problem").to_pylist())
    assert not train & set(questions[:40])
    duplicates = [r for r in prepared.rejects.to_pylist() if r["source"] == "amc23"]
    assert all(r["reason"].startswith("duplicate of eval problem ") for r in duplicates)
    assert m["eval_by_source"]["amc23"] + len(duplicates) == 40


# -- invisible characters -------------------------------------------------------------------

INVISIBLE = ["\u200b", "\u200c", "\u200d", "\u00ad", "\ufeff", "\u2060", "\u200e"]  # ZWSP, ZWNJ, ZWJ, SHY, BOM, WJ, LRM


def test_format_characters_never_count():
    text = "Two marbles are drawn at random without replacement from a bag of seven red and five blue marbles."
    for mark in INVISIBLE:
        copy = mark + text.replace("marbles", f"mar{mark}bles").replace(" ", f" {mark}", 3)
        assert exact_key(copy) == exact_key(text), repr(mark)
        index = EvalIndex(ngram=13)
        index.add("e", "math500", text)
        assert index.find(copy).kind == "exact"
        index = EvalIndex(ngram=5)
        index.add("e", "math500", text + " Then what?")
        assert index.find("Lead-in words here. " + copy).kind == "ngram"


def test_copies_differing_by_format_characters_collapse(tmp_path, grader):
    from pipeline.problems import problem_id

    rows = [{"problem": "What is 12 + 30?", "answer": "42"}]
    rows += [{"problem": f"What is 1{mark}2 + 3{mark}0?", "answer": "42"} for mark in INVISIBLE]
    rows.append({"problem": f"What is $2 + 3${INVISIBLE[0]}?", "answer": "5"})  # an eval problem, disguised
    prepared = prepare_problems(config_for(tmp_path, rows), grader)
    assert prepared.train.column("source_index").to_pylist() == [0]
    found = reasons(prepared.rejects)
    assert all(found[i] == "duplicate of row 0" for i in range(1, len(INVISIBLE) + 1))
    assert found[len(INVISIBLE) + 1].startswith("contaminated: same text as eval problem")
    assert problem_id("s", "What is 12 + 30?") == problem_id("s", "What\u200b is 1\u00ad2 + 30?")
