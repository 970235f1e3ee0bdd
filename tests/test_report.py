"""The suite report (dpbench.reporting.report.build_report), rendered from realistic fixture results and
read back by parsing its HTML and markdown."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from dpbench.errors import UserError
from dpbench.reporting.figures import STYLE_MEANINGS, Reference, metric_vs_epsilon
from dpbench.reporting.grid import load_grid
from dpbench.reporting.report import build_report

try:
    from tests._result_fixtures import (
        DATASET_LABEL, GIT_SHA, MODEL_SIZES, PRETRAINED_ACCURACY, REAL_DATA_ACCURACY, SUITE, accuracy_of, make_profile,
        make_results_dir, run_id_of, sample_grid_png, update_run, write_audit)
except ImportError:  # tests/ is not a package: pytest put it on sys.path
    from _result_fixtures import (
        DATASET_LABEL, GIT_SHA, MODEL_SIZES, PRETRAINED_ACCURACY, REAL_DATA_ACCURACY, SUITE, accuracy_of, make_profile,
        make_results_dir, run_id_of, sample_grid_png, update_run, write_audit)

FIGURES = ("accuracy_vs_epsilon.png", "fid_vs_epsilon.png", "efficiency.png", "pareto.png")
HOSTILE = "<img src=x onerror=alert(1)>"


class Page(HTMLParser):
    """The parts of index.html the tests read: images, tables by id (cell texts), classed paragraphs,
    section anchors in order."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.images: list[dict] = []
        self.links: list[str] = []
        self.tables: dict[str, list[list[str]]] = {}
        self.paragraphs: dict[str, list[str]] = {}
        self.sections: list[str] = []
        self._table: list[list[str]] | None = None
        self._cell: list[str] | None = None
        self._paragraph: tuple[str, list[str]] | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs)
        elif tag == "a" and attrs.get("href"):
            self.links.append(attrs["href"])
        elif tag == "table":
            self._table = self.tables.setdefault(attrs.get("id") or f"anonymous-{len(self.tables)}", [])
        elif tag == "tr" and self._table is not None:
            self._table.append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "p" and attrs.get("class"):
            self._paragraph = (attrs["class"], [])
        elif tag == "h2":
            self.sections.append(attrs.get("id", ""))

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None and self._table is not None:
            self._table[-1].append("".join(self._cell))
            self._cell = None
        elif tag == "table":
            self._table = None
        elif tag == "p" and self._paragraph is not None:
            self.paragraphs.setdefault(self._paragraph[0], []).append("".join(self._paragraph[1]))
            self._paragraph = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        if self._paragraph is not None:
            self._paragraph[1].append(data)

    def rows(self, table_id: str) -> list[dict[str, str]]:
        header, *body = self.tables[table_id]
        return [dict(zip(header, row)) for row in body]


def _assert_png(path: Path) -> None:
    from PIL import Image

    assert path.is_file(), path
    with Image.open(path) as image:
        assert image.format == "PNG", path
        image.verify()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    results = make_results_dir(root / "results" / SUITE)
    make_profile(results / "profile.json", max_batch=True)
    make_profile(results / "profile-scaling.json", model_sizes=MODEL_SIZES, batch_sizes=(16, 64))
    write_audit(results, update_run(results, run_id_of("full", 1.0, 0)), eps_low=0.41)
    write_audit(results, update_run(results, run_id_of("lora", 1.0, 0)), eps_low=2.7, fault="no_clipping",
                fdp={"mu_lower_bound": 1.234, "claimed_mu_clt": 0.419, "fdp_refutes_claim": True})
    index = build_report(results, root / "out")
    return results, index, Page(index.read_text()), (index.parent / "report.md").read_text()


def _build(tmp_path, **options) -> tuple[Path, Path]:
    results = make_results_dir(tmp_path / "results" / SUITE, **options)
    return results, tmp_path / "out"


