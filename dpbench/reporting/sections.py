"""The report's sections, one function each, in the order the report shows them (see docs/report.md).

Each takes the :class:`Document` being built and the :class:`ReportContext`; numbers come from the
grid, findings and profiles modules, never from re-reading files. Every difference shown carries its
significance; the ε = ∞ runs and the baselines are labelled as non-private references wherever shown.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Sequence

from dpbench.reporting.document import Document, Picture
from dpbench.reporting.figures import MethodStyle, Reference, method_styles, metric_vs_epsilon, png_bytes
from dpbench.reporting.files import OutputFolder, Refused, image_inside, safe_file_name
from dpbench.reporting.findings import (
    ACCURACY, headlines, pairwise_differences, seeded_noise_warning, single_seed_note, smoke_warning,
    uninformative_metrics, verdict)
from dpbench.reporting.formatting import (
    MISSING, format_bytes, format_bytes_interval, format_difference, format_distinct, format_epsilon_cell,
    format_cost, format_estimate, format_number, format_ratio_interval, format_seeds_needed)
from dpbench.reporting.stats import SCALE_DESCRIPTIONS
from dpbench.reporting.grid import ResultGrid
from dpbench.reporting.tables import Table, interval_cell, mean_cell, method_epsilon_table
from dpbench.results import AuditResult, Profile, RunResult, ThreatModelResult, display_epsilon, format_epsilon

NONPRIVATE_NOTE = ("ε = ∞ runs and the baselines (pretrained model, real-data classifier) are non-private "
                   "references: computed on the private data without the DP mechanism, they are not a DP release.")


@dataclass(frozen=True)
class ReportContext:
    grid: ResultGrid
    profiles: Sequence[tuple[Path, Profile]]
    audits: Sequence[AuditResult]
    output: OutputFolder

    def save_figure(self, name: str, figure) -> str:
        return self.output.write(name, png_bytes(figure))

    def add_figure(self, doc: Document, name: str, figure, alt: str, caption: str, nothing: str) -> None:
        """The figure with its caption, or, when there was nothing to draw (``figure`` None), a note saying so."""
        if figure is None:
            doc.paragraph(nothing, "note")
        else:
            doc.figure(Picture(self.save_figure(name, figure), alt, caption))

    @cached_property
    def styles(self) -> dict[str, MethodStyle]:
        """One colour and marker per method for every figure: the suite's methods, then profile-only ones."""
        extra = [e.method_label for _, p in self.profiles for e in p.entries if e.method_label not in self.grid.methods]
        return method_styles(list(self.grid.methods) + list(dict.fromkeys(extra)))


def privacy_banner(doc: Document, ctx: ReportContext) -> None:
    for warning in (smoke_warning(ctx.grid), seeded_noise_warning(ctx.grid)):
        if warning:
            doc.banner(warning)


HEADLINE_COLUMNS = ("ε", "best method", "accuracy [95% CI]", "gain over the pretrained model",
                    "DP total peak memory [95% CI]", "memory vs full", "DP examples/s [95% CI]", "examples/s vs full",
                    "gap to its own ε = ∞ run", "best − each other method (paired; Holm-adjusted within ε)")


def headline_section(doc: Document, ctx: ReportContext) -> None:
    grid = ctx.grid
    doc.section("headline", "Headline")
    note = single_seed_note(grid)
    if note:
        doc.paragraph(note, "warning")
    found = headlines(grid)
    rows = [[display_epsilon(h.epsilon), h.best, format_estimate(h.accuracy),
             format_difference(h.gain_over_pretrained) if h.gain_over_pretrained else "— (no pretrained baseline)",
             format_bytes_interval(h.cost.memory), _versus_full(h, h.cost.memory_vs_full),
             format_cost(h.cost.throughput), _versus_full(h, h.cost.throughput_vs_full),
             h.gap_to_nonprivate.text() if h.gap_to_nonprivate else "— (no ε = ∞ run)",
             "; ".join(f"vs {other}: {format_difference(diff)}" for other, diff in h.comparisons) or MISSING]
            for h in found]
    doc.table(Table(HEADLINE_COLUMNS, rows, "headline"))
    doc.paragraph(verdict(grid, found), "verdict")
    doc.paragraph(INTERVALS_NOTE, "note")


