"""The whole loop, 2 rounds, through `dvc repro`, on the tiny model: real DVC, trl, Parquet."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import yaml

REPO = Path(__file__).resolve().parents[1]
PROBLEMS = [
    ("Calculate 1 + 1.", "2"), ("Calculate 3 - 1.", "2"), ("Calculate 0 + 2.", "2"), ("Calculate 4 - 2.", "2"),
    ("Calculate 5 - 3.", "2"), ("Calculate 6 - 4.", "2"), ("Calculate 2 + 3.", "5"), ("Calculate 7 - 2.", "5"),
]


def run(cmd: list[str], cwd: Path) -> str:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", DVC_NO_ANALYTICS="1")
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout + done.stderr


def write_params(workdir: Path, model_dir: Path) -> None:
    problems = workdir / "problems.jsonl"
    problems.write_text("".join(json.dumps({"question": q, "solution": a}) + "\n" for q, a in PROBLEMS))
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["model"]["name_or_path"] = str(model_dir)
    params["problems"].update(source="jsonl", path=str(problems), columns={"problem": "question", "answer": "solution"},
                              train_size=6, eval_size=2)
    params["sample"].update(n=2, max_tokens=24, shard_size=4)
    params["episodes"].update(window_tokens=8)
    params["prover"].update(k=2, max_answer_tokens=12, shard_size=4)
    params["train"].update(epochs=1, batch_size=2, logging_steps=1)
    params["eval"].update(n=2, k_values=[1, 2], budget_points=4)
    (workdir / "params.yaml").write_text(yaml.safe_dump(params))


def test_two_rounds_with_dvc(tmp_path, tiny_model_dir):
    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    shutil.copytree(REPO / "pipeline", tmp_path / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    write_params(tmp_path, tiny_model_dir)
    run(["dvc", "init", "--no-scm", "-q"], tmp_path)
    log = run(["dvc", "repro"], tmp_path)
    assert "Running stage 'train@1'" in log

    data = tmp_path / "data"
    for round_index in (0, 1):
        round_dir = data / "rounds" / str(round_index)
        traces = pq.read_table(round_dir / "traces").to_pylist()
        assert len(traces) == 12 and {t["grade"] for t in traces} <= {"correct", "incorrect", "unparsed"}
        metrics = json.loads((tmp_path / "metrics" / "rounds" / str(round_index) / "metrics.json").read_text())
        assert metrics["traces_sampled"] == 12 and metrics["traces_kept"] >= 1
        prover = pq.read_table(round_dir / "prover").to_pylist()
        assert {p["trace_id"] for p in prover} == {t["trace_id"] for t in traces}
        import datasets

        export = datasets.load_dataset("parquet", data_files=str(round_dir / "export" / "prompt_completion.parquet"))["train"]
        assert export.num_rows >= 1 and {"prompt", "completion", "trace_id", "regret"} <= set(export.column_names)
        messages = datasets.load_dataset("parquet", data_files=str(round_dir / "export" / "messages.parquet"))["train"]
        assert messages[0]["messages"][-1]["role"] == "assistant"
        assert json.loads((tmp_path / "metrics" / "rounds" / str(round_index) / "train.json").read_text())["trained"]
        assert (round_dir / "model" / "model.safetensors").exists()
    # Round 1 sampled with round 0's fine-tuned model.
    assert pq.read_table(data / "rounds" / "1" / "traces").column("model")[0].as_py().endswith("rounds/0/model")

    for model_index in (0, 1, 2):  # base model, after round 0, after round 1
        reports = tmp_path / "metrics" / "eval" / str(model_index)
        metrics = json.loads((reports / "metrics.json").read_text())
        assert metrics["problems"] == 2 and metrics["samples_per_problem"] == 2
        assert 0 <= metrics["pass@1"] <= metrics["pass@2"] <= 1
        curve = json.loads((reports / "accuracy_by_budget.json").read_text())
        assert [p["budget_tokens"] for p in curve] == [9, 18, 27, 36]  # (24 + 12) / 4 steps
    report = (tmp_path / "metrics" / "report" / "report.md").read_text()
    assert "| after round 1 |" in report and (tmp_path / "metrics" / "report" / "accuracy_vs_tokens.png").stat().st_size > 0
    plots = run(["dvc", "plots", "show", "--json"], tmp_path)
    assert "accuracy_by_budget" in plots

    second = run(["dvc", "repro"], tmp_path)
    assert "Running stage" not in second
    status = run(["dvc", "status"], tmp_path)
    assert "up to date" in status


def test_cli_reports_bad_parameters_by_key(tmp_path):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    done = subprocess.run(["mrt", "sample", "--set", "sample.n=-1"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 2 and "sample.n" in done.stderr and "Traceback" not in done.stderr
    done = subprocess.run(["mrt", "prepare-model", "--set", "model.name_or_path=./no/such/model"], cwd=tmp_path, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 2 and "no/such/model" in done.stderr and "Traceback" not in done.stderr
