"""Where every stage reads and writes: one place, so the CLI, DVC and tests agree."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Layout:
    """`root` holds data (DVC-tracked); `reports` holds metrics and plots (small, kept in git)."""

    root: Path
    reports: Path = Path("metrics")

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

    def round_dir(self, round_index: int) -> Path:
        return self.root / "rounds" / str(round_index)

    def traces(self, r: int) -> Path:
        return self.round_dir(r) / "traces"

    def episodes(self, r: int) -> Path:
        return self.round_dir(r) / "episodes.parquet"

    def prover(self, r: int) -> Path:
        return self.round_dir(r) / "prover"

    def progress(self, r: int) -> Path:
        return self.round_dir(r) / "progress.parquet"

    def regret(self, r: int) -> Path:
        return self.round_dir(r) / "regret.parquet"

    def selected(self, r: int) -> Path:
        return self.round_dir(r) / "selected.parquet"

    def metrics(self, r: int) -> Path:
        return self.reports / "rounds" / str(r) / "metrics.json"

    def train_metrics(self, r: int) -> Path:
        return self.reports / "rounds" / str(r) / "train.json"

    def plots(self, r: int) -> Path:
        return self.reports / "rounds" / str(r) / "plots"

    def model(self, r: int) -> Path:
        return self.round_dir(r) / "model"

    def exports(self, r: int) -> Path:
        return self.round_dir(r) / "export"

    def eval_dir(self, r: int) -> Path:
        """Evaluation of round r's policy (r = 0: the base model; r: after r rounds of SFT)."""
        return self.root / "eval" / str(r)

    def eval_traces(self, r: int) -> Path:
        return self.eval_dir(r) / "traces"

    def eval_prover(self, r: int) -> Path:
        return self.eval_dir(r) / "prover"

    def eval_reports(self, r: int) -> Path:
        return self.reports / "eval" / str(r)

    def policy(self, r: int) -> Path:
        """The model that samples round r: the base model in round 0, else round r-1's SFT model."""
        return self.base_model if r == 0 else self.model(r - 1)