# ------------------------------------------------------------------------------------------ files
def test_report_files(built):
    results, index, page, markdown = built
    out = index.parent
    assert index.name == "index.html" and (out / "report.md").is_file()
    for name in FIGURES + ("profile.png", "profile-scaling-scaling.png"):
        _assert_png(out / name)
    # every figure and one sample grid per method x ε plus the pretrained model's, with relative sources
    assert len(page.images) == len(FIGURES) + 2 + 9 + 1
    for image in page.images:
        assert not image["src"].startswith(("/", "file:", "http")), image
        _assert_png(out / image["src"])
    copied = {f"samples/{p.name}" for p in (out / "samples").glob("*.png")}
    assert len(copied) == 27 + 1  # every seed's grid is copied, and shown or linked
    assert copied == {i["src"] for i in page.images if i["src"].startswith("samples/")} | {
        href for href in page.links if href.startswith("samples/")}
    for src in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown):
        assert (out / src).is_file(), src
    assert not list(out.rglob(".*.tmp"))  # atomic writes left nothing behind
    assert not re.search(r"\bnan\b", index.read_text(), re.IGNORECASE)


# ------------------------------------------------------------------------------------------ headline
OTHERS = "best − each other method (paired; Holm-adjusted within ε)"


def test_headline_comes_first_and_names_the_best_method(built):
    _, _, page, markdown = built
    assert page.sections[0] == "headline"
    assert markdown.index("## Headline") < markdown.index("## Privacy checks")
    rows = page.rows("headline")
    assert [r["ε"] for r in rows] == ["1", "10"]
    for row in rows:
        assert row["best method"] == "full"
        mean = sum(accuracy_of("full", float(row["ε"]), seed) for seed in range(3)) / 3
        assert row["accuracy [95% CI]"].startswith(f"{mean:.3g} [")
        assert row["gain over the pretrained model"].endswith("(significant)")
        assert row["gap to its own ε = ∞ run"].startswith("-")
        versus = dict(part.split(": ", 1) for part in row[OTHERS].split("; "))
        # per-seed differences change sign: not significant, said once (not "n.s. (not significant)")
        assert re.search(r"\(not significant, Holm-adjusted p = [0-9.]+\)$", versus["vs lora"])
        assert "n.s." not in versus["vs lora"]
        assert re.search(r"\(significant, Holm-adjusted p (=|<) [0-9.]+\)$", versus["vs loda"])
        assert row["memory vs full"] == row["examples/s vs full"] == "1× (is full)"
    verdict = page.paragraphs["verdict"][0]
    assert "At ε = 1, full has the highest mean accuracy" in verdict
    assert "significantly ahead of loda (Holm-adjusted" in verdict and "lead over lora is not significant" in verdict


def test_headline_states_the_cost_of_the_best_method_against_full(tmp_path):
    """lora leads when full is made worse: its DP memory and examples/s are shown, and relative to full's
    (the fixture's memory and step-time model, seed by seed)."""
    from dpbench.results import load_results
    results, out = _build(tmp_path, samples=False, epsilons=(1.0, float("inf")))
    for seed in range(3):
        update_run(results, run_id_of("full", 1.0, seed), downstream_accuracy=0.2 + 0.01 * seed)
    row = Page(build_report(results, out).read_text()).rows("headline")[0]
    assert row["best method"] == "lora"
    runs = {(r.method, r.seed): r for r in load_results(results) if r.epsilon == 1.0}
    memory = [runs[("lora", s)].total_peak_memory_bytes / runs[("full", s)].total_peak_memory_bytes for s in range(3)]
    speed = [runs[("lora", s)].throughput_examples_per_s / runs[("full", s)].throughput_examples_per_s
             for s in range(3)]
    assert row["memory vs full"].startswith(f"{sum(memory) / 3:.3g}× [")
    assert row["examples/s vs full"].startswith(f"{sum(speed) / 3:.3g}× [")
    lora_memory = sum(runs[("lora", s)].total_peak_memory_bytes for s in range(3)) / 3 / 2**20
    assert row["DP total peak memory [95% CI]"].startswith(f"{lora_memory:.1f} MiB [")
    lora_speed = sum(runs[("lora", s)].throughput_examples_per_s for s in range(3)) / 3
    assert float(row["DP examples/s [95% CI]"].split(" ")[0]) == pytest.approx(lora_speed, rel=2e-3)
    low, high = map(float, re.search(r"\[([0-9.]+), ([0-9.]+)\]", row["DP examples/s [95% CI]"]).groups())
    assert 0 < low < lora_speed < high


