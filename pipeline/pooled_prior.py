"""A prior on J per prefix, pooled over a trace's prefixes and over the traces proved together.

Two levels: a trace has a mean success rate m (how hard its problem is for the model), drawn
from a population distribution w over a grid; each of its prefixes has J ~ Beta(m kappa,
(1 - m) kappa) around it. w and kappa are fitted by empirical Bayes on the answers drawn so
far (all traces of the call), so a trace with 0 of 6 in a population of hard problems is
believed hard, and one with 0 of 6 among easy ones is believed unlucky. Only answer counts
enter: every (n, c) pair's Beta-binomial likelihood is tabulated once, so fitting costs a
table lookup per trace whatever the number of prefixes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Trace mean success rates m, spaced on the logit scale: "never solved" (m ~ 0.001) and "always
# solved" must be expressible, or a trace with 0 of 40 answers still looks likely to be kept by K more.
GRID = 1 / (1 + np.exp(-np.linspace(-7, 7, 41)))
KAPPAS = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 64.0)  # prefix concentration around m: small = J varies a lot within a trace
SMOOTHING = 2.0  # pseudo-traces of a uniform population, so a few traces cannot make w a spike
EM_STEPS = 30


def log_beta_binomial_table(k: int, kappa: float) -> np.ndarray:
    """[g, n, c] = log P(c correct of n | m = GRID[g], kappa), up to the binomial coefficient."""
    a, b = GRID * kappa, (1 - GRID) * kappa
    i = np.arange(k)
    # log of prod_{i<c}(a+i), prod_{i<n-c}(b+i), prod_{i<n}(a+b+i): cumulative sums over i
    rise_a = np.concatenate([np.zeros((len(GRID), 1)), np.cumsum(np.log(a[:, None] + i), axis=1)], axis=1)
    rise_b = np.concatenate([np.zeros((len(GRID), 1)), np.cumsum(np.log(b[:, None] + i), axis=1)], axis=1)
    rise_ab = np.concatenate([np.zeros(1), np.cumsum(np.log(kappa + i))])
    n = np.arange(k + 1)[:, None]
    c = np.arange(k + 1)[None, :]
    valid = c <= n
    c_, m_ = np.where(valid, c, 0), np.where(valid, n - c, 0)
    table = rise_a[:, c_] + rise_b[:, m_] - rise_ab[n]
    return np.where(valid[None], table, -np.inf)


def count_histograms(counts: list[tuple[np.ndarray, np.ndarray]], k: int) -> np.ndarray:
    """[trace, n, c]: how many of the trace's prefixes have c correct of n answers."""
    out = np.zeros((len(counts), k + 1, k + 1))
    for t, (n, c) in enumerate(counts):
        np.add.at(out[t], (n, c), 1)
    return out


@dataclass(frozen=True)
class PooledPrior:
    weights: np.ndarray  # population distribution over GRID
    kappa: float
    trace_log_likelihood: np.ndarray  # [trace, g]

    def trace_posterior(self, t: int) -> np.ndarray:
        """Posterior over GRID of trace t's mean rate, given its own answers."""
        log_post = np.log(self.weights) + self.trace_log_likelihood[t]
        post = np.exp(log_post - log_post.max())
        return post / post.sum()


def _fit_weights(log_lik: np.ndarray) -> tuple[np.ndarray, float]:
    """EM for the grid weights (smoothed towards uniform); returns them and the marginal log likelihood."""
    weights = np.full(len(GRID), 1 / len(GRID))
    lik = np.exp(log_lik - log_lik.max(axis=1, keepdims=True))
    for _ in range(EM_STEPS):
        joint = lik * weights
        resp = joint / joint.sum(axis=1, keepdims=True)
        weights = (resp.sum(axis=0) + SMOOTHING / len(GRID)) / (len(log_lik) + SMOOTHING)
    marginal = np.log((lik * weights).sum(axis=1)) + log_lik.max(axis=1)
    return weights, float(marginal.sum())


def fit_pooled_prior(counts: list[tuple[np.ndarray, np.ndarray]], k: int) -> PooledPrior:
    """Empirical-Bayes fit of (w, kappa) on the (answers, correct) counts of every trace's prefixes."""
    histograms = count_histograms(counts, k)
    best = None
    for kappa in KAPPAS:
        table = log_beta_binomial_table(k, kappa)
        table = np.where(np.isfinite(table), table, 0.0)  # impossible pairs have zero count
        log_lik = np.einsum("tnc,gnc->tg", histograms, table)
        weights, marginal = _fit_weights(log_lik)
        if best is None or marginal > best[0]:
            best = (marginal, PooledPrior(weights, kappa, log_lik))
    return best[1]
