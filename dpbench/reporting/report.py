"""The suite report: ``index.html`` + ``report.md`` + PNG figures, built from result files alone.

Inputs (all under one suite's results directory, see :mod:`dpbench.results`): ``runs/*/result.json``,
``baselines.json`` (optional), the runs' sample grids and optional profiler files ``profile*.json``.
Nothing is recomputed: every number in the report is a number of those files, or a mean / std / ratio
of them. Figures are drawn with matplotlib's Agg renderer (no pyplot, no global backend state).
"""

from __future__ import annotations

import datetime as _dt
import html
import io
import math
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

import dpbench
from dpbench.errors import UserError
from dpbench.reporting.frames import (
    aggregate, as_float, dp_overhead_pairs, fmt_bytes, fmt_epsilon, fmt_mean_std, fmt_number, fmt_ratio,
    is_missing, markdown_table, mean_or_none, ordered_methods, pareto_mask, records_frame,
)
from dpbench.reporting.profile_files import find_profiles, profile_methods, profile_pairs
from dpbench.results import BASELINE_KEYS, load_baselines, load_results, write_bytes_atomic

DPI = 110
MiB = 2.0**20

# Result keys that are the same for every run of a well-formed suite: shown once, in the footer.
PROVENANCE_KEYS = (
    "suite", "dataset", "dataset_label", "public_dataset", "delta", "accountant", "classifier",
    "fid_backbone", "fid_num_samples", "fid_reference", "device", "git_sha", "versions",
)

RUN_TABLES = (
    ("Privacy and training settings", (
        "method", "method_label", "epsilon", "seed", "status", "epsilon_spent", "noise_multiplier",
        "sample_rate", "steps", "expected_batch_size", "physical_batch_size", "max_grad_norm",
        "noise_multiplicity", "final_loss", "created_at",
    )),
    ("Utility", (
        "method_label", "epsilon", "seed", "downstream_accuracy", "downstream_accuracy_std",
        "downstream_accuracies", "fid", "precision", "recall", "samples_grid",
    )),
    ("Cost", (
        "method_label", "epsilon", "seed", "trainable_params", "total_params", "peak_memory_bytes",
        "memory_kind", "nvml_peak_memory_bytes", "throughput_examples_per_s", "step_time_s",
        "train_seconds", "sample_seconds", "eval_seconds",
    )),
)

CSS = """
body{font-family:-apple-system,BlinkMacSystemFont,"Segoe UI",Helvetica,Arial,sans-serif;margin:2em auto;
max-width:1200px;padding:0 1em;color:#222;line-height:1.45}
h1{margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
nav a{margin-right:1em}
table{border-collapse:collapse;margin:.6em 0 1.4em;font-size:13px}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:right;vertical-align:top}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
.scroll{overflow-x:auto}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:13px;color:#555}
table.samples td{text-align:center}table.samples img{width:200px;height:200px;object-fit:contain;image-rendering:pixelated;display:block;margin:auto}
.note{color:#666;font-size:13px}
footer{margin-top:3em;border-top:2px solid #ccc;font-size:13px}
"""


# ------------------------------------------------------------------------------------------ document

class _Doc:
    """Builds the HTML body and the markdown text side by side, section by section."""

    def __init__(self) -> None:
        self.html: list[str] = []
        self.md: list[str] = []
        self.toc: list[tuple[str, str]] = []

    def h2(self, anchor: str, title: str) -> None:
        self.toc.append((anchor, title))
        self.html.append(f'<h2 id="{anchor}">{html.escape(title)}</h2>')
        self.md.append(f"## {title}")

    def h3(self, title: str) -> None:
        self.html.append(f"<h3>{html.escape(title)}</h3>")
        self.md.append(f"### {title}")

    def para(self, text: str, cls: str | None = None) -> None:
        attr = f' class="{cls}"' if cls else ""
        self.html.append(f"<p{attr}>{html.escape(text)}</p>")
        self.md.append(f"*{text}*" if cls == "note" else text)

    def image(self, src: str, alt: str, caption: str) -> None:
        self.html.append(
            f'<figure><img src="{html.escape(src)}" alt="{html.escape(alt)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
        self.md.append(f"![{alt}]({src})\n\n*{caption}*")

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[Any]], table_id: str | None = None) -> None:
        cells = [[v if isinstance(v, str) else fmt_number(v) for v in row] for row in rows]
        frame = pd.DataFrame(cells, columns=list(headers))
        table_html = frame.to_html(index=False, escape=True, border=0, table_id=table_id, na_rep="—")
        self.html.append(f'<div class="scroll">{table_html}</div>')
        self.md.append(markdown_table(headers, cells))

    def raw(self, html_text: str, md_text: str) -> None:
        self.html.append(html_text)
        self.md.append(md_text)


