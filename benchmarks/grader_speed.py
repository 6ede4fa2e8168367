"""Grader throughput on a realistic mix, against math-verify called directly, in one run.

The mix imitates the prover's output: many problems, K completions each, answers that are
often the same string, some equivalent forms (0.5 vs \\frac{1}{2}, x = 3), wrong answers,
10 % with no extractable answer, and a few pathological ones (a tower of powers, a huge
polynomial power, 10,000 nested braces, a megabyte of text).

- `pipeline.grading.Grader`: answers extracted in the parent, identical pairs judged once,
  judged in worker processes under a hard per-answer limit.
- `math-verify direct`: `parse(f"${gold}$")`, `parse(completion)`, `verify` per answer in this
  process with math-verify's defaults (its SIGALRM timeouts), the way most scripts call it.

Run:  python benchmarks/grader_speed.py [--problems 300] [--k 10] [--workers 2] [--timeout 3]
Absolute rates depend on the machine and its load (the CPU-second totals do not); compare the ratio.
"""

from __future__ import annotations

import argparse
import logging
import random
import time

from math_verify import parse, verify

from pipeline.grading import Grader
from pipeline.grading.pool import cpu_seconds

logging.getLogger("math_verify").setLevel(logging.ERROR)

PATHOLOGICAL = [
    "10^{10^{10^{10}}}",
    "(x+1)^{100000} - (x+1)^{99999}",
    "{" * 10_000 + "1" + "}" * 10_000,
    "1+" * 300_000 + "1",  # about 600 KB inside the box
    "\\frac{" * 500 + "1" + "}{2}" * 500,
]


def _gold(rng: random.Random) -> tuple[str, list[str], list[str]]:
    """(gold, equivalent spellings, wrong answers) for one problem."""
    kind = rng.random()
    if kind < 0.4:
        n = rng.randint(-50, 500)
        return str(n), [str(n), f"x = {n}", f"{n}.0"], [str(n + d) for d in (1, -1, 2, 10)]
    if kind < 0.7:
        p, q = rng.randint(1, 9), rng.choice([2, 4, 5, 8])
        if p % q == 0:
            p += 1
        return f"\\frac{{{p}}}{{{q}}}", [f"\\frac{{{p}}}{{{q}}}", f"\\dfrac{{{p}}}{{{q}}}", str(p / q)], [
            f"\\frac{{{q}}}{{{p}}}", str(p + q), f"\\frac{{{p + 1}}}{{{q}}}"]
    a, b = rng.randint(2, 9), rng.randint(2, 7)
    choices = [
        (f"{a}\\sqrt{{{b}}}", [f"{a}\\sqrt{{{b}}}", f"\\sqrt{{{a * a * b}}}"], [f"{a}\\sqrt{{{b + 1}}}", str(a * b)]),
        (f"x^2 + {a}x + {b}", [f"x^2 + {a}x + {b}", f"{b} + {a}x + x^2"], [f"x^2 + {b}x + {a}", f"x^2 - {a}x + {b}"]),
        (f"\\frac{{{a}\\pi}}{{{b}}}", [f"\\frac{{{a}\\pi}}{{{b}}}", f"\\frac{{{a}}}{{{b}}}\\pi"], [f"\\frac{{{b}\\pi}}{{{a}}}", f"{a}\\pi"]),
    ]
    return rng.choice(choices)