def test_intervals_stay_inside_their_ranges(tmp_path):
    """Accuracies near 1 with a wide spread, and throughputs spread over an order of magnitude: a linear
    t-interval runs past 1 and below 0 (the old report printed 0.945 [0.881, 1.01] and 184 [−1390, 1750]);
    the report's intervals stay within [0, 1] and above 0, and the report names the method."""
    results, out = _build(tmp_path, samples=False, epsilons=(1.0,))
    for seed, (accuracy, speed) in enumerate(((0.999, 20.0), (0.95, 35.0), (0.89, 500.0))):
        update_run(results, run_id_of("full", 1.0, seed), downstream_accuracy=accuracy,
                   throughput_examples_per_s=speed)
    page = Page(build_report(results, out).read_text())
    full = next(r for r in page.rows("efficiency") if r["method"] == "full")
    low, high = map(float, re.search(r"\[([-0-9.]+), ([-0-9.]+)\]", full["examples/s [95% CI]"]).groups())
    assert 0 < low < 20 and high > 500
    utility = next(r for r in page.rows("utility") if r["method"] == "full")
    low, high = map(float, re.search(r"\[([-0-9.]+), ([-0-9.]+)\]", utility["accuracy [95% CI]"]).groups())
    assert 0 <= low < 0.89 and 0.999 < high <= 1
    assert any("logit scale" in n and "log scale" in n and "Holm" in n for n in page.paragraphs["note"])


def test_pairwise_differences_mark_every_non_significant_pair(built):
    _, _, page, _ = built
    differences = {(r["ε"], r["method a"], r["method b"]): r["a − b [95% CI]"] for r in page.rows("differences")}
    assert "(significant, Holm-adjusted" in differences[("1", "full", "loda")]
    assert "(not significant, Holm-adjusted" in differences[("1", "full", "lora")]
    assert all(re.search(r"\((not )?significant, Holm-adjusted p [=<] [0-9.]+\)$", v) for v in differences.values())
    assert not any("n.s." in v for v in differences.values())
    # Issue 23: a pair that is not significant gets a power estimate, labelled as one; a significant one none.
    rows = {(r["ε"], r["method a"], r["method b"]): r for r in page.rows("differences")}
    assert rows[("1", "full", "loda")]["seeds to resolve (estimate)"] == "—"
    unresolved = rows[("1", "full", "lora")]
    assert int(unresolved["seeds to resolve (estimate)"]) > int(unresolved["seeds paired"])
    assert any("an estimate of how many paired seeds" in n for n in page.paragraphs["note"])


def test_single_seed_has_no_intervals_and_no_significance(tmp_path):
    results, out = _build(tmp_path, seeds=(0,), samples=False)
    page = Page(build_report(results, out).read_text())
    assert any("no intervals" in p and "significant" in p for p in page.paragraphs["warning"])
    assert "no intervals" in page.paragraphs["verdict"][0]
    row = page.rows("headline")[0]
    assert "no interval" in row["accuracy [95% CI]"]
    assert "cannot be called significant" in row[OTHERS]
    assert "(significant" not in row[OTHERS]


def test_equal_accuracies_read_as_level_not_as_a_rounding_residue(tmp_path):
    """A best method whose accuracy equals the pretrained model's in floating point (0.1 + 0.2 − 0.3 ≠ 0)
    reads "level with", never "6.94e-18 above"."""
    results, out = _build(tmp_path, seeds=(0,), samples=False, methods=("lora",), epsilons=(1.0,))
    pretrained = 0.1 + 0.2
    baselines = (results / "baselines.json").read_text()
    (results / "baselines.json").write_text(baselines.replace(f'"pretrained_accuracy": {PRETRAINED_ACCURACY}',
                                                              f'"pretrained_accuracy": {pretrained!r}'))
    update_run(results, run_id_of("lora", 1.0, 0), downstream_accuracy=0.3)
    verdict = Page(build_report(results, out).read_text()).paragraphs["verdict"][0]
    assert "level with the pretrained model" in verdict and "e-1" not in verdict


# ------------------------------------------------------------------------------------------ safety
def test_labels_and_errors_are_escaped_in_html_and_markdown(tmp_path):
    results, out = _build(tmp_path, samples=False, epsilons=(1.0,))
    for seed in range(3):
        update_run(results, run_id_of("lora", 1.0, seed), method_label=HOSTILE)
    update_run(results, run_id_of("full", 1.0, 2), status="failed", phase="train",
               error="RuntimeError: <script>alert(2)</script> [x](javascript:alert(3))")
    index = build_report(results, out)
    html_text, markdown = index.read_text(), (out / "report.md").read_text()
    page = Page(html_text)
    assert all(image["src"] != "x" for image in page.images)
    assert "<img src=x" not in html_text and "<script>" not in html_text
    assert HOSTILE in [r["method"] for r in page.rows("utility")]  # shown, as text
    assert "<img" not in markdown and "<script" not in markdown and "[x](javascript" not in markdown
    assert "&lt;img src=x onerror=alert(1)&gt;" in markdown


