"""The measured tables of README.md and docs/*.md are generated from committed data files (`dpbench docs`),
and `dpbench docs --check` fails when a table and its data file disagree."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

from dpbench.cli import main
from dpbench.reporting.doc_tables import BLOCK, documents, update_documents
from dpbench.reporting.grid import interval_of, load_grid
from dpbench.results import ResultsSummary, read_model

try:
    from tests._result_fixtures import make_results_dir
except ImportError:  # tests/ is not a package: pytest put it on sys.path
    from _result_fixtures import make_results_dir

REPO = Path(__file__).resolve().parents[1]
SCALING = "docs/data/profile-scaling-cpu.json"


def _blocks(root: Path) -> list[tuple[str, str]]:
    return [(m["name"], m["source"]) for path in documents(root) for m in BLOCK.finditer(path.read_text())]


def _copy_repo_docs(tmp_path: Path) -> Path:
    """README.md, docs/ and every data file a block reads, copied as they are committed."""
    root = tmp_path / "repo"
    root.mkdir()
    shutil.copy(REPO / "README.md", root / "README.md")
    shutil.copytree(REPO / "docs", root / "docs", ignore=shutil.ignore_patterns("figures"))
    for _, source in _blocks(REPO):
        (root / source).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / source, root / source)
    return root


def test_the_readme_tables_match_their_data_files():
    blocks = _blocks(REPO)
    names = {name for name, _ in blocks}
    # Not vacuous: the measured tables are there, each between markers naming its file.
    assert {"scaling", "scaling-crossover", "dp-overhead", "results-table", "results-baselines"} <= names
    assert {source for _, source in blocks} >= {SCALING, "benchmarks/baseline/dp_overhead_cpu.json",
                                                "docs/data/mnist10k-cpu-summary.json", "docs/data/quickstart-summary.json"}
    assert update_documents(REPO, check=True) == []


def test_an_edited_number_in_the_readme_is_found_and_regenerated(tmp_path, capsys):
    root = _copy_repo_docs(tmp_path)
    readme = root / "README.md"
    original = readme.read_text()
    scaling_block = next(m for m in BLOCK.finditer(original) if m["name"] == "scaling")
    memory_row = [line for line in scaling_block["body"].splitlines() if line.startswith("| tiny")][-1]
    edited_row = memory_row.replace(" MiB", "1 MiB", 1)  # one memory figure, one digit longer
    assert edited_row != memory_row
    readme.write_text(original.replace(memory_row, edited_row))

    assert main(["docs", "--check", "--root", str(root)]) == 1
    out = capsys.readouterr().out
    assert f"scaling from {SCALING}" in out and "results-table" not in out  # only the edited block is named
    assert readme.read_text() != original  # --check writes nothing

    assert main(["docs", "--root", str(root)]) == 0
    assert readme.read_text() == original
    assert main(["docs", "--check", "--root", str(root)]) == 0


def test_a_changed_data_file_changes_the_table(tmp_path):
    """The issue's case: LoDA's ddpm32 DP total peak measured anew (699 MiB) must reach the README."""
    root = _copy_repo_docs(tmp_path)
    profile = json.loads((root / SCALING).read_text())
    entry = next(e for e in profile["entries"]
                 if (e["preset"], e["method"], e["mode"]) == ("ddpm32", "loda", "dp"))
    entry["total_peak_memory_bytes"] = 699 * 2**20
    (root / SCALING).write_text(json.dumps(profile))

    assert [b.split()[1] for b in update_documents(root, check=True)] == ["scaling"]
    assert "699.0 MiB" not in (root / "README.md").read_text()
    update_documents(root)
    scaling_block = next(m for m in BLOCK.finditer((root / "README.md").read_text()) if m["name"] == "scaling")
    ddpm32_memory = [line for line in scaling_block["body"].splitlines() if line.startswith("| ddpm32")][-1]
    assert "699.0 MiB" in ddpm32_memory and "929.6 MiB" not in ddpm32_memory


def test_a_block_without_its_data_file_is_a_user_error(tmp_path, capsys):
    root = tmp_path / "repo"
    root.mkdir()
    (root / "README.md").write_text("<!-- generated: scaling from docs/data/missing.json; regenerate with: dpbench docs -->\n"
                                    "old\n<!-- /generated -->\n")
    assert main(["docs", "--check", "--root", str(root)]) == 2
    err = capsys.readouterr().err
    assert "README.md:1" in err and "docs/data/missing.json" in err and len(err.strip().splitlines()) == 1


def test_a_results_folder_becomes_a_summary_and_its_table(tmp_path):
    results = make_results_dir(tmp_path / "results" / "tiny-mnist", samples=False)
    root = _copy_repo_docs(tmp_path)
    (root / "README.md").write_text(
        "<!-- generated: results-table from docs/data/tiny-mnist-summary.json; regenerate with: dpbench docs -->\n"
        "<!-- /generated -->\n")
    assert main(["docs", "--root", str(root), "--from-results", str(results)]) == 0

    summary = read_model(root / "docs/data/tiny-mnist-summary.json", ResultsSummary)
    grid = load_grid(results)
    assert summary.cost_epsilon == 10 and summary.pretrained_accuracy == grid.baselines.pretrained_accuracy
    loda_eps1 = next(c for c in summary.cells if (c.method_label, c.epsilon) == ("loda", 1))
    expected = interval_of(grid.cell("loda", 1), "downstream_accuracy")
    assert (loda_eps1.downstream_accuracy.mean, loda_eps1.downstream_accuracy.low) == (expected.mean, expected.low)
    assert any(math.isinf(c.epsilon) for c in summary.cells)

    table = (root / "README.md").read_text()
    loda_row = next(line for line in table.splitlines() if line.startswith("| loda"))
    assert f"{expected.mean:.3g}" in loda_row
    assert "DP ex/s at ε = 10" in table and "FID at ε = 10" in table
    assert main(["docs", "--check", "--root", str(root)]) == 0


def test_a_folder_without_a_readme_is_refused(tmp_path, capsys):
    """Run from the wrong folder, the check must not pass by finding nothing to check."""
    assert main(["docs", "--check", "--root", str(tmp_path)]) == 2
    assert "--root" in capsys.readouterr().err
