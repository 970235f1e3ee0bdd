"""`dpbench tune --sampling-steps 10,5`: the number of DDIM steps chosen on the public proxy, after the learning
rates.

Sampling is post-processing of the trained weights, so another step count needs no new training: the selected
candidates' proxy runs are re-sampled from their saved weights (``trainable.safetensors``) with the same seeds
and evaluated with the same classifier seeds, a paired comparison on public data only. The suite's own step
count is re-sampled too (on CPU, at the runs' own thread count, that reproduces their results exactly; with
another thread count or on CUDA the classifier can differ in the last digits, and a warning says so). The rule
(dpbench/runner/tune_selection.py :func:`~dpbench.runner.tune_selection.select_sampling_steps`) takes the
fewest steps that lose no mean proxy accuracy and keep every run under the FID bar.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Optional

from dpbench.errors import UserError
from dpbench.results import RunResult, SamplingStepsCandidate, TuneCandidate, run_dir
from dpbench.runner.context import RunContext
from dpbench.runner.tune_selection import CandidateScores, select_sampling_steps

if TYPE_CHECKING:
    from dpbench.config.suite import Suite
    from dpbench.runner.plan import PlannedRun

log = logging.getLogger("dpbench")


def check_step_counts(step_counts: Optional[list[int]], suite: "Suite", option: str, example: str) -> None:
    """A one-line UserError naming ``option`` unless there is a count and every count is a number of DDIM steps
    the suite's model can take (1 to its training timesteps)."""
    most = suite.model.num_train_timesteps
    if not step_counts or min(step_counts) < 1 or max(step_counts) > most:
        raise UserError(f"{option} {','.join(map(str, step_counts or []))}: give sampling step counts from 1 to "
                        f"model.num_train_timesteps ({most}), e.g. {example}")


def tune_sampling_steps(ctx: RunContext, candidates: list[TuneCandidate], results: dict[str, RunResult],
                        step_counts: list[int], pretrained_fid: Optional[float],
                        fid_factor: float) -> list[SamplingStepsCandidate]:
    """One row per step count (the suite's and ``step_counts``), measured on the selected candidates' finished
    proxy runs (``results`` by run id), every count re-sampled (the suite's too, so that every row is paired
    with the same rebuilt models); the rule marks at most one selected. A run that cannot be rebuilt is left
    out of every row, with a warning: the sweep's own results are still written."""
    from dpbench.runner.plan import plan_runs

    suite_steps = ctx.suite.sampling.steps
    counts = sorted(set(step_counts) | {suite_steps})
    selected = [rid for c in candidates if c.selected for rid in c.run_ids
                if rid in results and results[rid].scored]
    planned = {p.spec.run_id: p for p in plan_runs(ctx.suite, ctx.settings.data_root, num_examples=len(ctx.train[0]))}
    rows = {steps: SamplingStepsCandidate(steps=steps) for steps in counts}
    seconds: dict[int, list[float]] = {steps: [] for steps in counts}
    for run_id in selected:
        try:
            measured = resample_run(ctx, planned[run_id], counts)
        except Exception as error:  # noqa: BLE001 — one unreadable run must not cost the sweep its tune.json
            log.warning("   %s: not re-sampled (%s); it is left out of every sampling-steps row", run_id,
                        str(error).splitlines()[0] if str(error) else type(error).__name__)
            continue
        for steps, m in zip(counts, measured):
            row = rows[steps]
            row.run_ids.append(run_id)
            row.proxy_accuracies.append(m["downstream_accuracy"])
            row.proxy_fids.append(m["fid"])
            seconds[steps].append(m["sample_seconds"])
            log.info("   %s at %d sampling steps: accuracy %.3f, FID %.2f, %.1fs sampling", run_id, steps,
                     m["downstream_accuracy"], m["fid"], m["sample_seconds"])
        again = measured[counts.index(suite_steps)]["downstream_accuracy"]
        # exact on CPU at the runs' own thread count; another thread count or CUDA may differ in the last digits
        if abs(again - results[run_id].downstream_accuracy) > 1e-6:
            log.warning("   %s: re-sampled at the suite's %d steps it scores %.4f, the run itself %.4f: the rows "
                        "compare the re-sampled models", run_id, suite_steps, again, results[run_id].downstream_accuracy)
    for steps, row in rows.items():
        row.sample_seconds = sum(seconds[steps]) / len(seconds[steps]) if seconds[steps] else None
    # CandidateScores is the lr rule's container of per-run accuracies and FIDs; its lr plays no part here
    scores = {steps: CandidateScores(lr=0.0, accuracies=r.proxy_accuracies, fids=r.proxy_fids)
              for steps, r in rows.items()}
    chosen, reasons = select_sampling_steps(suite_steps, scores, pretrained_fid, fid_factor)
    for steps, row in rows.items():
        row.proxy_accuracy = scores[steps].mean_accuracy
        row.rejected, row.selected = reasons[steps], steps == chosen
    return [rows[steps] for steps in counts]


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
