"""The rules `dpbench tune` uses to pick one learning rate per method from its proxy sweep, and (with
``--sampling-steps``) the number of sampling steps.

Decided on the public proxy alone (issue 23). Picking the best mean proxy accuracy from one seed per
candidate chose, for full fine-tuning on mnist10k-cpu, an lr that diverged on some private seeds (FID
13.5–206 over 3 seeds against the pretrained model's 80). Instability shows on the proxy too, if one
looks at more than one seed, so a candidate is **rejected** when

- fewer than :data:`MIN_SEEDS` proxy seeds finished (one seed cannot show instability),
- any seed's proxy FID is above the pretrained proxy model's times the proxy's FID factor
  (:attr:`ProxyShift.fid_bar_factor`: fine-tuning degraded the generator), or
- its seeds' proxy accuracies span more than :data:`SEED_DISAGREEMENT` (the outcome is a coin toss).

The FID bar depends on how far the proxy task starts from what the proxy model draws
(:data:`PROXY_SHIFTS`, applied by dpbench/runner/tune.py). On the **transposed** proxy (the default) the proxy model
draws shapes the proxy task does not contain, as on the private task, so its FID is a ceiling that a
candidate which learned anything ends below: the bar is the pretrained FID itself (factor 1), the rule
the issue asked for. On the **unshifted** proxy the pretrained model already draws the proxy images
(only their class names are permuted), so its FID is a floor that DP fine-tuning does not reach: on
mnist10k-cpu's proxy it is 8.1 and every candidate measured ended above it (LoDA 8.7–12.3, full
10.1–39.2 at ε = 10, one seed each); as a bar it rejects everything. There the bar is twice the
starting distance (factor 2), where a candidate has clearly degraded the samples it started from (full
at lr 0.004: 26.9) while the ones that kept them (full 0.002, LoDA 0.01 and 0.02) stay in.

Among the candidates left, the **smallest lr within noise of the best** is selected: within noise
means a mean proxy accuracy no more than one standard error of the difference below the best mean
(the two candidates' standard errors over seeds, combined). A smaller step is the safer one when the
proxy cannot tell them apart: a proxy is never the private task, and a too-large step is what diverged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

MIN_SEEDS = 2
SEED_DISAGREEMENT = 0.10  # proxy accuracy, max − min over seeds


@dataclass(frozen=True)
class ProxyShift:
    """How the proxy's private and test images differ from its pretraining images, and what that makes of
    the FID bar. One table, so the CLI's choices, the transform and the bar cannot drift apart."""

    description: str
    fid_bar_factor: float  # the FID bar as a multiple of the pretrained proxy model's FID (see above)
    shift: Callable  # applied to the proxy's private and test images (tensors; torch is not imported here)


PROXY_SHIFTS = {
    "transpose": ProxyShift("images transposed (rows become columns): shapes the proxy model never drew", 1.0,
                            lambda images: images.transpose(-1, -2).contiguous()),
    "none": ProxyShift("images unshifted: the proxy model already draws them", 2.0, lambda images: images),
}
DEFAULT_PROXY_SHIFT = "transpose"


def rule(fid_factor: float) -> str:
    """The selection rule in words, as tune.json records it."""
    bar = "the pretrained proxy model's" if fid_factor == 1 else f"{fid_factor:g}x the pretrained proxy model's"
    return (f"reject < {MIN_SEEDS} finished seeds, any seed's proxy FID above {bar}, or seeds whose proxy "
            f"accuracies span > {SEED_DISAGREEMENT}; then the smallest lr within one standard error (of the "
            "difference) of the best mean proxy accuracy")


@dataclass(frozen=True)
class CandidateScores:
    """One candidate's proxy results: per finished seed, accuracy and FID."""

    lr: float
    accuracies: Sequence[float]
    fids: Sequence[float]
    failed_seeds: int = 0

    @property
    def mean_accuracy(self) -> Optional[float]:
        return sum(self.accuracies) / len(self.accuracies) if self.accuracies else None

    @property
    def standard_error(self) -> float:
        n = len(self.accuracies)
        if n < 2:
            return math.inf
        mean = self.mean_accuracy
        variance = sum((a - mean) ** 2 for a in self.accuracies) / (n - 1)
        return math.sqrt(variance / n)