# ------------------------------------------------------------------------------------------ figures

def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def _colors(methods: Sequence[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {m: cmap(i % 10) for i, m in enumerate(methods)}


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")


def _no_data(ax, text: str = "no values recorded") -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#888")


def _epsilon_axis(ax, finite_eps: Sequence[float]) -> None:
    if finite_eps:
        ax.set_xscale("log")
        lo, hi = min(finite_eps), max(finite_eps)
        ax.set_xlim(lo / 1.6, hi * 1.6)
        ax.set_xticks(list(finite_eps), labels=[fmt_epsilon(e) for e in finite_eps])
        ax.minorticks_off()
        ax.set_xlabel("privacy budget ε (log scale); dashed lines: ε = ∞, non-private")
    else:
        ax.set_xticks([])
        ax.set_xlabel("no finite ε runs; dashed lines: ε = ∞, non-private")


BASELINE_STYLES = ({"ls": ":", "lw": 1.8, "color": "black"}, {"ls": "-.", "lw": 1.4, "color": "#777777"})


def plot_privacy_utility(df: pd.DataFrame, metric: str, ylabel: str, title: str, methods: Sequence[str],
                         baselines: Sequence[tuple[float | None, str]] = ()) -> bytes:
    """``metric`` vs ε per method (mean ± std over seeds); ε = ∞ as dashed lines; ``baselines`` as
    (value, label) horizontal lines (None values are skipped)."""
    fig = _figure(7.6, 4.4)
    ax = fig.add_subplot()
    colors = _colors(methods)
    agg = aggregate(df, metric)
    finite_eps = sorted(e for e in df["epsilon"].unique() if math.isfinite(e))
    handles = []
    for i, m in enumerate(methods):
        rows = agg[agg["method_label"] == m]
        fin = rows[np.isfinite(rows["epsilon"].astype(float))].sort_values("epsilon")
        if len(fin):
            handles.append(ax.errorbar(fin["epsilon"], fin["mean"], yerr=fin["std"], marker=MARKERS[i % len(MARKERS)],
                                       capsize=3, color=colors[m], label=f"{m} (mean ± std over seeds)"))
        ref = rows[~np.isfinite(rows["epsilon"].astype(float))]
        if len(ref):
            mean, std = float(ref["mean"].iloc[0]), float(ref["std"].iloc[0])
            handles.append(ax.axhline(mean, ls="--", lw=1.3, color=colors[m], label=f"{m}, ε = ∞ (non-private)"))
            if std > 0:
                ax.axhspan(mean - std, mean + std, color=colors[m], alpha=0.08, lw=0)
    for (value, label), style in zip(baselines, BASELINE_STYLES):
        if value is not None:
            handles.append(ax.axhline(value, label=label, **style))
    drew = bool(handles)
    _epsilon_axis(ax, finite_eps)
    if not drew:
        _no_data(ax)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if drew:
        ax.legend(handles=handles, fontsize=7.5, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    return _png(fig)


EFFICIENCY_METRICS = (
    ("peak_memory_bytes", "peak memory (MiB)", 1 / MiB, False),
    ("throughput_examples_per_s", "throughput (examples / s)", 1.0, False),
    ("trainable_params", "trainable parameters (log scale)", 1.0, True),
)


def plot_efficiency(df: pd.DataFrame, methods: Sequence[str]) -> bytes:
    from matplotlib import colormaps

    eps_values = sorted(df["epsilon"].unique(), key=lambda e: (math.isinf(e), e))
    finite = [e for e in eps_values if math.isfinite(e)]
    cmap = colormaps["viridis"]
    eps_color = {e: cmap(0.15 + 0.7 * i / max(1, len(finite) - 1)) for i, e in enumerate(finite)}
    fig = _figure(5.0 * len(EFFICIENCY_METRICS), 4.2)
    axes = fig.subplots(1, len(EFFICIENCY_METRICS))
    width = 0.8 / max(1, len(eps_values))
    x = np.arange(len(methods))
    for ax, (metric, label, scale, log) in zip(axes, EFFICIENCY_METRICS):
        agg = aggregate(df, metric)
        drew = False
        for j, eps in enumerate(eps_values):
            sel = agg[agg["epsilon"] == eps].set_index("method_label")
            means = [float(sel.loc[m, "mean"]) * scale if m in sel.index else np.nan for m in methods]
            stds = [float(sel.loc[m, "std"]) * scale if m in sel.index else 0.0 for m in methods]
            if all(np.isnan(means)):
                continue
            drew = True
            offset = (j - (len(eps_values) - 1) / 2) * width
            inf = math.isinf(eps)
            ax.bar(x + offset, means, width, yerr=stds, capsize=2,
                   color="#bbbbbb" if inf else eps_color[eps], hatch="//" if inf else None,
                   edgecolor="#555555" if inf else None,
                   label="ε = ∞ (non-private)" if inf else f"ε = {fmt_epsilon(eps)}")
        ax.set_xticks(x, labels=list(methods), rotation=20 if len(methods) > 4 else 0)
        ax.set_ylabel(label)
        ax.set_title(label.split(" (")[0])
        ax.grid(alpha=0.3, axis="y")
        if log and drew:
            ax.set_yscale("log")
        if not drew:
            _no_data(ax)
    handles, labels = axes[0].get_legend_handles_labels()
    for ax in axes[1:]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 6), fontsize=8)
    return _png(fig)


def _method_means(df: pd.DataFrame, eps: float, columns: Sequence[str]) -> pd.DataFrame:
    sub = df[df["epsilon"] == eps]
    return sub.groupby("method_label", sort=False)[list(columns)].mean()


PARETO_AXES = (
    ("peak_memory_bytes", "peak memory (MiB, lower is better)", 1 / MiB, True),
    ("throughput_examples_per_s", "throughput (examples / s, higher is better)", 1.0, False),
)


def pareto_points(df: pd.DataFrame, eps: float, cost: str, lower_is_better: bool) -> pd.DataFrame:
    """Per method (mean over seeds) at one ε: cost, accuracy and whether the point is Pareto-optimal."""
    means = _method_means(df, eps, [cost, "downstream_accuracy"]).dropna()
    means = means.reset_index()
    means["pareto"] = pareto_mask(means[cost].tolist(), means["downstream_accuracy"].tolist(), lower_is_better)
    return means


def plot_pareto(df: pd.DataFrame, methods: Sequence[str]) -> bytes:
    finite = sorted(e for e in df["epsilon"].unique() if math.isfinite(e))
    cols = max(1, len(finite))
    fig = _figure(4.0 * cols + 1.0, 7.4)
    axes = np.atleast_2d(fig.subplots(len(PARETO_AXES), cols, squeeze=False))
    colors = _colors(methods)
    marker = {m: MARKERS[i % len(MARKERS)] for i, m in enumerate(methods)}
    for r, (cost, label, scale, lower) in enumerate(PARETO_AXES):
        for c in range(cols):
            ax = axes[r, c]
            ax.grid(alpha=0.3)
            ax.set_xlabel(label, fontsize=8)
            if c == 0:
                ax.set_ylabel("downstream accuracy")
            if not finite:
                _no_data(ax, "no finite ε runs")
                continue
            eps = finite[c]
            ax.set_title(f"ε = {fmt_epsilon(eps)}")
            pts = pareto_points(df, eps, cost, lower)
            if pts.empty:
                _no_data(ax)
                continue
            for _, p in pts.iterrows():
                m = p["method_label"]
                ax.scatter(p[cost] * scale, p["downstream_accuracy"], marker=marker.get(m, "o"), s=55,
                           color=colors.get(m, "gray"), zorder=3, label=m)
                if p["pareto"]:
                    ax.scatter(p[cost] * scale, p["downstream_accuracy"], marker="o", s=260,
                               facecolors="none", edgecolors="crimson", linewidths=1.6, zorder=2)
            front = pts[pts["pareto"]].sort_values(cost)
            if len(front) > 1:
                ax.plot(front[cost] * scale, front["downstream_accuracy"], color="crimson", lw=1, ls="--",
                        drawstyle="steps-post" if lower else "steps-pre", zorder=1)
            ax.margins(0.18)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], ls="", marker=marker[m], color=colors[m], label=m) for m in methods]
    handles.append(Line2D([], [], ls="", marker="o", markersize=12, markerfacecolor="none",
                          markeredgecolor="crimson", label="Pareto-optimal"))
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 7), fontsize=8)
    return _png(fig)


