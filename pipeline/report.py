"""A short Markdown report of a run, with PNG plots: what `mrt report` writes.

It reads only the small JSON metrics and plot files under the metrics folder, so it can be
rerun at any time (and on another machine) without the data folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402


def _load(path: Path):
    return json.loads(path.read_text()) if path.exists() else None


def _indices(folder: Path) -> list[int]:
    return sorted(int(p.name) for p in folder.glob("*") if p.is_dir() and p.name.isdigit()) if folder.exists() else []


def _label(index: int) -> str:
    return "base model" if index == 0 else f"after round {index - 1}"


def _fmt(value) -> str:
    if value is None:
        return "–"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _plot(series: dict[str, list[dict]], x: str, y: str, title: str, out: Path, scatter: bool = False) -> None:
    figure, axes = plt.subplots(figsize=(6, 4))
    for name, points in series.items():
        xs, ys = [p[x] for p in points], [p[y] for p in points]
        if scatter:
            axes.scatter(xs, ys, label=name, alpha=0.5, s=12)
        else:
            axes.plot(xs, ys, marker="o", label=name)
    axes.set_xlabel(x.replace("_", " "))
    axes.set_ylabel(y.replace("_", " "))
    axes.set_title(title)
    axes.grid(alpha=0.3)
    if series:
        axes.legend()
    figure.tight_layout()
    figure.savefig(out, dpi=120)
    plt.close(figure)


def write_report(metrics_dir: Path, out_dir: Path) -> Path:
    """Write `report.md` and its PNG plots into `out_dir`; returns the Markdown path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    sections = ["# MRT-STaR run report", ""]
    rounds_dir, eval_dir = metrics_dir / "rounds", metrics_dir / "eval"
    round_rows = []
    for r in _indices(rounds_dir):
        m = _load(rounds_dir / str(r) / "metrics.json")
        if m:
            round_rows.append([r, m.get("method"), m.get("traces_sampled"), m.get("accuracy"), m.get("closed_thinking_rate"),
                               m.get("mean_tokens"), m.get("mean_regret"), m.get("mean_progress"), m.get("traces_kept")])
    if round_rows:
        sections += ["## Training rounds (training problems, sampled by the round's policy)", "", _table(
            ["round", "selection", "traces", "accuracy", "closed </think>", "mean tokens", "mean regret", "mean progress", "kept"],
            round_rows), ""]
    eval_rows, accuracy, regret, progress = [], {}, {}, {}
    for index in _indices(eval_dir):
        folder = eval_dir / str(index)
        m = _load(folder / "metrics.json")
        if not m:
            continue
        ks = sorted(int(key.split("@")[1]) for key in m if key.startswith("pass@"))
        eval_rows.append([_label(index), m["problems"], *(m.get(f"pass@{k}") for k in ks), *(m.get(f"maj@{k}") for k in ks),
                          m.get("mean_tokens"), m.get("tokens_per_correct"), m.get("mean_regret"), m.get("mean_progress")])
        accuracy[_label(index)] = _load(folder / "accuracy_by_budget.json") or []
        regret[_label(index)] = _load(folder / "regret_by_budget.json") or []
        progress[_label(index)] = _load(folder / "progress_by_episode.json") or []
    if eval_rows:
        header = ["policy", "problems", *(f"pass@{k}" for k in ks), *(f"maj@{k}" for k in ks),
                  "mean tokens", "tokens per correct", "mean regret", "mean progress"]
        sections += ["## Held-out evaluation (eval split)", "", _table(header, eval_rows), ""]
        _plot(accuracy, "budget_tokens", "accuracy", "Eval accuracy against token budget", out_dir / "accuracy_vs_tokens.png")
        _plot(regret, "budget_tokens", "regret", "Eval normalized regret against budget C0", out_dir / "regret_vs_budget.png")
        _plot(progress, "episode_index", "progress", "Eval progress per episode", out_dir / "progress_by_episode.png", scatter=True)
        sections += ["![accuracy against tokens](accuracy_vs_tokens.png)", "", "![regret against budget](regret_vs_budget.png)",
                     "", "![progress per episode](progress_by_episode.png)", ""]
    if len(sections) == 2:
        sections.append("No metrics found: run `dvc repro` (or the stages) first.")
    report = out_dir / "report.md"
    report.write_text("\n".join(sections) + "\n")
    return report
