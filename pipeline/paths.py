"""Where every stage reads and writes: one place, so the CLI, DVC and tests agree.

Arms (selection rules compared side by side, e.g. MRT-STaR and STaR) share what the base
model sampled: round 0's traces, episodes and prover estimates live once under
`rounds/0/`. From there each arm has its own selections and models, and from round 1 on its
own samples (its policy differs), under `arms/<arm>/rounds/<r>/`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Layout:
    """`root` holds data (DVC-tracked); `reports` holds metrics and plots (small, kept in git)."""

    root: Path
    reports: Path = Path("metrics")
    arm: str = "mrt"

    @property
    def base_model(self) -> Path:
        return self.root / "base_model"

    @property
    def problems(self) -> Path:
        return self.root / "problems"

    def problems_split(self, split: str) -> Path:
        return self.problems / f"{split}.parquet"

    @property
    def problem_rejects(self) -> Path:
        return self.problems / "rejects.parquet"

    @property
    def problem_metrics(self) -> Path:
        return self.reports / "problems.json"

    # Samples of round r's policy: shared by every arm in round 0 (the base model).
    def samples_dir(self, r: int) -> Path:
        return self.root / "rounds" / "0" if r == 0 else self.arm_dir(r)

    def traces(self, r: int) -> Path:
        return self.samples_dir(r) / "traces"

    @property
    def trace_rejects(self) -> Path:
        """Rows of a user's traces file that could not be imported as round 0's traces."""
        return self.samples_dir(0) / "trace_rejects.parquet"

    def episodes(self, r: int) -> Path:
        return self.samples_dir(r) / "episodes.parquet"

    def prover(self, r: int) -> Path:
        return self.samples_dir(r) / "prover"

    def progress(self, r: int) -> Path:
        return self.samples_dir(r) / "progress.parquet"

    def regret(self, r: int) -> Path:
        return self.samples_dir(r) / "regret.parquet"

    # What the arm makes of round r's samples.
    def arm_dir(self, r: int) -> Path:
        return self.root / "arms" / self.arm / "rounds" / str(r)

    def selected(self, r: int) -> Path:
        return self.arm_dir(r) / "selected.parquet"

    def model(self, r: int) -> Path:
        return self.arm_dir(r) / "model"

    def exports(self, r: int) -> Path:
        return self.arm_dir(r) / "export"

    def arm_reports(self, r: int) -> Path:
        return self.reports / "arms" / self.arm / "rounds" / str(r)

    def metrics(self, r: int) -> Path:
        return self.arm_reports(r) / "metrics.json"

    def train_metrics(self, r: int) -> Path:
        return self.arm_reports(r) / "train.json"

    def plots(self, r: int) -> Path:
        return self.arm_reports(r) / "plots"

    # Held-out evaluation of the policy after r rounds (r = 0: the base model, shared).
    def _eval_key(self, r: int) -> str:
        return "base" if r == 0 else f"{self.arm}/{r}"

    def eval_dir(self, r: int) -> Path:
        return self.root / "eval" / self._eval_key(r)

    def eval_traces(self, r: int) -> Path:
        return self.eval_dir(r) / "traces"

    def eval_prover(self, r: int) -> Path:
        return self.eval_dir(r) / "prover"

    def eval_extrapolation(self, r: int) -> Path:
        return self.eval_dir(r) / "extrapolation"

    def eval_reports(self, r: int) -> Path:
        return self.reports / "eval" / self._eval_key(r)

    def policy(self, r: int) -> Path:
        """The model that samples round r: the base model in round 0, else the arm's round r-1 model."""
        return self.base_model if r == 0 else self.model(r - 1)


def writer_command(path: str | Path) -> str:
    """The `mrt` command that writes `path` (a file or folder of the layout above), for error messages.

    Worked out from the path alone, so a reader can name it without the parameters; an unknown
    path gets a generic phrase.
    """
    parts = Path(path).parts
    name = parts[-1] if parts else ""
    if "problems" in parts[-2:]:
        return "mrt prepare-problems"
    if name == "base_model":
        return "mrt prepare-model"
    if "eval" in parts:
        rest = parts[parts.index("eval") + 1 :]
        if rest and rest[0] == "base":
            return "mrt evaluate -r 0"
        if len(rest) >= 2:
            return f"mrt evaluate -r {rest[1]} --arm {rest[0]}"
    if "rounds" not in parts:
        return "the stage that writes it"
    at = len(parts) - 1 - parts[::-1].index("rounds")
    round_index = parts[at + 1] if at + 1 < len(parts) else "?"
    arm = f" --arm {parts[at - 1]}" if at >= 2 and parts[at - 2] == "arms" else ""
    step = parts[at + 2] if at + 2 < len(parts) else ""
    stage = {"traces": "sample", "episodes.parquet": "split", "prover": "prove", "progress.parquet": "score",
             "regret.parquet": "score", "selected.parquet": "select", "model": "train", "export": "export"}.get(step)
    return f"mrt {stage} -r {round_index}{arm}" if stage else "the stage that writes it"