def plot_profile(profile: dict) -> bytes:
    methods = profile_methods(profile)
    colors = _colors(methods)
    fig = _figure(11.0, 4.2)
    axes = fig.subplots(1, 2)
    specs = (("step_time_s", "step time (s)", 1.0), ("peak_memory_bytes", "peak memory (MiB)", 1 / MiB))
    for ax, (key, label, scale) in zip(axes, specs):
        drew = False
        for m in methods:
            for mode, ls, mk in (("dp", "-", "o"), ("nonprivate", "--", "x")):
                pts = sorted((e["physical_batch_size"], as_float(e.get(key))) for e in profile["entries"]
                             if e["method_label"] == m and e["mode"] == mode and as_float(e.get(key)) is not None)
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] * scale for p in pts], ls=ls, marker=mk,
                            color=colors[m], label=f"{m} ({'DP' if mode == 'dp' else 'non-private'})")
                    drew = True
        if drew:
            ax.set_xscale("log", base=2)
            batches = sorted({e["physical_batch_size"] for e in profile["entries"]})
            ax.set_xticks(batches, labels=[str(b) for b in batches])
            ax.minorticks_off()
        else:
            _no_data(ax)
        ax.set_xlabel("physical batch size (log scale)")
        ax.set_ylabel(label)
        ax.set_title(f"{label.split(' (')[0]} vs batch size")
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside right upper", fontsize=8)
    return _png(fig)


