"""`dpbench tune`: candidates run on a proxy task of public data only; the best is selected and written."""

from __future__ import annotations

import json

import yaml

from dpbench.cli import main
from dpbench.results import TuneResult, read_model
from dpbench.runner.tune_selection import PROXY_SHIFTS, CandidateScores, select

SUITE = {
    "name": "tunable",
    "data": {"private": {"name": "digits", "image_size": 8, "channels": 1},
             "public": {"name": "shapes", "image_size": 8, "channels": 1, "options": {"size": 3200}}},
    "model": {"preset": "tiny"},
    "pretrain": {"steps": 20, "batch_size": 32, "lr": 0.003},
    "privacy": {"epsilons": [4, 8, "inf"], "delta": 1e-4, "accountant": "rdp", "expected_batch_size": 64, "steps": 3,
                "max_grad_norm": "auto", "physical_batch_size": 64},
    "methods": [{"name": "bias", "lr": 0.01}, {"name": "lora", "lr": 0.002, "max_grad_norm": 0.5}],
    "training": {"ema_decay": None},
    "sampling": {"steps": 3, "num_samples": 40, "batch_size": 40, "grid_per_class": 1},
    "evaluation": {"classifier_seeds": [0], "classifier_epochs": 1, "fid_max_reference": 100},
}


def test_tune_selects_on_a_public_proxy_and_writes_a_tuned_suite(tmp_path, monkeypatch, capsys):
    import dpbench.data.base as data_base

    loaded = []
    real_load = data_base.load_dataset

    def recording_load(ref, *args, **kwargs):
        loaded.append(ref.name)
        return real_load(ref, *args, **kwargs)

    monkeypatch.setattr(data_base, "load_dataset", recording_load)
    path = tmp_path / "tunable.yaml"
    path.write_text(yaml.safe_dump(SUITE))
    assert main(["tune", str(path), "--lrs", "0.001,0.03", "--no-progress", "--results-dir", str(tmp_path / "out")]) == 0
    assert "digits" not in loaded, "tuning never loads the private data"
    folder = tmp_path / "out" / "tunable" / "tune-transpose"
    record = read_model(folder / "tune.json", TuneResult)
    assert record.epsilon == 8, "default: the largest finite ε"
    by_method = {}
    for c in record.candidates:
        by_method.setdefault(c.method_label, []).append(c)
    assert len(by_method["bias"]) == 2, "auto clipping: one candidate per lr"
    assert len(by_method["lora"]) == 2 * 3, "fixed C: lr × C grid"
    assert record.seeds == [0, 1], "default: the two seeds the selection rule needs"
    assert record.pretrained_proxy_fid is not None and record.proxy_shift == "transpose"
    assert "FID above the pretrained proxy model's" in record.selection_rule and "transposed" in record.proxy
    for rows in by_method.values():
        assert all(len(c.proxy_accuracies) == len(c.proxy_fids) == 2 for c in rows)
        # the recorded per-seed results, put through the rule, give the recorded selection and rejections
        expected, reasons = select([CandidateScores(c.lr, c.proxy_accuracies, c.proxy_fids) for c in rows],
                                   record.pretrained_proxy_fid, PROXY_SHIFTS["transpose"].fid_bar_factor)
        assert [c.selected for c in rows] == [i == expected for i in range(len(rows))]
        assert [c.rejected for c in rows] == reasons
    for c in record.candidates:
        for run_id in c.run_ids:
            result = json.loads((folder / "runs" / run_id / "result.json").read_text())
            assert result["dataset"] == "shapes" and result["epsilon"] == 8
    tuned = yaml.safe_load((folder / record.tuned_suite).read_text())
    chosen = {c.method_label: c for c in record.candidates if c.selected}
    # a method whose candidates were all rejected keeps the suite's own lr
    assert {m["name"]: m["lr"] for m in tuned["methods"]} == {m["name"]: chosen[m["name"]].lr if m["name"] in chosen
                                                               else m["lr"] for m in SUITE["methods"]}
    if "lora" in chosen:
        assert tuned["methods"][1]["max_grad_norm"] == float(chosen["lora"].clipping)
    assert (folder / record.tuned_suite).read_text().startswith("# Learning rates")
    # the printed sweep ends each candidate's row with its verdict: "selected", the rule's reason for rejecting
    # it, or nothing (kept, not chosen). Verdicts vary from run to run (the proxy runs' DP noise is OS entropy,
    # and on this tiny proxy every candidate may be rejected), so each printed row is checked against the record.
    printed = capsys.readouterr().out.splitlines()
    for c in record.candidates:
        verdict = "selected" if c.selected else (c.rejected or "")
        rows = [line.rstrip() for line in printed if line.split()[:3] == [c.method_label, f"{c.lr:g}", c.clipping]]
        assert len(rows) == 1 and rows[0].endswith(verdict), (c, rows)
        assert c.selected or "selected" not in rows[0]


