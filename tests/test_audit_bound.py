"""The one-run audit bound (Steinke, Nasr & Jagielski, NeurIPS 2023): hand-derived cases, the
paper's own numerical procedure, monotonicity and soundness by simulation."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
from scipy import optimize, special, stats

from dpbench.audit import bound
from dpbench.audit.bound import (
    GuessingBound,
    best_guess_counts,
    count_correct_guesses,
    epsilon_lower_bound,
    epsilon_lower_bound_from_scores,
    guess_count_grid,
    p_value,
)

BETA = 0.05  # significance of the default 95% confidence


# --- (a) cases worked out by hand ----------------------------------------------------------------


@pytest.mark.parametrize("r", [5, 10, 100, 1000])
def test_all_correct_pure_dp_solves_r_log_1_plus_exp_minus_eps_equals_log_1_over_beta(r):
    # δ = 0, v = r: p(ε) = P[Binomial(r, q) = r] = q^r = (1 + e^{-ε})^{-r}. Setting it to β gives
    # r·log(1 + e^{-ε}) = log(1/β), i.e. ε = -log(β^{-1/r} - 1).
    expected = -math.log(BETA ** (-1 / r) - 1)
    assert epsilon_lower_bound(m=r, r=r, v=r, delta=0.0) == pytest.approx(expected, abs=1e-8)
    assert r * math.log1p(math.exp(-expected)) == pytest.approx(math.log(1 / BETA), rel=1e-12)


def test_four_correct_guesses_reject_nothing_five_do():
    # Even ε = 0 allows 4 lucky coin flips with probability 1/16 > 5%; 5 have 1/32 < 5%, and
    # -log(20^{1/5} - 1) = 0.197763.
    assert epsilon_lower_bound(m=4, r=4, v=4, delta=0.0) == 0.0
    assert epsilon_lower_bound(m=5, r=5, v=5, delta=0.0) == pytest.approx(0.197763, abs=1e-6)


@pytest.mark.parametrize("r, v", [(10, 9), (50, 40), (200, 130), (1000, 560)])
def test_pure_dp_bound_is_logit_of_the_clopper_pearson_lower_limit(r, v):
    # δ = 0: the bound solves P[Binomial(r, q) >= v] = β for q, which is the one-sided
    # Clopper-Pearson lower limit Beta^{-1}(β; v, r - v + 1); ε = logit(q).
    q_low = stats.beta.ppf(BETA, v, r - v + 1)
    assert epsilon_lower_bound(m=r, r=r, v=v, delta=0.0) == pytest.approx(
        special.logit(q_low), abs=1e-7
    )


def test_delta_term_by_hand_for_two_guesses():
    # r = v = 2, W ~ Binomial(2, q): f(2) = q²; the δ coefficient is max over i of
    # P[2 - i <= W <= 1] / i, i.e. max(P[W=1], P[W<=1]/2) = max(2q(1-q), (1-q²)/2), and
    # 2q(1-q) - (1-q²)/2 = -(3/2)(q-1)(q-1/3) >= 0 for q in [1/2, 1]. So
    # p(ε) = q² + 2mδ·2q(1-q).
    m, delta = 10, 0.01
    for epsilon in (0.0, 0.3, 1.0, 2.5):
        q = special.expit(epsilon)
        assert p_value(m, 2, 2, epsilon, delta) == pytest.approx(
            q**2 + 4 * m * delta * q * (1 - q), rel=1e-12
        )
    # At significance 0.5 (confidence 0.5) the bound solves (1-c)q² + cq - 1/2 = 0, c = 4mδ = 0.4.
    c, significance = 4 * m * delta, 0.5
    q_star = (-c + math.sqrt(c**2 + 4 * (1 - c) * significance)) / (2 * (1 - c))
    assert epsilon_lower_bound(m, 2, 2, delta, confidence=0.5) == pytest.approx(
        special.logit(q_star), abs=1e-8
    )


def test_p_value_is_the_binomial_tail_when_delta_is_zero():
    for epsilon in (0.0, 0.7, 3.0):
        assert p_value(100, 40, 30, epsilon, 0.0) == pytest.approx(
            stats.binom.sf(29, 40, special.expit(epsilon)), rel=1e-12
        )


def test_no_guesses_or_no_correct_guesses_give_no_bound():
    assert p_value(10, 0, 0, 1.0, 1e-5) == 1.0
    assert epsilon_lower_bound(10, 0, 0, 1e-5) == 0.0
    assert epsilon_lower_bound(10, 10, 0, 1e-5) == 0.0


# --- (b) the paper's own numerical procedure ---------------------------------------------------
#
# Reference values from the paper's published p-value/bisection listing (its appendix code, run as
# published: 30 halvings, significance 0.05 unless stated), for settings of the paper's kind:
# m canaries, r guesses, δ = 1e-5. Our bisection runs to 1e-9 instead of ~1e-9·⌈ε⌉, hence abs=1e-7.
# The m=500 row also appears as a published result of that listing in a third-party audit
# (codedp-cpt-models audit_results.json: 100/100 correct of 500 canaries, δ=1e-5 → 3.4791953936…).
PAPER_PROCEDURE_VALUES = [
    # m, r, v, delta, confidence, eps_low
    (1000, 1000, 1000, 1e-5, 0.95, 5.782283132895827),
    (1000, 600, 600, 1e-5, 0.95, 5.270399462431669),
    (1000, 100, 100, 1e-5, 0.95, 3.4653763473033905),
    (500, 100, 100, 1e-5, 0.95, 3.4791953936219215),
    (100, 100, 100, 1e-5, 0.95, 3.490215953439474),
    (10000, 1000, 1000, 1e-5, 0.95, 5.529349599033594),
    (10000, 10000, 10000, 1e-5, 0.95, 7.834303244948387),
    (1000, 200, 180, 1e-5, 0.95, 1.7962850704789162),
    (1000, 500, 400, 1e-5, 0.95, 1.1979686450213194),
    (1000, 1000, 700, 1e-5, 0.95, 0.7317404486238956),
    (1000, 100, 100, 0.0, 0.95, 3.492965430021286),
    (1000, 1000, 1000, 1e-5, 0.99, 5.315612157806754),
    (1000, 200, 180, 1e-5, 0.99, 1.6497745960950851),
]


@pytest.mark.parametrize("m, r, v, delta, confidence, expected", PAPER_PROCEDURE_VALUES)
def test_matches_the_papers_numerical_procedure(m, r, v, delta, confidence, expected):
    assert epsilon_lower_bound(m, r, v, delta, confidence) == pytest.approx(expected, abs=1e-7)


def test_delta_costs_little_with_few_canaries_and_more_with_many():
    # The δ term grows with m (2mδ): same 100/100 guesses, more canaries in the run → lower bound.
    bounds = [epsilon_lower_bound(m, 100, 100, 1e-5) for m in (100, 1000, 10_000, 100_000)]
    assert bounds == sorted(bounds, reverse=True)
    assert bounds[0] < epsilon_lower_bound(100, 100, 100, 0.0)


# --- (c) monotonicity ----------------------------------------------------------------------------


@pytest.mark.parametrize("delta", [0.0, 1e-5, 1e-3])
def test_more_correct_guesses_give_a_higher_bound(delta):
    r = 200
    bounds = np.array([epsilon_lower_bound(1000, r, v, delta) for v in range(r + 1)])
    assert np.all(np.diff(bounds) >= 0)
    positive = bounds > 0
    assert np.all(np.diff(bounds[positive]) > 0)
    assert np.all(bounds[: r // 2 + 1] == 0)  # at most chance accuracy: nothing to reject


@pytest.mark.parametrize("r", [2, 10, 100, 1000])
@pytest.mark.parametrize("delta", [0.0, 1e-5])
def test_half_correct_gives_zero(r, delta):
    assert epsilon_lower_bound(max(r, 1000), r, r // 2, delta) == 0.0


def test_bound_falls_with_delta_and_with_confidence_and_rises_with_guesses_at_fixed_accuracy():
    by_delta = [epsilon_lower_bound(1000, 300, 270, d) for d in (0.0, 1e-6, 1e-5, 1e-4, 1e-3)]
    assert by_delta == sorted(by_delta, reverse=True)
    by_confidence = [epsilon_lower_bound(1000, 300, 270, 1e-5, c) for c in (0.5, 0.9, 0.95, 0.99)]
    assert by_confidence == sorted(by_confidence, reverse=True)
    by_guesses = [epsilon_lower_bound(10_000, r, int(0.9 * r), 1e-5) for r in (50, 100, 500, 2000)]
    assert by_guesses == sorted(by_guesses)


def test_p_value_is_nondecreasing_in_epsilon_which_the_bisection_relies_on():
    epsilons = np.linspace(0.0, 12.0, 241)
    for m, r, v, delta in [
        (1000, 100, 80, 1e-5), (1000, 1000, 1000, 1e-5), (100, 50, 40, 1e-2),
        (10, 10, 9, 0.05), (10_000, 500, 300, 1e-3),
    ]:
        p_values = np.array([p_value(m, r, v, e, delta) for e in epsilons])
        assert np.all(np.diff(p_values) >= -1e-15), (m, r, v, delta)


def test_returned_bound_is_itself_rejected():
    # The reported ε must be one where the p-value is below β, not the first ε above it.
    for m, r, v, delta in [(1000, 200, 180, 1e-5), (100, 100, 100, 0.0), (50, 20, 18, 1e-3)]:
        eps_low = epsilon_lower_bound(m, r, v, delta)
        assert p_value(m, r, v, eps_low, delta) < BETA
        assert p_value(m, r, v, eps_low + 1e-6, delta) >= BETA


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(m=10, r=11, v=5, delta=0.0),
        dict(m=10, r=5, v=6, delta=0.0),
        dict(m=10, r=5, v=-1, delta=0.0),
        dict(m=10, r=5, v=3, delta=-1e-5),
        dict(m=10, r=5, v=3, delta=float("nan")),
        dict(m=10, r=5, v=3, delta=0.0, confidence=1.0),
        dict(m=10, r=5.5, v=3, delta=0.0),
    ],
)
def test_rejects_invalid_arguments(kwargs):
    with pytest.raises(ValueError):
        epsilon_lower_bound(**kwargs)


# --- guesses from scores -------------------------------------------------------------------------


def test_scores_to_guesses_counts_top_in_and_bottom_out():
    scores = np.array([0.9, 0.1, 0.8, 0.2, 0.5, 0.7])
    secret_in = np.array([True, False, False, False, True, True])
    # top 2 = canaries 0 (in, correct) and 2 (out, wrong); bottom 2 = canaries 1, 3 (both out, correct)
    assert count_correct_guesses(scores, secret_in, 2, 2) == 3
    result = epsilon_lower_bound_from_scores(scores, secret_in, 2, 2, delta=1e-5)
    assert (result.guesses, result.correct, result.k_plus, result.k_minus, result.m) == (4, 3, 2, 2, 6)
    assert result.eps_low == epsilon_lower_bound(6, 4, 3, 1e-5)
    assert result.accuracy == 0.75


def test_ties_are_broken_by_index_and_guess_sets_never_overlap():
    scores = np.zeros(6)  # all tied: "in" goes to the lowest indices, "out" to the highest
    secret_in = np.array([True, True, True, False, False, False])
    assert count_correct_guesses(scores, secret_in, 3, 3) == 6
    assert count_correct_guesses(scores, secret_in, 6, 0) == 3
    assert count_correct_guesses(scores, secret_in, 0, 6) == 3


def test_perfectly_separated_scores_reach_the_all_correct_bound():
    rng = np.random.default_rng(0)
    secret_in = rng.random(1000) < 0.5
    scores = secret_in + rng.normal(scale=0.01, size=1000)
    result = epsilon_lower_bound_from_scores(scores, secret_in, 300, 300, delta=1e-5)
    assert result.correct == 600
    assert result.eps_low == pytest.approx(5.270399462431669, abs=1e-7)  # table above


@pytest.mark.parametrize(
    "scores, secret_in, k_plus, k_minus",
    [
        ([0.1, float("nan"), 0.3], [True, False, True], 1, 1),  # NaN has no rank
        ([0.1, 0.2, 0.3], [True, False], 1, 1),  # shapes differ
        ([0.1, 0.2, 0.3], [1, 0, 1], 1, 1),  # coins must be bool, not 0/1 that could be ±1
        ([0.1, 0.2, 0.3], [True, False, True], 2, 2),  # more guesses than canaries
        ([0.1, 0.2, 0.3], [True, False, True], -1, 1),
        ([], [], 0, 0),
    ],
)
def test_scores_path_rejects_invalid_input(scores, secret_in, k_plus, k_minus):
    with pytest.raises(ValueError):
        epsilon_lower_bound_from_scores(scores, np.asarray(secret_in), k_plus, k_minus, 1e-5)


# --- choosing (k₊, k₋) by a fixed grid -----------------------------------------------------------


def test_guess_grid_depends_on_m_only_and_is_sorted_and_valid():
    grid = guess_count_grid(1000)
    assert grid == guess_count_grid(1000)
    assert (5, 5) in grid and (10, 0) in grid and (500, 500) in grid and (1000, 0) in grid
    assert all(k_plus + k_minus <= 1000 and k_plus + k_minus > 0 for k_plus, k_minus in grid)
    guess_totals = [k_plus + k_minus for k_plus, k_minus in grid]
    assert guess_totals == sorted(guess_totals)
    assert guess_count_grid(3, guess_fractions=(0.1,)) == ()  # nothing to guess at 10% of 3
    assert all(k_minus == 0 or k_plus == k_minus for k_plus, k_minus in grid)


def test_best_guess_counts_is_the_max_over_the_grid_at_bonferroni_confidence():
    rng = np.random.default_rng(1)
    secret_in = rng.random(1000) < 0.5
    scores = 2.0 * secret_in + rng.normal(size=1000)
    candidates = [(50, 50), (100, 0), (200, 200), (400, 0)]
    best = best_guess_counts(scores, secret_in, candidates, delta=1e-5)
    per_candidate = [
        epsilon_lower_bound_from_scores(scores, secret_in, kp, km, 1e-5, confidence=1 - BETA / 4)
        for kp, km in candidates
    ]
    winner = max(per_candidate, key=lambda result: result.eps_low)
    assert best.eps_low == winner.eps_low > 0
    assert (best.k_plus, best.k_minus, best.correct) == (winner.k_plus, winner.k_minus, winner.correct)
    assert best.confidence == 0.95 and best.candidates_tried == 4
    # The correction costs something: each candidate alone at 95% would claim more.
    alone = epsilon_lower_bound_from_scores(scores, secret_in, best.k_plus, best.k_minus, 1e-5)
    assert alone.eps_low > best.eps_low


def test_best_guess_counts_rejects_empty_or_duplicate_grids():
    scores, secret_in = np.arange(10.0), np.arange(10) % 2 == 0
    with pytest.raises(ValueError):
        best_guess_counts(scores, secret_in, [], 1e-5)
    with pytest.raises(ValueError):
        best_guess_counts(scores, secret_in, [(2, 2), (2, 2)], 1e-5)


# --- (d) soundness by simulation -----------------------------------------------------------------


@pytest.fixture
def memoized_bound(monkeypatch):
    """Simulations hit the same (m, r, v) thousands of times; compute each bound once.

    The score-path functions look ``epsilon_lower_bound`` up in their module at call time, so
    patching the module attribute reaches them."""
    monkeypatch.setattr(
        bound, "epsilon_lower_bound", functools.lru_cache(maxsize=None)(bound.epsilon_lower_bound)
    )


def _exceedance_probability(r, true_epsilon):
    """Exact P[bound >= true ε] when each of r guesses is independently correct w.p. sigmoid(ε),
    with the bound for every possible number correct (δ = 0: the mechanism is exactly ε-DP)."""
    q = special.expit(true_epsilon)
    correct = np.arange(r + 1)
    bounds = np.array([epsilon_lower_bound(r, r, v, 0.0) for v in correct])
    return float(stats.binom.pmf(correct, r, q)[bounds >= true_epsilon].sum()), bounds


@pytest.mark.parametrize("true_epsilon", [0.5, 1.0, 2.0])
def test_randomized_response_exceeds_its_true_epsilon_at_most_5_percent(true_epsilon):
    # ε-DP randomized response is the worst case of the theorem: each guess right w.p. e^ε/(1+e^ε).
    r = 200
    exact, bounds = _exceedance_probability(r, true_epsilon)
    assert exact <= BETA
    # ...and nearly tight there (the binomial's discreteness leaves a little slack), so the test
    # above is not passed by a bound that is merely timid.
    assert exact > 0.02

    rng = np.random.default_rng(12345)
    correct = rng.binomial(r, special.expit(true_epsilon), size=5000)
    simulated = float(np.mean(bounds[correct] >= true_epsilon))
    assert simulated <= BETA + 3 * math.sqrt(BETA * (1 - BETA) / 5000)


@pytest.mark.usefixtures("memoized_bound")
def test_randomized_response_canaries_through_the_score_path():
    # Per-canary randomized response: canary i's score is its coin, flipped w.p. 1/(1+e^ε), plus
    # tie-breaking noise independent of the coins. Each canary affects only its own output, so the
    # whole release is ε-DP in each canary; guesses are formed from scores exactly as in an audit.
    true_epsilon, m, trials = 1.0, 400, 1000
    rng = np.random.default_rng(7)
    exceed = 0
    for _ in range(trials):
        secret_in = rng.random(m) < 0.5
        kept = rng.random(m) < special.expit(true_epsilon)
        scores = np.where(kept, secret_in, ~secret_in) + 0.1 * rng.random(m)
        result = epsilon_lower_bound_from_scores(scores, secret_in, 60, 60, delta=0.0)
        exceed += result.eps_low >= true_epsilon
    assert exceed / trials <= BETA + 3 * math.sqrt(BETA * (1 - BETA) / trials)


@pytest.mark.usefixtures("memoized_bound")
def test_approximate_dp_mechanism_with_delta_is_not_overstated():
    # (ε, δ)-DP per canary: with probability δ release the coin outright, else randomized response.
    true_epsilon, delta, m, trials = 1.0, 2e-3, 300, 1000
    rng = np.random.default_rng(11)
    exceed = 0
    for _ in range(trials):
        secret_in = rng.random(m) < 0.5
        leaked = rng.random(m) < delta
        kept = leaked | (rng.random(m) < special.expit(true_epsilon))
        scores = np.where(kept, secret_in, ~secret_in) + 0.1 * rng.random(m)
        result = epsilon_lower_bound_from_scores(scores, secret_in, 50, 50, delta)
        exceed += result.eps_low >= true_epsilon
    assert exceed / trials <= BETA + 3 * math.sqrt(BETA * (1 - BETA) / trials)


@pytest.mark.usefixtures("memoized_bound")
def test_bonferroni_grid_stays_sound_for_randomized_response():
    # Taking the max over a grid without correction would exceed the true ε far more often; with it,
    # the max is still wrong at most ~5% of the time.
    true_epsilon, m, trials = 1.0, 400, 600
    grid = guess_count_grid(m, guess_fractions=(0.05, 0.1, 0.25, 0.5))
    rng = np.random.default_rng(3)
    exceed_corrected = exceed_uncorrected = 0
    for _ in range(trials):
        secret_in = rng.random(m) < 0.5
        kept = rng.random(m) < special.expit(true_epsilon)
        scores = np.where(kept, secret_in, ~secret_in) + 0.1 * rng.random(m)
        exceed_corrected += best_guess_counts(scores, secret_in, grid, 0.0).eps_low >= true_epsilon
        uncorrected = max(
            epsilon_lower_bound_from_scores(scores, secret_in, kp, km, 0.0).eps_low for kp, km in grid
        )
        exceed_uncorrected += uncorrected >= true_epsilon
    margin = 3 * math.sqrt(BETA * (1 - BETA) / trials)
    assert exceed_corrected / trials <= BETA + margin
    assert exceed_uncorrected / trials > BETA + margin  # why choosing after the fact is not allowed


def test_gaussian_mechanism_audit_stays_below_its_epsilon():
    # score_i = μ·[canary i in] + N(0, 1) is μ-GDP per canary; its exact ε(δ) (Balle & Wang 2018)
    # solves Φ(-ε/μ + μ/2) - e^ε Φ(-ε/μ - μ/2) = δ. A strong signal, so the audit finds something.
    mu, delta, m = 4.0, 1e-5, 1000

    def delta_of(epsilon):
        return stats.norm.cdf(-epsilon / mu + mu / 2) - math.exp(epsilon) * stats.norm.cdf(
            -epsilon / mu - mu / 2
        )

    true_epsilon = optimize.brentq(lambda e: delta_of(e) - delta, 0.0, 100.0)
    rng = np.random.default_rng(5)
    bounds = []
    for _ in range(20):
        secret_in = rng.random(m) < 0.5
        scores = mu * secret_in + rng.normal(size=m)
        bounds.append(epsilon_lower_bound_from_scores(scores, secret_in, 100, 100, delta).eps_low)
    assert 0 < max(bounds) < true_epsilon


def test_audit_result_is_a_plain_record():
    result = GuessingBound(1.0, 10, 8, 5, 5, 100, 1e-5, 0.95)
    assert result.candidates_tried == 1 and result.accuracy == 0.8
    assert GuessingBound(0.0, 0, 0, 0, 0, 100, 1e-5, 0.95).accuracy is None
