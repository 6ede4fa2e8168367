"""A short Markdown report of a run, with PNG plots: what `mrt report` writes.

It reads only the small JSON metrics and plot files under the metrics folder, so it can be
rerun at any time (and on another machine) without the data folder. Arms are compared side
by side: one row (and one curve) per round and arm, then every headline difference (each arm
against STaR at the same round, each policy against the base model) with a paired bootstrap
95 % interval over eval problems (`pipeline.comparison`), also written to `comparison.json`.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from pipeline.comparison import CONFIDENCE, RESAMPLES, SEED, compare, comparison_pairs  # noqa: E402


def _load(path: Path):
    return json.loads(path.read_text()) if path.exists() else None


def _numbered(folder: Path) -> list[int]:
    return sorted(int(p.name) for p in folder.glob("*") if p.is_dir() and p.name.isdigit()) if folder.exists() else []


def _arms(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*") if p.is_dir() and p.name != "base") if folder.exists() else []


def eval_policies(eval_dir: Path) -> list[tuple[str, Path]]:
    """(label, folder) of every evaluated policy: the base model, then each arm's rounds."""
    policies = [("base model", eval_dir / "base")] if (eval_dir / "base").is_dir() else []
    for arm in _arms(eval_dir):
        policies += [(f"{arm} after {r} round{'s' if r > 1 else ''}", eval_dir / arm / str(r)) for r in _numbered(eval_dir / arm)]
    return policies


def _fmt(value) -> str:
    if value is None:
        return "–"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _plot(series: dict[str, list[dict]], x: str, y: str, title: str, out: Path, scatter: bool = False) -> None:
    figure, axes = plt.subplots(figsize=(6.5, 4.2))
    for name, points in series.items():
        xs, ys = [p[x] for p in points], [p[y] for p in points]
        if scatter:
            axes.scatter(xs, ys, label=name, alpha=0.5, s=12)
        else:
            axes.plot(xs, ys, marker="o", label=name, linestyle="--" if name.startswith("star") else "-")
    axes.set_xlabel(x.replace("_", " "))
    axes.set_ylabel(y.replace("_", " "))
    axes.set_title(title)
    axes.grid(alpha=0.3)
    if series:
        axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out, dpi=120)
    plt.close(figure)


def _round_rows(arms_dir: Path) -> list[list]:
    rows = []
    for arm in _arms(arms_dir):
        for r in _numbered(arms_dir / arm / "rounds"):
            m = _load(arms_dir / arm / "rounds" / str(r) / "metrics.json")
            t = _load(arms_dir / arm / "rounds" / str(r) / "train.json") or {}
            if m:
                unscored = "not scored" if m.get("scored") is False else None  # scored_arms: no prover, no regret
                rows.append([arm, r, m.get("traces_sampled"), m.get("accuracy"), m.get("closed_thinking_rate"),
                             m.get("mean_tokens"), unscored or m.get("mean_regret"), unscored or m.get("mean_progress"),
                             m.get("traces_kept"),
                             m.get("mean_kept_completion_tokens"), t.get("train_loss")])
    return rows


def _cell(row: dict) -> str:
    """`+0.125 [+0.050, +0.200]`, in bold when the interval excludes 0."""
    if row["difference"] is None:
        return "–"
    text = f"{row['difference']:+.3f}" + ("" if row["low"] is None else f" [{row['low']:+.3f}, {row['high']:+.3f}]")
    return f"**{text}**" if row["excludes_zero"] else text