def rejection(scores: CandidateScores, pretrained_fid: Optional[float], fid_factor: float) -> Optional[str]:
    """Why the candidate cannot be selected, or None; ``fid_factor``: the proxy's :attr:`ProxyShift.fid_bar_factor`."""
    if scores.failed_seeds:
        return f"{scores.failed_seeds} proxy seed(s) failed"
    if len(scores.accuracies) < MIN_SEEDS:
        return f"{len(scores.accuracies)} finished proxy seed(s), the rule needs {MIN_SEEDS}"
    worst_fid = max(scores.fids, default=None)
    if pretrained_fid is not None and worst_fid is not None and worst_fid > fid_factor * pretrained_fid:
        times = "" if fid_factor == 1 else f"{fid_factor:g}x "
        return f"a seed's proxy FID {worst_fid:.1f} is above {times}the pretrained proxy model's {pretrained_fid:.1f}"
    spread = max(scores.accuracies) - min(scores.accuracies)
    if spread > SEED_DISAGREEMENT:
        return f"seeds disagree: proxy accuracies span {spread:.3f} > {SEED_DISAGREEMENT}"
    return None


def select(candidates: Sequence[CandidateScores], pretrained_fid: Optional[float],
           fid_factor: float) -> tuple[Optional[int], list]:
    """The index of the selected candidate (None when every one is rejected) and each one's rejection."""
    reasons = [rejection(c, pretrained_fid, fid_factor) for c in candidates]
    kept = [i for i, reason in enumerate(reasons) if reason is None]
    if not kept:
        return None, reasons
    best = max(kept, key=lambda i: candidates[i].mean_accuracy)

    def within_noise(i: int) -> bool:
        noise = math.hypot(candidates[best].standard_error, candidates[i].standard_error)
        return candidates[i].mean_accuracy >= candidates[best].mean_accuracy - noise

    close = [i for i in kept if within_noise(i)]
    return min(close, key=lambda i: (candidates[i].lr, -candidates[i].mean_accuracy)), reasons


# Sampling steps (``dpbench tune --sampling-steps``): sampling is post-processing of the trained weights, so
# other step counts are measured on the same proxy runs, re-sampled from their saved weights with the same
# seeds (a paired comparison that costs no training). Fewer steps are cheaper; the rule takes the fewest that
# lose nothing on the proxy and keep every run's samples under the FID bar, and otherwise keeps the suite's.
def sampling_steps_rule(fid_factor: float) -> str:
    """The sampling-steps rule in words, as tune.json records it."""
    bar = "the pretrained proxy model's" if fid_factor == 1 else f"{fid_factor:g}x the pretrained proxy model's"
    return ("over the selected candidates' proxy runs, re-sampled from their saved weights with the same seeds: "
            "the fewest sampling steps whose mean proxy accuracy (all methods' runs pooled) is at least that at the suite's steps and with no "
            f"run's proxy FID above {bar}; else the suite's steps")


def select_sampling_steps(suite_steps: int, scores: dict[int, CandidateScores], pretrained_fid: Optional[float],
                          fid_factor: float) -> tuple[Optional[int], dict[int, Optional[str]]]:
    """The step count to sample with (None: nothing was measured, the suite keeps its own) and, per step count
    measured, why it was set aside (None: kept). ``scores[steps]`` holds the same runs' accuracies and FIDs at each
    step count, ``suite_steps`` among them; the mean pools every method's runs, as one count serves them all."""
    reference = scores[suite_steps].mean_accuracy
    if reference is None:  # no candidate was selected, or none of its runs could be re-sampled
        return None, {steps: "no selected candidate's runs to compare" for steps in sorted(scores)}
    bar = None if pretrained_fid is None else fid_factor * pretrained_fid
    reasons: dict[int, Optional[str]] = {}
    for steps, s in sorted(scores.items()):
        worst = max(s.fids, default=None)
        if not s.accuracies or len(s.accuracies) != len(scores[suite_steps].accuracies):
            reasons[steps] = "not every run was re-sampled"
        elif bar is not None and worst is not None and worst > bar:
            reasons[steps] = f"a run's proxy FID {worst:.1f} is above {bar:.1f}"
        elif steps != suite_steps and s.mean_accuracy < reference:
            reasons[steps] = f"mean proxy accuracy {s.mean_accuracy:.3f} below {reference:.3f} at the suite's {suite_steps}"
        else:
            reasons[steps] = None
    kept = [steps for steps, reason in reasons.items() if reason is None]
    return (min(kept) if kept else None), reasons
