"""The f-DP one-run audit (dpbench/audit/fdp.py): exact small cases, simulated Gaussian mechanisms of
known μ (honest claims stand, a μ too small is refuted), the claimed curve from a privacy profile,
and older audit.json files without the f-DP fields. Fast: no training."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import special, stats

from dpbench.audit.bound import count_correct_guesses
from dpbench.audit.fdp import (accountant_profile, claim_refuted, clt_mu, gaussian_inverse_blow_up, mu_lower_bound,
                               profile_tradeoff)


def _pure_dp(epsilon: float):
    return profile_tradeoff([(epsilon, 0.0)])


@pytest.mark.parametrize("epsilon", [0.0, 0.5, 2.0])
@pytest.mark.parametrize("n", [1, 2, 3, 6])
def test_all_correct_under_pure_dp_is_refuted_exactly_below_the_randomized_response_tail(epsilon, n):
    """n of n correct: the best ε-DP guesser (randomized response) gets them all with probability
    sigmoid(ε)^n, the exact p-value; the recursion must refute at a significance just above it and not
    just below (for n = 2 by hand: rc + h = β(1 + e^{-ε})²)."""
    p_value = special.expit(epsilon) ** n
    if p_value < 1:
        assert claim_refuted(n, n, n, _pure_dp(epsilon), min(p_value * 1.001, 0.999))
    assert not claim_refuted(n, n, n, _pure_dp(epsilon), p_value * 0.999)


def test_one_guess_never_refutes_and_wrong_guesses_refute_nothing():
    for mu in (0.0, 1.0, 5.0):
        assert not claim_refuted(1, 1, 1, gaussian_inverse_blow_up(mu), 0.05)
        assert not claim_refuted(1000, 500, 250, gaussian_inverse_blow_up(mu), 0.05)
    assert mu_lower_bound(1000, 500, 250, 0.05) == 0.0
    assert mu_lower_bound(1000, 0, 0, 0.05) == 0.0


def test_mu_low_rises_with_correct_guesses_and_with_canaries_and_is_itself_refuted():
    significance = 0.05 / 18
    by_correct = [mu_lower_bound(1000, 500, v, significance) for v in (300, 350, 400, 450, 500)]
    assert all(a < b for a, b in zip(by_correct, by_correct[1:])), by_correct
    by_m = [mu_lower_bound(m, m, m, significance) for m in (100, 1000, 5000)]
    assert all(a < b for a, b in zip(by_m, by_m[1:])), by_m
    mu = mu_lower_bound(1000, 500, 450, significance)
    assert claim_refuted(1000, 500, 450, gaussian_inverse_blow_up(mu), significance)
    assert not claim_refuted(1000, 500, 450, gaussian_inverse_blow_up(mu + 2e-4), significance)


def _gaussian_game(rng, m: int, mu: float):
    """m canaries with fair coins; canary i's score is N(μ·[in], 1): each score is a μ-GDP release of its coin."""
    secret_in = rng.random(m) < 0.5
    return mu * secret_in + rng.normal(size=m), secret_in


@pytest.mark.parametrize("true_mu", [0.5, 1.0, 2.0])
def test_an_honest_gaussian_claim_is_refuted_at_most_at_the_significance(true_mu):
    rng = np.random.default_rng(int(true_mu * 10))
    m, k, significance, trials = 1000, 250, 0.05, 300
    refuted = []
    for _ in range(trials):
        scores, secret_in = _gaussian_game(rng, m, true_mu)
        v = count_correct_guesses(scores, secret_in, k, k)
        refuted.append(claim_refuted(m, 2 * k, v, gaussian_inverse_blow_up(true_mu), significance))
    # ≤ 5% in expectation; 3 standard deviations of 300 trials on top
    assert np.mean(refuted) <= significance + 3 * math.sqrt(significance * (1 - significance) / trials), np.mean(refuted)


