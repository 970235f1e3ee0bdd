"""What the numbers say: the headline per ε, the verdict in words, pairwise method differences, metrics
that carry no information at this scale, and Pareto fronts. Pure computation on a :class:`ResultGrid`.

Differences between methods are paired within (ε, seed) (:func:`dpbench.reporting.stats.paired_difference`);
every pair of methods at one ε is one family, Holm-adjusted (:func:`dpbench.reporting.stats.holm_adjust`), so
"significant" holds for the family; with one seed nothing is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Optional, Sequence

from dpbench.reporting.formatting import format_difference, format_number, significance
from dpbench.reporting.grid import (Metric, ResultGrid, interval_of, mean_of, metric_value, paired_by_seed,
                                    paired_ratio, values_by_seed)
from dpbench.reporting.stats import Interval, PairedDiff, format_interval, holm_adjust, paired_difference
from dpbench.results import display_epsilon

ACCURACY = "downstream_accuracy"


@dataclass(frozen=True)
class Gap:
    """A method at ε minus its own ε = ∞ run: paired over seeds when at least two seeds ran both,
    else the difference of the two means (no interval)."""

    mean: float
    paired: Optional[PairedDiff]

    def text(self) -> str:
        if self.paired is not None:
            return format_difference(self.paired)
        return f"{format_number(self.mean, 3)} (difference of means: fewer than two seeds ran both)"


@dataclass(frozen=True)
class Headline:
    epsilon: float
    best: str
    accuracy: Interval
    gain_over_pretrained: Optional[PairedDiff]
    gap_to_nonprivate: Optional[Gap]
    comparisons: tuple[tuple[str, PairedDiff], ...]  # (other method, best − other), Holm-adjusted within ε
    cost: "Cost"


MEMORY, THROUGHPUT = "total_peak_memory_bytes", "throughput_examples_per_s"


@dataclass(frozen=True)
class Cost:
    """What the best method's DP runs at one ε cost: total peak memory and examples/s (means over seeds with
    log-scale intervals), and each relative to full fine-tuning at the same ε, seed by seed (``full`` is
    None when the suite has no full fine-tuning; the ratios are None then, or when full has no value)."""

    memory: Optional[Interval]
    throughput: Optional[Interval]
    full: Optional[str]
    memory_vs_full: Optional[Interval]
    throughput_vs_full: Optional[Interval]


def cost_of(grid: ResultGrid, method: str, eps: float) -> Cost:
    runs, full = grid.cell(method, eps), grid.full_label
    reference = grid.cell(full, eps) if full is not None else []
    return Cost(interval_of(runs, MEMORY), interval_of(runs, THROUGHPUT), full,
                paired_ratio(runs, reference, MEMORY), paired_ratio(runs, reference, THROUGHPUT))


def headlines(grid: ResultGrid) -> list[Headline]:
    """Per finite ε with accuracies: the method with the highest mean accuracy, and how sure that is."""
    return [h for h in (_headline(grid, eps) for eps in grid.finite_epsilons) if h is not None]


def _headline(grid: ResultGrid, eps: float) -> Optional[Headline]:
    means = {m: mean_of(grid.cell(m, eps), ACCURACY) for m in grid.methods}
    ranked = [m for m in grid.methods if means[m] is not None]
    if not ranked:
        return None
    best = max(ranked, key=lambda m: means[m])
    runs = grid.cell(best, eps)
    pretrained = grid.baselines.pretrained_accuracy if grid.baselines else None
    gain = None
    if pretrained is not None:
        accuracies = values_by_seed(runs, ACCURACY)
        gain = paired_difference(accuracies, {seed: pretrained for seed in accuracies})
    family = {(a, b): diff for a, b, diff in pairwise_differences(grid, eps)}
    comparisons = []
    for other in ranked:
        if (best, other) in family:
            comparisons.append((other, family[(best, other)]))
        elif (other, best) in family:
            comparisons.append((other, _negated(family[(other, best)])))
    return Headline(eps, best, interval_of(runs, ACCURACY), gain, _gap(grid, best, eps), tuple(comparisons),
                    cost_of(grid, best, eps))


def _negated(diff: PairedDiff) -> PairedDiff:
    """b − a from a − b: the same test, the interval mirrored."""
    return replace(diff, mean=-diff.mean, low=None if diff.high is None else -diff.high,
                   high=None if diff.low is None else -diff.low)


def _gap(grid: ResultGrid, method: str, eps: float) -> Optional[Gap]:
    private, reference = grid.cell(method, eps), grid.cell(method, math.inf)
    private_mean, reference_mean = mean_of(private, ACCURACY), mean_of(reference, ACCURACY)
    if private_mean is None or reference_mean is None:
        return None
    paired = paired_by_seed(private, reference, ACCURACY)
    if paired is None or paired.n < 2:
        return Gap(private_mean - reference_mean, None)
    return Gap(paired.mean, paired)


def pairwise_differences(grid: ResultGrid, eps: float, metric: Metric = ACCURACY) -> list[tuple[str, str, PairedDiff]]:
    """Every pair of methods at ε, in suite order: (a, b, a − b paired over their common seeds). The pairs at
    one ε are one family: their verdicts are Holm-adjusted together (the intervals stay unadjusted)."""
    out = []
    for i, a in enumerate(grid.methods):
        for b in grid.methods[i + 1:]:
            diff = paired_by_seed(grid.cell(a, eps), grid.cell(b, eps), metric)
            if diff is not None:
                out.append((a, b, diff))
    adjusted = holm_adjust([diff for _, _, diff in out])
    return [(a, b, diff) for (a, b, _), diff in zip(out, adjusted)]


def verdict(grid: ResultGrid, found: Sequence[Headline]) -> str:
    """The headline in one paragraph of plain language, generated from the numbers above it."""
    if not found:
        return "No private (finite ε) run recorded a downstream accuracy: there is nothing to rank."
    sentences = [_verdict_sentence(h) for h in found]
    if grid.max_seeds == 1:
        sentences.append("Each method and ε ran with one seed only, so there are no intervals and no difference "
                         "can be called significant: run more seeds before drawing conclusions.")
    return " ".join(sentences)


def _verdict_sentence(h: Headline) -> str:
    text = (f"At ε = {display_epsilon(h.epsilon)}, {h.best} has the highest mean accuracy "
            f"({format_interval(h.accuracy)}, {h.accuracy.n} seed{'s' if h.accuracy.n != 1 else ''})")
    if h.gain_over_pretrained is not None:
        gain = h.gain_over_pretrained
        text += f", {_relation(gain.mean, 'the pretrained model')} ({significance(gain)})"
    verdicts = {True: [], False: [], None: []}
    for other, diff in h.comparisons:
        verdicts[diff.significant].append(other)
    if verdicts[True]:
        text += f"; it is significantly ahead of {_join(verdicts[True])} (Holm-adjusted over the pairs at this ε)"
    if verdicts[False]:
        text += f"; its lead over {_join(verdicts[False])} is not significant: they tie with it at this ε"
    if verdicts[None]:
        text += f"; its lead over {_join(verdicts[None])} rests on one seed and cannot be called significant"
    if h.gap_to_nonprivate is not None:
        gap = h.gap_to_nonprivate
        paired = f" ({significance(gap.paired)})" if gap.paired else " (means, not paired)"
        text += f"; it is {_relation(gap.mean, 'its own non-private (ε = ∞) run')}{paired}"
    return text + "."


def _relation(difference: float, reference: str) -> str:
    """"0.12 above X", "0.03 below X", or "level with X" when the difference rounds to 0."""
    amount = format_number(abs(difference), 3)
    if amount == "0":
        return f"level with {reference}"
    return f"{amount} {'above' if difference > 0 else 'below'} {reference}"


def _join(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def uninformative_metrics(grid: ResultGrid, metrics: Sequence[str]) -> tuple[list[str], list[str]]:
    """Metrics worth a column, and notes for the others: never recorded, or one value for every run
    (precision/recall are 0 everywhere at small scale, say), which a column of copies would hide."""
    constant: dict[str, list[str]] = {}
    absent = []
    for metric in metrics:
        values = {metric_value(run, metric) for run in grid.runs} - {None}
        if not values:
            absent.append(metric)
        elif len(values) == 1 and len(grid.runs) > 1:
            constant.setdefault(format_number(values.pop()), []).append(metric)
    notes = [f"{'/'.join(names)} {'is' if len(names) == 1 else 'are'} {value} for every run at this scale: "
             "not informative" for value, names in constant.items()]
    if absent:
        notes.append(f"{'/'.join(absent)}: not recorded for any run")
    flagged = set(absent).union(*constant.values())
    return [m for m in metrics if m not in flagged], notes


@dataclass(frozen=True)
class ParetoPoint:
    method: str
    cost: float
    accuracy: float
    optimal: bool


def pareto_points(grid: ResultGrid, eps: float, cost: Metric, lower_cost_is_better: bool) -> list[ParetoPoint]:
    """Per method at ε (means over seeds): cost, accuracy, and whether no other method is at least as
    good on both and better on one."""
    points = [(m, mean_of(grid.cell(m, eps), cost), mean_of(grid.cell(m, eps), ACCURACY)) for m in grid.methods]
    points = [(m, c, a) for m, c, a in points if c is not None and a is not None]
    sign = 1 if lower_cost_is_better else -1

    def dominated(c: float, a: float) -> bool:
        return any(sign * c2 <= sign * c and a2 >= a and (sign * c2 < sign * c or a2 > a) for _, c2, a2 in points)

    return [ParetoPoint(m, c, a, not dominated(c, a)) for m, c, a in points]


def seeded_noise_warning(grid: ResultGrid) -> Optional[str]:
    """Private runs whose DP noise or Poisson sampling was derived from the seed: anyone who knows the seed
    can remove the noise, or knows who was sampled (which voids amplification by subsampling)."""
    runs = [run for run in grid.runs + grid.failed if run.noise_source != "none"]
    seeded = [run.run_id for run in runs if run.noise_source == "seeded" or run.sampling_source == "seeded"]
    legacy = [run.run_id for run in runs if run.run_id not in seeded and run.sampling_source is None]
    notes = []
    if seeded:
        notes.append(f"Not a DP release: the noise was derived from the seed in {len(seeded)} run"
                     f"{'s' if len(seeded) != 1 else ''} ({', '.join(seeded)}), and so was the Poisson sampling. "
                     "Anyone who knows the seed can remove the noise and knows who was sampled; these results "
                     "measure utility under DP-shaped noise, not privacy.")
    if legacy:
        notes.append(f"Not a DP release: {len(legacy)} run{'s' if len(legacy) != 1 else ''} "
                     f"({', '.join(legacy[:6])}{', …' if len(legacy) > 6 else ''}) were written by a dpbench before "
                     "0.2, whose Poisson sampling was derived from the published seed (who was sampled is known, so "
                     "amplification by subsampling does not hold). Their utility numbers are unaffected.")
    return " ".join(notes) or None


def smoke_warning(grid: ResultGrid) -> Optional[str]:
    """Smoke runs (``--smoke``: 2 steps, minimal sampling and evaluation) check the pipeline, nothing more."""
    if not any(run.smoke for run in grid.runs + grid.failed):
        return None
    return ("Smoke test (dpbench run --smoke): every run trained 2 steps with minimal sampling and evaluation. "
            "It shows the suite runs end to end; its numbers measure nothing about the methods.")


def single_seed_note(grid: ResultGrid) -> Optional[str]:
    if grid.max_seeds != 1:
        return None
    return ("One seed per method and ε: there are no intervals, and no difference between methods can be "
            "called significant.")