def test_sample_grids_outside_the_results_dir_are_refused(tmp_path):
    results, out = _build(tmp_path)
    secret = tmp_path / "secret.png"
    secret.write_bytes(sample_grid_png(7) + b"SECRET")
    update_run(results, run_id_of("full", 1.0, 0), samples_grid="/etc/passwd")
    update_run(results, run_id_of("lora", 1.0, 0), samples_grid="../../../secret.png")
    (results / "runs" / run_id_of("loda", 1.0, 0) / "link.png").symlink_to(secret)
    update_run(results, run_id_of("loda", 1.0, 0), samples_grid="link.png")
    baselines = (results / "baselines.json").read_text().replace('"baseline/samples.png"', '"../secret.png"')
    (results / "baselines.json").write_text(baselines)
    index = build_report(results, out)
    warnings = " ".join(Page(index.read_text()).paragraphs["warning"])
    for owner in (run_id_of("full", 1.0, 0), run_id_of("lora", 1.0, 0), run_id_of("loda", 1.0, 0), "the baselines"):
        assert re.search(rf"Sample grid of (run )?{re.escape(owner)} .* points outside the results directory", warnings)
    copied = [p.read_bytes() for p in out.rglob("*") if p.is_file()]
    assert not any(b"SECRET" in data or b"root:" in data for data in copied)
    assert all(out.resolve() in p.resolve().parents for p in out.rglob("*"))
    assert len(list((out / "samples").glob("*.png"))) == 27 - 3  # the refused three, and no baseline grid


def test_seeded_noise_is_a_prominent_warning_at_the_top(tmp_path):
    results, out = _build(tmp_path, samples=False)
    update_run(results, run_id_of("lora", 10.0, 1), noise_source="seeded")
    index = build_report(results, out)
    html_text, markdown = index.read_text(), (out / "report.md").read_text()
    alert = Page(html_text).paragraphs["alert"]
    assert len(alert) == 1 and alert[0].startswith("Not a DP release: the noise was derived from the seed")
    assert run_id_of("lora", 10.0, 1) in alert[0]
    assert html_text.index('class="alert"') < html_text.index("<nav>") < html_text.index('id="headline"')
    assert markdown.index("> **Not a DP release: the noise was derived from the seed") < markdown.index("## Headline")


def test_results_from_before_secret_sampling_are_flagged(tmp_path):
    """Results written before 0.2 carry no sampling_source: their Poisson batches were derived from the
    published seed, so the report must not present them as a DP release."""
    results, out = _build(tmp_path, samples=False)
    update_run(results, run_id_of("loda", 1.0, 2), sampling_source=None)
    alert = Page(build_report(results, out).read_text()).paragraphs["alert"]
    assert len(alert) == 1 and "Poisson sampling was derived from the published seed" in alert[0]
    assert run_id_of("loda", 1.0, 2) in alert[0] and run_id_of("loda", 1.0, 1) not in alert[0]


def test_private_training_loss_is_never_shown(tmp_path):
    results, out = _build(tmp_path, samples=False)
    update_run(results, run_id_of("full", 1.0, 0), final_loss=0.123456)  # a v1 file might carry one
    html_text = build_report(results, out).read_text()
    assert "0.1235" not in html_text
    losses = {r["run"]: r["final loss"] for r in Page(html_text).rows("runs")}
    assert losses[run_id_of("full", 1.0, 0)] == "withheld (private)"
    assert losses[run_id_of("full", float("inf"), 1)] == "0.06"


# ------------------------------------------------------------------------------------------ content
def test_uninformative_metrics_are_a_note_not_a_column(built, tmp_path):
    _, _, page, _ = built
    assert "precision/recall are 0 for every run at this scale: not informative" in page.paragraphs["note"]
    headers = page.tables["utility"][0]
    assert not any(h.startswith(("precision", "recall")) for h in headers)
    results, out = _build(tmp_path, samples=False, epsilons=(1.0,))
    for seed in range(3):
        update_run(results, run_id_of("full", 1.0, seed), precision=0.1 + 0.05 * seed)
    page = Page(build_report(results, out).read_text())
    assert "precision [95% CI]" in page.tables["utility"][0]
    assert "recall is 0 for every run at this scale: not informative" in page.paragraphs["note"]