INTERVALS_NOTE = (
    "How sure: intervals are 95% over fine-tuning seeds. Accuracy: " + SCALE_DESCRIPTIONS["logit"] + "; memory, "
    "throughput, FID and the ratios to full fine-tuning: " + SCALE_DESCRIPTIONS["log"] + "; the number before "
    "each interval is the arithmetic mean. Costs are the best method's DP runs at that ε; \"vs full\" divides "
    "them by full fine-tuning's at the same ε and seed. Differences between methods are paired within (ε, seed) "
    "with unadjusted 95% intervals; their verdicts are Holm-adjusted over every pair of methods at that ε (one "
    "family per ε), so an interval that barely excludes 0 can still be not significant. The gain over the "
    "pretrained model and the gap to ε = ∞ are single tests, not adjusted.")


def _versus_full(h, ratio) -> str:
    if h.cost.full is None:
        return "— (no full fine-tuning run)"
    if h.best == h.cost.full:
        return "1× (is full)"
    return format_ratio_interval(ratio)


def privacy_section(doc: Document, ctx: ReportContext) -> None:
    grid = ctx.grid
    doc.section("privacy", "Privacy checks")
    doc.paragraph(NONPRIVATE_NOTE, "note")
    warnings = 0
    for method in grid.methods:
        for eps in grid.finite_epsilons:
            by_text: dict[str, list[int]] = {}
            for run in grid.cell(method, eps):
                if run.clipping_diagnostics and run.clipping_diagnostics.warning:
                    by_text.setdefault(run.clipping_diagnostics.warning, []).append(run.seed)
            for text, seeds in by_text.items():
                warnings += 1
                doc.paragraph(f"Clipping, {method} at ε = {display_epsilon(eps)} (seeds "
                              f"{', '.join(map(str, seeds))}): {text}", "warning")
    if not any(run.clipping_diagnostics for run in grid.runs):
        doc.paragraph("No run recorded clipping diagnostics.", "note")
    elif not warnings:
        doc.paragraph("No clipping warnings: in every run that recorded diagnostics, clipping acted and the noise "
                      "did not drown the signal.", "note")
    doc.table(method_epsilon_table(grid, {
        "noise source": lambda runs: format_distinct(r.noise_source for r in runs),
        "clipping": lambda runs: format_distinct(_clipping_text(r) for r in runs),
        "σ": mean_cell("noise_multiplier"),
        "ε spent": mean_cell("epsilon_spent"),
        "unclipped fraction": mean_cell(lambda r: r.clipping_diagnostics and r.clipping_diagnostics.unclipped_fraction),
        "signal / noise": mean_cell(lambda r: r.clipping_diagnostics and r.clipping_diagnostics.signal_to_noise),
    }, "privacy"))


def _clipping_text(run: RunResult) -> str:
    clipping = run.clipping
    if clipping.mode == "none":
        return "none (non-private)"
    if clipping.mode == "quantile":
        return (f"quantile {format_number(clipping.target_quantile)}, C {format_number(clipping.max_grad_norm)}"
                f" → {format_number(clipping.final_max_grad_norm)}")
    if clipping.max_grad_norm is None:
        return clipping.mode
    return f"{clipping.mode}, C = {format_number(clipping.max_grad_norm)}"


UTILITY_METRICS = {ACCURACY: "accuracy [95% CI]", "fid": "FID [95% CI]", "precision": "precision [95% CI]",
                   "recall": "recall [95% CI]"}


