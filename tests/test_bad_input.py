"""Bad input never vanishes and never ends in a bare traceback.

Every bad problem row lands in the rejects table with its reason; a source that cannot be
read at all stops with an error naming the file, line or column; a bad parameter or model
path stops the `mrt` CLI with exit code 2 and the key or path named; odd traces (never
closed, nothing after `</think>`, cut off, empty) go through the splitter and the grader.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from pipeline.config import ConfigError, ProblemsConfig, load_params
from pipeline.grading import UNPARSED, Grader
from pipeline.problems import ProblemSourceError, load_problems

REPO = Path(__file__).resolve().parents[1]


def empty_params(folder) -> str:
    """An empty parameters file: every key at its default (an explicit --params must exist)."""
    path = folder / "empty_params.yaml"
    path.write_text("")
    return str(path)


@pytest.fixture(scope="module")
def grader():
    with Grader(workers=1, timeout_seconds=3.0) as pool:
        yield pool


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def jsonl_config(path: Path, **kwargs) -> ProblemsConfig:
    kwargs.setdefault("train_size", 1000)
    kwargs.setdefault("eval_size", 0)
    return ProblemsConfig(source="jsonl", path=str(path), **kwargs)


def reasons_by_index(rejects: pa.Table) -> dict[int, str]:
    return dict(zip(rejects.column("source_index").to_pylist(), rejects.column("reason").to_pylist()))


def accounted(train: pa.Table, evaluation: pa.Table, rejects: pa.Table) -> list[int]:
    """Every source row index that came out, in whichever table."""
    indices = []
    for table in (train, evaluation, rejects):
        indices += table.column("source_index").to_pylist()
    return sorted(indices)


# -- problem rows --------------------------------------------------------------------------

BAD_ROWS = [
    ({"problem": "What is 1+1?", "answer": "2"}, None),  # 0: good
    ({"problem": "What is 2+2?"}, "missing or empty answer"),  # 1: answer key missing
    ({"problem": "What is 3+3?", "answer": ""}, "missing or empty answer"),  # 2
    ({"problem": "What is 4+4?", "answer": "   "}, "missing or empty answer"),  # 3: blank
    ({"problem": "What is 5+5?", "answer": None}, "missing or empty answer"),  # 4
    ({"answer": "3"}, "missing or empty problem text"),  # 5: problem key missing
    ({"problem": "", "answer": "3"}, "missing or empty problem text"),  # 6
    ({"problem": " \n\t", "answer": "3"}, "missing or empty problem text"),  # 7
    ({"problem": 17, "answer": "3"}, "problem text is int, not text"),  # 8
    ({"problem": ["What", "is"], "answer": "3"}, "problem text is list, not text"),  # 9
    ({"problem": {"text": "What is 6+6?"}, "answer": "12"}, "problem text is dict, not text"),  # 10
    ({"problem": "What is 7+7?", "answer": [14]}, "answer is list, not text or a number"),  # 11
    ({"problem": "What is 8+8?", "answer": {"value": 16}}, "answer is dict, not text or a number"),  # 12
    ({"problem": "What is 9+9?", "answer": True}, "answer is bool, not text or a number"),  # 13
    ({"problem": "What is 10+10?", "answer": 20}, None),  # 14: an int answer is fine
    ({"problem": "Half of 1?", "answer": 0.5}, None),  # 15: a float answer is fine
    ({"problem": "What is 1+1?", "answer": "2"}, "duplicate of row 0"),  # 16: same text
    ({"problem": "  what IS 1+1? ", "answer": "2"}, "duplicate of row 0"),  # 17: same after normalizing
    ({"problem": "Name the thing.", "answer": "???"}, "gold answer cannot be parsed"),  # 18
]


def test_every_bad_row_is_rejected_with_its_reason(tmp_path, grader):
    path = write_jsonl(tmp_path / "rows.jsonl", [row for row, _ in BAD_ROWS])
    train, evaluation, rejects = load_problems(jsonl_config(path), grader)
    reasons = reasons_by_index(rejects)
    for index, (_, expected) in enumerate(BAD_ROWS):
        if expected is None:
            assert index not in reasons, f"row {index} was rejected: {reasons.get(index)}"
        else:
            assert reasons.get(index, "").startswith(expected), f"row {index}: {reasons.get(index)!r}"
    assert sorted(train.column("answer").to_pylist()) == ["0.5", "2", "20"]
    assert accounted(train, evaluation, rejects) == list(range(len(BAD_ROWS)))
    for row in rejects.column("row").to_pylist():  # the offending row is kept for reading
        json.loads(row)


def test_non_finite_numeric_answers_are_rejected(tmp_path, grader):
    # JSON accepts NaN/Infinity, and a float column with holes can hold NaN: "nan" is not a gold answer.
    path = tmp_path / "nan.jsonl"
    path.write_text(
        '{"problem": "p1", "answer": 1}\n{"problem": "p2", "answer": NaN}\n{"problem": "p3", "answer": Infinity}\n'
    )
    train, _, rejects = load_problems(jsonl_config(path), grader)
    assert train.column("answer").to_pylist() == ["1"]
    assert reasons_by_index(rejects) == {1: "missing or empty answer", 2: "missing or empty answer"}
    table = pa.table({"problem": ["p1", "p2"], "answer": pa.array([3.0, math.nan])})
    pq.write_table(table, tmp_path / "nan.parquet")
    train, _, rejects = load_problems(
        ProblemsConfig(source="parquet", path=str(tmp_path / "nan.parquet"), train_size=10, eval_size=0), grader
    )
    assert train.column("answer").to_pylist() == ["3.0"] and reasons_by_index(rejects) == {1: "missing or empty answer"}


def test_duplicate_ids_are_rejected(tmp_path, grader):
    rows = [
        {"q": "What is 1+1?", "a": "2", "uid": "x"},
        {"q": "What is 2+2?", "a": "4", "uid": "x"},  # same id, different text
        {"q": "What is 3+3?", "a": "6", "uid": 7},
        {"q": "What is 4+4?", "a": "8", "uid": "7"},  # ids compare as text
        {"q": "What is 5+5?", "a": "10", "uid": None},  # no id: falls back to a hash of the text
    ]
    path = write_jsonl(tmp_path / "ids.jsonl", rows)
    config = jsonl_config(path, columns={"problem": "q", "answer": "a", "id": "uid"})
    train, evaluation, rejects = load_problems(config, grader)
    assert reasons_by_index(rejects) == {1: "duplicate of row 0", 3: "duplicate of row 2"}
    assert sorted(train.column("source_index").to_pylist()) == [0, 2, 4]
    assert len(set(train.column("problem_id").to_pylist())) == 3


def test_a_row_without_a_key_does_not_fail_the_file(tmp_path, grader):
    # JSONL rows need not share keys: a first row that lacks the answer is one reject, not an error.
    path = write_jsonl(tmp_path / "ragged.jsonl", [{"problem": "p0"}, {"problem": "p1", "answer": "1"}])
    train, _, rejects = load_problems(jsonl_config(path), grader)
    assert train.column("source_index").to_pylist() == [1]
    assert reasons_by_index(rejects) == {0: "missing or empty answer"}


@pytest.mark.parametrize("source", ["jsonl", "parquet"])
def test_wrong_column_mapping_names_the_column_and_the_available_ones(tmp_path, source, grader):
    rows = [{"question": "What is 1+1?", "solution": "2"}]
    path = tmp_path / f"p.{source}"
    if source == "jsonl":
        write_jsonl(path, rows)
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    config = ProblemsConfig(source=source, path=str(path), columns={"problem": "question", "answer": "answer"})
    with pytest.raises(ProblemSourceError) as error:
        load_problems(config, grader)
    message = str(error.value)
    assert "problems.columns" in message and "'answer'" in message
    assert "question" in message and "solution" in message  # what the file does have
    config = ProblemsConfig(source=source, path=str(path), columns={"problem": "q", "answer": "solution", "id": "uid"})
    with pytest.raises(ProblemSourceError, match=r"\['q', 'uid'\]"):
        load_problems(config, grader)


def test_empty_datasets(tmp_path, grader):
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "blank.jsonl").write_text("\n  \n\n")
    for name in ("empty.jsonl", "blank.jsonl"):
        with pytest.raises(ProblemSourceError, match="no rows"):
            load_problems(jsonl_config(tmp_path / name), grader)
    schema = pa.schema([("problem", pa.string()), ("answer", pa.string())])
    pq.write_table(schema.empty_table(), tmp_path / "empty.parquet")
    with pytest.raises(ProblemSourceError, match="no rows"):
        load_problems(ProblemsConfig(source="parquet", path=str(tmp_path / "empty.parquet")), grader)
    write_jsonl(tmp_path / "useless.jsonl", [{"problem": "", "answer": "1"}, {"problem": "p", "answer": ""}])
    with pytest.raises(ProblemSourceError, match="all 2 rows were rejected"):
        load_problems(jsonl_config(tmp_path / "useless.jsonl"), grader)


def _good_parquet(path: Path) -> Path:
    rows = [{"problem": f"What is {i}+1?", "answer": str(i + 1)} for i in range(50)]
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def test_unreadable_files_name_the_path(tmp_path, grader):
    good = _good_parquet(tmp_path / "good.parquet").read_bytes()
    cases = {
        "truncated.parquet": ("parquet", good[: len(good) // 2]),
        "header_only.parquet": ("parquet", good[:4]),
        "json.parquet": ("parquet", b'{"problem": "What is 1+1?", "answer": "2"}\n'),
        "parquet.jsonl": ("jsonl", good),
        "junk.jsonl": ("jsonl", bytes(range(256)) * 4),
        "zeros.jsonl": ("jsonl", b"\x00" * 64),
    }
    for name, (source, content) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(ProblemSourceError) as error:
            load_problems(ProblemsConfig(source=source, path=str(path)), grader)
        assert name in str(error.value), f"{name}: {error.value}"


def test_malformed_jsonl_lines_are_rejected_one_by_one_naming_the_line(tmp_path, grader):
    good = '{"problem": "What is 1+1?", "answer": "2"}\n'
    cases = {
        "broken.jsonl": (good + '{"problem": "q", "ans\n', "broken.jsonl:2: not valid JSON"),
        "list.jsonl": (good + "\n[1, 2]\n", "list.jsonl:3: expected a JSON object per line, got list"),
        "string.jsonl": ('"just text"\n' + good, "string.jsonl:1: expected a JSON object per line, got str"),
        "number.jsonl": (good + "5\n", "number.jsonl:2: expected a JSON object per line, got int"),
        "null.jsonl": ("null\n" + good, "null.jsonl:1: expected a JSON object per line, got NoneType"),
        "hugeint.jsonl": ('{"problem": "p", "answer": ' + "9" * 5000 + "}\n" + good, "hugeint.jsonl:1: not valid JSON"),
        "deep.jsonl": ('{"problem": ' + "[" * 100_000 + "]" * 100_000 + "}\n" + good, "deep.jsonl:1: not valid JSON"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_text(content)
        train, _, rejects = load_problems(jsonl_config(tmp_path / name), grader)
        assert train.column("problem").to_pylist() == ["What is 1+1?"], name
        [reason] = rejects.column("reason").to_pylist()
        assert reason.startswith("undecodable: ") and message in reason, reason
    (tmp_path / "only_bad.jsonl").write_text("null\n[1]\n")
    with pytest.raises(ProblemSourceError, match="only_bad.jsonl:1: expected a JSON object per line"):
        load_problems(jsonl_config(tmp_path / "only_bad.jsonl"), grader)


def test_undecodable_rows_are_rejected_with_file_and_line_and_the_rest_is_used(tmp_path, grader):
    lines = [
        b'{"problem": "What is 1+1?", "answer": "2"}',
        b'{"problem": "What is 2+2?", "answer": "4\xff"}',  # invalid UTF-8 byte
        b'{"problem": "What is \\ud800 3+3?", "answer": "6"}',  # a lone surrogate (JSON escape)
        b'{"problem": "What is 4+4?", "answer": "\\udfff"}',
        b'{"problem": "What is 5+5?", "answer": "10", "id": "\\ud800"}',  # unusable id: a derived one
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    train, _, rejects = load_problems(jsonl_config(path), grader)
    assert sorted(train.column("answer").to_pylist()) == ["10", "2"]
    reasons = reasons_by_index(rejects)
    assert reasons[1] == f"undecodable: {path}:2: not valid UTF-8 (byte 0xff at column 41)"
    assert reasons[2].startswith("undecodable: the problem text is not valid Unicode (lone surrogate at character 8)")
    assert reasons[3].startswith("undecodable: the answer is not valid Unicode")
    assert set(reasons) == {1, 2, 3}


def test_non_finite_ids_count_as_missing(tmp_path, grader):
    table = pa.table({"problem": ["What is 1+1?", "What is 2+2?", "What is 3+3?"], "answer": ["2", "4", "6"],
                      "uid": pa.array([math.nan, math.nan, 7.0])})
    pq.write_table(table, tmp_path / "ids.parquet")
    config = ProblemsConfig(source="parquet", path=str(tmp_path / "ids.parquet"), train_size=10, eval_size=0,
                            columns={"id": "uid"})
    train, _, rejects = load_problems(config, grader)
    assert rejects.num_rows == 0  # two NaN ids are no duplicate of each other
    ids = train.column("problem_id").to_pylist()
    assert "nan" not in ids and "7.0" in ids and len(set(ids)) == 3


@pytest.mark.slow  # waits out real grading timeouts
def test_oversized_problems_and_golds_that_time_out_are_rejected(tmp_path, grader):
    rows = [
        {"problem": "What is 1+1?", "answer": "2"},
        {"problem": "What is 2+2? " + "x" * 5_000_000, "answer": "4"},  # 5 MB
        {"problem": "Compute the power tower.", "answer": "10^{10^{10}}"},
        {"problem": "What is 3+3?", "answer": "6" * 30_000},
    ]
    path = write_jsonl(tmp_path / "big.jsonl", rows)
    train, _, rejects = load_problems(jsonl_config(path), grader)
    assert train.column("answer").to_pylist() == ["2"]
    reasons = reasons_by_index(rejects)
    assert reasons[1].startswith("too long: the problem text has 5000013 characters (problems.max_problem_chars: 20000)")
    assert reasons[2].startswith("gold answer timed out")
    assert reasons[3].startswith("too long: the answer has 30000 characters")
    from pipeline.problems import reason_kind

    assert [reason_kind(reasons[i]) for i in (1, 2)] == ["too_long", "gold_timeout"]


def test_missing_path_and_directory(tmp_path, grader):
    with pytest.raises(ProblemSourceError, match="does not exist"):
        load_problems(ProblemsConfig(source="parquet", path=str(tmp_path / "nope.parquet")), grader)
    (tmp_path / "folder.jsonl").mkdir()
    with pytest.raises(ProblemSourceError, match="folder.jsonl"):
        load_problems(jsonl_config(tmp_path / "folder.jsonl"), grader)


@pytest.mark.parametrize("source", ["jsonl", "parquet"])
def test_nothing_is_silently_dropped(tmp_path, source, grader):
    """Accepted (train + eval) plus rejected equals the rows read, row for row."""
    rows = []
    for i in range(60):
        kind = i % 6
        if kind == 0:
            rows.append({"problem": f"What is {i} + 1?", "answer": str(i + 1)})
        elif kind == 1:
            rows.append({"problem": f"What is {i} + 1?", "answer": None})
        elif kind == 2:
            rows.append({"problem": None, "answer": "3"})
        elif kind == 3:
            rows.append({"problem": f"What is {i - 3} + 1?", "answer": str(i - 2)})  # duplicate of kind 0
        elif kind == 4:
            rows.append({"problem": f"Describe {i}.", "answer": "???"})  # unparseable gold
        else:
            rows.append({"problem": f"Compute {i} * 2.", "answer": str(2 * i)})
    path = tmp_path / f"mixed.{source}"
    if source == "jsonl":
        write_jsonl(path, rows)
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    config = ProblemsConfig(source=source, path=str(path), train_size=100, eval_size=5)
    train, evaluation, rejects = load_problems(config, grader)
    assert train.num_rows + evaluation.num_rows + rejects.num_rows == len(rows)
    assert accounted(train, evaluation, rejects) == list(range(len(rows)))
    assert train.num_rows + evaluation.num_rows == 20 and evaluation.num_rows == 5
    assert all(rejects.column("reason").to_pylist())


# -- parameters ----------------------------------------------------------------------------

BAD_PARAMS = [
    ("sample:\n  n: 2\n  temprature: 0.5\n", "sample.temprature: unknown key"),
    ("samples:\n  n: 2\n", "samples: unknown key"),
    ("sample:\n  n: lots\n", "sample.n: Input should be a valid integer"),
    ("sample:\n  n: 0\n", "sample.n: Input should be greater than 0"),
    ("sample:\n  top_p: 1.5\n", "sample.top_p: Input should be less than or equal to 1"),
    ("grading:\n  timeout_seconds: -1\n", "grading.timeout_seconds: Input should be greater than 0"),
    ("model:\n  trust_remote_code: maybe\n", "model.trust_remote_code: Input should be a valid boolean"),
    ("model:\n  family: gpt5\n", "model.family"),
    ("problems:\n  source: csv\n", "problems.source"),
    ("regret:\n  budget_fractions: [0.5, -1]\n", "regret.budget_fractions"),
    ("sample: 3\n", "sample: Input should be"),
    ("- a\n- b\n", "the top level must be a mapping"),
    ("episodes:\n  regex: '(unclosed'\n", "episodes.regex: Value error, not a valid regular expression"),
    ("episodes:\n  markers: [Wait, '']\n", "episodes.markers: Value error, markers must be non-empty text"),
    ("sample:\n  n: [\n", "not valid YAML"),
    ("sample:\n\tn: 2\n", "not valid YAML"),
]


@pytest.mark.parametrize("text, message", BAD_PARAMS)
def test_bad_parameters_file_names_the_key(tmp_path, text, message):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_params(path)
    assert message in str(error.value)
    assert str(path) in str(error.value)


def test_unreadable_parameters_file(tmp_path):
    (tmp_path / "binary.yaml").write_bytes(b"\xff\xfe\x00junk")
    with pytest.raises(ConfigError, match="binary.yaml"):
        load_params(tmp_path / "binary.yaml")
    with pytest.raises(ConfigError, match="cannot read"):
        load_params(tmp_path)  # a folder, not a file


@pytest.mark.parametrize(
    "override, message",
    [
        ("sample.n=0", "sample.n: Input should be greater than 0"),
        ("sample.n=many", "sample.n: Input should be a valid integer"),
        ("sample.nn=1", "sample.nn: unknown key"),
        ("sample.n=[1", "sample.n: the value is not valid YAML"),
        ("sample.n", "must look like key.path=value"),
        ("=3", "empty key"),
        ("sample.n.x=1", "'n' is not a section"),
    ],
)
def test_bad_override_names_the_key(tmp_path, override, message):
    path = tmp_path / "params.yaml"
    path.write_text("sample:\n  n: 2\n")
    with pytest.raises(ConfigError) as error:
        load_params(path, [override])
    assert message in str(error.value)


def invoke(*args: str):
    from stages.cli import app

    return CliRunner().invoke(app, list(args))


def assert_clean_failure(result, *needles: str) -> None:
    """Exit code 2, the message names what is wrong, and no traceback or escaped exception."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    assert result.output.startswith("error: ")
    for needle in needles:
        assert needle in result.output, (needle, result.output)