def test_failed_runs_are_listed_apart_and_left_out_of_statistics(tmp_path):
    results, out = _build(tmp_path, samples=False)
    failed = run_id_of("full", 1.0, 2)
    update_run(results, failed, status="failed", phase="sample", error="CUDA out of memory",
               downstream_accuracy=0.0)
    page = Page(build_report(results, out).read_text())
    assert page.rows("failed-runs") == [{"run": failed, "method": "full", "ε": "1", "seed": "2", "phase": "sample",
                                         "error": "CUDA out of memory"}]
    assert failed not in [r["run"] for r in page.rows("runs")]
    full_eps1 = next(r for r in page.rows("utility") if r["method"] == "full" and r["ε"] == "1")
    assert full_eps1["seeds"] == "2"
    assert not full_eps1["accuracy [95% CI]"].startswith("0.4")  # the failed run's 0.0 is not averaged in


def test_run_table_shows_the_settings(built):
    _, _, page, _ = built
    runs = {r["run"]: r for r in page.rows("runs")}
    lora = runs[run_id_of("lora", 1.0, 0)]
    assert (lora["lr"], lora["clipping"], lora["method options"], lora["noise source"]) == (
        "0.005", "fixed, C = 1", "rank=4, target=all", "os_entropy")
    reference = runs[run_id_of("lora", float("inf"), 0)]
    assert reference["ε"] == "∞ (non-private)" and reference["clipping"] == "none (non-private)"
    assert [r["method"] for r in page.rows("runs")][::9] == ["full", "lora", "loda"]


def test_clipping_warnings_per_method_and_epsilon(built):
    _, _, page, _ = built
    clipping = [p for p in page.paragraphs["warning"] if p.startswith("Clipping")]
    assert clipping == ["Clipping, loda at ε = 1 (seeds 0, 1, 2): signal-to-noise 0.04: the noise drowns the "
                        "clipped gradient"]


def test_per_class_accuracy_is_the_mean_over_seeds(built):
    results, _, page, _ = built
    from dpbench.results import load_results

    runs = [r for r in load_results(results) if r.method == "loda" and r.epsilon == 10.0]
    expected = sum(r.per_class_accuracy[3] for r in runs) / 3
    row = next(r for r in page.rows("per-class-eps10") if r["method"] == "loda")
    assert float(row["3"]) == pytest.approx(expected, abs=1e-3)
    assert len(row) == 3 + 10


def test_efficiency_and_cost_of_privacy(built):
    _, _, page, _ = built
    ratios = {(r["method"], r["ε"]): r for r in page.rows("dp-ratios")}
    assert ratios[("full", "1")]["step time DP / non-private [95% CI]"].startswith("4 [")
    assert ratios[("loda", "10")]["step time DP / non-private [95% CI]"].startswith("1.4 [")
    assert {r["method"] for r in page.rows("efficiency")} == {"full", "lora", "loda"}
    pareto = {(r["ε"], r["method"]): r for r in page.rows("pareto")}
    assert pareto[("1", "full")]["Pareto-optimal (memory)"] == "yes"  # the most accurate is always on the front


def test_mixed_devices_are_flagged(tmp_path):
    results, out = _build(tmp_path, samples=False, epsilons=(1.0, float("inf")))
    update_run(results, run_id_of("lora", 1.0, 1), device="cuda:NVIDIA H200")
    warnings = Page(build_report(results, out).read_text()).paragraphs["warning"]
    assert any("mixes devices" in w and "cuda:NVIDIA H200 (1 runs)" in w for w in warnings)


def test_profiles_and_scaling(built):
    _, _, page, _ = built
    rows = page.rows("profile-profile")
    assert len(rows) == 3 * 3 and rows[0]["step DP / non-private"] == "3×"
    assert page.rows("max-batch-profile")[0] == {"method": "full", "max batch (DP)": "512",
                                                  "max batch (non-private)": "2048"}
    crossover = {r["method"]: r for r in page.rows("crossover-profile-scaling")}
    assert crossover["lora"]["DP step time below full's from"] == "from small 28px (1.2M parameters)"
    assert crossover["lora"]["DP total peak memory below full's from"].startswith("at every measured size")