def make_mix(problems: int, k: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    pairs = []
    for _ in range(problems):
        gold, right, wrong = _gold(rng)
        for _ in range(k):
            roll = rng.random()
            thinking = "<think>\nLet me work this out step by step.\n</think>\n\n"
            if roll < 0.10:
                pairs.append((gold, thinking + rng.choice(["I could not finish.", "The answer depends on x.", ""])))
            elif roll < 0.55:
                pairs.append((gold, thinking + f"So the answer is $\\boxed{{{right[0]}}}$."))
            elif roll < 0.70:
                pairs.append((gold, thinking + f"Therefore $\\boxed{{{rng.choice(right[1:])}}}$."))
            else:
                pairs.append((gold, thinking + f"The final answer is \\boxed{{{rng.choice(wrong)}}}."))
    for index, expression in enumerate(PATHOLOGICAL):
        pairs.insert(rng.randrange(len(pairs)), ("2", f"<think>hm</think> \\boxed{{{expression}}}"))
    return pairs


def run_grader(pairs, workers: int, timeout: float) -> dict:
    grader = Grader(workers=workers, timeout_seconds=timeout)
    started = time.perf_counter()
    grader.grade_answers(["1", "2"], ["x^0", "2x^0"])  # start both workers (imports), timed apart
    startup = time.perf_counter() - started
    workers_cpu = sum(cpu_seconds(w.process.pid) or 0.0 for w in grader._pool)
    started, parent_cpu = time.perf_counter(), time.process_time()
    grades = grader.grade_completions([g for g, _ in pairs], [c for _, c in pairs])
    seconds = time.perf_counter() - started
    parent_cpu = time.process_time() - parent_cpu
    workers_cpu = sum(cpu_seconds(w.process.pid) or 0.0 for w in grader._pool) - workers_cpu
    stats = grader.stats
    grader.close()
    return {"seconds": seconds, "startup": startup, "grades": grades, "stats": stats, "cpu": parent_cpu + workers_cpu}


def run_direct(pairs) -> dict:
    slowest, verdicts = 0.0, []
    started, cpu = time.perf_counter(), time.process_time()
    for gold, completion in pairs:
        one = time.perf_counter()
        try:
            verdicts.append(verify(parse(f"${gold}$"), parse(completion)))
        except Exception:
            verdicts.append(False)
        slowest = max(slowest, time.perf_counter() - one)
    return {"seconds": time.perf_counter() - started, "slowest": slowest, "verdicts": verdicts, "cpu": time.process_time() - cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=300)
    parser.add_argument("--k", type=int, default=10, help="completions per problem")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=3.0, help="hard limit per answer, seconds")
    parser.add_argument("--skip-direct", action="store_true", help="only time the grader")
    args = parser.parse_args()

    pairs = make_mix(args.problems, args.k)
    ours = run_grader(pairs, args.workers, args.timeout)
    counts = {}
    for grade in ours["grades"]:
        counts[grade.grade] = counts.get(grade.grade, 0) + 1
    stats = ours["stats"]
    rate = len(pairs) / ours["seconds"]
    print(f"mix: {len(pairs)} answers ({args.problems} problems x {args.k}, {len(PATHOLOGICAL)} pathological), "
          f"{len({(g, c) for g, c in pairs})} distinct completions")
    print(f"grades: {counts}; timeouts {stats.timeouts}; workers replaced {stats.workers_replaced}")
    print(f"{'method':<28}{'seconds':>10}{'answers/s':>12}{'slowest answer (s)':>21}")
    print(f"{'Grader (' + str(args.workers) + ' workers, cache)':<28}{ours['seconds']:>10.2f}{rate:>12.1f}"
          f"{stats.slowest_seconds:>21.2f}   (+{ours['startup']:.2f} s worker start-up; {stats.judged} judged)")
    if not args.skip_direct:
        direct = run_direct(pairs)
        direct_rate = len(pairs) / direct["seconds"]
        print(f"{'math-verify direct':<28}{direct['seconds']:>10.2f}{direct_rate:>12.1f}{direct['slowest']:>21.2f}")
        agree = sum(g.correct == v for g, v in zip(ours["grades"], direct["verdicts"]))
        print(f"speed-up x{rate / direct_rate:.1f}; correct/not-correct agreement {agree}/{len(pairs)}")
        print(f"CPU seconds (load-independent): Grader {ours['cpu']:.2f} (parent + workers, "
              f"{len(pairs) / ours['cpu']:.0f} answers per CPU second), math-verify direct {direct['cpu']:.2f} "
              f"(x{direct['cpu'] / ours['cpu']:.1f})")
    verdict = "met" if rate >= 300 and stats.slowest_seconds <= args.timeout else "NOT met"
    print(f"target >= 300 answers/s with no answer over {args.timeout:g} s: {verdict}")


if __name__ == "__main__":
    main()