@pytest.mark.parametrize("text, message", BAD_PARAMS)
def test_cli_bad_parameters_file(tmp_path, text, message):
    (tmp_path / "params.yaml").write_text(text)
    assert_clean_failure(invoke("show-params", "--params", str(tmp_path / "params.yaml")), message)


@pytest.mark.parametrize(
    "override, message",
    [
        ("sample.n=0", "sample.n: Input should be greater than 0"),
        ("sample.temprature=0.5", "sample.temprature: unknown key"),
        ("prover.k=two", "prover.k: Input should be a valid integer"),
        ("grading.workers=1000", "grading.workers: Input should be less than or equal to 64"),
        ("grading.workers=0", "grading.workers: Input should be greater than or equal to 1"),
        ("sample.n={", "sample.n: the value is not valid YAML"),
        ("sample", "must look like key.path=value"),
    ],
)
def test_cli_bad_override(tmp_path, override, message):
    result = invoke("show-params", "--params", empty_params(tmp_path), "--set", override)
    assert_clean_failure(result, message)


def test_cli_params_path_is_a_folder(tmp_path):
    assert_clean_failure(invoke("show-params", "--params", str(tmp_path)), str(tmp_path))


def test_cli_model_path_that_does_not_exist(tmp_path):
    data = tmp_path / "data"
    result = invoke(
        "prepare-model", "--params", empty_params(tmp_path),
        "--set", f"data_dir={data}", "--set", "model.name_or_path=/nope",
    )
    assert_clean_failure(result, "model.name_or_path", "/nope")
    assert not (data / "base_model").exists()  # nothing half-written
    result = invoke(
        "prepare-model", "--params", empty_params(tmp_path),
        "--set", f"data_dir={data}", "--set", "model.name_or_path=embedded:nope",
    )
    assert_clean_failure(result, "model.name_or_path", "embedded:nope")