def test_tune_reuses_finished_candidates_and_runs_only_what_is_new(tmp_path):
    path = tmp_path / "tunable.yaml"
    path.write_text(yaml.safe_dump({**SUITE, "methods": [{"name": "bias", "lr": 0.01}]}))
    out = tmp_path / "out"
    assert main(["tune", str(path), "--lrs", "0.01", "--no-progress", "--results-dir", str(out)]) == 0
    runs = out / "tunable" / "tune-transpose" / "runs"
    first = runs / "bias-lr0.01-eps8-seed0" / "result.json"
    written = first.read_bytes()
    assert main(["tune", str(path), "--lrs", "0.01,0.03", "--seeds", "0,1", "--no-progress",
                 "--results-dir", str(out)]) == 0
    assert first.read_bytes() == written, "a finished candidate with the same settings is not run again"
    assert sorted(d.name for d in runs.iterdir()) == [f"bias-lr{lr}-eps8-seed{s}" for lr in ("0.01", "0.03")
                                                      for s in (0, 1)]
    record = read_model(out / "tunable" / "tune-transpose" / "tune.json", TuneResult)
    assert [len(c.run_ids) for c in record.candidates] == [2, 2]
    # other settings (here T) make the old run stale: it runs again instead of being reused
    changed = {**SUITE, "methods": [{"name": "bias", "lr": 0.01}]}
    changed["privacy"] = {**SUITE["privacy"], "steps": 4}
    path.write_text(yaml.safe_dump(changed))
    assert main(["tune", str(path), "--lrs", "0.01", "--no-progress", "--results-dir", str(out)]) == 0
    assert json.loads(first.read_text())["steps"] == 4


def test_the_proxy_renames_its_classes_so_the_pretrained_embedding_is_not_already_right():
    """Private class i starts from public class i's embedding: an unrenamed proxy would need no learning."""
    import torch

    from dpbench.runner.tune import derangement, proxy_split

    labels = torch.arange(5000) % 10
    images = torch.arange(5000, dtype=torch.float32)[:, None, None, None].expand(5000, 1, 2, 2)
    splits = proxy_split(images, labels, 10, 1437)
    perm = derangement(10)
    assert not (perm == torch.arange(10)).any()
    for name in ("train", "test"):
        x, y = splits[name]
        original = x[:, 0, 0, 0].long() % 10
        assert torch.equal(y, perm[original]) and not (y == original).any()
    x, y = splits["pretrain"]
    assert torch.equal(y, x[:, 0, 0, 0].long() % 10), "pretraining keeps the public names"
    used = torch.cat([splits[n][0][:, 0, 0, 0] for n in ("train", "test", "pretrain")])
    assert len(used.unique()) == len(used) and len(splits["train"][0]) == 1437, "disjoint splits, N examples"


