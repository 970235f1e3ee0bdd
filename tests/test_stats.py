"""Seed statistics: t-intervals, paired differences, formatting, coverage."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from dpbench.reporting.stats import (
    NOT_SIGNIFICANT_MARKER,
    Interval,
    PairedDiff,
    format_interval,
    holm_adjust,
    mean_interval,
    paired_difference,
    seeds_for_power,
)

# t quantile for a two-sided 95% interval with 3 degrees of freedom (any t-table: 3.182).
T_975_DF3 = 3.182446305284263


def test_t_interval_by_hand():
    # values 1, 2, 4, 7: mean 3.5; squared deviations 6.25 + 2.25 + 0.25 + 12.25 = 21, s² = 21/3 = 7,
    # standard error √7 / √4, half-width t_{0.975,3} · √7 / 2.
    interval = mean_interval([1.0, 2.0, 4.0, 7.0])
    half_width = T_975_DF3 * math.sqrt(7) / 2
    assert interval.n == 4 and interval.mean == 3.5
    assert interval.half_width == pytest.approx(half_width, rel=1e-12)
    assert (interval.low, interval.high) == pytest.approx((3.5 - half_width, 3.5 + half_width))
    assert scipy_stats.t.ppf(0.975, 3) == pytest.approx(T_975_DF3, rel=1e-12)
    # and the same as scipy's own t-interval
    expected = scipy_stats.t.interval(0.95, 3, loc=3.5, scale=math.sqrt(7) / 2)
    assert (interval.low, interval.high) == pytest.approx(expected, rel=1e-12)


def test_other_confidence_levels_use_their_own_quantile():
    values = [0.2, 0.4, 0.3, 0.5, 0.6]
    for confidence in (0.8, 0.9, 0.99):
        interval = mean_interval(values, confidence=confidence)
        standard_error = np.std(values, ddof=1) / math.sqrt(5)
        expected_half = scipy_stats.t.ppf((1 + confidence) / 2, 4) * standard_error
        assert interval.half_width == pytest.approx(expected_half, rel=1e-12)
        assert interval.confidence == confidence
    assert mean_interval(values, 0.99).half_width > mean_interval(values, 0.8).half_width


def test_one_seed_gives_a_mean_but_no_interval():
    interval = mean_interval([0.42])
    assert interval == Interval(mean=0.42, low=None, high=None, n=1, half_width=None)
    assert format_interval(interval) == "0.42 (n=1, no interval)"


def test_nan_is_rejected_unless_omitted_explicitly():
    with pytest.raises(ValueError, match="NaN"):
        mean_interval([0.5, float("nan"), 0.7])
    omitted = mean_interval([0.5, float("nan"), 0.7], nan_policy="omit")
    assert omitted.n == 2 and omitted.mean == pytest.approx(0.6)
    with pytest.raises(ValueError):
        mean_interval([float("nan")], nan_policy="omit")  # nothing left
    with pytest.raises(ValueError):
        mean_interval([])
    with pytest.raises(ValueError, match="infinity"):
        mean_interval([1.0, float("inf")])
    with pytest.raises(ValueError):
        mean_interval([1.0, 2.0], nan_policy="ignore")
    with pytest.raises(ValueError):
        mean_interval([1.0, 2.0], confidence=95)


# --- paired differences --------------------------------------------------------------------------

# Accuracy of two methods over five seeds. The seed moves both a lot (0.18 to 0.71: same pretrained
# model, data, σ and batches within a seed), while A beats B by a steady ~0.03 in every seed.
METHOD_A = {0: 0.300, 1: 0.550, 2: 0.420, 3: 0.710, 4: 0.180}
A_MINUS_B = {0: 0.031, 1: 0.029, 2: 0.035, 3: 0.027, 4: 0.033}
METHOD_B = {seed: METHOD_A[seed] - A_MINUS_B[seed] for seed in METHOD_A}


def test_difference_is_significant_only_because_it_is_paired():
    a_alone = mean_interval(list(METHOD_A.values()))
    b_alone = mean_interval(list(METHOD_B.values()))
    assert a_alone.low < b_alone.high and b_alone.low < a_alone.high  # unpaired: they overlap

    paired = paired_difference(METHOD_A, METHOD_B)
    assert paired.n == 5 and paired.seeds == (0, 1, 2, 3, 4)
    assert paired.mean == pytest.approx(0.031)
    assert 0 < paired.low < paired.mean < paired.high
    assert paired.significant is True
    # The interval is the t-interval of the five differences, by hand as above.
    differences = np.array(list(A_MINUS_B.values()))
    half = scipy_stats.t.ppf(0.975, 4) * differences.std(ddof=1) / math.sqrt(5)
    assert paired.half_width == pytest.approx(half, rel=1e-9)


def test_not_significant_when_the_interval_contains_zero():
    noisy_b = {seed: METHOD_A[seed] + (0.05 if seed % 2 else -0.05) for seed in METHOD_A}
    paired = paired_difference(METHOD_A, noisy_b)
    assert paired.low < 0 < paired.high and paired.significant is False
    assert format_interval(paired).endswith(f" {NOT_SIGNIFICANT_MARKER}")


def test_only_seeds_present_in_both_are_paired():
    a = {1: 0.5, 2: 0.6, 3: 0.7, 9: 0.1}
    b = {2: 0.55, 3: 0.62, 1: 0.45, 7: 0.9}
    paired = paired_difference(a, b)
    assert paired.seeds == (1, 2, 3) and paired.n == 3
    assert paired.mean == pytest.approx(np.mean([0.05, 0.05, 0.08]))


def test_one_common_seed_gives_no_interval_and_no_verdict():
    paired = paired_difference({0: 0.5, 1: 0.6}, {1: 0.4})
    assert paired == PairedDiff(
        mean=pytest.approx(0.2), low=None, high=None, n=1, significant=None, seeds=(1,)
    )
    assert format_interval(paired) == "0.2 (n=1, no interval)"
    with pytest.raises(ValueError, match="no seed"):
        paired_difference({0: 0.5}, {1: 0.4})


def test_paired_nan_handling_is_explicit():
    a = {0: 0.5, 1: float("nan"), 2: 0.7}
    b = {0: 0.4, 1: 0.5, 2: 0.6}
    with pytest.raises(ValueError, match="seed 1"):
        paired_difference(a, b)
    paired = paired_difference(a, b, nan_policy="omit")
    assert paired.seeds == (0, 2) and paired.mean == pytest.approx(0.1)


def test_constant_nonzero_difference_is_significant_with_a_zero_width_interval():
    paired = paired_difference({0: 1.0, 1: 2.0, 2: 3.0}, {0: 0.5, 1: 1.5, 2: 2.5})
    assert paired.half_width == 0 and paired.low == paired.high == pytest.approx(0.5)
    assert paired.significant is True


# --- formatting ----------------------------------------------------------------------------------


def test_format_interval():
    interval = Interval(mean=0.5012, low=0.4401, high=0.5600, n=5, half_width=0.06)
    assert format_interval(interval) == "0.501 [0.44, 0.56]"
    assert format_interval(interval, digits=2) == "0.5 [0.44, 0.56]"
    assert format_interval(Interval(45.678, 40.01, 51.3, 3, 5.6)) == "45.7 [40, 51.3]"
    # positional, never 1.23e+03
    assert format_interval(Interval(1234.5, 1000.0, 1469.0, 3, 234.5)) == "1230 [1000, 1470]"
    significant = PairedDiff(mean=0.031, low=0.027, high=0.035, n=5, significant=True)
    assert format_interval(significant) == "0.031 [0.027, 0.035]"
    assert format_interval(PairedDiff(-0.00001, -0.02, 0.02, 5, False)) == "-0.00001 [-0.02, 0.02] n.s."
    # the difference of two equal means, as floating point computes it, is 0 (not -0.0000000000000000278)
    equal = float(np.mean([0.1931, 0.1931, 0.1931])) - 0.1931 + (0.1 + 0.2 - 0.3) * 1e-1
    assert equal != 0 and format_interval(PairedDiff(equal, None, None, 1, None)) == "0 (n=1, no interval)"
    with pytest.raises(ValueError):
        format_interval(interval, digits=0)


# --- coverage ------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_seeds", [3, 5])
def test_interval_covers_the_true_mean_about_95_percent_of_the_time(n_seeds):
    draws = 2000
    rng = np.random.default_rng(2024 + n_seeds)
    samples = rng.normal(loc=0.6, scale=0.05, size=(draws, n_seeds))
    covered = 0
    for sample in samples:
        interval = mean_interval(sample)
        covered += interval.low <= 0.6 <= interval.high
    # 3 binomial standard errors either side of 0.95 (0.0049 each at 2000 draws)
    assert abs(covered / draws - 0.95) <= 3 * math.sqrt(0.95 * 0.05 / draws)


def test_paired_interval_covers_the_true_difference_about_95_percent_of_the_time():
    draws, seeds, true_difference = 2000, 4, 0.02
    rng = np.random.default_rng(99)
    covered = 0
    for _ in range(draws):
        seed_effect = rng.normal(scale=0.2, size=seeds)  # shared by both methods in a seed
        a = dict(enumerate(0.5 + seed_effect + rng.normal(scale=0.01, size=seeds)))
        b = dict(enumerate(0.5 - true_difference + seed_effect + rng.normal(scale=0.01, size=seeds)))
        paired = paired_difference(a, b)
        covered += paired.low <= true_difference <= paired.high
    assert abs(covered / draws - 0.95) <= 3 * math.sqrt(0.95 * 0.05 / draws)


# --- range-respecting intervals and the Holm family ------------------------------------------------


def test_logit_interval_stays_within_zero_and_one():
    values = [0.999, 0.95, 0.89]
    linear, logit = mean_interval(values), mean_interval(values, scale="logit")
    assert linear.high > 1  # the linear t-interval runs past the physical limit
    assert logit.scale == "logit" and 0 < logit.low < logit.mean < logit.high < 1
    assert logit.mean == pytest.approx(np.mean(values))  # the point estimate stays the arithmetic mean
    # by hand: t-interval of the logits, mapped back
    logits = np.log(np.array(values) / (1 - np.array(values)))
    half = scipy_stats.t.ppf(0.975, 2) * logits.std(ddof=1) / math.sqrt(3)
    assert logit.high == pytest.approx(1 / (1 + math.exp(-(logits.mean() + half))))
    assert mean_interval([1.0, 1.0, 0.98], scale="logit").high <= 1


def test_log_interval_stays_positive():
    values = [20.0, 35.0, 500.0]
    linear, log = mean_interval(values), mean_interval(values, scale="log")
    assert linear.low < 0  # "184 [−1390, 1750] ex/s"
    assert log.scale == "log" and 0 < log.low < min(values) and log.high > max(values)
    logs = np.log(values)
    half = scipy_stats.t.ppf(0.975, 2) * logs.std(ddof=1) / math.sqrt(3)
    assert log.low == pytest.approx(math.exp(logs.mean() - half))


def test_values_outside_a_scale_fall_back_to_linear_and_say_so():
    assert mean_interval([0.5, 1.5, 0.7], scale="logit").scale == "linear"
    assert mean_interval([-1.0, 2.0, 3.0], scale="log").scale == "linear"
    with pytest.raises(ValueError, match="scale"):
        mean_interval([1.0, 2.0], scale="sqrt")


def test_paired_p_value_is_the_paired_t_test():
    paired = paired_difference(METHOD_A, {s: METHOD_B[s] + (0.02 if s % 2 else -0.01) for s in METHOD_B})
    b = [METHOD_B[s] + (0.02 if s % 2 else -0.01) for s in sorted(METHOD_B)]
    expected = scipy_stats.ttest_rel([METHOD_A[s] for s in sorted(METHOD_A)], b).pvalue
    assert paired.p_value == pytest.approx(expected, rel=1e-9)
    assert (paired.p_value < 0.05) == paired.significant  # the same test as the interval


def test_holm_adjustment_by_hand():
    def diff(p):
        return PairedDiff(mean=0.1, low=0.01, high=0.2, n=3, significant=p < 0.05, p_value=p)

    # sorted p 0.01, 0.03, 0.04 of m = 3: 0.01·3 = 0.03; 0.03·2 = 0.06; 0.04·1 = 0.04 → max(0.06, 0.04) = 0.06
    first, second, third, untested = holm_adjust([diff(0.01), diff(0.04), diff(0.03),
                                                  PairedDiff(0.1, None, None, 1, None)])
    assert first.p_value == pytest.approx(0.03) and first.significant is True
    assert second.p_value == pytest.approx(0.06) and second.significant is False
    assert third.p_value == pytest.approx(0.06) and third.significant is False
    assert {first.adjustment, second.adjustment, third.adjustment} == {"holm"}
    assert untested.adjustment is None and untested.significant is None
    assert (first.low, first.high) == (0.01, 0.2)  # intervals unchanged
    assert holm_adjust([diff(0.7), diff(0.9)])[0].p_value == 1.0  # capped at 1


# ------------------------------------------------------------------------------------------- power (issue 23)
def _simulated_power(effect: float, n: int, sims: int = 40_000) -> float:
    """Fraction of simulated paired experiments (n seeds, differences ~ N(effect, 1)) in which the paired
    t-test at the 5% level rejects: the power, estimated by simulation rather than by formula."""
    rng = np.random.default_rng(0)
    d = rng.normal(effect, 1.0, size=(sims, n))
    t = d.mean(axis=1) / (d.std(axis=1, ddof=1) / np.sqrt(n))
    return float(np.mean(np.abs(t) > scipy_stats.t.ppf(0.975, n - 1)))


@pytest.mark.parametrize("effect", [0.5, 1.0, 2.0])
def test_seeds_for_power_is_the_smallest_n_with_80_percent_power_by_simulation(effect):
    # An observed difference whose mean and per-seed spread are exactly `effect` and 1 (three seeds).
    values = np.array([-1.0, 0.0, 1.0]) + effect
    diff = paired_difference(dict(enumerate(values)), dict.fromkeys(range(3), 0.0))
    n = seeds_for_power(diff)
    assert n is not None and n >= 2
    assert _simulated_power(effect, n) >= 0.8 - 0.01
    if n > 2:
        assert _simulated_power(effect, n - 1) < 0.8 + 0.01


def test_seeds_for_power_grows_as_the_difference_shrinks_and_is_undefined_without_spread():
    spread = {0: 0.01, 1: -0.01, 2: 0.0}
    needed = [seeds_for_power(paired_difference({k: v + m for k, v in spread.items()}, dict.fromkeys(spread, 0.0)))
              for m in (0.02, 0.01, 0.005)]
    assert needed[0] < needed[1] < needed[2]
    assert seeds_for_power(paired_difference({0: 0.3}, {0: 0.1})) is None  # one seed: no spread to use
    assert seeds_for_power(paired_difference({0: 0.1, 1: -0.1}, {0: 0.0, 1: 0.0})) is None  # mean exactly 0
