"""Time to `data/problems/` ready from a million-row Parquet source: sampled-first vs validate-all.

A synthetic NuminaMath-like source (problem, answer, id; 2 % empty answers, 1 % duplicated
problems, answers as integers, fractions and expressions) is written once; then:

- `validate-all` (the way `prepare-problems` worked before issue 16): every row turned into a
  Python dict (`to_pylist`) and every row validated, gold answers graded, before the splits
  are drawn. Reading the whole file into dicts is timed on all rows; validation is timed on a
  subsample (`--old-rows`) and extrapolated to the whole source at that rate.
- `sampled-first` (now): `pipeline.problems.prepare_problems`, end to end: only the mapped
  columns read as Arrow, seeded rounds of positions, only the sample plus a reserve validated,
  with the model checks (special tokens, prompt length) of the embedded model's tokenizer.

Both use the same grader settings (`--workers`, 3 s limit) and the same validation code.
Run:  python benchmarks/prepare_scale.py [--rows 1000000] [--train-size 10000] [--eval-size 500]
Absolute rates depend on the machine (and on what else runs); compare the ratio.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def _row(i: int, rng: random.Random) -> dict:
    a, b = rng.randint(2, 999), rng.randint(2, 999)
    kind = i % 3
    if kind == 0:
        problem, answer = f"Problem {i}: a shop sells {a} pens on Monday and {b} on Tuesday. How many pens in total?", str(a + b)
    elif kind == 1:
        problem, answer = f"Problem {i}: simplify the fraction $\\frac{{{a}}}{{{a + b}}}$ and give it in lowest terms.", f"\\frac{{{a}}}{{{a + b}}}"
    else:
        problem, answer = f"Problem {i}: expand $(x + {a})(x - {b})$.", f"x^2 + {a - b}x - {a * b}"
    if rng.random() < 0.02:
        answer = ""
    return {"problem": problem, "answer": answer, "id": f"synthetic-{i}"}


def write_source(path: Path, rows: int, seed: int = 0) -> None:
    """The synthetic source, written in chunks; 1 % of rows repeat another problem of their chunk."""
    rng = random.Random(seed)
    writer = None
    chunk = 100_000
    for start in range(0, rows, chunk):
        batch = [_row(i, rng) for i in range(start, min(rows, start + chunk))]
        for row in batch:
            if rng.random() < 0.01:
                row["problem"] = batch[rng.randrange(len(batch))]["problem"]
        table = pa.Table.from_pylist(batch)
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table)
    writer.close()


def validate_all(path: Path, config, grader, old_rows: int) -> dict:
    """The old cost: all rows to dicts (timed in full), every row validated (timed on a subsample)."""
    from pipeline.problem_files import map_columns
    from pipeline.problems import _Checker

    start = time.perf_counter()
    records = pq.read_table(path).to_pylist()
    rows = map_columns(records, "problem", "answer", "id")
    read_seconds = time.perf_counter() - start
    total = len(rows)
    del records
    sample = rows[:old_rows]
    del rows
    rejects: list[dict] = []
    checker = _Checker("parquet:source", grader, rejects, max_chars=config.max_problem_chars)
    start = time.perf_counter()
    usable = sum(1 for _ in checker.unique(sample))
    validate_seconds = time.perf_counter() - start
    rate = len(sample) / validate_seconds
    return {
        "read_all_seconds": round(read_seconds, 2),
        "validated_rows": len(sample),
        "validated_usable": usable,
        "validate_rows_per_second": round(rate, 1),
        "seconds": round(read_seconds + total / rate, 1),  # extrapolated to every row
        "measured": False,
    }


def sampled_first(path: Path, config, grader, screen) -> dict:
    from pipeline.problems import prepare_problems

    start = time.perf_counter()
    prepared = prepare_problems(config, grader, screen)
    seconds = time.perf_counter() - start
    return {
        "seconds": round(seconds, 1),
        "validated_rows": prepared.metrics["source_rows"]["checked"],
        "train": prepared.metrics["train"],
        "eval": prepared.metrics["eval"],
        "rejected": prepared.metrics["rejected"],
        "measured": True,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--train-size", type=int, default=10_000)
    parser.add_argument("--eval-size", type=int, default=500)
    parser.add_argument("--old-rows", type=int, default=2_000, help="rows the validate-all rate is measured on")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-screen", action="store_true", help="skip the tokenizer checks (no model needed)")
    parser.add_argument("--source", type=Path, help="reuse this synthetic Parquet file (written if missing)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    from pipeline.config import ModelConfig, ProblemsConfig
    from pipeline.grading import Grader
    from pipeline.problem_screen import model_screen
    from pipeline.templates import PromptBuilder

    folder = Path(tempfile.mkdtemp(prefix="prepare_scale_"))
    path = args.source or folder / "source.parquet"
    if not path.exists():
        start = time.perf_counter()
        write_source(path, args.rows)
        print(f"wrote {args.rows} rows to {path} in {time.perf_counter() - start:.1f} s ({path.stat().st_size / 1e6:.0f} MB)")
    rows = pq.ParquetFile(path).metadata.num_rows
    config = ProblemsConfig(source="parquet", path=str(path), columns={"id": "id"},
                            train_size=args.train_size, eval_size=args.eval_size)
    screen = None
    if not args.no_screen:
        model = ModelConfig()
        screen = model_screen(folder / "no_base_model", model, lambda tok: PromptBuilder(tok, model.family), 128)
        start = time.perf_counter()
        screen("warm-up: load the tokenizer")
        print(f"tokenizer loaded in {time.perf_counter() - start:.1f} s (not counted below)")

    with Grader(workers=args.workers, timeout_seconds=3.0) as grader:
        new = sampled_first(path, config, grader, screen)
        old = validate_all(path, config, grader, args.old_rows)
    results = {"rows": rows, "train_size": args.train_size, "eval_size": args.eval_size, "workers": args.workers,
               "validate_all": old, "sampled_first": new, "speedup": round(old["seconds"] / new["seconds"], 1)}
    print(f"\nsource: {rows} rows; splits: {args.train_size} train + {args.eval_size} eval; grader workers: {args.workers}")
    print(f"{'method':<16}{'rows validated':>16}{'seconds':>12}{'source rows/s':>16}")
    for name, r in (("validate-all", old), ("sampled-first", new)):
        validated = rows if name == "validate-all" else r["validated_rows"]
        mark = " (extrapolated)" if not r["measured"] else ""
        print(f"{name:<16}{validated:>16}{r['seconds']:>12}{rows / r['seconds']:>16.0f}{mark}")
    print(f"validate-all: reading every row as a dict took {old['read_all_seconds']} s; validation ran at "
          f"{old['validate_rows_per_second']} rows/s on {old['validated_rows']} rows")
    print(f"ratio: sampled-first is {results['speedup']}x faster to data/problems ready")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
