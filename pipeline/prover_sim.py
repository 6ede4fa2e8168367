"""Measuring adaptive meta-prover sampling against fixed K, without a model in the loop.

What it measures: the share of fixed-K answers a scheme spends, and how often its (j*, keep)
decision agrees with a fixed-K run, beside how often a second fixed-K run with other answers
agrees (the floor: fixed K is a noisy estimate too). Both agreements are expectations over
many fixed-K runs per trace, not one run's luck: one run over 32 traces moves them by several
points. Traces are proved in shards, as the `prove` stage does, so the pooled prior sees only
its shard. Two sources of answers:

- `simulate`: J curves with known per-prefix success rates, answers as Bernoulli draws. The
  R1-style population (`r1_curves`) is an assumption, stated here: long traces (5-40
  episodes); a quarter of problems out of reach (J near 0, a rare late blip), a fifth solved
  directly (J high from j = 0), the rest rising along a logistic curve to a plateau at a
  random episode, a third of those falling back after it (overthinking); logit jitter per prefix.
- `replay`: a pool of a real model's answers per prefix (the prover run once with 3 x K
  answers), drawn without replacement (`AnswerPool`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from pipeline.adaptive import DROP, AdaptiveSettings, decision, decisions, plan_draws


def r1_curves(n_traces: int, seed: int) -> list[np.ndarray]:
    """Per-prefix success rates J(0..E) of an R1-style population (see the module docstring)."""
    rng = np.random.default_rng(seed)
    curves = []
    for _ in range(n_traces):
        e = int(rng.integers(5, 41))
        x = np.arange(e + 1)
        kind = rng.random()
        if kind < 0.25:  # out of reach
            logit = np.full(e + 1, -6.0) + (rng.random(e + 1) < 0.05) * rng.uniform(2, 5)
        elif kind < 0.45:  # solved directly
            logit = np.full(e + 1, rng.uniform(0.5, 3.0))
        else:  # rises to a plateau, sometimes falls back
            start, top = rng.uniform(-5, -1), rng.uniform(-0.5, 3.0)
            centre, width = rng.uniform(0, e), rng.uniform(0.5, 4)
            logit = start + (top - start) / (1 + np.exp(-(x - centre) / width))
            if rng.random() < 1 / 3:
                logit -= np.clip(x - centre - rng.uniform(2, 10), 0, None) * rng.uniform(0.1, 0.5)
        curves.append(1 / (1 + np.exp(-(logit + rng.normal(0, 0.3, e + 1)))))
    return curves


def adaptive_from(lengths: list[int], draw: Callable[[int, np.ndarray], np.ndarray], settings: AdaptiveSettings,
                  initial: int, key: str, shard_size: int = 16) -> list[tuple[np.ndarray, np.ndarray]]:
    """Adaptive sampling with answers from `draw(trace, answers per prefix) -> correct per prefix`,
    shard by shard as the prove stage runs it (the pooled prior sees only its shard)."""
    out = []
    for start in range(0, len(lengths), shard_size):
        shard = range(start, min(start + shard_size, len(lengths)))
        keys = [f"{key}:{t}" for t in shard]
        counts = [(np.full(lengths[t], initial), draw(t, np.full(lengths[t], initial))) for t in shard]
        stage = 1
        while True:
            plans = plan_draws(counts, keys, stage, settings)
            if not any(p.any() for p in plans):
                break
            counts = [(n + p, c + draw(t, p)) for (n, c), p, t in zip(counts, plans, shard)]
            stage += 1
        out.extend(counts)
    return out


class AnswerPool:
    """Replays provings from a pool of real answers: per prefix, `n` answers of which `c` correct.

    The pool's answers are exchangeable draws of the model, so disjoint blocks drawn without
    replacement are independent provings: one fixed-K run, a second fixed-K run (the floor) and
    the adaptive run from what is left. Replaying many random splits averages out the luck of
    one split (an estimate of the expected agreement given the pool, not one noisy draw of it)."""

    def __init__(self, pools: list[tuple[np.ndarray, np.ndarray]], rng: np.random.Generator):
        self.good = [c.astype(int).copy() for _, c in pools]
        self.bad = [(n - c).astype(int) for n, c in pools]
        self.rng = rng

    def draw(self, t: int, plan: np.ndarray) -> np.ndarray:
        """Correct answers among `plan` answers per prefix of trace t, taken out of the pool."""
        if np.any(plan > self.good[t] + self.bad[t]):
            raise ValueError(f"trace {t}: the pool holds fewer answers than asked for; prove with a larger pool")
        correct = self.rng.hypergeometric(self.good[t], self.bad[t], plan) if plan.any() else np.zeros_like(plan)
        self.good[t] -= correct
        self.bad[t] -= plan - correct
        return correct


@dataclass(frozen=True)
class Comparison:
    """A sampling scheme against fixed K on one population: its answers as a share of fixed K's,
    how often its decision agrees with a fixed-K run (`tested`), and how often a second fixed-K
    run with other answers does (`floor`), both as expectations over many fixed-K runs."""

    share: float
    tested: "Agreement"
    floor: "Agreement"


def _compare(tested: list[tuple[np.ndarray, np.ndarray]], fixed_pair, k: int) -> Comparison:
    """`fixed_pair(t)` draws two stacks of fixed-K counts [runs, prefixes] for trace t."""
    ours, floor = np.zeros(2), np.zeros(2)
    for t, (n, c) in enumerate(tested):
        first, second = fixed_pair(t)
        a, b, now = decisions(first), decisions(second), decision(n, c)
        ours += [np.mean(np.maximum(a, 0) == max(now, 0)), np.mean((a != DROP) == (now != DROP))]
        floor += [np.mean(np.maximum(a, 0) == np.maximum(b, 0)), np.mean((a != DROP) == (b != DROP))]
    fixed_answers = k * sum(len(n) for n, _ in tested)
    return Comparison(answers(tested) / fixed_answers, Agreement(*map(float, ours / len(tested))),
                      Agreement(*map(float, floor / len(tested))))


def _run(lengths: list[int], draw, settings: AdaptiveSettings, initial: int, key: str, shard_size: int,
         fixed: int | None) -> list[tuple[np.ndarray, np.ndarray]]:
    if fixed is not None:
        return [(np.full(length, fixed), draw(t, np.full(length, fixed))) for t, length in enumerate(lengths)]
    return adaptive_from(lengths, draw, settings, initial, key, shard_size)


def replay(pools: list[tuple[np.ndarray, np.ndarray]], settings: AdaptiveSettings, initial: int, seed: int,
           shard_size: int = 16, runs: int = 200, fixed: int | None = None) -> Comparison:
    """Adaptive sampling (or fixed `fixed` answers per prefix) from a pool of real answers, then
    `runs` pairs of fixed-K runs from the answers it left.

    Answers are exchangeable, so taking the tested run's answers first and the two fixed-K runs
    from the rest is the same experiment as any other order; averaging over many fixed-K pairs
    (cheap: no planning) removes most of the noise of one comparison. Replays with other seeds
    average over the tested run's own luck."""
    k = settings.k
    if any(n.min() < 3 * k for n, _ in pools):
        raise ValueError(f"a replay takes up to 3 x K = {3 * k} answers per prefix from the pool; prove with a larger pool")
    rng = np.random.default_rng(seed)
    pool = AnswerPool(pools, rng)
    tested = _run([len(n) for n, _ in pools], pool.draw, settings, initial, f"replay{seed}", shard_size, fixed)

    def fixed_pair(t: int) -> tuple[np.ndarray, np.ndarray]:
        good, bad = pool.good[t], pool.bad[t]
        first = rng.hypergeometric(good, bad, np.full((runs, len(good)), k))
        return first, rng.hypergeometric(good - first, bad - (k - first), np.full((runs, len(good)), k))

    return _compare(tested, fixed_pair, k)


