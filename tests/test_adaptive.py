"""Adaptive meta-prover sampling: the decision it settles, where it spends, what it costs (simulated)."""

import numpy as np
import pytest

from pipeline.adaptive import DROP, AdaptiveSettings, decision, plan_draws
from pipeline.pooled_prior import fit_pooled_prior
from pipeline import prover_sim


def test_decision_is_the_earliest_best_prefix_or_drop():
    assert decision(np.array([2, 2, 2]), np.array([1, 2, 2])) == 1  # earliest of the ties
    assert decision(np.array([1, 4, 2]), np.array([1, 3, 2])) == 0  # 1/1 beats 3/4: raw rates, as selection reads them
    assert decision(np.array([3, 3]), np.array([0, 0])) == DROP


def test_pooled_prior_believes_a_zero_trace_hard_among_hard_ones_and_unlucky_among_easy_ones():
    zero = (np.full(6, 1), np.zeros(6, dtype=int))
    hard = fit_pooled_prior([zero] + [(np.full(6, 1), np.zeros(6, dtype=int))] * 15, k=8)
    easy = fit_pooled_prior([zero] + [(np.full(6, 1), np.ones(6, dtype=int))] * 15, k=8)
    from pipeline.pooled_prior import GRID

    hard_mean, easy_mean = GRID @ hard.trace_posterior(0), GRID @ easy.trace_posterior(0)
    assert hard_mean < 0.1 and easy_mean > 2 * hard_mean


def test_settled_and_full_traces_get_no_draws_and_open_ones_stay_within_k():
    k = 8
    hopeless = [(np.full(20, 4), np.zeros(20, dtype=int)) for _ in range(16)]  # 0 of 4 everywhere: never solved
    assert not any(p.any() for p in plan_draws(hopeless, [str(i) for i in range(16)], 1, AdaptiveSettings(k, step=2, risk=0.15)))
    full = (np.full(4, k), np.array([0, 3, 5, 5]))
    open_trace = (np.array([1, 1, 1, 1, 7]), np.array([0, 1, 1, 0, 6]))
    plans = plan_draws(hopeless[:14] + [full, open_trace], [str(i) for i in range(16)], 1, AdaptiveSettings(k, step=2, risk=0.15))
    assert not plans[14].any()
    n, _ = open_trace
    assert plans[15].any() and np.all(n + plans[15] <= k)


def test_plans_are_reproducible_per_trace_key_and_round():
    counts = [(np.array([1, 1, 1]), np.array([0, 1, 1])), (np.array([2, 2]), np.array([1, 2]))]
    settings = AdaptiveSettings(8, step=1)
    first = plan_draws(counts, ["a", "b"], 3, settings)
    again = plan_draws(counts, ["a", "b"], 3, settings)
    assert all(np.array_equal(x, y) for x, y in zip(first, again))


def test_answer_pool_draws_without_replacement_and_refuses_to_overdraw():
    pool = prover_sim.AnswerPool([(np.array([5, 5]), np.array([2, 0]))], np.random.default_rng(0))
    first = pool.draw(0, np.array([3, 1]))
    rest = pool.draw(0, np.array([2, 4]))
    assert (first + rest).tolist() == [2, 0]  # every answer drawn once: the pool's correct ones, no more
    with pytest.raises(ValueError, match="trace 0"):
        pool.draw(0, np.array([1, 0]))


def test_expected_agreement_of_fixed_k_matches_the_definition_by_hand():
    """Two prefixes with J = 0.5 each, K = 1. A fixed run's counts (c0, c1) are equally likely among
    (0,0) drop, (1,0) j* 0, (0,1) j* 1, (1,1) j* 0 (the earliest of a tie); j* agreement reads a drop
    as prefix 0. So P(j* = 0) = 3/4 and P(keep) = 3/4, and two independent runs agree on either with
    (3/4)^2 + (1/4)^2 = 0.625."""
    curves = [np.array([0.5, 0.5])] * 2000  # the tested run's own luck: standard error 0.6 points
    result = prover_sim.simulate(curves, AdaptiveSettings(1, step=1), 1, seed=0, runs=400, fixed=1)
    assert result.share == 1.0
    for agreement in (result.floor, result.tested):
        assert agreement.j_star == pytest.approx(0.625, abs=0.02)
        assert agreement.keep == pytest.approx(0.625, abs=0.02)


def test_a_replay_is_exact_where_the_pool_leaves_no_doubt():
    """A pool where only the second prefix is ever right: every run, whatever its answers, keeps the
    trace at j* = 1; one where nothing is ever right: every run drops it."""
    decided = [(np.array([24, 24]), np.array([0, 24]))]
    hopeless = [(np.array([24, 24, 24]), np.array([0, 0, 0]))]
    for pools in (decided, hopeless):
        result = prover_sim.replay(pools, AdaptiveSettings(8, step=1), 1, seed=0)
        assert result.tested == result.floor == prover_sim.Agreement(1.0, 1.0)
        assert 0 < result.share < 1  # adaptive stops before K answers per prefix
    assert prover_sim.replay(decided, AdaptiveSettings(8, step=1), 1, seed=0, fixed=2).share == 0.25


def test_a_replay_of_fixed_k_agrees_with_fixed_k_as_often_as_the_floor():
    """Exchangeability check of the replay itself: a fixed-K run taken from the pool first is one more
    fixed-K run, so over many replays its agreement with fixed K equals the floor's."""
    rng = np.random.default_rng(0)
    curves = [c[: rng.integers(2, 6)] for c in prover_sim.r1_curves(48, seed=1)]
    pools = [(np.full(len(j), 24), rng.binomial(24, j)) for j in curves]
    results = [prover_sim.replay(pools, AdaptiveSettings(8, step=1), 1, seed=seed, fixed=8) for seed in range(30)]
    assert abs(np.mean([r.tested.j_star - r.floor.j_star for r in results])) <= 0.02
    assert abs(np.mean([r.tested.keep - r.floor.keep for r in results])) <= 0.02
    with pytest.raises(ValueError, match="3 x K"):
        prover_sim.replay([(np.array([16, 16]), np.array([3, 4]))], AdaptiveSettings(8, step=1), 1, seed=0)


@pytest.mark.slow  # 160 traces planned by Monte Carlo round by round: about 10 s alone on 2 cores
def test_adaptive_halves_the_answers_and_agrees_with_fixed_k_as_often_as_fixed_k_with_itself():
    """On a simulated R1-style population (deterministic seeds): at most 50 % of fixed K's
    answers, and j* and keep agree with a fixed-K run at least as often as a second fixed-K run
    does (both expected over 200 fixed-K pairs per trace with the known J)."""
    curves = prover_sim.r1_curves(160, seed=0)
    result = prover_sim.simulate(curves, AdaptiveSettings(8, step=1, risk=0.15), initial=1, seed=3)
    assert result.share <= 0.5
    assert result.tested.j_star >= result.floor.j_star and result.tested.keep >= result.floor.keep