@pytest.mark.parametrize(
    "name, content, needle",
    [
        ("junk.jsonl", b"\x89PNG\r\n\x1a\n\x00\x00", "junk.jsonl"),
        ("list.jsonl", b"[1, 2]\n", "list.jsonl:1"),
        ("json.parquet", b'{"problem": "p", "answer": "1"}\n', "json.parquet"),
        ("missing.jsonl", None, "missing.jsonl"),
    ],
)
def test_cli_bad_problem_source(tmp_path, name, content, needle):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    source = "parquet" if name.endswith(".parquet") else "jsonl"
    result = invoke(
        "prepare-problems", "--params", empty_params(tmp_path), "--set", f"data_dir={tmp_path / 'data'}",
        "--set", f"problems.source={source}", "--set", f"problems.path={path}",
    )
    assert_clean_failure(result, needle)
    assert not (tmp_path / "data" / "problems").exists()


def test_cli_missing_params_file_is_named(tmp_path):
    result = invoke("show-params", "--params", str(tmp_path / "tpyo.yaml"))
    assert_clean_failure(result, "tpyo.yaml: no such file")


def test_cli_wrong_column_lists_the_available_ones(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"question": "What is 1+1?", "solution": "2"}])
    result = invoke(
        "prepare-problems", "--params", empty_params(tmp_path), "--set", f"data_dir={tmp_path / 'data'}",
        "--set", "problems.source=jsonl", "--set", f"problems.path={path}", "--set", "problems.columns.problem=question",
    )
    assert_clean_failure(result, "problems.columns", "'answer'", "question", "solution")


