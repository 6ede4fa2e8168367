from pathlib import Path

import pytest

from pipeline.config import ConfigError, load_params

REPO = Path(__file__).resolve().parents[1]


def test_defaults_load_and_repo_params_are_valid():
    params = load_params(REPO / "params.yaml")
    assert params.model.family == "chatml_think"
    assert params.sample.n > 0


@pytest.mark.parametrize(
    "override, key",
    [
        ("sample.n=-1", "sample.n"),
        ("model.family=gpt5", "model.family"),
        ("prover.k=0", "prover.k"),
        ("sample.top_p=1.5", "sample.top_p"),
        ("sample.temprature=0.5", "sample.temprature"),
        ("train.learning_rate=fast", "train.learning_rate"),
    ],
)
def test_bad_parameter_names_its_key(tmp_path, override, key):
    with pytest.raises(ConfigError) as error:
        load_params(tmp_path / "missing.yaml", [override])
    assert key in str(error.value)


def test_unknown_key_in_file_is_reported(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("sample:\n  n: 2\n  nn: 3\n")
    with pytest.raises(ConfigError, match=r"sample\.nn: unknown key"):
        load_params(path)


def test_override_parses_yaml_values(tmp_path):
    params = load_params(tmp_path / "none.yaml", ["sample.n=4", "regret.budget_fractions=[0.5, 1.0]"])
    assert params.sample.n == 4
    assert params.regret.budget_fractions == [0.5, 1.0]


def test_file_source_requires_path(tmp_path):
    with pytest.raises(ConfigError, match="problems.path"):
        load_params(tmp_path / "none.yaml", ["problems.source=jsonl"])


def test_every_recipe_validates():
    recipes = sorted((REPO / "configs").glob("*.yaml"))
    assert recipes
    for recipe in recipes:
        load_params(recipe)


def test_scored_arms_decide_which_rounds_the_prover_scores(tmp_path):
    params = load_params(REPO / "params.yaml")
    assert params.scored_arms == ["mrt"]
    assert params.is_scored("star", 0) and params.is_scored("mrt", 1) and not params.is_scored("star", 1)
    assert load_params(tmp_path / "none.yaml", ["scored_arms=[mrt, star]"]).is_scored("star", 2)
    with pytest.raises(ConfigError, match="scored_arms must list mrt"):  # MRT's selection reads J
        load_params(tmp_path / "none.yaml", ["scored_arms=[star]"])
    assert load_params(tmp_path / "none.yaml", ["arms=[star]", "scored_arms=[]"]).arms == ["star"]


@pytest.mark.parametrize("command", ["prove", "score"])
def test_the_prover_refuses_a_round_scored_arms_leaves_unscored(tmp_path, command):
    """`mrt prove -r 1 --arm star` under the defaults: a clear refusal naming the key, before any file is read."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    done = subprocess.run(["mrt", command, "-r", "1", "--arm", "star", "--params", str(REPO / "params.yaml")],
                          cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "round 1 of arm star is not scored" in done.stderr and "scored_arms" in done.stderr