@pytest.mark.parametrize("true_mu, claimed_mu", [(2.0, 0.3), (3.0, 0.6), (4.0, 1.0)])
def test_a_gaussian_mechanism_leaking_more_than_claimed_is_caught(true_mu, claimed_mu):
    """With m = 1000 the one-run bound is far from tight (μ_low ≈ 0.5, 1.1, 1.6 for true μ = 2, 3, 4 on
    the audit's grid): it catches a claim several times too small, not one off by 2×."""
    rng = np.random.default_rng(7)
    m, significance = 1000, 0.05 / 18
    caught, mu_lows = 0, []
    for _ in range(40):
        scores, secret_in = _gaussian_game(rng, m, true_mu)
        results = []
        for k in (250, 375, 500):  # a grid fixed in advance, as the audit's
            v = count_correct_guesses(scores, secret_in, k, k)
            results.append((claim_refuted(m, 2 * k, v, gaussian_inverse_blow_up(claimed_mu), significance),
                            mu_lower_bound(m, 2 * k, v, significance)))
        caught += any(r for r, _ in results)
        mu_lows.append(max(mu for _, mu in results))
    assert caught >= 38, caught
    assert claimed_mu < np.median(mu_lows) < true_mu, mu_lows


def _gdp_delta(mu: float, epsilon: float) -> float:
    """δ(ε) of μ-GDP (Dong, Roth & Su 2022, Cor. 2.13)."""
    return float(stats.norm.cdf(-epsilon / mu + mu / 2) - math.exp(epsilon) * stats.norm.cdf(-epsilon / mu - mu / 2))


def test_the_curve_of_a_privacy_profile_lies_below_the_true_curve_and_close_to_it():
    mu = 1.5
    points = [(eps, _gdp_delta(mu, eps)) for eps in np.linspace(0, 8, 41)]
    from_profile, exact = profile_tradeoff(points), gaussian_inverse_blow_up(mu)
    xs = np.linspace(0.001, 0.999, 500)
    gaps = np.array([exact(x) - from_profile(x) for x in xs])
    assert gaps.min() >= -1e-9 and gaps.max() < 0.02, (gaps.min(), gaps.max())
    # so it is a weaker claim: whatever refutes it refutes the Gaussian curve too
    significance = 0.05 / 18
    for v in range(300, 501, 10):
        if claim_refuted(1000, 500, v, from_profile, significance):
            assert claim_refuted(1000, 500, v, exact, significance), v


def test_the_accountants_profile_gives_the_claimed_curve_and_the_clt_mu():
    sigma, q, steps = 2.0, 0.1, 50
    points = accountant_profile("prv", sigma, q, steps, deltas=(1e-6, 1e-3, 0.1))
    eps = [e for e, _ in points]
    assert eps[0] > eps[1] > eps[2] >= 0  # larger δ, smaller ε
    assert clt_mu(sigma, q, steps) == pytest.approx(q * math.sqrt(steps * math.expm1(1 / sigma ** 2)))
    # less noise, a weaker claim: the same guesses refute the stronger curve first
    strong = profile_tradeoff(accountant_profile("prv", 4.0, q, steps, deltas=(1e-6, 1e-3, 0.1)))
    weak = profile_tradeoff(points)
    assert claim_refuted(1000, 500, 350, strong, 0.05) and not claim_refuted(1000, 500, 350, weak, 0.05)


def test_rejects_invalid_arguments():
    with pytest.raises(ValueError):
        claim_refuted(10, 5, 6, gaussian_inverse_blow_up(1.0), 0.05)
    with pytest.raises(ValueError):
        claim_refuted(10, 5, 5, gaussian_inverse_blow_up(1.0), 1.5)
    with pytest.raises(ValueError):
        gaussian_inverse_blow_up(-1.0)
    with pytest.raises(ValueError):
        profile_tradeoff([(1.0, 2.0)])


def test_an_audit_json_from_before_the_f_dp_audit_still_loads(tmp_path):
    from dpbench.results import AuditResult, read_model

    old = {"schema_version": 2, "kind": "dpbench-audit", "run_id": "bias-eps2-seed0", "suite": "quickstart",
           "method": "bias", "method_label": "bias", "epsilon": 2, "delta": 1e-4, "fault": None, "canaries": 1000,
           "threat_models": [{"name": "all-steps", "eps_low": 0.2, "guesses": 750, "correct": 452, "k_plus": 375,
                              "k_minus": 375, "rule": "sum"}],
           "epsilon_lower_bound": 0.2, "confidence": 0.95, "replay": None, "passed": True, "seconds": 19.0,
           "candidates": 9}
    path = tmp_path / "audit.json"
    path.write_text(__import__("json").dumps(old))
    audit = read_model(path, AuditResult)
    assert audit.passed and audit.mu_lower_bound is None and audit.fdp_refutes_claim is None
    assert audit.threat_models[0].mu_low is None and audit.threat_models[0].refutes_claim is None