def utility_section(doc: Document, ctx: ReportContext) -> None:
    grid, baselines = ctx.grid, ctx.grid.baselines
    doc.section("utility", "Privacy–utility")
    pretrained = Reference(baselines and baselines.pretrained_accuracy, "pretrained")
    ceiling = Reference(baselines and baselines.real_data_accuracy, "ceiling")
    ctx.add_figure(doc, "accuracy_vs_epsilon.png", metric_vs_epsilon(
        grid, ACCURACY, "downstream accuracy (higher is better)", "Downstream classifier accuracy vs ε",
        [pretrained, ceiling], ctx.styles), "downstream accuracy vs epsilon",
        "Accuracy of a classifier trained on the samples, tested on real data. Solid with error bars (and a band "
        "across several ε): DP runs, mean and 95% interval over seeds (logit scale, within [0, 1]); methods are "
        "drawn side by side at each ε so none hides another; dashed: ε = ∞; dotted: pretrained model; dash-dot: "
        "real-data classifier (written at the edge when outside the runs' range).",
        "No run recorded a downstream accuracy: no accuracy figure.")
    ctx.add_figure(doc, "fid_vs_epsilon.png", metric_vs_epsilon(
        grid, "fid", "FID (lower is better)", "FID vs ε",
        [Reference(baselines and baselines.pretrained_fid, "pretrained")], ctx.styles), "FID vs epsilon",
        "FID of the samples against the real reference set (intervals on the log scale); line styles as above.",
        "No run recorded an FID: no FID figure.")
    kept, notes = uninformative_metrics(grid, list(UTILITY_METRICS))
    for note in notes:
        doc.paragraph(note, "note")
    columns = {UTILITY_METRICS[m]: interval_cell(m) for m in kept}
    doc.table(method_epsilon_table(grid, {**columns, "ε spent": mean_cell("epsilon_spent")}, "utility"))
    doc.subsection("Differences between methods (accuracy, paired within ε and seed; verdicts Holm-adjusted "
                   "over the pairs at each ε)")
    rows = [[format_epsilon_cell(eps), a, b, format_difference(diff), str(diff.n), format_seeds_needed(diff)]
            for eps in grid.epsilons for a, b, diff in pairwise_differences(grid, eps)]
    doc.table(Table(["ε", "method a", "method b", "a − b [95% CI]", "seeds paired",
                     "seeds to resolve (estimate)"], rows, "differences"))
    if any(row[-1] not in ("", "—") for row in rows):
        doc.paragraph("Seeds to resolve: for a difference that is not significant, an estimate of how many paired "
                      "seeds an unadjusted paired t-test (5% level) would need to detect it with 80% power, taking "
                      "the observed mean difference and spread as the truth. Both come from few seeds, so it is an "
                      "order of magnitude, not a promise; a Holm-adjusted verdict needs somewhat more.", "note")


def per_class_section(doc: Document, ctx: ReportContext) -> None:
    grid = ctx.grid
    classes = max((len(r.per_class_accuracy) for r in grid.runs), default=0)
    if not classes:
        return
    doc.section("per-class", "Per-class accuracy")
    doc.paragraph("Test accuracy per class of the classifier trained on each method's samples, mean over seeds.",
                  "note")
    columns = {str(k): mean_cell(lambda r, k=k: r.per_class_accuracy[k] if k < len(r.per_class_accuracy) else None,
                                 lambda v: format_number(v, 3))
               for k in range(classes)}
    for eps in grid.epsilons:
        doc.subsection(f"ε = {format_epsilon_cell(eps)}")
        doc.table(method_epsilon_table(grid, columns, f"per-class-eps{format_epsilon(eps)}", epsilons=[eps]))


def samples_section(doc: Document, ctx: ReportContext) -> None:
    grid = ctx.grid
    doc.section("samples", "Samples")
    refused: list[tuple[str, Refused]] = []
    baseline = _baseline_picture(ctx, refused)
    galleries = [("Pretrained model, before fine-tuning (non-private reference)", [baseline])] if baseline else []
    for eps in grid.epsilons:
        pictures = [p for p in (_cell_picture(ctx, m, eps, refused) for m in grid.methods) if p is not None]
        if pictures:
            galleries.append((f"ε = {format_epsilon_cell(eps)}", pictures))
    if galleries:
        doc.paragraph("Rows are classes, with real test images at the start of each row. One grid per method and ε: "
                      "the lowest seed's (click for full size), the other seeds' linked below it.", "note")
    else:
        doc.paragraph("No sample grids were recorded.", "note")
    for owner, refusal in refused:
        doc.paragraph(f"Sample grid of {owner} ({refusal.name!r}) {refusal.reason}.", "warning")
    for title, pictures in galleries:
        doc.subsection(title)
        doc.gallery(pictures)


