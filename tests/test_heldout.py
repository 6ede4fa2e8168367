"""Held-out benchmarks by name: champ offline, the hub sets from local files laid out like the hub
datasets (or a stand-in for the hub), clear errors, and metrics split by source."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from pipeline.heldout import BENCHMARKS, load_benchmark, prose_issue
from pipeline.config import BenchmarkConfig, ConfigError, ProblemsConfig, load_params
from pipeline.evaluation import sample_metrics
from pipeline.evaluation import metrics_by_source
from pipeline.grading import Grader
from pipeline.problems import ProblemSourceError, prepare_problems


@pytest.fixture(scope="module")
def grader():
    with Grader(workers=1, timeout_seconds=3.0) as pool:
        yield pool


def bench(name: str, **kwargs) -> BenchmarkConfig:
    return BenchmarkConfig(name=name, **kwargs)


def with_benchmarks(*benchmarks: dict, **kwargs) -> ProblemsConfig:
    return ProblemsConfig(train_size=8, eval_size=4, eval_benchmarks=list(benchmarks), **kwargs)


# -- champ: shipped in the champ-dataset package ---------------------------------------------


def test_champ_loads_offline_from_the_package():
    loaded = load_benchmark(bench("champ"))
    assert len(loaded.rows) == 270 and loaded.origin.startswith("champ-dataset ")
    first = loaded.rows[0].data
    assert first["id"] == "champ:P_Combinatorics_1" and first["answer"] == "239"
    assert "strings of length 6" in first["problem"]


def test_champ_golds_that_are_prose_or_do_not_parse_are_rejected(grader):
    prepared = prepare_problems(with_benchmarks({"name": "champ", "limit": None}), grader)
    champ = [r for r in prepared.eval.to_pylist() if r["source"] == "champ"]
    rejected = [r for r in prepared.rejects.to_pylist() if r["source"] == "champ"]
    assert len(champ) + len(rejected) == 270
    assert len(champ) >= 120  # 138 with champ-dataset 1.0.0 and the current grader
    reasons = {r["reason"].split(":")[0] for r in rejected}
    assert reasons <= {"gold answer is prose, not math", "gold answer cannot be parsed"}
    by_id = {r["problem_id"]: r["reason"] for r in rejected}
    assert by_id["champ:P_Sequence_1"] == "gold answer is prose, not math: 'No'"
    assert all(json.loads(r["provenance"])["from"].startswith("champ-dataset") for r in champ)
    assert prepared.metrics["benchmark_rows"] == {"champ": 270}
    assert prepared.metrics["eval_by_source"]["champ"] == len(champ)


def test_limit_takes_a_seeded_sample(grader):
    first = prepare_problems(with_benchmarks({"name": "champ", "limit": 5}), grader)
    again = prepare_problems(with_benchmarks({"name": "champ", "limit": 5}), grader)
    other = prepare_problems(with_benchmarks({"name": "champ", "limit": 5}, seed=1), grader)
    ids = lambda p: [r["problem_id"] for r in p.eval.to_pylist() if r["source"] == "champ"]  # noqa: E731
    assert len(ids(first)) == 5 and ids(first) == ids(again) and ids(first) != ids(other)
    assert len({i.split("_")[1] for i in ids(first)}) > 1  # not just the first topic of the set
    assert first.eval.num_rows == 4 + 5 and first.train.num_rows == 8


@pytest.mark.parametrize(
    "answer, prose",
    [("239", False), ("x=2, y=1", False), ("1, 4 and 9", False), ("sqrt(3)/3", False), (r"\text{Evelyn}", False),
     (r"10\text{ inches}", False), (r"\frac{\sqrt{3}}{2}", False), (r"(-\infty, 3]", False), ("f(x)=0 or f(x)=1", False),
     (r"The answer is \boxed{12}", False), ("No", True), ("yes.", True), ("No integer solutions", True),
     ("0 is the only possible value", True), ("sqrt(3)/3, or equivalently 1/sqrt(3)", True), ("98 values", True)],
)
def test_prose_gold_answers(answer, prose):
    assert (prose_issue(answer) is not None) == prose


# -- hub benchmarks from local files ---------------------------------------------------------

HUB_LAYOUTS = {  # name -> (file kind, columns like the hub copy, expected id)
    "math500": ("parquet", {"problem": "What is $1+1$?", "solution": "It is $\\boxed{2}$.", "answer": "2",
                            "subject": "Algebra", "level": 1, "unique_id": "test/algebra/1.json"}, "math500:test/algebra/1.json"),
    "aime24": ("saved", {"ID": "2024-I-1", "Problem": "Find $3 \\cdot 7$.", "Solution": "...", "Answer": 21}, "aime24:2024-I-1"),
    "aime25": ("jsonl", {"problem": "Find $2^5$.", "answer": "32", "id": "0"}, "aime25:0"),
    "amc23": ("jsonl", {"id": 3, "question": "What is $6 \\times 7$?", "answer": 42.0, "url": "https://x"}, "amc23:3"),
    "minerva": ("parquet", {"problem": "Compute $4^2$ in joules.", "solution": "We get $\\boxed{16}$ J."}, None),
}


def write_layout(tmp_path: Path, name: str) -> Path:
    kind, record, _ = HUB_LAYOUTS[name]
    if kind == "parquet":
        path = tmp_path / f"{name}.parquet"
        pq.write_table(pa.Table.from_pylist([record]), path)
    elif kind == "jsonl":
        path = tmp_path / f"{name}.jsonl"
        path.write_text(json.dumps(record) + "\n")
    else:
        path = tmp_path / name
        datasets.DatasetDict({"train": datasets.Dataset.from_list([record])}).save_to_disk(str(path))
    return path


@pytest.mark.parametrize("name", sorted(HUB_LAYOUTS))
def test_local_files_laid_out_like_the_hub_map_their_columns(tmp_path, name, grader):
    path = write_layout(tmp_path, name)
    prepared = prepare_problems(with_benchmarks({"name": name, "path": str(path)}), grader)
    (row,) = [r for r in prepared.eval.to_pylist() if r["source"] == name]
    record, expected_id = HUB_LAYOUTS[name][1], HUB_LAYOUTS[name][2]
    assert row["problem"] == record.get("problem", record.get("question", record.get("Problem")))
    assert row["answer"] == {"math500": "2", "aime24": "21", "aime25": "32", "amc23": "42.0",
                             "minerva": "We get $\\boxed{16}$ J."}[name]
    if expected_id:
        assert row["problem_id"] == expected_id
    assert json.loads(row["provenance"])["from"] == str(path)


def test_explicit_columns_override_the_layout(tmp_path, grader):
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps({"q": "What is $5+5$?", "gold": "10", "key": "k1"}) + "\n")
    with pytest.raises(ProblemSourceError, match=r"none of the column pairs problem/answer .*'gold', 'key', 'q'"):
        load_benchmark(bench("aime25", path=str(path)))
    loaded = load_benchmark(bench("aime25", path=str(path), columns={"problem": "q", "answer": "gold", "id": "key"}))
    assert loaded.rows[0].data == {"problem": "What is $5+5$?", "answer": "10", "id": "aime25:k1"}


def test_hub_copies_are_tried_in_order(monkeypatch):
    calls = []

    def fake_load_dataset(name, config=None, split=None):
        calls.append((name, split))
        if name == "math-ai/amc23":
            raise ConnectionError("offline")
        return datasets.Dataset.from_list([{"problem": "What is $3+4$?", "answer": "7", "id": 9}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    loaded = load_benchmark(bench("amc23"))
    assert calls == [("math-ai/amc23", "test"), ("knoveleng/AMC-23", "train")]
    assert loaded.origin == "knoveleng/AMC-23 (train)"
    assert loaded.rows[0].data == {"problem": "What is $3+4$?", "answer": "7", "id": "amc23:9"}


# -- errors ------------------------------------------------------------------------------------


def test_unknown_or_repeated_benchmark_names_are_config_errors(tmp_path):
    empty = tmp_path / "params.yaml"
    empty.write_text("")
    with pytest.raises(ConfigError) as error:
        load_params(empty, ["problems.eval_benchmarks=[{name: aime2024}]"])
    message = str(error.value)
    assert "problems.eval_benchmarks.0.name" in message and "unknown benchmark 'aime2024'" in message
    assert all(name in message for name in BENCHMARKS)
    with pytest.raises(ConfigError, match="listed twice"):
        load_params(empty, ["problems.eval_benchmarks=[{name: champ}, {name: champ, limit: 2}]"])
    with pytest.raises(ConfigError, match="problems.eval_benchmarks.0.limit"):
        load_params(empty, ["problems.eval_benchmarks=[{name: champ, limit: 0}]"])


def test_unavailable_benchmark_says_what_was_tried_and_how_to_fix_it(monkeypatch, tmp_path):
    def offline(name, config=None, split=None):
        raise ConnectionError(f"Couldn't reach '{name}' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(ProblemSourceError) as error:
        load_benchmark(bench("minerva"))
    message = str(error.value)
    assert "benchmark 'minerva' is not available locally and could not be loaded from the hub" in message
    assert "math-ai/minervamath (split test)" in message and "knoveleng/Minerva-Math (split train)" in message
    assert "set `path:`" in message
    with pytest.raises(ProblemSourceError, match=r"eval_benchmarks\[aime24\].path: .*nope.parquet does not exist"):
        load_benchmark(bench("aime24", path=str(tmp_path / "nope.parquet")))
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ProblemSourceError, match="holds no rows"):
        load_benchmark(bench("aime24", path=str(tmp_path / "empty.jsonl")))


@pytest.mark.slow  # starts `mrt` processes
def test_cli_reports_an_unavailable_benchmark_cleanly(monkeypatch, tmp_path):
    from stages.cli import app

    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: (_ for _ in ()).throw(ConnectionError("offline")))
    params = tmp_path / "params.yaml"
    params.write_text(f"data_dir: {tmp_path / 'data'}\nmetrics_dir: {tmp_path / 'metrics'}\n"
                      "problems: {train_size: 4, eval_size: 2, eval_benchmarks: [{name: math500}]}\n")
    result = CliRunner().invoke(app, ["prepare-problems", "--params", str(params)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "benchmark 'math500'" in result.output and "HuggingFaceH4/MATH-500" in result.output


def test_benchmark_with_no_usable_rows_is_an_error(tmp_path, grader):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"problem": "Is it?", "answer": "Yes"}) + "\n")
    with pytest.raises(ProblemSourceError, match=r"eval_benchmarks\[aime25\]: no usable problems .*: 1 rejected, e.g. 1x gold answer is prose"):
        prepare_problems(with_benchmarks({"name": "aime25", "path": str(path)}), grader)


# -- the stage and the per-source metrics -----------------------------------------------------


@pytest.mark.slow  # the whole prepare stage
def test_prepare_problems_stage_writes_tables_and_metrics(tmp_path):
    from stages.prepare import run_problems

    params = load_params(tmp_path / "none.yaml", [
        f"data_dir={tmp_path / 'data'}", f"metrics_dir={tmp_path / 'metrics'}", "problems.train_size=6",
        "problems.eval_size=3", "problems.eval_benchmarks=[{name: champ, limit: 2}]", "grading.workers=1",
    ])
    message = run_problems(params)
    assert "6 train, 5 eval (2 champ, 3 reasoning_gym/basic_arithmetic)" in message
    metrics = json.loads((tmp_path / "metrics" / "problems.json").read_text())
    assert metrics["train"] == 6 and metrics["eval_by_source"] == {"champ": 2, "reasoning_gym/basic_arithmetic": 3}
    assert metrics["decontamination"]["ngram"] == 13
    for name in ("train", "eval", "rejects"):
        assert (tmp_path / "data" / "problems" / f"{name}.parquet").exists()


def test_metrics_by_source_splits_sample_metrics():
    problems = [{"problem_id": "a", "source": "gym"}, {"problem_id": "b", "source": "gym"}, {"problem_id": "c", "source": "champ"}]
    traces = [
        {"trace_id": f"{p}{i}", "problem_id": p, "sample_index": i, "correct": ok, "extracted": "1" if ok else "2",
         "grade": "correct" if ok else "incorrect", "n_tokens": 10}
        for p, oks in {"a": [True, False], "b": [True, True], "c": [False, False]}.items() for i, ok in enumerate(oks)
    ]
    split = metrics_by_source(traces, problems, [1, 2])
    assert set(split) == {"champ", "gym"}
    assert split["gym"] == sample_metrics([t for t in traces if t["problem_id"] in "ab"], [1, 2])
    assert split["gym"]["pass@1"] == 0.75 and split["champ"]["pass@1"] == 0.0 and split["champ"]["problems"] == 1
    with pytest.raises(ValueError, match="problem 'z' is not in the eval problems table"):
        metrics_by_source(traces + [dict(traces[0], problem_id="z")], problems, [1])