def _comparison_section(eval_dir: Path, out_dir: Path) -> list[str]:
    """Markdown lines of the paired comparisons; writes `comparison.json` next to the report."""
    policies = [(label, folder, _load(folder / "per_problem.json")) for label, folder in eval_policies(eval_dir)]
    per_problem = {label: rows for label, _, rows in policies if rows}
    kinds = [(label, folder.relative_to(eval_dir).as_posix()) for label, folder, rows in policies if rows]
    results: list[dict] = []
    pairs = comparison_pairs(kinds)
    cells: dict[str, dict[tuple[str, str], str]] = {}
    for a, b in pairs:
        for row in compare(per_problem[a], per_problem[b]):
            results.append({"a": a, "b": b, **row})
            name = row["metric"] + (" (lower is better)" if row["lower_is_better"] else "")
            cells.setdefault(name, {})[(a, b)] = _cell(row)
    (out_dir / "comparison.json").write_text(json.dumps(
        {"resamples": RESAMPLES, "seed": SEED, "confidence": CONFIDENCE, "comparisons": results}, indent=2) + "\n")
    if not results:
        return []
    problems = sorted({r["problems"] for r in results})
    table = [[name, *(by_pair.get(pair, "–") for pair in pairs)] for name, by_pair in cells.items()]
    return [f"## Differences with {CONFIDENCE:.0%} bootstrap intervals", "",
            f"A − B with a paired bootstrap interval over the eval problems both policies answered "
            f"({'/'.join(map(str, problems))} problems): {RESAMPLES} resamples of the problems with replacement "
            f"(seed {SEED}), the same draw for both sides, percentile interval. Means over problems, except tokens "
            "per correct (total tokens / total correct samples in each resample). **Bold**: the interval excludes 0, "
            "a difference this eval set resolves; the others are not evidence either way. Values per policy: the "
            "table above; all numbers also in `comparison.json`.", "",
            _table(["metric", *(f"{a} − {b}" for a, b in pairs)], table), ""]


def write_report(metrics_dir: Path, out_dir: Path) -> Path:
    """Write `report.md` and its PNG plots into `out_dir`; returns the Markdown path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    sections = ["# MRT-STaR run report", ""]
    round_rows = _round_rows(metrics_dir / "arms")
    if round_rows:
        sections += ["## Training rounds per arm (training problems, sampled by the arm's policy; round 0 is shared)", "",
                     _table(["arm", "round", "traces", "accuracy", "closed </think>", "mean tokens", "mean regret",
                             "mean progress", "kept", "kept tokens", "SFT loss"], round_rows), ""]
    eval_rows, curves = [], {"accuracy": {}, "regret": {}, "progress": {}, "extrapolation": {}}
    ks: list[int] = []
    for label, folder in eval_policies(metrics_dir / "eval"):
        m = _load(folder / "metrics.json")
        if not m:
            continue
        ks = sorted(int(key.split("@")[1]) for key in m if key.startswith("pass@"))
        extrapolation = _load(folder / "extrapolation.json") or []
        eval_rows.append([label, m["problems"], *(m.get(f"pass@{k}") for k in ks), *(m.get(f"maj@{k}") for k in ks),
                          m.get("mean_tokens"), m.get("tokens_per_correct"), m.get("mean_regret"), m.get("mean_progress"),
                          " → ".join(f"{p['accuracy']:.2f}" for p in extrapolation) or None,
                          " → ".join(f"{p['regret']:.2f}" for p in extrapolation if "regret" in p) or None])
        for curve, name in (("accuracy", "accuracy_by_budget"), ("regret", "regret_by_budget"),
                            ("progress", "progress_by_episode"), ("extrapolation", "extrapolation")):
            curves[curve][label] = _load(folder / f"{name}.json") or []
    if eval_rows:
        header = ["policy", "problems", *(f"pass@{k}" for k in ks), *(f"maj@{k}" for k in ks),
                  "mean tokens", "tokens per correct", "mean regret", "mean progress", "J after 0, 1, .. extensions",
                  "regret at C0 = budget + e extensions"]
        sections += ["## Held-out evaluation (eval split)", "", _table(header, eval_rows), ""]
        sections += _comparison_section(metrics_dir / "eval", out_dir)
        _plot(curves["accuracy"], "budget_tokens", "accuracy", "Eval accuracy against token budget", out_dir / "accuracy_vs_tokens.png")
        _plot(curves["extrapolation"], "mean_tokens", "accuracy", "Accuracy past the sampling budget (budget forcing)",
              out_dir / "extrapolation.png")
        _plot(curves["regret"], "budget_tokens", "regret", "Eval normalized regret against budget C0", out_dir / "regret_vs_budget.png")
        _plot(curves["progress"], "episode_index", "progress", "Eval progress per episode", out_dir / "progress_by_episode.png", scatter=True)
        sections += ["![accuracy against tokens](accuracy_vs_tokens.png)", "", "![extrapolation](extrapolation.png)", "",
                     "![regret against budget](regret_vs_budget.png)", "", "![progress per episode](progress_by_episode.png)", ""]
    if len(sections) == 2:
        sections.append("No metrics found: run `dvc repro` (or the stages) first.")
    report = out_dir / "report.md"
    report.write_text("\n".join(sections) + "\n")
    return report
