"""The whole loop, 2 rounds, through `dvc repro`, on the tiny model: real DVC, trl, Parquet."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
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
                              train_size=6, eval_size=2, eval_benchmarks=[])
    params["sample"].update(n=2, max_tokens=32, shard_size=4)
    params["episodes"].update(window_tokens=8)
    params["prover"].update(k=2, max_answer_tokens=12, shard_size=4)
    params["train"].update(epochs=1, batch_size=2, logging_steps=1)
    params["eval"].update(n=2, k_values=[1, 2], budget_points=4, prover_k=1,
                          extrapolate={"times": 2, "tokens": 8, "markers": ["Wait", "But wait"]})
    (workdir / "params.yaml").write_text(yaml.safe_dump(params))


@pytest.mark.slow
def test_two_rounds_two_arms_with_dvc(tmp_path, tiny_model_dir):
    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    for folder in ("pipeline", "stages", "configs"):  # dvc.yaml's code dependencies
        shutil.copytree(REPO / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__"))
    write_params(tmp_path, tiny_model_dir)
    run(["dvc", "init", "--no-scm", "-q"], tmp_path)
    log = run(["dvc", "repro"], tmp_path)
    assert "Running stage 'train@mrt-1'" in log and "Running stage 'train@star-1'" in log
    assert log.count("Running stage 'sample@") == 3  # round 0 once for both arms, round 1 per arm
    # scored_arms: [mrt]: the prover scores round 0 and MRT's round 1; STaR's round 1 selects by correctness.
    assert log.count("Running stage 'prove@") == 2 and "Running stage 'prove@star-1'" not in log
    assert "Running stage 'select_unscored@star-1'" in log and "Running stage 'export_unscored@star-1'" in log

    data, reports = tmp_path / "data", tmp_path / "metrics"
    base_traces = pq.read_table(data / "rounds" / "0" / "traces").to_pylist()
    assert len(base_traces) == 12
    for arm in ("mrt", "star"):
        for round_index in (0, 1):
            samples = data / "rounds" / "0" if round_index == 0 else data / "arms" / arm / "rounds" / "1"
            arm_dir = data / "arms" / arm / "rounds" / str(round_index)
            traces = pq.read_table(samples / "traces").to_pylist()
            assert len(traces) == 12 and {t["grade"] for t in traces} <= {"correct", "incorrect", "unparsed"}
            # A trace is correct only if it closed its thinking exactly once (issue 13.1).
            assert all(t["completion"].count("</think>") == 1 for t in traces if t["correct"])
            assert all(t["grade_reason"] == "unclosed_thinking" for t in traces if "</think>" not in t["completion"])
            metrics = json.loads((reports / "arms" / arm / "rounds" / str(round_index) / "metrics.json").read_text())
            assert metrics["arm"] == arm and metrics["method"] == arm
            assert metrics["traces_sampled"] == 12
            # The tiny model answers after a forced stop more often than within 24 tokens: MRT keeps some.
            assert metrics["traces_kept"] >= (1 if (arm, round_index) == ("mrt", 0) else 0)
            scored = (arm, round_index) != ("star", 1)
            assert metrics["scored"] is scored
            plot = reports / "arms" / arm / "rounds" / str(round_index) / "plots" / "j_by_prefix.json"
            assert plot.exists() is scored
            if scored:
                prover = pq.read_table(samples / "prover").to_pylist()
                assert {p["trace_id"] for p in prover} == {t["trace_id"] for t in traces}
                assert {p["n_samples"] for p in prover} == {2}  # prover.k
                assert metrics["mean_regret"] is not None
            else:  # no prover ran: no scores, and none made up
                assert not (samples / "prover").exists() and not (samples / "regret.parquet").exists()
                assert metrics["mean_regret"] is None and metrics["mean_progress"] is None
            selected = pq.read_table(arm_dir / "selected.parquet").to_pylist()
            assert {s["method"] for s in selected} <= {arm}
            for target in selected:  # one thinking block, then a non-empty answer (issue 13.2)
                assert target["completion"].count("</think>") == 1, target["completion"]
                assert target["completion"].split("</think>")[1].strip(), target["completion"]
            import datasets

            export = pq.read_table(arm_dir / "export" / "prompt_completion.parquet")
            assert export.num_rows == len(selected)
            assert {"prompt", "completion", "trace_id", "regret"} <= set(export.column_names)
            tokenized = pq.read_table(arm_dir / "export" / "sft_tokenized.parquet")
            assert {"input_ids", "completion_mask", "problem", "answer"} <= set(tokenized.column_names)
            progress_tables = {"progress_steps.parquet", "progress_rewards.parquet"}
            assert (progress_tables <= {p.name for p in (arm_dir / "export").iterdir()}) is scored
            train = json.loads((reports / "arms" / arm / "rounds" / str(round_index) / "train.json").read_text())
            assert train["trained"] == bool(selected)
            if selected:  # over-length targets are dropped and counted, never sliced (issue 13.5)
                assert train["examples"] == len(selected) and 0 <= train["dropped_over_length"] < len(selected)
            assert (arm_dir / "model" / ("model.safetensors" if selected else "model_ref.json")).exists()
            if selected:
                messages = datasets.load_dataset("parquet", data_files=str(arm_dir / "export" / "messages.parquet"))["train"]
                assert messages[0]["messages"][-1]["role"] == "assistant"
        # Round 1 sampled with this arm's round-0 model, with the same seeds as the other arm.
        round1 = pq.read_table(data / "arms" / arm / "rounds" / "1" / "traces").to_pylist()
        assert round1[0]["model"].endswith(f"arms/{arm}/rounds/0/model")
    seeds = {arm: [t["seed"] for t in pq.read_table(data / "arms" / arm / "rounds" / "1" / "traces").to_pylist()]
             for arm in ("mrt", "star")}
    assert seeds["mrt"] == seeds["star"]

    for policy in ("base", "mrt/2", "star/2"):
        folder = reports / "eval" / policy
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics["problems"] == 2 and metrics["samples_per_problem"] == 2
        assert 0 <= metrics["pass@1"] <= metrics["pass@2"] <= 1
        assert sum(m["problems"] for m in metrics["by_source"].values()) == 2
        curve = json.loads((folder / "accuracy_by_budget.json").read_text())
        assert [p["budget_tokens"] for p in curve] == [11, 22, 33, 44]  # (32 + 12) / 4 steps
        extrapolation = json.loads((folder / "extrapolation.json").read_text())
        assert [p["extensions"] for p in extrapolation] == [0, 1, 2] and all(p["traces"] == 4 for p in extrapolation)
        assert extrapolation[0]["mean_tokens"] < extrapolation[2]["mean_tokens"]
        rows = pq.read_table(data / "eval" / policy / "extrapolation").to_pylist()
        assert len(rows) == 8 and all(r["n_samples"] == 1 for r in rows)  # eval.prover_k, not prover.k (2)
        assert {r["n_samples"] for r in pq.read_table(data / "eval" / policy / "prover").to_pylist()} == {1}
    report = (reports / "report" / "report.md").read_text()
    assert "| star after 2 rounds |" in report and "| mrt | 1 |" in report
    assert "| not scored | not scored |" in report.split("| star | 1 |")[1].splitlines()[0]
    for png in ("accuracy_vs_tokens.png", "extrapolation.png"):
        assert (reports / "report" / png).stat().st_size > 0
    plots = run(["dvc", "plots", "show", "--json"], tmp_path)
    assert "accuracy_by_budget" in plots and "extrapolation" in plots

    second = run(["dvc", "repro"], tmp_path)
    assert "Running stage" not in second
    status = run(["dvc", "status"], tmp_path)
    assert "up to date" in status


def test_dvc_items_match_the_arms_parameter():
    """dvc.yaml lists a sample/step/eval item per arm and round; they must agree with `arms`."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["vars"]
    arms = yaml.safe_load((REPO / "params.yaml").read_text())["arms"]
    items = {name: spec for entry in stages for name, spec in entry.items()}
    assert {v["arm"] for v in items["steps"].values()} == set(arms)
    assert {v["arm"] for v in items["evals"].values() if v["round"] > 0} == set(arms)
    for name, step in items["steps"].items():
        assert name == f"{step['arm']}-{step['round']}"
        expected = "data/base_model" if step["round"] == 0 else f"data/arms/{step['arm']}/rounds/{step['round'] - 1}/model"
        assert step["policy"] == expected
        if step["round"] > 0:
            assert items["samples"][name]["dir"] == step["samples"] and items["samples"][name]["policy"] == expected


