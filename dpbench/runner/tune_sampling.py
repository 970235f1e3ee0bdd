"""`dpbench tune --sampling-steps 10,5`: the number of DDIM steps chosen on the public proxy, after the learning
rates.

Sampling is post-processing of the trained weights, so another step count needs no new training: the selected
candidates' proxy runs are re-sampled from their saved weights (``trainable.safetensors``) with the same seeds
and evaluated with the same classifier seeds, a paired comparison on public data only. The suite's own step
count is read from the runs' results (re-sampling at it reproduces them). The rule (dpbench/runner/
tune_selection.py :func:`~dpbench.runner.tune_selection.select_sampling_steps`) takes the fewest steps that
lose no mean proxy accuracy and keep every run under the FID bar.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Optional

from dpbench.results import RunResult, SamplingStepsCandidate, TuneCandidate, run_dir
from dpbench.runner.context import RunContext
from dpbench.runner.tune_selection import CandidateScores, select_sampling_steps

if TYPE_CHECKING:
    from dpbench.runner.plan import PlannedRun

log = logging.getLogger("dpbench")


def tune_sampling_steps(ctx: RunContext, candidates: list[TuneCandidate], results: dict[str, RunResult],
                        step_counts: list[int], num_examples: int, pretrained_fid: Optional[float],
                        fid_factor: float) -> list[SamplingStepsCandidate]:
    """One row per step count (the suite's and ``step_counts``), measured on the selected candidates' finished
    proxy runs (``results`` by run id); the rule marks one selected."""
    from dpbench.runner.plan import plan_runs

    suite_steps = ctx.suite.sampling.steps
    run_ids = [rid for c in candidates if c.selected for rid in c.run_ids
               if rid in results and results[rid].status == "ok" and results[rid].downstream_accuracy is not None]
    rows = {suite_steps: SamplingStepsCandidate(
        steps=suite_steps, run_ids=run_ids, proxy_accuracies=[results[r].downstream_accuracy for r in run_ids],
        proxy_fids=[results[r].fid for r in run_ids],
        sample_seconds=_mean([results[r].sample_seconds for r in run_ids]))}
    others = sorted(set(step_counts) - {suite_steps})
    for steps in others:
        rows[steps] = SamplingStepsCandidate(steps=steps, run_ids=run_ids)
    planned = {p.spec.run_id: p for p in plan_runs(ctx.suite, ctx.settings.data_root, num_examples=num_examples)}
    seconds: dict[int, list[float]] = {steps: [] for steps in others}
    for run_id in run_ids if others else []:
        for steps, measured in zip(others, resample_run(ctx, planned[run_id], others)):
            rows[steps].proxy_accuracies.append(measured["downstream_accuracy"])
            rows[steps].proxy_fids.append(measured["fid"])
            seconds[steps].append(measured["sample_seconds"])
            log.info("   %s at %d sampling steps: accuracy %.3f, FID %.2f, %.1fs sampling", run_id, steps,
                     measured["downstream_accuracy"], measured["fid"], measured["sample_seconds"])
    for steps in others:
        rows[steps].sample_seconds = _mean(seconds[steps])
    scores = {steps: CandidateScores(lr=0.0, accuracies=r.proxy_accuracies, fids=r.proxy_fids)
              for steps, r in rows.items()}
    chosen, reasons = select_sampling_steps(suite_steps, scores, pretrained_fid, fid_factor)
    for steps, row in rows.items():
        row.proxy_accuracy = scores[steps].mean_accuracy
        row.rejected, row.selected = reasons[steps], steps == chosen
    return [rows[steps] for steps in sorted(rows)]


def resample_run(ctx: RunContext, planned: "PlannedRun", step_counts: list[int]) -> list[dict]:
    """The finished run's model rebuilt (its recipe and seed, then its saved trainable weights), sampled with the
    run's seed and evaluated at each step count: ``sample_and_evaluate``'s metrics, one dict per count."""
    from dpbench.runner.evaluate import sample_and_evaluate
    from dpbench.runner.setup import run_recipe
    from dpbench.runner.single_run import load_trainable

    model = run_recipe(ctx, planned).prepare(seed=planned.spec.seed)
    load_trainable(model, run_dir(ctx.results_dir, planned.spec.run_id) / "trainable.safetensors")
    model.eval()
    return [sample_and_evaluate(ctx, model, planned.spec.seed, None, sampling_steps=steps) for steps in step_counts]


def _mean(values: list) -> Optional[float]:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None