def test_cli_unwritable_data_dir_names_the_path(tmp_path, tiny_model_dir):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")  # as root, chmod stops no write: a path under a regular file does
    result = invoke(
        "prepare-problems", "--params", empty_params(tmp_path), "--set", f"data_dir={blocker / 'data'}",
        "--set", f"model.name_or_path={tiny_model_dir}", "--set", "problems.train_size=4", "--set", "problems.eval_size=2",
    )
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output  # before the error: only the progress bar
    assert result.output.strip().splitlines()[-1] == f"error: Not a directory: {blocker / 'data' / 'problems'}"


def test_cli_full_disk_names_the_output_folders(tmp_path, monkeypatch):
    import errno

    from stages import prepare

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(prepare, "prepare_base_model", full)
    result = invoke("prepare-model", "--params", empty_params(tmp_path), "--set", f"data_dir={tmp_path / 'd'}")
    assert_clean_failure(result, "No space left on device", f"data_dir={tmp_path / 'd'}", "metrics_dir=metrics")


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"gold": "2", "prediction": ' + "[" * 100_000 + "]" * 100_000 + "}\n", "line 1: not valid JSON (nested too deeply)"),
        ('{"gold": "2", "prediction": "x"}\n{"gold": "2", "prediction": "\\ud800 \\\\boxed{2}"}\n',
         "line 2: text that is not valid Unicode"),
    ],
)
def test_cli_grade_hostile_rows_name_the_line(tmp_path, content, message):
    path = tmp_path / "rows.jsonl"
    path.write_text(content)
    result = invoke("grade", str(path), "--workers", "1")
    assert_clean_failure(result, str(path), message)
    assert not (tmp_path / "rows.graded.parquet").exists()


