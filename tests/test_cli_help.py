"""The CLI tells a newcomer what it accepts: version, arm choices, what --round means, the key they meant."""

import pytest
from typer.testing import CliRunner

from pipeline.config import ConfigError, load_params
from stages.cli import app

runner = CliRunner()


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.startswith("mrt-star ")


def test_arm_offers_the_arms_and_rejects_others():
    assert "mrt|star" in runner.invoke(app, ["select", "--help"], env={"COLUMNS": "200"}).output
    result = runner.invoke(app, ["select", "--arm", "rest"])
    assert result.exit_code == 2 and "'mrt'" in result.output and "'star'" in result.output


@pytest.mark.parametrize("command, meaning", [
    ("sample", "the samples of round r"), ("prove", "the samples of round r"),
    ("train", "targets selected from round r's samples"), ("evaluate", "the policy after r rounds"),
])
def test_round_help_says_what_the_round_means_for_the_command(command, meaning):
    output = " ".join(runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"}).output.split())
    assert meaning in output


def test_a_mistyped_set_key_suggests_the_closest(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'prover\.adaptiv'; did you mean prover\.adaptive\?"):
        load_params(tmp_path / "none.yaml", ["prover.adaptiv=true"])
    with pytest.raises(ConfigError, match=r"did you mean prover\?"):
        load_params(tmp_path / "none.yaml", ["provr.k=2"])
    assert load_params(tmp_path / "none.yaml", ["train.sft_args.max_grad_norm=1.0"]).train.sft_args == {"max_grad_norm": 1.0}