def _baseline_picture(ctx: ReportContext, refused: list) -> Picture | None:
    baselines = ctx.grid.baselines
    found = image_inside(ctx.grid.results_dir, ctx.grid.results_dir, baselines and baselines.samples_grid)
    if isinstance(found, Refused):
        refused.append(("the baselines", found))
        return None
    if found is None:
        return None
    return Picture(ctx.output.copy(found, "samples/baseline-pretrained"), "pretrained model samples",
                   "pretrained model before fine-tuning (non-private reference)")


def _cell_picture(ctx: ReportContext, method: str, eps: float, refused: list) -> Picture | None:
    """Copy every seed's grid of the cell; the lowest seed's is the one shown."""
    copied = []
    for run in ctx.grid.cell(method, eps):
        found = image_inside(ctx.grid.results_dir, ctx.grid.results_dir / "runs" / run.run_id, run.samples_grid)
        if isinstance(found, Refused):
            refused.append((f"run {run.run_id}", found))
        elif found is not None:
            copied.append((run.seed, ctx.output.copy(found, f"samples/{safe_file_name(run.run_id)}")))
    if not copied:
        return None
    (seed, src), others = copied[0], copied[1:]
    return Picture(src, f"samples of {method} at ε = {display_epsilon(eps)}, seed {seed}",
                   f"{method}, ε = {format_epsilon_cell(eps)}, seed {seed}",
                   tuple((f"seed {other}", other_src) for other, other_src in others))


def audits_section(doc: Document, ctx: ReportContext) -> None:
    if not ctx.audits:
        return
    doc.section("audits", "Privacy audits")
    doc.paragraph("`dpbench audit` trains with canaries and bounds ε from below: ε_low is an empirical lower "
                  "bound at the stated confidence; the f-DP audit tests the same guesses against the trade-off "
                  "curve the accountant claims (μ_low: the largest Gaussian μ they refute; CLT μ: an estimate "
                  "of the run's μ, not a bound). A sound run has ε_low ≤ the claimed ε and its claimed curve "
                  "stands (passed); a negative control (an injected fault) is expected to fail.", "note")
    order = {m: i for i, m in enumerate(ctx.grid.methods)}
    audits = sorted(ctx.audits, key=lambda a: (order.get(a.method_label, len(order)), a.method_label, a.epsilon))
    rows = [[a.run_id, a.method_label, a.fault or "none", display_epsilon(a.epsilon),
             f"{format_number(a.epsilon_lower_bound, 3)} ({format_number(a.confidence)} confidence)",
             "; ".join(_threat_model_text(t) for t in a.threat_models) or MISSING, _fdp_text(a), str(a.canaries),
             "yes" if a.passed else "NO"]
            for a in audits]
    doc.table(Table(["run", "method", "fault", "claimed ε", "ε_low", "threat models: correct / guesses (ε_low)",
                     "f-DP: μ_low (CLT μ), claimed curve", "canaries", "passed"], rows, "audits"))


def _fdp_text(audit: AuditResult) -> str:
    """Audits written before the f-DP audit have none."""
    if audit.fdp_refutes_claim is None:
        return MISSING
    return (f"{format_number(audit.mu_lower_bound, 3)} ({format_number(audit.claimed_mu_clt, 3)}), "
            f"{'refuted' if audit.fdp_refutes_claim else 'stands'}")


def _threat_model_text(threat_model: ThreatModelResult) -> str:
    return (f"{threat_model.name}: {threat_model.correct} / {threat_model.guesses}"
            f" ({format_number(threat_model.eps_low, 3)})")