def test_audits(built):
    _, _, page, _ = built
    audits = {r["run"]: r for r in page.rows("audits")}
    sound, control = audits[run_id_of("full", 1.0, 0)], audits[run_id_of("lora", 1.0, 0)]
    assert (sound["fault"], sound["passed"], sound["claimed ε"]) == ("none", "yes", "1")
    assert sound["ε_low"].startswith("0.41 ")
    assert (control["fault"], control["passed"]) == ("no_clipping", "NO")
    assert "131 / 200" in control["threat models: correct / guesses (ε_low)"]
    assert control["f-DP: μ_low (CLT μ), claimed curve"] == "1.23 (0.419), refuted"
    assert sound["f-DP: μ_low (CLT μ), claimed curve"] == "—"  # an audit.json from before the f-DP audit


def test_provenance_footer(built):
    _, index, page, markdown = built
    footer = {r["field"]: r["value"] for r in page.rows("provenance-table")}
    assert footer["git sha"] == GIT_SHA and DATASET_LABEL in footer["dataset"]
    assert "torch 2.5.1" in footer["versions"] and footer["devices"].startswith("cpu:")
    assert footer["runs created"] == "2025-01-01T12:00:00+00:00 … 2025-01-03T12:00:00+00:00"
    assert footer["runs"] == "27 finished, 0 failed" and footer["suite"] == SUITE
    assert "profile profile-scaling.json" in footer
    assert GIT_SHA in markdown[markdown.index("## Provenance"):]


def test_method_order_follows_the_suite(tmp_path):
    results, out = _build(tmp_path, samples=False, epsilons=(1.0,))
    for index, method in enumerate(("loda", "full", "lora")):
        for seed in range(3):
            update_run(results, run_id_of(method, 1.0, seed), method_index=index)
    page = Page(build_report(results, out).read_text())
    assert [r["method"] for r in page.rows("utility")] == ["loda", "full", "lora"]


def test_accuracy_plot_is_scaled_to_the_data(tmp_path):
    results, _ = _build(tmp_path, samples=False, epsilons=(1.0, 2.0, float("inf")), baselines=False)
    grid = load_grid(results)
    figure = metric_vs_epsilon(grid, "downstream_accuracy", "accuracy", "accuracy vs ε",
                               [Reference(PRETRAINED_ACCURACY, "pretrained"), Reference(REAL_DATA_ACCURACY, "ceiling")])
    ax = figure.axes[0]
    low, high = ax.get_ylim()
    accuracies = [r.downstream_accuracy for r in grid.runs]
    assert low < min(accuracies) and max(accuracies) < high
    assert PRETRAINED_ACCURACY < low and high < REAL_DATA_ACCURACY  # not stretched to the references
    notes = [t.get_text() for t in ax.texts]
    assert any(n.startswith("↑ classifier trained on real data") for n in notes)
    assert any(n.startswith("↓ pretrained model") for n in notes)
    styles = {line.get_linestyle() for line in ax.get_lines()}
    assert {"-", "--"} <= styles and ":" not in styles and "-." not in styles
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert STYLE_MEANINGS["dp"] in legend and STYLE_MEANINGS["nonprivate"] in legend


# ------------------------------------------------------------------------------------------ edges
def test_default_out_dir_is_inside_the_results_dir(tmp_path, monkeypatch):
    results = make_results_dir(tmp_path / "results" / "whatever", suite="my-suite", methods=("lora",),
                               epsilons=(2.0, float("inf")), seeds=(0,), samples=False, baselines=False)
    monkeypatch.chdir(tmp_path)
    index = build_report(results)
    assert (tmp_path / index).resolve() == (results / "report" / "index.html").resolve()
    assert not (tmp_path / "reports").exists()
    assert "No sample grids were recorded." in Page(index.read_text()).paragraphs["note"]


def test_sparse_results_do_not_crash(tmp_path):
    """Only the non-private reference, null metrics, a missing sample file: still a report."""
    results = make_results_dir(tmp_path / "res", methods=("bias",), epsilons=(float("inf"),), seeds=(0,),
                               baselines=False)
    run_id = run_id_of("bias", float("inf"), 0)
    update_run(results, run_id, downstream_accuracy=None, fid=None, total_peak_memory_bytes=None,
               peak_memory_bytes=None, throughput_examples_per_s=None, step_time_s=None, per_class_accuracy=[])
    (results / "runs" / run_id / "samples.png").unlink()
    index = build_report(results, tmp_path / "out")
    page = Page(index.read_text())
    assert any(run_id in w and "not found" in w for w in page.paragraphs["warning"])
    assert "nothing to rank" in page.paragraphs["verdict"][0]
    # no empty charts: nothing was recorded, so nothing is drawn, and the report says so
    assert not any((index.parent / name).exists() for name in FIGURES) and not page.images
    notes = " ".join(page.paragraphs["note"])
    assert "no accuracy figure" in notes and "no efficiency figure" in notes and "no Pareto figure" in notes


