"""The suite report (dpbench.reporting.report.build_report) built from a realistic small results dir."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from dpbench.errors import UserError
from dpbench.reporting.report import build_report

try:
    from tests._result_fixtures import DATASET_LABEL, GIT_SHA, SUITE, make_profile, make_results_dir
except ImportError:  # tests/ is not a package: pytest put it on sys.path
    from _result_fixtures import DATASET_LABEL, GIT_SHA, SUITE, make_profile, make_results_dir

FIGURES = ("accuracy_vs_epsilon.png", "fid_vs_epsilon.png", "efficiency.png", "pareto.png")


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.tables = 0
        self.table_ids: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        elif tag == "table":
            self.tables += 1
            if attrs.get("id"):
                self.table_ids.append(attrs["id"])


def _parse(html_text: str) -> _Page:
    page = _Page()
    page.feed(html_text)
    return page


def _assert_png(path: Path) -> None:
    from PIL import Image

    assert path.is_file(), path
    with Image.open(path) as im:
        assert im.format == "PNG", path
        im.verify()
    with Image.open(path) as im:
        assert im.size[0] > 0 and im.size[1] > 0


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    results = make_results_dir(root / "results" / SUITE, null_fid_for=("loda",))
    make_profile(results / "profile.json", max_batch=True)
    index = build_report(results, root / "out")
    return results, index


def test_report_files(built):
    results, index = built
    out = index.parent
    assert index.name == "index.html" and index.is_file()
    assert (out / "report.md").is_file()
    for name in FIGURES + ("profile.png",):
        _assert_png(out / name)
    page = _parse(index.read_text())
    # every figure and every sample grid (3 methods x 3 epsilons, lowest seed) is shown with a relative src
    assert len(page.images) == len(FIGURES) + 1 + 9
    for src in page.images:
        assert not src.startswith(("/", "file:", "http")), src
        _assert_png(out / src)
    # all 18 sample grids were copied (other seeds are linked)
    assert len(list((out / "samples").glob("*.png"))) == 18
    assert not list(out.glob(".*.tmp"))  # atomic writes left nothing behind


def test_report_tables_and_footer(built):
    results, index = built
    html_text = index.read_text()
    md_text = (index.parent / "report.md").read_text()
    run_ids = [p.name for p in (results / "runs").iterdir()]
    assert len(run_ids) == 18
    runs_section = html_text[html_text.index('id="runs"'):]
    for run_id in run_ids:
        assert f"<td>{run_id}</td>" in runs_section
        assert f"| {run_id} |" in md_text
    page = _parse(html_text)
    for table_id in ("summary", "efficiency-table", "dp-ratios", "pareto-table", "samples-table", "baselines",
                     "profile-profile", "max-batch-profile"):
        assert table_id in page.table_ids
    footer = html_text[html_text.index('<footer id="provenance">'):]
    for text in (DATASET_LABEL, GIT_SHA, SUITE, "prv", "random_cnn", "1e-05", "torch 2.5.1", "report generated"):
        assert text in footer, text
    assert "<td>18</td>" in footer  # number of runs
    provenance_md = md_text[md_text.index("## Provenance"):]
    assert DATASET_LABEL in provenance_md and GIT_SHA in provenance_md
    # DP / non-private ratios: full was made 4x slower and 3x larger under DP
    ratios = html_text[html_text.index('id="dp-ratios"'):]
    assert re.search(r"<td>full</td>\s*<td>1</td>\s*<td>2</td>\s*<td>4×</td>\s*<td>3×</td>", ratios)
    # markdown images point at existing files
    for src in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md_text):
        assert (index.parent / src).is_file(), src
    # missing FIDs render as a dash, not as nan
    assert not re.search(r"\bnan\b", html_text, re.IGNORECASE)


def test_default_out_dir_is_reports_suite(tmp_path, monkeypatch):
    results = make_results_dir(tmp_path / "results" / "whatever", suite="my-suite", methods=("lora",),
                               epsilons=(2.0, float("inf")), seeds=(0,), samples=False, baselines=False)
    monkeypatch.chdir(tmp_path)
    index = build_report(results)
    assert (tmp_path / index).resolve() == (tmp_path / "reports" / "my-suite" / "index.html").resolve()
    assert "No sample grids were recorded" in (tmp_path / index).read_text()


def test_sparse_results_do_not_crash(tmp_path):
    """Only the non-private reference, null metrics, a missing sample file: still a report."""
    results = make_results_dir(tmp_path / "res", methods=("bias",), epsilons=(float("inf"),), seeds=(0,),
                               baselines=False)
    path = next((results / "runs").glob("*/result.json"))
    record = json.loads(path.read_text())
    for key in ("downstream_accuracy", "fid", "peak_memory_bytes", "throughput_examples_per_s", "step_time_s",
                "precision", "recall", "trainable_params"):
        record[key] = None
    path.write_text(json.dumps(record))
    (path.parent / "samples.png").unlink()
    index = build_report(results, tmp_path / "out")
    text = index.read_text()
    assert "Sample grid file not found" in text and record["run_id"] in text
    for name in FIGURES:
        _assert_png(index.parent / name)


def test_empty_results_dir_is_user_error(tmp_path):
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
  document.body.appendChild(d);
});
</script>"""


def _chromium() -> str | None:
    if Path("/usr/bin/chromium").is_file():
        return "/usr/bin/chromium"
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.browser
def test_report_loads_in_headless_chromium(built, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("no chromium binary (/usr/bin/chromium, chromium, chromium-browser); run .ci/install-browser")
    _, index = built
    html_text = index.read_text()
    # a copy next to index.html, so relative image paths resolve exactly as they do for the report itself
    check = index.parent / "_browser_check.html"
    check.write_text(html_text.replace("</body>", CHECK_SCRIPT + "\n</body>"))
    try:
        proc = subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000",
             "--dump-dom", check.resolve().as_uri()],
            capture_output=True, text=True, timeout=90,
        )
    finally:
        check.unlink()
    assert proc.returncode == 0, proc.stderr[-2000:]
    match = re.search(r'<div id="dpbench-check"([^>]*)>', proc.stdout)
    assert match, "the check marker was not written: " + proc.stdout[-500:] + proc.stderr[-1000:]
    attrs = dict(re.findall(r'(data-[a-z-]+)="(\d+)"', match.group(1)))
    expected = _parse(html_text)
    assert int(attrs["data-images-total"]) == len(expected.images) > 0
    assert attrs["data-images-loaded"] == attrs["data-images-total"]
    assert int(attrs["data-tables"]) == expected.tables >= 8
