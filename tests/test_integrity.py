"""Every output whole, current and from one run, or refused (issue 15); nodes sharing a folder (issue 16).

Real `mrt` processes on the tiny model, with the helpers of the crash-recovery tests: a second
`mrt sample` with other parameters on a folder another run is writing (refused, nothing
mixed); two processes with disjoint `--shard-index` on one folder (exactly the single-process
table); an edited problem text (resampled); `train` killed (the model folder refused until
rerun, no stale pointer beside fresh weights); `prepare-problems` killed between its files
(refused). Small inputs: 4 training problems, 2 samples each, one problem per shard.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from test_crash_recovery import ENV, Launch, mrt, no_stray_stage, shard_names, write_params  # noqa: F401

from pipeline.io import MANIFEST, SET_KEY, IncompleteOutputError, read_table, write_table, write_table_set
from pipeline.tables import SELECTED, TRACES, from_rows

pytestmark = [pytest.mark.skipif(not Path("/proc").is_dir(), reason="signals and /proc"), pytest.mark.slow]

TRACES_DIR = Path("data/rounds/0/traces")
SHARDS = 4


def run_mrt(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["mrt", *args], cwd=workdir, env=ENV, capture_output=True, text=True, timeout=300)


def small_params(workdir: Path, model_dir: Path) -> Path:
    write_params(workdir, model_dir)
    params = yaml.safe_load((workdir / "params.yaml").read_text())
    params["problems"].update(train_size=SHARDS, eval_size=2)
    (workdir / "params.yaml").write_text(yaml.safe_dump(params))
    return workdir


def set_id(path: Path) -> str | None:
    """The id of the file set a Parquet file belongs to (None while it is missing or being replaced)."""
    try:
        return json.loads(pq.read_schema(path).metadata[SET_KEY])["id"]
    except (FileNotFoundError, OSError, KeyError, TypeError):
        return None


def copy_inputs(source: Path, workdir: Path) -> Path:
    shutil.copy(source / "params.yaml", workdir / "params.yaml")
    shutil.copy(source / "problems.jsonl", workdir / "problems.jsonl")
    for path in ("data/base_model", "data/problems"):
        shutil.copytree(source / path, workdir / path)
    return workdir


@pytest.fixture(scope="module")
def contested(tmp_path_factory, tiny_model_dir):
    """A prepared folder where `mrt sample` runs (frozen mid-run) while a second one with sample.n=1 starts."""
    workdir = small_params(tmp_path_factory.mktemp("contested"), tiny_model_dir)
    mrt(workdir, "prepare")
    folder = workdir / TRACES_DIR
    first = Launch(workdir, "sample", "-r", "0")
    first.wait_for(lambda: (folder / MANIFEST).exists(), "a manifest", poll=0.01)
    os.kill(first.process.pid, signal.SIGSTOP)  # it holds the folder, however fast the machine
    second = run_mrt(workdir, "sample", "-r", "0", "--set", "sample.n=1")
    os.kill(first.process.pid, signal.SIGCONT)
    assert first.finish() == 0, first.err()[-3000:]
    return workdir, first.process.pid, second


def test_a_second_run_with_other_parameters_is_refused_while_the_first_writes(contested):
    workdir, first_pid, second = contested
    assert second.returncode == 2 and "Traceback" not in second.stderr, second.stderr[-3000:]
    assert "is being written by another run" in second.stderr and f"pid {first_pid}" in second.stderr
    traces = read_table(workdir / TRACES_DIR, TRACES).to_pylist()
    assert len(traces) == SHARDS * 2 and {t["sample_index"] for t in traces} == {0, 1}  # all n=2, nothing mixed


def test_two_processes_on_disjoint_shards_give_the_single_process_result(contested, tmp_path):
    reference = read_table(contested[0] / TRACES_DIR, TRACES).to_pylist()
    workdir = copy_inputs(contested[0], tmp_path)
    nodes = [Launch(workdir, "sample", "-r", "0", "--shard-index", str(i), "--num-shards", "2") for i in (0, 1)]
    assert [node.finish() for node in nodes] == [0, 0], [node.err()[-2000:] for node in nodes]
    folder = workdir / TRACES_DIR
    assert read_table(folder, TRACES).to_pylist() == reference
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]
    assert "all trace shards already complete" in mrt(workdir, "sample", "-r", "0")


def test_an_edited_problem_text_resamples(contested, tmp_path):
    workdir = copy_inputs(contested[0], tmp_path)
    shutil.copytree(contested[0] / TRACES_DIR, workdir / TRACES_DIR)
    before = read_table(workdir / TRACES_DIR, TRACES).to_pylist()
    problems = {split: read_table(workdir / "data" / "problems" / f"{split}.parquet") for split in ("train", "eval", "rejects")}
    train = problems["train"].to_pylist()
    train[0]["problem"] += " Show your work."  # same id, same answer, another prompt
    problems["train"] = from_rows(train, problems["train"].schema.remove_metadata())
    write_table_set({workdir / "data" / "problems" / f"{split}.parquet": table.replace_schema_metadata(None)
                     for split, table in problems.items()})
    assert f"sampled {SHARDS * 2} traces in {SHARDS} shard(s)" in mrt(workdir, "sample", "-r", "0")
    after = read_table(workdir / TRACES_DIR, TRACES).to_pylist()
    edited = [t for t in after if t["problem_id"] == train[0]["problem_id"]]
    old = [t for t in before if t["problem_id"] == train[0]["problem_id"]]
    assert edited and [t["prompt_ids"] for t in edited] != [t["prompt_ids"] for t in old]


def _selected(tokenizer, count: int = 4) -> list[dict]:
    rows = []
    for index in range(count):
        prompt, completion = f"What is 1+{index}?", f"<think>one plus {index}</think> \\boxed{{{index + 1}}}"
        rows.append({"trace_id": f"t{index}", "problem_id": f"p{index}", "round": 0, "method": "mrt", "prompt": prompt,
                     "completion": completion, "prompt_ids": tokenizer(prompt, add_special_tokens=False)["input_ids"],
                     "completion_ids": tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id],
                     "best_prefix": 0, "n_episodes": 1, "j_best": 1.0, "total_gain": 0.0, "regret": 0.0, "model": "tiny"})
    return rows


def test_a_killed_train_leaves_a_refused_folder_and_fresh_weights_drop_the_old_pointer(contested, tmp_path, tokenizer,
                                                                                        tiny_model_dir):
    from pipeline.config import load_params
    from pipeline.models import REF_FILE, IncompleteModelError, fingerprint, resolve_output
    from stages import train as train_stage
    from stages.common import policy_ref

    workdir = copy_inputs(contested[0], tmp_path)
    arm_dir = workdir / "data" / "arms" / "mrt" / "rounds" / "0"
    model = arm_dir / "model"
    params = load_params(workdir / "params.yaml").model_copy(update={"data_dir": str(workdir / "data"),
                                                                    "metrics_dir": str(workdir / "metrics")})
    write_table(SELECTED.empty_table(), arm_dir / "selected.parquet")
    assert "nothing selected" in train_stage.run(params, 0, "mrt")  # a round that kept nothing: a pointer
    assert (model / REF_FILE).exists() and policy_ref(params, 1).name_or_path == str(tiny_model_dir)  # the base model

    write_table(from_rows(_selected(tokenizer), SELECTED), arm_dir / "selected.parquet")
    train = ("train", "-r", "0", "--set", "train.batch_size=2", "--set", "train.epochs=1", "--set", "train.gradient_checkpointing=false")
    launch = Launch(workdir, *train)
    launch.wait_for(lambda: any(p.name.startswith(".model~") for p in arm_dir.iterdir()), "a staging folder", poll=0.005)
    os.kill(launch.process.pid, signal.SIGKILL)
    launch.finish()
    with pytest.raises(IncompleteModelError, match=r"run `mrt train -r 0 --arm mrt` again"):
        policy_ref(params, 1)
    with pytest.raises(IncompleteModelError):
        fingerprint(model)

    assert "trained on 4 examples" in mrt(workdir, *train)
    assert not (model / REF_FILE).exists() and (model / "model.safetensors").exists()
    assert resolve_output(model).name_or_path == str(model)  # the fresh weights, not the old pointer
    assert not [p for p in arm_dir.iterdir() if p.name.endswith(".tmp")]  # the killed run's staging is gone


def test_prepare_problems_killed_between_train_and_eval_is_refused(contested, tmp_path):
    """Freeze `prepare-problems` the moment its new train.parquet lands; if eval.parquet is still the old one, kill it."""
    workdir = copy_inputs(contested[0], tmp_path)
    problems = workdir / "data" / "problems"

    for attempt in range(4):  # the gap between two small files is short: try again if it was missed
        old_eval, old_train = set_id(problems / "eval.parquet"), (problems / "train.parquet").stat().st_ino
        launch = Launch(workdir, "prepare-problems", "--set", f"problems.seed={attempt + 100}")
        launch.wait_for(lambda: (problems / "train.parquet").stat().st_ino != old_train, "a new train.parquet", poll=0.0002)
        os.kill(launch.process.pid, signal.SIGSTOP)
        if set_id(problems / "eval.parquet") == old_eval and set_id(problems / "train.parquet") != old_eval:
            os.kill(launch.process.pid, signal.SIGKILL)
            launch.finish()
            break
        os.kill(launch.process.pid, signal.SIGCONT)
        assert launch.finish() == 0
    else:
        pytest.fail("no kill landed between train.parquet and eval.parquet in 4 attempts")
    for name in ("train.parquet", "eval.parquet"):  # what `mrt sample` / `mrt evaluate` read first
        with pytest.raises(IncompleteOutputError, match=r"from another run.*run `mrt prepare-problems` again"):
            read_table(problems / name)


def test_model_folders_are_whole_and_pointer_and_weights_replace_each_other(tmp_path, tiny_model_dir):
    from pipeline.config import ModelConfig
    from pipeline.models import (REF_FILE, IncompleteModelError, ModelRef, fingerprint, prepare_base_model,
                                 resolve_output, staged_model_folder, write_pointer_folder)

    out = tmp_path / "arms" / "mrt" / "rounds" / "0" / "model"
    write_pointer_folder(ModelRef("org/base", "abc"), out)
    pointer = fingerprint(out)
    with pytest.raises(RuntimeError, match="killed"), staged_model_folder(out) as staging:
        (staging / "config.json").write_text("{}")  # weights half written when the run dies
        raise RuntimeError("killed")
    with pytest.raises(IncompleteModelError, match="mrt train -r 0 --arm mrt"):
        resolve_output(out)
    assert not [p for p in out.parent.iterdir() if p.name != "model"]  # no staging folder left
    with staged_model_folder(out) as staging:
        for name in ("config.json", "model.safetensors"):
            shutil.copy(tiny_model_dir / name, staging / name)
    assert not (out / REF_FILE).exists() and resolve_output(out).name_or_path == str(out)
    assert fingerprint(out) != pointer
    write_pointer_folder(ModelRef("org/base", "abc"), out)  # and back: no weights left beside the pointer
    assert sorted(p.name for p in out.iterdir()) == ["_complete.json", REF_FILE] and fingerprint(out) == pointer

    # A pointer to a local folder: rewriting that folder's weights changes the fingerprint.
    local = tmp_path / "outside"
    shutil.copytree(tiny_model_dir, local)
    base = tmp_path / "base_model"
    prepare_base_model(ModelConfig(name_or_path=str(local)), base)
    before = fingerprint(base)
    time.sleep(0.01)
    (local / "model.safetensors").write_bytes((local / "model.safetensors").read_bytes())
    assert fingerprint(base) != before


def test_export_killed_between_its_files_is_refused(contested, tokenizer, tmp_path):
    """Freeze `mrt export` the moment its first new file lands; if its last file is still the old one, kill it.

    Inputs are small tables beside the fixture's real traces (one episode per trace) rather than
    split, prove, score and select, which take a minute on a loaded 2-core machine.
    """
    from pipeline.dense_progress import REWARDS, STEPWISE
    from pipeline.export import MESSAGES, PROMPT_COMPLETION, TOKENIZED
    from pipeline.tables import EPISODES, PROGRESS

    workdir = copy_inputs(contested[0], tmp_path)
    shutil.copytree(contested[0] / TRACES_DIR, workdir / TRACES_DIR)
    traces = read_table(workdir / TRACES_DIR, TRACES).to_pylist()
    rounds = workdir / "data" / "rounds" / "0"
    spans = [(t, t["thinking_end"] if t["thinking_end"] >= 0 else t["n_tokens"]) for t in traces]
    write_table(from_rows([{"trace_id": t["trace_id"], "episode_index": 1, "token_start": 0, "token_end": end, "char_start": 0,
                            "char_end": len(t["completion"]), "marker": "start", "rule": "test"} for t, end in spans],
                          EPISODES), rounds / "episodes.parquet")
    write_table(from_rows([{"trace_id": t["trace_id"], "episode_index": 1, "progress": 0.5, "progress_se": 0.1,
                            "j_before": 0.0, "j_after": 0.5} for t in traces], PROGRESS), rounds / "progress.parquet")
    arm_dir = workdir / "data" / "arms" / "mrt" / "rounds" / "0"
    write_table(from_rows([{"trace_id": t["trace_id"], "problem_id": t["problem_id"], "round": 0, "method": "mrt",
                            "prompt": tokenizer.decode(t["prompt_ids"]), "completion": t["completion"],
                            "prompt_ids": t["prompt_ids"], "completion_ids": t["completion_ids"], "best_prefix": 1,
                            "n_episodes": 1, "j_best": 0.5, "total_gain": 0.5, "regret": 0.0, "model": t["model"]}
                           for t in traces[::2]], SELECTED), arm_dir / "selected.parquet")
    export = arm_dir / "export"
    names = [TOKENIZED, PROMPT_COMPLETION, MESSAGES, STEPWISE, REWARDS]  # the order `export` writes them
    done = mrt(workdir, "export", "-r", "0", "--arm", "mrt")  # the old files, whole
    assert f"exported {len(traces[::2])} SFT examples and the progress of {len(traces)} traces" in done
    assert all(read_table(export / name).num_rows for name in names)

    for attempt in range(4):  # the gaps between five small files are short: try again if all were missed
        old_set, old_first = set_id(export / REWARDS), (export / TOKENIZED).stat().st_ino
        assert old_set is not None and set_id(export / TOKENIZED) == old_set
        # Another system prompt: other messages, so another set id for every member.
        launch = Launch(workdir, "export", "-r", "0", "--arm", "mrt", "--set", f"model.system_prompt=Be brief ({attempt}).")
        launch.wait_for(lambda: (export / TOKENIZED).stat().st_ino != old_first, f"a new {TOKENIZED}", poll=0.0002)
        os.kill(launch.process.pid, signal.SIGSTOP)
        if set_id(export / REWARDS) == old_set and set_id(export / TOKENIZED) not in (None, old_set):
            os.kill(launch.process.pid, signal.SIGKILL)
            launch.finish()
            break
        os.kill(launch.process.pid, signal.SIGCONT)
        assert launch.finish() == 0, launch.err()[-3000:]
    else:
        pytest.fail("no kill landed between the export's first and last files in 4 attempts")
    print(f"killed at attempt {attempt} with {[set_id(export / name) == old_set for name in names]} old")
    for name in names:  # whichever file a trainer opens, the mix is refused
        with pytest.raises(IncompleteOutputError, match=r"from another run.*run `mrt export -r 0 --arm mrt` again"):
            read_table(export / name)


def _tables(folder: Path) -> dict[str, list[dict]]:
    """Every sharded table under `folder`, by its path relative to `folder`."""
    return {str(shards.parent.relative_to(folder)): read_table(shards.parent).to_pylist()
            for shards in sorted(folder.rglob("part-00000.parquet"))}


def test_prove_and_evaluate_on_two_nodes_write_the_one_process_tables(contested, tmp_path):
    """`prove` and `evaluate` with disjoint --shard-index on one folder (two SLURM array tasks): the
    same prover, eval-trace, eval-prover and extrapolation tables as one process, no stray temp files."""
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
    one, two = (copy_inputs(contested[0], tmp_path / name) for name in ("one", "two"))
    for workdir in (one, two):
        shutil.copytree(contested[0] / TRACES_DIR, workdir / TRACES_DIR)
        mrt(workdir, "split", "-r", "0")
    mrt(one, "prove", "-r", "0")
    mrt(one, "evaluate", "-r", "0")
    for stage in ("prove", "evaluate"):
        nodes = [Launch(two, stage, "-r", "0", "--shard-index", str(i), "--num-shards", "2") for i in (0, 1)]
        assert [node.finish(timeout=240) for node in nodes] == [0, 0], [node.err()[-2000:] for node in nodes]
    expected, got = _tables(one / "data"), _tables(two / "data")
    assert {"rounds/0/prover", "eval/base/traces", "eval/base/prover", "eval/base/extrapolation"} <= set(expected)
    assert all(len(expected[name]) > 2 for name in ("rounds/0/prover", "eval/base/prover"))  # several shards each
    assert got == expected
    assert not [path for path in (two / "data").rglob("*") if path.name.endswith(".tmp")]
    metrics = [json.loads((workdir / "metrics" / "eval" / "base" / "metrics.json").read_text()) for workdir in (one, two)]
    assert metrics[0] == metrics[1]


def test_evaluate_with_another_eval_prover_k_replaces_its_prover_shards_never_mixes_them(contested, tmp_path):
    """`eval.prover_k` is part of the eval prover's and the extrapolation's fingerprints: a rerun with
    another value replaces their shards (every row then has the new number of answers)."""
    workdir = copy_inputs(contested[0], tmp_path)
    shutil.copytree(contested[0] / TRACES_DIR, workdir / TRACES_DIR)
    eval_dir = workdir / "data" / "eval" / "base"
    for k in (1, 2):
        mrt(workdir, "evaluate", "-r", "0", "--set", f"eval.prover_k={k}")
        for table in ("prover", "extrapolation"):
            assert {row["n_samples"] for row in read_table(eval_dir / table).to_pylist()} == {k}, (table, k)