def runs_section(doc: Document, ctx: ReportContext) -> None:
    grid = ctx.grid
    doc.section("runs", "All runs")
    doc.paragraph("Training loss is shown for ε = ∞ runs only: for a private run it would be a statistic of the "
                  "private data outside the mechanism.", "note")
    rows = [[r.run_id, r.method_label, format_epsilon_cell(r.epsilon), str(r.seed), format_number(r.lr),
             _clipping_text(r), _options_text(r.method_options), r.noise_source, format_number(r.noise_multiplier),
             str(r.steps), f"{r.expected_batch_size} / {r.physical_batch_size}", str(r.noise_multiplicity),
             format_number(r.downstream_accuracy), format_number(r.fid), format_bytes(r.total_peak_memory_bytes),
             format_number(r.throughput_examples_per_s), r.device or MISSING,
             format_number(r.final_loss) if math.isinf(r.epsilon) else "withheld (private)"]
            for method in grid.methods for eps in grid.epsilons for r in grid.cell(method, eps)]
    doc.table(Table(["run", "method", "ε", "seed", "lr", "clipping", "method options", "noise source", "σ", "steps",
                     "batch (expected / physical)", "K", "accuracy", "FID", "total peak memory", "examples/s",
                     "device", "final loss"], rows, "runs"))
    if grid.failed:
        doc.subsection("Failed runs (left out of every statistic)")
        doc.table(Table(["run", "method", "ε", "seed", "phase", "error"],
                        [[r.run_id, r.method_label, format_epsilon_cell(r.epsilon), str(r.seed), r.phase or MISSING,
                          r.error or MISSING] for r in grid.failed], "failed-runs"))


def _options_text(options: dict) -> str:
    return ", ".join(f"{key}={value}" for key, value in sorted(options.items())) or MISSING


BASELINE_FIELDS = (("pretrained_accuracy", "pretrained model: downstream accuracy"),
                   ("pretrained_fid", "pretrained model: FID"), ("pretrained_precision", "pretrained model: precision"),
                   ("pretrained_recall", "pretrained model: recall"),
                   ("real_data_accuracy", "classifier trained on real data: accuracy"),
                   ("real_data_accuracy_std", "classifier trained on real data: std over classifier seeds"))


def baselines_section(doc: Document, ctx: ReportContext) -> None:
    baselines = ctx.grid.baselines
    if baselines is None:
        return
    doc.section("baselines", "Baselines (non-private references)")
    doc.paragraph(NONPRIVATE_NOTE, "note")
    doc.table(Table(["baseline", "value"], [[label, format_number(getattr(baselines, field))]
                                            for field, label in BASELINE_FIELDS], "baselines"))


def provenance_table(ctx: ReportContext, generated: str, report_version: str) -> Table:
    grid = ctx.grid
    runs = grid.runs + grid.failed

    def counted(values) -> str:
        counts = Counter(str(v) for v in values if v is not None)
        if len(counts) <= 1:
            return next(iter(counts), MISSING)
        return "; ".join(f"{value} ({n} runs)" for value, n in counts.most_common())

    versions: dict[str, set[str]] = {}
    for run in runs:
        for package, version in run.versions.items():
            versions.setdefault(package, set()).add(str(version))
    created = sorted(r.created_at for r in runs if r.created_at)
    rows = [["suite", grid.suite], ["dataset", counted(f"{r.dataset_label} ({r.dataset})" for r in runs)],
            ["public dataset", counted(r.public_dataset for r in runs)], ["δ", counted(r.delta for r in runs)],
            ["accountant", counted(r.accountant for r in runs)], ["classifier", counted(r.classifier for r in runs)],
            ["FID", counted(f"{r.fid_backbone}, {r.fid_num_samples} samples vs {r.fid_reference}" for r in grid.runs)],
            ["devices", counted(r.device for r in runs)], ["memory kind", counted(r.memory_kind for r in runs)],
            ["git sha", counted(r.git_sha for r in runs)],
            ["versions", ", ".join(f"{k} {' / '.join(sorted(v))}" for k, v in sorted(versions.items())) or MISSING],
            ["runs", f"{len(grid.runs)} finished, {len(grid.failed)} failed"],
            ["runs created", f"{created[0]} … {created[-1]}" if created else MISSING]]
    rows += [[f"profile {Path(path).name}", f"{p.device or MISSING}, git {p.git_sha or MISSING}, created "
              f"{p.created_at or MISSING}"] for path, p in ctx.profiles]
    rows += [["report", f"generated {generated} by dpbench {report_version}"]]
    return Table(["field", "value"], rows, "provenance-table")