def test_old_results_without_memory_get_no_memory_chart(tmp_path):
    """Results written before dpbench measured total memory: the throughput panel alone, not an empty
    memory chart scaled to ±0.04 MiB."""
    from dpbench.reporting.figures import efficiency_figure

    results, _ = _build(tmp_path, samples=False, epsilons=(1.0, float("inf")))
    for method in ("full", "lora", "loda"):
        for eps in (1.0, float("inf")):
            for seed in range(3):
                update_run(results, run_id_of(method, eps, seed), total_peak_memory_bytes=None, memory_breakdown={})
    figure = efficiency_figure(load_grid(results))
    assert len(figure.axes) == 1 and figure.axes[0].get_ylabel().startswith("throughput")


def test_one_colour_and_marker_per_method_in_every_figure(tmp_path):
    """The same method has the same colour and marker in the accuracy, Pareto and efficiency figures, and
    with one finite ε the accuracy figure has error bars (no band can be drawn through one point)."""
    from matplotlib.colors import to_rgba

    from dpbench.reporting.figures import efficiency_figure, method_styles, pareto_figure

    results, _ = _build(tmp_path, samples=False, epsilons=(1.0, float("inf")))
    grid = load_grid(results)
    styles = method_styles(grid.methods)
    accuracy = metric_vs_epsilon(grid, "downstream_accuracy", "accuracy", "accuracy", (), styles).axes[0]
    dp_lines = [line for line in accuracy.get_lines() if line.get_linestyle() == "-" and line.get_marker() != "None"]
    assert {(to_rgba(line.get_color()), line.get_marker()) for line in dp_lines} == {
        (to_rgba(s.color), s.marker) for s in styles.values()}
    x_positions = {float(line.get_xdata()[0]) for line in dp_lines}
    assert len(x_positions) == 3  # side by side at ε = 1: no point hides another
    assert accuracy.containers, "error bars at the one finite ε"
    for container in accuracy.containers:
        segments = container.lines[2][0].get_segments()
        assert all(seg[0][1] < seg[1][1] for seg in segments)  # a real interval, low < high
    pareto = pareto_figure(grid, styles)
    for ax in pareto.axes:
        for collection in ax.collections:
            face = collection.get_facecolors()
            if len(face):  # the method points (the Pareto circles are hollow)
                assert tuple(face[0]) in {to_rgba(s.color) for s in styles.values()}
    efficiency = efficiency_figure(grid, styles)
    throughput = efficiency.axes[1]
    bar_colors = {tuple(round(c, 6) for c in patch.get_facecolor()) for patch in throughput.patches}
    assert bar_colors == {tuple(round(c, 6) for c in to_rgba(s.color)) for s in styles.values()}
    for patch in throughput.patches:
        assert patch.get_height() > 0
    lower_ends = [seg[0][1] for line in throughput.collections for seg in line.get_segments()]
    assert lower_ends and min(lower_ends) > 0  # error bars never reach below 0


def test_missing_or_empty_results_dir_is_a_user_error(tmp_path):
    (tmp_path / "runs").mkdir()
    with pytest.raises(UserError, match="no finished runs"):
        build_report(tmp_path, tmp_path / "out")
    with pytest.raises(UserError, match="does not exist"):
        build_report(tmp_path / "nope", tmp_path / "out")


# ------------------------------------------------------------------------------------------ browser

CHECK_SCRIPT = """<script>
window.addEventListener("load", function () {
  var imgs = document.images, loaded = 0;
  for (var i = 0; i < imgs.length; i++) { if (imgs[i].complete && imgs[i].naturalWidth > 0) loaded++; }
  var d = document.createElement("div");
  d.id = "dpbench-check";
  d.setAttribute("data-images-loaded", loaded);
  d.setAttribute("data-images-total", imgs.length);
  d.setAttribute("data-tables", document.getElementsByTagName("table").length);
  // the headline's cells a reader sees without scrolling, in either direction
  var seen = [], cells = document.querySelectorAll("#headline th, #headline td");
  for (var j = 0; j < cells.length; j++) {
    var r = cells[j].getBoundingClientRect();
    if (r.width > 0 && r.top >= 0 && r.bottom <= window.innerHeight && r.right <= window.innerWidth) {
      seen.push(cells[j].textContent);
    }
  }
  d.setAttribute("data-headline-cells", cells.length);
  d.textContent = JSON.stringify(seen);
  document.body.appendChild(d);
});
</script>"""


