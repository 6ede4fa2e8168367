"""Simulated meta-prover: J curves with known per-prefix success rates, answers as Bernoulli draws.

Measures what adaptive sampling costs and how its decisions compare with fixed K over
thousands of traces without a model: the share of fixed-K answers it spends, and how often
its (j*, keep) decision agrees with a fixed-K run, beside how often two fixed-K runs with
different seeds agree (the floor: fixed K is a noisy estimate too). Traces are proved in
shards, as the `prove` stage does, so the pooled prior sees only its shard.

The R1-style population is an assumption, stated here: long traces (5-40 episodes); a
quarter of problems out of reach (J near 0, a rare late blip), a fifth solved directly (J
high from j = 0), the rest rising along a logistic curve to a plateau at a random episode,
a third of those falling back after it (overthinking); logit jitter per prefix.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.adaptive import DROP, AdaptiveSettings, decision, plan_draws


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


def fixed_k(curves: list[np.ndarray], k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [(np.full(len(j), k), rng.binomial(k, j)) for j in curves]


def adaptive(curves: list[np.ndarray], settings: AdaptiveSettings, initial: int, seed: int,
             shard_size: int = 16) -> list[tuple[np.ndarray, np.ndarray]]:
    """Adaptive sampling of every shard: `initial` answers per prefix, then as `plan_draws` says."""
    rng = np.random.default_rng(seed)
    out = []
    for start in range(0, len(curves), shard_size):
        shard = curves[start : start + shard_size]
        keys = [f"{seed}:{start + i}" for i in range(len(shard))]
        counts = [(np.full(len(j), initial), rng.binomial(initial, j)) for j in shard]
        stage = 1
        while True:
            plans = plan_draws(counts, keys, stage, settings)
            if not any(p.any() for p in plans):
                break
            counts = [(n + p, c + rng.binomial(p, j)) for (n, c), p, j in zip(counts, plans, shard)]
            stage += 1
        out.extend(counts)
    return out


@dataclass(frozen=True)
class Agreement:
    j_star: float  # share of traces with the same j*
    keep: float  # share of traces with the same keep decision

    def __str__(self) -> str:
        return f"j* {self.j_star:.1%}, keep {self.keep:.1%}"


def agreement(a: list[tuple[np.ndarray, np.ndarray]], b: list[tuple[np.ndarray, np.ndarray]]) -> Agreement:
    """How often two provings of the same traces select the same j* and make the same keep decision."""
    da = [decision(n, c) for n, c in a]
    db = [decision(n, c) for n, c in b]
    j_star = np.mean([max(x, 0) == max(y, 0) for x, y in zip(da, db)])
    keep = np.mean([(x != DROP) == (y != DROP) for x, y in zip(da, db)])
    return Agreement(float(j_star), float(keep))


def answers(counts: list[tuple[np.ndarray, np.ndarray]]) -> int:
    return int(sum(n.sum() for n, _ in counts))