def test_cli_warns_where_a_value_drops_work(tmp_path):
    result = invoke("show-params", "--params", empty_params(tmp_path), "--set", "eval.k_values=[1,8,16]",
                    "--set", "eval.n=4", "--set", "train.max_length=64", "--set", "sample.max_tokens=256")
    assert result.exit_code == 0, result.output
    assert "warning: eval.k_values: pass@k and maj@k for k = [8, 16] are skipped: eval.n is 4" in result.output
    assert "warning: train.max_length (64) is shorter than sample.max_tokens (256)" in result.output
    assert "warning" not in invoke("show-params", "--params", empty_params(tmp_path)).output


def test_real_entry_point_prints_no_traceback(tmp_path):
    """The installed `mrt` script (not CliRunner): stderr names the key, exit code 2."""
    (tmp_path / "params.yaml").write_text("sample:\n  n: -3\n  temprature: 1\n")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run(
        [sys.executable, "-m", "stages.cli", "show-params", "--params", "params.yaml"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "sample.n: Input should be greater than 0" in result.stderr
    assert "sample.temprature: unknown key" in result.stderr


# -- odd traces ----------------------------------------------------------------------------

THINKING = "Let me add.\n\nOne plus one.\n\nStill adding.\n\nWait, check again.\n\nIt is 2."

ODD_TRACES = {
    # name: (completion text, finish_reason, closed, answer)
    "normal": (THINKING + "\n</think>\n\nThe answer is \\boxed{2}.", "stop", True, "2"),
    # No </think>: the grader reads the whole text as the answer part, and its last number is 2
    # (math-verify's last-number rule); sampling never sends such a trace to the grader.
    "never_closed": (THINKING, "stop", False, "2"),
    "never_closed_with_box": (THINKING + " So \\boxed{2}", "stop", False, "2"),  # no </think>: whole text is the answer part
    "nothing_after": (THINKING + "\n</think>", "stop", True, None),
    "only_whitespace_after": (THINKING + "\n</think>\n\n  \n", "stop", True, None),
    "cut_in_close_tag": (THINKING + "\n</thi", "length", False, "2"),
    "cut_in_box": (THINKING + "\n</think>\n\nThe answer is \\boxed{2", "length", True, None),
    "cut_mid_word": (THINKING[:37], "length", False, None),
    "empty": ("", "stop", False, None),
    "close_first": ("</think>\n\n\\boxed{2}", "stop", True, "2"),
    "two_closes": ("a\n</think>\n\\boxed{1}\n</think>\n\\boxed{2}", "stop", True, "2"),
}


def completion_for(tokenizer, text: str, finish_reason: str):
    from pipeline.backends.base import Completion

    return Completion(list(tokenizer(text, add_special_tokens=False)["input_ids"]), text, finish_reason)


def trace_row(name: str, tokenizer) -> dict:
    from pipeline.sampling import thinking_end

    text, finish_reason, _, _ = ODD_TRACES[name]
    completion = completion_for(tokenizer, text, finish_reason)
    return {
        "trace_id": name, "problem_id": "p", "round": 0, "sample_index": 0, "seed": 0,
        "prompt_ids": [1, 2], "completion_ids": completion.token_ids, "completion": text,
        "n_tokens": completion.n_tokens, "finish_reason": finish_reason,
        "thinking_end": thinking_end(tokenizer, completion), "answer_text": "", "extracted": None,
        "grade": "unparsed", "correct": False, "model": "test",
    }


@pytest.mark.parametrize("name", list(ODD_TRACES))
def test_odd_traces_split_and_grade(tokenizer, grader, name):
    from pipeline.config import EpisodesConfig
    from pipeline.episodes import split_episodes
    from pipeline.prover import thinking_ids
    from pipeline.tokens import decode, token_char_starts

    text, _, closed, answer = ODD_TRACES[name]
    trace = trace_row(name, tokenizer)
    ids = trace["completion_ids"]
    assert (trace["thinking_end"] >= 0) == closed
    thinking = thinking_ids(trace)
    assert thinking == (ids[: trace["thinking_end"]] if closed else ids)
    thinking_text = decode(tokenizer, thinking)
    assert "</think>" not in thinking_text or name == "two_closes"  # the first close ends the thinking
    for config in (EpisodesConfig(), EpisodesConfig(min_gap_paragraphs=0), EpisodesConfig(rule="regex"), EpisodesConfig(rule="window", window_tokens=3)):
        episodes, _ = split_episodes(thinking_text, token_char_starts(tokenizer, thinking), config)
        if not thinking:
            assert episodes == []
            continue
        assert episodes[0].token_start == 0 and episodes[-1].token_end == len(thinking)
        assert all(a.token_end == b.token_start for a, b in zip(episodes, episodes[1:]))
        assert "".join(thinking_text[e.char_start : e.char_end] for e in episodes) == thinking_text
    [grade] = grader.grade_completions(["2"], [text])
    if answer is not None:
        assert grade.extracted == answer and grade.correct
    elif name == "cut_in_box":  # the "answer is" fallback picks up the unclosed box: unparsed, never correct
        assert grade.grade == UNPARSED and grade.reason in ("no_answer", "unparsed_prediction")
    else:
        assert grade.extracted is None and grade.grade == UNPARSED and grade.reason == "no_answer"


def test_split_stage_handles_odd_traces(tmp_path, smol_tokenizer_dir, tokenizer):
    """`mrt split` on a round whose traces are all odd: no crash, episodes tile every thinking block."""
    from pipeline.config import Params
    from pipeline.models import ModelRef, write_pointer_folder
    from pipeline.io import ShardedWriter, read_table
    from pipeline.tables import TRACES, from_rows
    from stages import split

    params = Params(data_dir=str(tmp_path / "data"), metrics_dir=str(tmp_path / "metrics"))
    write_pointer_folder(ModelRef(str(smol_tokenizer_dir)), tmp_path / "data" / "base_model")  # a tokenizer is all split loads
    traces = [trace_row(name, tokenizer) for name in ODD_TRACES]
    writer = ShardedWriter(tmp_path / "data" / "rounds" / "0" / "traces", {"test": "odd traces"})  # a whole, marked folder
    writer.write(0, from_rows(traces, TRACES))
    writer.complete(1)
    split.run(params, 0)
    episodes = read_table(tmp_path / "data" / "rounds" / "0" / "episodes.parquet").to_pylist()
    for trace in traces:
        mine = sorted((e for e in episodes if e["trace_id"] == trace["trace_id"]), key=lambda e: e["episode_index"])
        n_thinking = trace["thinking_end"] if trace["thinking_end"] >= 0 else len(trace["completion_ids"])
        if n_thinking == 0:
            assert mine == [], trace["trace_id"]
            continue
        assert [e["episode_index"] for e in mine] == list(range(1, len(mine) + 1))
        assert mine[0]["token_start"] == 0 and mine[-1]["token_end"] == n_thinking, trace["trace_id"]
        assert all(a["token_end"] == b["token_start"] for a, b in zip(mine, mine[1:]))
