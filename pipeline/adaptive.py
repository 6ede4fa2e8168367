"""Adaptive meta-prover sampling: spend forced answers only while they can change the decision.

What selection uses from a trace's J curve is one decision: j* (the earliest argmax of the
estimated J) and whether a correct answer was drawn there (keep). Fixed K is itself a noisy
estimate of that decision: run it twice with different seeds and the two decisions often
differ. So a trace is settled as soon as its current decision is predicted to agree with a
fresh fixed-K run at least as often as two fixed-K runs agree with each other (plus a
margin): from then on, more answers buy no agreement that fixed K itself would deliver.

Both probabilities come from the posterior of J given the answers so far (a prior pooled over
the trace's prefixes and over the traces proved together, `pipeline.pooled_prior`): draw J,
draw two fixed-K runs, compare decisions. An open trace's next answers go to the prefixes
most likely to be fixed K's kept j* (and to the current j*), not to every prefix.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from pipeline.pooled_prior import GRID, PooledPrior, fit_pooled_prior

if TYPE_CHECKING:
    from pipeline.config import ProverConfig

DROP = -1  # decision code of a dropped trace (no correct answer at j*); otherwise the code is j*


@dataclass(frozen=True)
class AdaptiveSettings:
    k: int  # the fixed K that adaptive sampling stands in for (and the per-prefix cap)
    step: int  # answers added to each chosen prefix per round
    margin: float = 0.02  # predicted agreement must beat fixed K's self-agreement by this much
    draws: int = 256  # Monte Carlo posterior draws per trace and round
    risk: float = 0.15  # ... or settle when completing to K would change the decision with at most this chance
    focus: float = 0.5  # sample prefixes whose chance of being j* is at least this share of the top one


def adaptive_settings(config: "ProverConfig") -> AdaptiveSettings:
    return AdaptiveSettings(config.k, config.adaptive_step, risk=config.adaptive_risk)


def job_counts(jobs) -> tuple[np.ndarray, np.ndarray]:
    """(answers, correct answers) per prefix of one trace's prover jobs, in prefix order."""
    return np.array([job.n for job in jobs]), np.array([job.n_correct for job in jobs])


def decision(n: np.ndarray, c: np.ndarray) -> int:
    """The selection decision from counts: j* (earliest argmax of c / n) if it has a correct answer, else DROP."""
    j_hat = c / np.maximum(n, 1)
    best = int(np.argmax(j_hat))
    return best if c[best] > 0 else DROP


def decisions(fixed_counts: np.ndarray) -> np.ndarray:
    """Row-wise `decision` of fixed-K count matrices [run, prefix] (all prefixes have K answers)."""
    best = np.argmax(fixed_counts, axis=1)
    return np.where(fixed_counts.max(axis=1) > 0, best, DROP)


def rng_for(key: str, stage: int) -> np.random.Generator:
    digest = hashlib.sha256(f"{key}#{stage}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


@dataclass(frozen=True)
class TraceOutlook:
    agreement: float  # predicted P(current decision == a fresh fixed-K decision)
    self_agreement: float  # predicted P(two fixed-K runs decide alike)
    j_star_chance: np.ndarray  # per prefix: predicted P(fixed K keeps the trace at this prefix)
    locked: float  # predicted P(completing every prefix to K answers leaves the decision as it is)
    keep_agreement: float  # the same three, for the keep decision alone
    keep_self_agreement: float
    keep_locked: float

    def settled(self, settings: "AdaptiveSettings") -> bool:
        """More answers cannot buy agreement: the decision is as good a guess of fixed K's as fixed K
        itself (on the whole decision and on keep alone), or it is all but certain to stand."""
        beats_fixed = (self.agreement >= self.self_agreement + settings.margin
                       and self.keep_agreement >= self.keep_self_agreement + 2 * settings.margin)
        stands = self.locked >= 1 - settings.risk and self.keep_locked >= 1 - settings.risk / 5
        return beats_fixed or stands


def outlook(n: np.ndarray, c: np.ndarray, prior: PooledPrior, t: int, settings: AdaptiveSettings,
            rng: np.random.Generator) -> TraceOutlook:
    """Posterior predictive of fixed K's decision for trace t, by Monte Carlo."""
    means = rng.choice(GRID, size=settings.draws, p=prior.trace_posterior(t))[:, None]
    j = rng.beta(means * prior.kappa + c, (1 - means) * prior.kappa + (n - c))
    first = decisions(rng.binomial(settings.k, j))
    second = decisions(rng.binomial(settings.k, j))
    completed = decisions(c + rng.binomial(settings.k - n, j))
    chance = np.bincount(first[first >= 0], minlength=len(n))[: len(n)] / settings.draws
    now = decision(n, c)
    kept, kept_again, kept_completed = first != DROP, second != DROP, completed != DROP
    return TraceOutlook(
        float(np.mean(first == now)), float(np.mean(first == second)), chance, float(np.mean(completed == now)),
        float(np.mean(kept == (now != DROP))), float(np.mean(kept == kept_again)), float(np.mean(kept_completed == (now != DROP))),
    )


def plan_draws(counts: list[tuple[np.ndarray, np.ndarray]], keys: list[str], stage: int,
               settings: AdaptiveSettings) -> list[np.ndarray]:
    """Answers to draw next for every prefix of every trace (all zeros: the trace is settled).

    `counts[t]` is trace t's (answers so far, correct so far) per prefix; `keys` seed the
    Monte Carlo per trace and round, so a rerun plans the same draws."""
    prior = fit_pooled_prior(counts, settings.k)
    plans = []
    for t, ((n, c), key) in enumerate(zip(counts, keys)):
        room = settings.k - n
        plan = np.zeros_like(n)
        if room.any():
            view = outlook(n, c, prior, t, settings, rng_for(key, stage))
            if not view.settled(settings):
                chosen = view.j_star_chance >= settings.focus * view.j_star_chance.max()
                current = decision(n, c)
                chosen[max(current, 0)] = True
                plan = np.where(chosen, np.minimum(settings.step, room), 0)
                if not plan.any():  # every likely j* is full: spend on the rest
                    plan = np.minimum(settings.step, room)
        plans.append(plan)
    return plans