def _chromium() -> str | None:
    if Path("/usr/bin/chromium").is_file():
        return "/usr/bin/chromium"
    return shutil.which("chromium") or shutil.which("chromium-browser")


FIRST_SCREEN = (1280, 800)  # a laptop's browser window


@pytest.mark.browser
def test_report_loads_in_headless_chromium(built, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("no chromium binary (/usr/bin/chromium, chromium, chromium-browser); run .ci/install-browser")
    _, index, _, _ = built
    html_text = index.read_text()
    # a copy next to index.html, so relative image paths resolve exactly as they do for the report itself
    check = index.parent / "_browser_check.html"
    check.write_text(html_text.replace("</body>", CHECK_SCRIPT + "\n</body>"))
    try:
        proc = subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000",
             f"--window-size={FIRST_SCREEN[0]},{FIRST_SCREEN[1]}",
             "--dump-dom", check.resolve().as_uri()],
            capture_output=True, text=True, timeout=90,
        )
    finally:
        check.unlink()
    assert proc.returncode == 0, proc.stderr[-2000:]
    match = re.search(r'<div id="dpbench-check"([^>]*)>(.*?)</div>', proc.stdout, re.DOTALL)
    assert match, "the check marker was not written: " + proc.stdout[-500:] + proc.stderr[-1000:]
    attrs = dict(re.findall(r'(data-[a-z-]+)="(\d+)"', match.group(1)))
    expected = Page(html_text)
    assert int(attrs["data-images-total"]) == len(expected.images) > 0
    assert attrs["data-images-loaded"] == attrs["data-images-total"]
    assert int(attrs["data-tables"]) == len(expected.tables) >= 10
    # the headline, whole, in the first screen: method, interval, cost and relative cost of each ε
    seen = json.loads(html.unescape(match.group(2)))
    headline = expected.tables["headline"]
    assert int(attrs["data-headline-cells"]) == sum(len(row) for row in headline)
    assert seen == [cell for row in headline for cell in row]
    for column in ("best method", "accuracy [95% CI]", "DP total peak memory [95% CI]", "memory vs full",
                   "DP examples/s [95% CI]", "examples/s vs full"):
        assert column in seen
    for row in expected.rows("headline"):
        assert row["best method"] == "full" and re.search(r"\[[0-9.]+, [0-9.]+\]", row["accuracy [95% CI]"])
        assert re.search(r" MiB \[[0-9.]+, [0-9.]+\]", row["DP total peak memory [95% CI]"])
        assert re.search(r"^[0-9.]+ \[[0-9.]+, [0-9.]+\]", row["DP examples/s [95% CI]"])
        assert "vs lora" in row[OTHERS] and "vs loda" in row[OTHERS]


def test_smoke_results_are_marked_and_never_mixed_with_real_ones(tmp_path):
    results, out = _build(tmp_path, samples=False, epsilons=(1.0,), seeds=(0,))
    for method in ("full", "lora", "loda"):
        update_run(results, run_id_of(method, 1.0, 0), smoke=True)
    page = Page(build_report(results, out).read_text())
    assert page.paragraphs["alert"][0].startswith("Smoke test (dpbench run --smoke)")
    update_run(results, run_id_of("lora", 1.0, 0), smoke=False)
    with pytest.raises(UserError, match="mixes 2 --smoke runs .* with 1 real runs"):
        build_report(results, tmp_path / "out2")


def test_thirteen_methods_get_thirteen_distinct_styles():
    """peft-zoo-cpu has 13 methods: tab10's colours and the 10 markers repeated after 10, so full and vera
    (and bias and hra, attention and fourierft) were drawn alike in its Pareto figure."""
    from matplotlib.colors import to_rgba

    from dpbench.reporting.figures import method_styles

    methods = ("full", "bias", "attention", "lora", "loda", "dora", "loha", "lokr", "oft", "ia3", "vera", "hra",
               "fourierft")
    styles = method_styles(methods)
    assert len({(to_rgba(s.color), s.marker) for s in styles.values()}) == 13