def test_the_default_proxy_transposes_its_private_and_test_images_but_not_the_pretraining_ones():
    """The proxy model must not already draw the proxy's images (the private task's images are shapes the
    public model never drew); `none` keeps the earlier, unshifted proxy."""
    import torch

    from dpbench.runner.tune import proxy_split

    gen = torch.Generator().manual_seed(0)
    images, labels = torch.rand(5000, 1, 4, 4, generator=gen), torch.arange(5000) % 10
    shifted, unshifted = proxy_split(images, labels, 10, 1437), proxy_split(images, labels, 10, 1437, "none")
    for name in ("train", "test"):
        assert torch.equal(shifted[name][0], unshifted[name][0].transpose(-1, -2))
        assert not torch.equal(shifted[name][0], unshifted[name][0])
        assert torch.equal(shifted[name][1], unshifted[name][1])
    assert torch.equal(shifted["pretrain"][0], unshifted["pretrain"][0])


def test_bad_number_lists_are_one_line_user_errors(tmp_path, capsys):
    """`tune` and `profile` parse their comma-separated options with one helper: an empty entry, a word or
    a value out of range is exit 2 with one line naming the option, before anything runs."""
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(SUITE))
    out = str(tmp_path / "out")
    cases = [(["tune", str(path), "--lr-factors", "0.5,,2"], "--lr-factors"),
             (["tune", str(path), "--lrs", "0.01,0"], "--lrs"),
             (["tune", str(path), "--seeds", "-1"], "--seeds"),
             (["tune", str(path), "--seeds", "0"], "--seeds"),  # the selection rule needs two seeds
             (["tune", str(path), "--seeds", "3,3"], "--seeds"),
             (["tune", str(path), "--sampling-steps", "10,0"], "--sampling-steps"),
             (["tune", str(path), "--sampling-steps", "ten"], "--sampling-steps"),
             (["tune", str(path), "--sampling-steps", "5,1001"], "--sampling-steps"),  # beyond the training steps
             (["profile", "--preset", "tiny", "--batch-sizes", "8,x"], "--batch-sizes"),
             (["profile", "--preset", "tiny", "--batch-sizes", "0"], "--batch-sizes"),
             (["profile", "--preset", "tiny", "--image-size", "16,"], "--image-size")]
    for argv, option in cases:
        capsys.readouterr()
        assert main([*argv, "--results-dir", out]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and option in err and "give" in err, (argv, err)
    assert not (tmp_path / "out").exists()
    # seeds may be 0 — only learning rates and factors must be positive
    from dpbench.commands.arguments import numbers
    assert numbers("0,1", "--seeds", int) == [0, 1] and numbers(None, "--lrs", float) is None


def test_the_proxy_runs_the_tune_seeds_even_where_the_suite_has_epsilon_seeds():
    from pathlib import Path

    from dpbench.config.suite import suite_from_mapping
    from dpbench.runner.tune import DEFAULT_SEEDS, _proxy_suite

    raw = yaml.safe_load((Path(__file__).resolve().parents[1] / "suites" / "quickstart.yaml").read_text())
    suite = suite_from_mapping({**raw, "epsilon_seeds": {10: [0, 1, 2, 3, 4]}}, "quickstart.yaml")
    assert suite.seeds_at(10.0) == [0, 1, 2, 3, 4]
    proxy = _proxy_suite(suite, suite.methods, 10.0, None)
    assert proxy.seeds_at(10.0) == list(DEFAULT_SEEDS)
    assert _proxy_suite(suite, suite.methods, 10.0, [3, 4]).seeds_at(10.0) == [3, 4]


def test_sampling_steps_are_measured_on_the_selected_runs_rebuilt_from_their_saved_weights(tmp_path, capsys):
    """`tune --sampling-steps` re-samples finished proxy runs from trainable.safetensors (the EMA weights here):
    at the run's own step count the rebuilt model reproduces the run's accuracy and FID exactly (so its weights,
    recipe and seed are the run's), the rows hold those re-sampled numbers and follow the rule, the tuned suite
    takes the selected count, and a file from another method is refused by name."""
    import argparse

    import pytest
    import torch
    from safetensors.torch import load_file

    from dpbench.commands.suites import runner_settings
    from dpbench.errors import UserError
    from dpbench.runner.plan import plan_runs
    from dpbench.runner.setup import run_recipe
    from dpbench.runner.single_run import load_trainable
    from dpbench.runner.tune import proxy_task
    from dpbench.runner.tune_sampling import resample_run
    from dpbench.runner.tune_selection import sampling_steps_rule, select_sampling_steps

    path = tmp_path / "tunable.yaml"
    path.write_text(yaml.safe_dump({**SUITE, "methods": [{"name": "bias", "lr": 0.01}, {"name": "lora", "lr": 0.002}],
                                    "training": {"ema_decay": 0.9}}))
    out = tmp_path / "out"
    assert main(["tune", str(path), "--lrs", "0.01", "--sampling-steps", "2", "--no-progress",
                 "--results-dir", str(out)]) == 0
    folder = out / "tunable" / "tune-transpose"
    record = read_model(folder / "tune.json", TuneResult)
    suite_steps = SUITE["sampling"]["steps"]
    rows = {r.steps: r for r in record.sampling_steps}
    assert sorted(rows) == [2, suite_steps] and record.sampling_steps_rule == sampling_steps_rule(1.0)
    selected_runs = [rid for c in record.candidates if c.selected for rid in c.run_ids]
    assert rows[suite_steps].run_ids == rows[2].run_ids == selected_runs
    expected, reasons = select_sampling_steps(
        suite_steps, {r.steps: CandidateScores(0.0, r.proxy_accuracies, r.proxy_fids) for r in rows.values()},
        record.pretrained_proxy_fid, 1.0)
    assert [r.steps for r in rows.values() if r.selected] == ([] if expected is None else [expected])
    assert {s: r.rejected for s, r in rows.items()} == reasons
    tuned_steps = yaml.safe_load((folder / record.tuned_suite).read_text())["sampling"]["steps"]
    assert tuned_steps == (suite_steps if expected is None else expected)
    assert "sampling steps" in capsys.readouterr().out

    # Every run, selected or not (the rule's verdicts vary with the proxy's OS-entropy noise), rebuilt from its file.
    args = argparse.Namespace(suite=str(path), set=[], results_dir=str(out), data_root=None, cache_dir=None,
                              device="cpu", progress=False)
    task = proxy_task(runner_settings(args), lrs=[0.01])
    planned = {p.spec.run_id: p for p in plan_runs(task.ctx.suite, None, num_examples=task.n)}
    for run_id, run in planned.items():
        result = json.loads((folder / "runs" / run_id / "result.json").read_text())
        again, fewer = resample_run(task.ctx, run, [suite_steps, 2])
        assert (again["downstream_accuracy"], again["fid"]) == (result["downstream_accuracy"], result["fid"]), run_id
        assert fewer["fid"] != again["fid"], "another step count samples other images"
        if run_id in selected_runs:  # the recorded rows are these re-sampled numbers, in run_ids' order
            i = rows[2].run_ids.index(run_id)
            assert (rows[2].proxy_accuracies[i], rows[2].proxy_fids[i]) == (fewer["downstream_accuracy"], fewer["fid"])
            assert (rows[suite_steps].proxy_accuracies[i], rows[suite_steps].proxy_fids[i]) == (
                result["downstream_accuracy"], result["fid"])
        fresh = run_recipe(task.ctx, run).prepare(seed=run.spec.seed)
        saved = load_file(str(folder / "runs" / run_id / "trainable.safetensors"))
        trained = dict(fresh.named_parameters())
        assert any(not torch.equal(trained[k], v) for k, v in saved.items()), "training moved the saved weights"
    bias_run = next(p for p in planned.values() if p.spec.method == "bias")
    lora_file = folder / "runs" / next(r for r in planned if r.startswith("lora")) / "trainable.safetensors"
    with pytest.raises(UserError, match="do not match the model's trainable parameters"):
        load_trainable(run_recipe(task.ctx, bias_run).prepare(seed=0), lora_file)
    with pytest.raises(UserError, match="not found"):
        load_trainable(run_recipe(task.ctx, bias_run).prepare(seed=0), tmp_path / "none.safetensors")