def test_dvc_scored_items_match_scored_arms():
    """The prover runs on round 0 and on the rounds of `scored_arms`; the others select by correctness."""
    from pipeline.config import load_params

    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["vars"]
    items = {name: spec for entry in stages for name, spec in entry.items()}
    params = load_params(REPO / "params.yaml")
    assert items["scored"] == {name: spec for name, spec in items["samples"].items()
                               if params.is_scored(spec["arm"], spec["round"])}
    assert {**items["scored_steps"], **items["unscored_steps"]} == items["steps"]
    assert not items["scored_steps"].keys() & items["unscored_steps"].keys()
    for name, step in items["steps"].items():
        assert (name in items["scored_steps"]) is params.is_scored(step["arm"], step["round"])


def test_cli_reports_bad_parameters_by_key(tmp_path):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    done = subprocess.run(["mrt", "sample", "--set", "sample.n=-1"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 2 and "sample.n" in done.stderr and "Traceback" not in done.stderr
    done = subprocess.run(["mrt", "prepare-model", "--set", "model.name_or_path=./no/such/model"], cwd=tmp_path, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 2 and "no/such/model" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("params_file", ["params.yaml", "configs/r1-distill-qwen-1.5b.yaml",
                                         "configs/r1-distill-qwen-7b-multigpu.yaml"])
def test_every_dvc_parameter_is_in_the_parameter_files(params_file):
    """DVC refuses to run a stage whose `params:` key is missing from params.yaml (and a recipe is
    copied over params.yaml), so every key dvc.yaml lists must be written out in each file."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    params = yaml.safe_load((REPO / params_file).read_text())
    keys = {key for stage in stages.values() for key in stage.get("do", stage).get("params", [])}
    assert keys
    for key in sorted(keys):
        node = params
        for part in key.split("."):
            assert isinstance(node, dict) and part in node, f"{params_file} lacks {key}, which dvc.yaml lists"
            node = node[part]
