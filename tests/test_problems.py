import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import ProblemsConfig
from pipeline.problems import ProblemSourceError, load_problems


def write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def test_reasoning_gym_default_splits_are_disjoint():
    train, evaluation, _ = load_problems(ProblemsConfig(train_size=20, eval_size=10))
    assert train.num_rows == 20 and evaluation.num_rows == 10
    assert not set(train.column("problem_id").to_pylist()) & set(evaluation.column("problem_id").to_pylist())
    assert not set(train.column("problem").to_pylist()) & set(evaluation.column("problem").to_pylist())


def test_jsonl_with_column_mapping_reports_bad_rows(tmp_path):
    rows = [
        {"q": "What is 1+1?", "sol": "2", "uid": "a"},
        {"q": "What is 2+2?", "sol": "", "uid": "b"},  # empty answer
        {"q": "What is 3+3?", "uid": "c"},  # missing answer
        {"q": "", "sol": "1", "uid": "d"},  # empty problem
        {"q": "What is 1+1?", "sol": "2", "uid": "e"},  # duplicate text
        {"q": "Name it", "sol": "???", "uid": "f"},  # gold cannot be parsed
        {"q": "What is 5+5?", "sol": 10, "uid": "g"},  # numeric answer is fine
    ]
    write_jsonl(tmp_path / "p.jsonl", rows)
    config = ProblemsConfig(source="jsonl", path=str(tmp_path / "p.jsonl"), columns={"problem": "q", "answer": "sol", "id": "uid"}, eval_size=0)
    train, _, rejects = load_problems(config)
    assert sorted(train.column("problem_id").to_pylist()) == ["a", "g"]
    reasons = dict(zip(rejects.column("problem_id").to_pylist(), rejects.column("reason").to_pylist()))
    assert reasons["b"].startswith("missing or empty answer") and reasons["c"].startswith("missing or empty answer")
    assert reasons["e"] == "duplicate of row 0"
    assert "cannot be parsed" in reasons["f"]
    assert rejects.num_rows == 5  # d has no id to report; it is reported by row
    assert 3 in rejects.column("source_index").to_pylist()


def test_parquet_wrong_columns_names_them(tmp_path):
    pq.write_table(pa.Table.from_pylist([{"question": "1+1", "answer": "2"}]), tmp_path / "p.parquet")
    config = ProblemsConfig(source="parquet", path=str(tmp_path / "p.parquet"))
    with pytest.raises(ProblemSourceError, match="problem"):
        load_problems(config)


def test_missing_file_and_empty_file(tmp_path):
    with pytest.raises(ProblemSourceError, match="does not exist"):
        load_problems(ProblemsConfig(source="jsonl", path=str(tmp_path / "none.jsonl")))
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ProblemSourceError, match="no rows"):
        load_problems(ProblemsConfig(source="jsonl", path=str(tmp_path / "empty.jsonl")))


def test_duplicates_ignore_spacing_around_operators(tmp_path):
    rows = [{"q": "What is 1+1?", "a": "2"}, {"q": "what is 1 + 1 ?", "a": "2"}, {"q": "What is 1 - 1?", "a": "0"}]
    write_jsonl(tmp_path / "p.jsonl", rows)
    config = ProblemsConfig(source="jsonl", path=str(tmp_path / "p.jsonl"), columns={"problem": "q", "answer": "a"}, eval_size=0)
    train, _, rejects = load_problems(config)
    assert sorted(train.column("source_index").to_pylist()) == [0, 2]
    assert rejects.column("reason").to_pylist() == ["duplicate of row 0"]


def test_problem_ids_are_stable():
    from pipeline.problems import problem_id

    # ids are stored in every table downstream: the hash of source + folded text must not change
    assert problem_id("reasoning_gym/basic_arithmetic", "Calculate 1 + 6.") == "efcba6940644e993"
    assert problem_id("s", "  What IS 1+1? ") == problem_id("s", "what is 1+1?")