def simulate(curves: list[np.ndarray], settings: AdaptiveSettings, initial: int, seed: int,
             shard_size: int = 16, runs: int = 200, fixed: int | None = None) -> Comparison:
    """Adaptive sampling (or fixed `fixed` answers per prefix) of simulated traces with known J,
    against the expected agreement of fixed K, estimated over `runs` pairs of fixed-K runs."""
    rng = np.random.default_rng(seed)
    tested = _run([len(j) for j in curves], lambda t, plan: rng.binomial(plan, curves[t]), settings, initial,
                  f"{seed}", shard_size, fixed)

    def fixed_pair(t: int) -> tuple[np.ndarray, np.ndarray]:
        j = np.broadcast_to(curves[t], (runs, len(curves[t])))
        return rng.binomial(settings.k, j), rng.binomial(settings.k, j)

    return _compare(tested, fixed_pair, settings.k)


@dataclass(frozen=True)
class Agreement:
    j_star: float  # share of traces with the same j*
    keep: float  # share of traces with the same keep decision

    def __str__(self) -> str:
        return f"j* {self.j_star:.1%}, keep {self.keep:.1%}"


def answers(counts: list[tuple[np.ndarray, np.ndarray]]) -> int:
    return int(sum(n.sum() for n, _ in counts))