# ------------------------------------------------------------------------------------------ inputs

def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("._") or "run"


def _sample_source(results_dir: Path, record: dict) -> Path | None:
    """The run's sample grid: ``samples_grid`` relative to the run's directory (or, failing that, to the
    results directory); None if unset or not on disk."""
    rel = record.get("samples_grid")
    if not rel or not isinstance(rel, str):
        return None
    candidates = [Path(rel)] if Path(rel).is_absolute() else [
        results_dir / "runs" / str(record.get("run_id")) / rel, results_dir / rel]
    return next((p for p in candidates if p.is_file()), None)


def _distinct(records: Sequence[dict], key: str) -> list[tuple[Any, int]]:
    counts: Counter = Counter()
    first: dict[str, Any] = {}
    for r in records:
        value = r.get(key)
        token = repr(sorted(value.items())) if isinstance(value, dict) else repr(value)
        counts[token] += 1
        first.setdefault(token, value)
    return [(first[t], n) for t, n in counts.most_common()]


def _suite_name(records: Sequence[dict], results_dir: Path) -> str:
    names = [v for v, _ in _distinct(records, "suite") if v]
    return str(names[0]) if len(names) == 1 else results_dir.resolve().name


# ------------------------------------------------------------------------------------------ report

def build_report(results_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> Path:
    """Write ``index.html``, ``report.md``, the PNG figures and copies of the sample grids for one suite's
    results directory into ``out_dir`` (default ``reports/<suite>/``, relative to the working directory).
    Returns the path of ``index.html``. Raises :class:`UserError` when there are no finished runs."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise UserError(f"results directory {results_dir} does not exist; pass the folder a suite run wrote "
                        "(results/<suite>/)")
    try:
        records = load_results(results_dir)
    except ValueError as err:  # json.JSONDecodeError is a ValueError
        raise UserError(f"a result.json under {results_dir}/runs is not valid JSON ({err}); delete or re-run that run") from err
    if not records:
        raise UserError(f"no finished runs in {results_dir} (expected runs/<run_id>/result.json); "
                        "run the suite first or pass its results directory")
    baselines = load_baselines(results_dir)
    profiles = find_profiles(results_dir)
    suite = _suite_name(records, results_dir)
    out = Path(out_dir) if out_dir is not None else Path("reports") / _safe_name(suite)
    out.mkdir(parents=True, exist_ok=True)

    df = records_frame(records)
    methods = ordered_methods(records)
    eps_all = sorted(df["epsilon"].unique(), key=lambda e: (math.isinf(e), e))
    finite_eps = [e for e in eps_all if math.isfinite(e)]
    seeds = sorted({r.get("seed") for r in records if r.get("seed") is not None}, key=str)
    dataset_label = next((v for v, _ in _distinct(records, "dataset_label") if v), None) \
        or baselines.get("dataset_label") or next((v for v, _ in _distinct(records, "dataset") if v), "?")

    def save(name: str, data: bytes) -> str:
        write_bytes_atomic(out / name, data)
        return name

    doc = _Doc()
    n_runs = len(records)
    doc.para(f"Dataset {dataset_label}; {n_runs} runs; methods: {', '.join(methods)}; "
             f"ε: {', '.join(fmt_epsilon(e) for e in eps_all)}; seeds: {', '.join(map(str, seeds))}.")
    statuses = Counter(str(r.get("status")) for r in records)
    if len(statuses) > 1 or not any(s in statuses for s in ("ok", "completed", "done", "success")):
        doc.para("Run status: " + ", ".join(f"{s}: {n}" for s, n in sorted(statuses.items())) + ".", "note")

    # -- privacy-utility ---------------------------------------------------------------------------
    doc.h2("privacy-utility", "Privacy–utility")
    real_acc = as_float(baselines.get("real_data_accuracy"))
    pre_acc = as_float(baselines.get("pretrained_accuracy"))
    pre_fid = as_float(baselines.get("pretrained_fid"))
    src = save("accuracy_vs_epsilon.png", plot_privacy_utility(
        df, "downstream_accuracy", "downstream accuracy (higher is better)",
        "Downstream classifier accuracy vs ε", methods,
        [(real_acc, "real-data classifier"), (pre_acc, "pretrained, before fine-tuning")]))
    doc.image(src, "downstream accuracy vs epsilon",
              "Accuracy of a classifier trained on synthetic samples, tested on real data; mean ± std over "
              "seeds. Dashed: ε = ∞ (non-private reference) per method; dotted black: classifier trained on "
              "real data" + ("; dash-dotted grey: samples of the pretrained model before fine-tuning."
                             if pre_acc is not None else "."))
    src = save("fid_vs_epsilon.png", plot_privacy_utility(
        df, "fid", "FID (lower is better)", "FID vs ε", methods, [(pre_fid, "pretrained, before fine-tuning")]))
    doc.image(src, "FID vs epsilon",
              "FID of the samples against the real reference set; mean ± std over seeds. Dashed: ε = ∞ per "
              "method; dotted black: pretrained model before fine-tuning.")
    doc.h3("Summary per method and ε (mean ± std over seeds)")
    summary_cols = (("downstream_accuracy", "accuracy"), ("fid", "FID"), ("precision", "precision"),
                    ("recall", "recall"), ("epsilon_spent", "ε spent"))
    aggs = {k: aggregate(df, k).set_index(["method_label", "epsilon"]) for k, _ in summary_cols}
    rows = []
    for m in methods:
        for eps in eps_all:
            sub = df[(df["method_label"] == m) & (df["epsilon"] == eps)]
            if sub.empty:
                continue
            row: list[Any] = [m, fmt_epsilon(eps), len(sub)]
            for key, _ in summary_cols:
                a = aggs[key]
                if (m, eps) in a.index:
                    row.append(fmt_mean_std(a.loc[(m, eps), "mean"], a.loc[(m, eps), "std"], int(a.loc[(m, eps), "n"])))
                else:
                    row.append("—")
            rows.append(row)
    doc.table(["method", "ε", "runs", *[label for _, label in summary_cols]], rows, "summary")

    # -- efficiency --------------------------------------------------------------------------------
    doc.h2("efficiency", "Efficiency")
    src = save("efficiency.png", plot_efficiency(df, methods))
    memory_kinds = sorted({str(k) for k in df["memory_kind"].dropna().unique()})
    doc.image(src, "efficiency bar charts",
              "Peak memory, throughput and trainable parameters per method and ε (mean ± std over seeds); "
              "hatched grey: ε = ∞ (non-private). Memory kind: " + (", ".join(memory_kinds) or "unknown") + ".")
    eff_cols = (("peak_memory_bytes", "peak memory", fmt_bytes), ("throughput_examples_per_s", "examples/s", None),
                ("step_time_s", "step time (s)", None), ("trainable_params", "trainable params", None),
                ("train_seconds", "train time (s)", None))
    eff_aggs = {k: aggregate(df, k).set_index(["method_label", "epsilon"]) for k, _, _ in eff_cols}
    rows = []
    for m in methods:
        for eps in eps_all:
            if df[(df["method_label"] == m) & (df["epsilon"] == eps)].empty:
                continue
            row = [m, fmt_epsilon(eps)]
            for key, _, fmt in eff_cols:
                a = eff_aggs[key]
                if (m, eps) not in a.index:
                    row.append("—")
                elif fmt is not None:
                    row.append(fmt(a.loc[(m, eps), "mean"]))
                else:
                    row.append(fmt_mean_std(a.loc[(m, eps), "mean"], a.loc[(m, eps), "std"], int(a.loc[(m, eps), "n"])))
            rows.append(row)
    doc.table(["method", "ε", *[label for _, label, _ in eff_cols]], rows, "efficiency-table")

    doc.h3("Cost of privacy: DP / non-private ratios")
    pairs = dp_overhead_pairs(records)
    if pairs:
        doc.para("Each DP run divided by the ε = ∞ run of the same method and seed, then averaged over seeds.",
                 "note")
        rows = []
        for m in methods:
            for eps in finite_eps:
                sel = [p for p in pairs if p["method_label"] == m and p["epsilon"] == eps]
                if sel:
                    rows.append([m, fmt_epsilon(eps), len(sel),
                                 fmt_ratio(mean_or_none(p["step_time_ratio"] for p in sel)),
                                 fmt_ratio(mean_or_none(p["peak_memory_ratio"] for p in sel))])
            sel = [p for p in pairs if p["method_label"] == m]
            if sel and len(finite_eps) > 1:
                rows.append([m, "all finite ε", len(sel),
                             fmt_ratio(mean_or_none(p["step_time_ratio"] for p in sel)),
                             fmt_ratio(mean_or_none(p["peak_memory_ratio"] for p in sel))])
        doc.table(["method", "ε", "pairs", "step time DP / non-private", "peak memory DP / non-private"], rows,
                  "dp-ratios")
    else:
        doc.para("No DP run has an ε = ∞ run of the same method and seed to compare with.", "note")

    # -- Pareto ------------------------------------------------------------------------------------
    doc.h2("pareto", "Pareto view")
    src = save("pareto.png", plot_pareto(df, methods))
    doc.image(src, "Pareto view",
              "Downstream accuracy vs peak memory (top) and vs throughput (bottom), one panel per finite ε, "
              "one marker per method (mean over seeds); circled: Pareto-optimal.")
    rows = []
    for eps in finite_eps:
        mem = pareto_points(df, eps, "peak_memory_bytes", True).set_index("method_label")
        thr = pareto_points(df, eps, "throughput_examples_per_s", False).set_index("method_label")
        means = _method_means(df, eps, ["downstream_accuracy", "peak_memory_bytes", "throughput_examples_per_s"])
        for m in methods:
            if m not in means.index:
                continue
            rows.append([fmt_epsilon(eps), m, means.loc[m, "downstream_accuracy"],
                         fmt_bytes(means.loc[m, "peak_memory_bytes"]), means.loc[m, "throughput_examples_per_s"],
                         ("yes" if mem.loc[m, "pareto"] else "no") if m in mem.index else "—",
                         ("yes" if thr.loc[m, "pareto"] else "no") if m in thr.index else "—"])
    if rows:
        doc.table(["ε", "method", "accuracy", "peak memory", "examples/s", "Pareto (memory)",
                   "Pareto (throughput)"], rows, "pareto-table")

    # -- samples -----------------------------------------------------------------------------------
    doc.h2("samples", "Samples")
    _samples_section(doc, results_dir, out, records, methods, eps_all)

    # -- profiles ----------------------------------------------------------------------------------
    if profiles:
        doc.h2("profile", "Profile: cost vs physical batch size")
        for profile in profiles:
            _profile_section(doc, profile, save)

    # -- all runs ----------------------------------------------------------------------------------
    doc.h2("runs", "All runs")
    for title, keys in RUN_TABLES:
        doc.h3(title)
        rows = [[r.get("run_id")] + [_cell(r, k) for k in keys] for r in records]
        doc.table(["run_id", *keys], rows, "runs-" + _safe_name(title.split()[0].lower()))

    if baselines:
        doc.h2("baselines", "Baselines")
        keys = [k for k in BASELINE_KEYS if k in baselines] + sorted(k for k in baselines if k not in BASELINE_KEYS)
        doc.table(["baseline", "value"], [[k, fmt_number(baselines[k])] for k in keys], "baselines")

    # -- provenance --------------------------------------------------------------------------------
    generated = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    prov = _provenance(records, baselines, profiles, suite, dataset_label, n_runs, generated)
    footer_html = ('<footer id="provenance"><h2>Provenance</h2><div class="scroll">'
                   + pd.DataFrame(prov, columns=["field", "value"]).to_html(index=False, escape=True, border=0)
                   + "</div></footer>")
    footer_md = "## Provenance\n\n" + markdown_table(["field", "value"], prov)

    title = f"dpbench report: {suite}"
    nav = " ".join(f'<a href="#{a}">{html.escape(t)}</a>' for a, t in doc.toc) + ' <a href="#provenance">Provenance</a>'
    page = (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>{html.escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        f"<h1>{html.escape(title)}</h1>\n<nav>{nav}</nav>\n"
        + "\n".join(doc.html) + "\n" + footer_html + "\n</body>\n</html>\n"
    )
    md = f"# {title}\n\n" + "\n\n".join(doc.md) + "\n\n" + footer_md + "\n"
    write_bytes_atomic(out / "report.md", md.encode("utf-8"))
    index = out / "index.html"
    write_bytes_atomic(index, page.encode("utf-8"))
    return index


def _cell(record: dict, key: str) -> Any:
    value = record.get(key)
    if key == "epsilon":
        return fmt_epsilon(value)
    if key == "downstream_accuracies" and isinstance(value, list):
        return ", ".join(fmt_number(v) for v in value)
    return value


def _samples_section(doc: _Doc, results_dir: Path, out: Path, records: Sequence[dict], methods: Sequence[str],
                     eps_all: Sequence[float]) -> None:
    cells: dict[tuple[str, float], list[tuple[Any, str]]] = {}
    missing = []
    for r in sorted(records, key=lambda r: (str(r.get("seed")), str(r.get("run_id")))):
        source = _sample_source(results_dir, r)
        if source is None:
            if r.get("samples_grid"):
                missing.append(str(r.get("run_id")))
            continue
        name = f"samples/{_safe_name(r.get('run_id'))}{source.suffix.lower() or '.png'}"
        write_bytes_atomic(out / name, source.read_bytes())
        eps = as_float(r.get("epsilon"))
        cells.setdefault((str(r.get("method_label") or r.get("method")), math.inf if eps is None else eps),
                         []).append((r.get("seed"), name))
    if missing:
        doc.para("Sample grid file not found for: " + ", ".join(missing) + ".", "note")
    if not cells:
        if not missing:
            doc.para("No sample grids were recorded.", "note")
        return
    doc.para("One grid per method and ε (rows = classes); the lowest seed is shown, other seeds are linked.",
             "note")
    head_html = "".join(f"<th>ε = {html.escape(fmt_epsilon(e))}</th>" for e in eps_all)
    body_html, md_rows = [], []
    for m in methods:
        row_html, row_md = [f"<td>{html.escape(m)}</td>"], [m]
        for eps in eps_all:
            entries = cells.get((m, eps))
            if not entries:
                row_html.append("<td>—</td>")
                row_md.append("—")
                continue
            (seed, name), others = entries[0], entries[1:]
            alt = f"{m}, ε = {fmt_epsilon(eps)}, seed {seed}"
            links = " ".join(f'<a href="{html.escape(n)}">seed {html.escape(str(s))}</a>' for s, n in others)
            row_html.append(f'<td><a href="{html.escape(name)}"><img src="{html.escape(name)}" alt="{html.escape(alt)}"></a>'
                            f"seed {html.escape(str(seed))}{' · ' + links if links else ''}</td>")
            row_md.append(f"![{alt}]({name}) seed {seed}"
                          + "".join(f" · [seed {s}]({n})" for s, n in others))
        body_html.append("<tr>" + "".join(row_html) + "</tr>")
        md_rows.append(row_md)
    table_html = (f'<div class="scroll"><table class="samples" id="samples-table"><thead><tr><th>method</th>{head_html}'
                  f"</tr></thead><tbody>{''.join(body_html)}</tbody></table></div>")
    doc.raw(table_html, markdown_table(["method", *[f"ε = {fmt_epsilon(e)}" for e in eps_all]], md_rows))


def _profile_section(doc: _Doc, profile: dict, save) -> None:
    stem = _safe_name(Path(profile["path"]).stem)
    doc.h3(f"{Path(profile['path']).name}: {profile.get('source', '?')} on {profile.get('device', '?')}")
    src = save(f"{stem}.png", plot_profile(profile))
    kinds = sorted({str(e.get("memory_kind")) for e in profile["entries"] if e.get("memory_kind")})
    doc.image(src, f"profile {stem}",
              "Step time and peak memory vs physical batch size per method; solid: DP, dashed: non-private. "
              "Memory kind: " + (", ".join(kinds) or "unknown") + ".")
    rows = [[p["method_label"], p["physical_batch_size"], p["dp_step_time_s"], p["nonprivate_step_time_s"],
             fmt_ratio(p["step_time_ratio"]), fmt_bytes(p["dp_peak_memory_bytes"]),
             fmt_bytes(p["nonprivate_peak_memory_bytes"]), fmt_ratio(p["peak_memory_ratio"]),
             p["dp_examples_per_s"], p["nonprivate_examples_per_s"]] for p in profile_pairs(profile)]
    doc.table(["method", "batch", "DP step (s)", "non-private step (s)", "step DP / non-private", "DP memory",
               "non-private memory", "memory DP / non-private", "DP examples/s", "non-private examples/s"], rows,
              f"profile-{stem}")
    if profile.get("max_batch_size"):
        rows = [[m, fmt_number(v.get("dp")) if isinstance(v, dict) else "—",
                 fmt_number(v.get("nonprivate")) if isinstance(v, dict) else "—"]
                for m, v in profile["max_batch_size"].items()]
        doc.table(["method", "max batch (DP)", "max batch (non-private)"], rows, f"max-batch-{stem}")
    doc.para(f"Profile created {profile.get('created_at', '?')}, git {profile.get('git_sha', '?')}, "
             f"image size {profile.get('image_size', '?')}.", "note")


def _provenance(records, baselines, profiles, suite, dataset_label, n_runs, generated) -> list[list[str]]:
    def distinct(key: str) -> str:
        values = [(v, n) for v, n in _distinct(records, key) if not is_missing(v)]
        if not values and key in baselines:
            return fmt_number(baselines[key])
        if not values:
            return "—"
        if len(values) == 1:
            return fmt_number(values[0][0])
        return "; ".join(f"{fmt_number(v)} ({n} runs)" for v, n in values)

    def versions() -> str:
        merged: dict[str, set] = {}
        for r in records:
            if isinstance(r.get("versions"), dict):
                for k, v in r["versions"].items():
                    merged.setdefault(str(k), set()).add(str(v))
        merged.setdefault("dpbench (report)", set()).add(dpbench.__version__)
        return ", ".join(f"{k} {' / '.join(sorted(v))}" for k, v in sorted(merged.items()))

    rows = [
        ["suite", str(suite)], ["dataset_label", str(dataset_label)], ["dataset", distinct("dataset")],
        ["public_dataset", distinct("public_dataset")], ["δ (delta)", distinct("delta")],
        ["accountant", distinct("accountant")], ["classifier", distinct("classifier")],
        ["fid_backbone", distinct("fid_backbone")], ["fid_num_samples", distinct("fid_num_samples")],
        ["fid_reference", distinct("fid_reference")], ["device", distinct("device")],
        ["memory_kind", distinct("memory_kind")], ["git_sha", distinct("git_sha")], ["versions", versions()],
        ["number of runs", str(n_runs)],
        ["runs created", _created_range(records)],
    ]
    for p in profiles:
        rows.append([f"profile {Path(p['path']).name}",
                     f"device {p.get('device', '?')}, git_sha {p.get('git_sha', '?')}, created {p.get('created_at', '?')}"])
    rows.append(["report generated", generated])
    return rows


def _created_range(records) -> str:
    stamps = sorted(str(r["created_at"]) for r in records if r.get("created_at"))
    if not stamps:
        return "—"
    return stamps[0] if stamps[0] == stamps[-1] else f"{stamps[0]} … {stamps[-1]}"
