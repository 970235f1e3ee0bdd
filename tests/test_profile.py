"""`dpbench profile` on a real (tiny) model, then `dpbench regress` on what it wrote, through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

from dpbench.cli import main


def test_profile_then_regress(tmp_path, capsys):
    profile = tmp_path / "profile.json"
    assert main(["profile", "--preset", "tiny", "--image-size", "8", "--batch-sizes", "4,8", "--steps", "2",
                 "--methods", "bias,lora", "--no-progress", "--out", str(profile)]) == 0
    data = json.loads(profile.read_text())
    assert data["kind"] == "dpbench-profile"
    settings = {(e["method_label"], e["mode"], e["physical_batch_size"]) for e in data["entries"]}
    assert settings == {(m, mode, b) for m in ("bias", "lora") for mode in ("dp", "nonprivate") for b in (4, 8)}
    for e in data["entries"]:
        assert e["step_time_s"] > 0 and e["peak_memory_bytes"] is not None and e["trainable_params"] > 0
    capsys.readouterr()

    assert main(["regress", str(profile), "--baseline", str(profile)]) == 0, "a profile never regresses against itself"

    smaller = json.loads(profile.read_text())
    for e in smaller["entries"]:
        e["peak_memory_bytes"] = max(1, e["peak_memory_bytes"] // 10)
        e["total_peak_memory_bytes"] = max(1, e["total_peak_memory_bytes"] // 10)
    low_memory = tmp_path / "baseline-low-memory.json"
    low_memory.write_text(json.dumps(smaller))
    assert main(["regress", str(profile), "--baseline", str(low_memory)]) == 1
    assert "WORSE" in capsys.readouterr().out

    faster_dp = json.loads(profile.read_text())
    for e in faster_dp["entries"]:
        if e["mode"] == "dp":
            e["step_time_s"] /= 10
            e["examples_per_s"] *= 10
    fast = tmp_path / "baseline-fast-dp.json"
    fast.write_text(json.dumps(faster_dp))
    assert main(["regress", str(profile), "--baseline", str(fast)]) == 1


def test_profile_of_a_suite_uses_the_suites_training_settings(tmp_path, monkeypatch):
    """Issue 9: `dpbench profile SUITE` once ignored the suite's optimizer, mixed precision and engine."""
    import yaml

    from dpbench.results import Profile, read_model

    raw = yaml.safe_load((Path(__file__).resolve().parents[1] / "suites" / "quickstart.yaml").read_text())
    raw["pretrain"]["steps"] = 5
    raw["data"]["public"]["options"] = {"size": 200}
    raw["training"]["grad_sample_mode"] = "functorch"
    raw["methods"] = [{"name": "bias"}]
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(raw))
    out = tmp_path / "p.json"
    assert main(["profile", str(path), "--batch-sizes", "4", "--steps", "1", "--no-progress", "--out", str(out),
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    profile = read_model(out, Profile)
    assert profile.grad_sample_mode == "functorch"
    assert {e.grad_sample_mode for e in profile.entries} == {"functorch"}


def test_scaling_profile_spans_presets_and_sizes(tmp_path):
    from dpbench.config.suite import TrainingSettings
    from dpbench.reporting.profiles import format_profile
    from dpbench.results import Profile, read_model

    out = tmp_path / "scaling.json"
    assert main(["profile", "--preset", "tiny,small", "--image-size", "8,16", "--batch-sizes", "2", "--steps", "1",
                 "--methods", "full,lora", "--no-progress", "--out", str(out)]) == 0
    profile = read_model(out, Profile)
    assert {(e.preset, e.image_size) for e in profile.entries} == {(p, s) for p in ("tiny", "small") for s in (8, 16)}
    # without a suite, the profile measures the engine a run uses by default (it once fell back to Opacus hooks)
    assert profile.grad_sample_mode == TrainingSettings().grad_sample_mode == "bookkeeping"
    sizes = {e.preset: e.total_params for e in profile.entries if e.method == "full"}
    assert sizes["small"] > sizes["tiny"]
    for e in profile.entries:
        assert e.total_peak_memory_bytes >= e.peak_memory_bytes and e.memory_breakdown["parameters"] > 0
    full_dp = [e for e in profile.entries if e.method == "full" and e.mode == "dp"]
    assert all(e.memory_breakdown["optimizer_state"] == 2 * e.memory_breakdown["trainable"] for e in full_dp)
    assert "small" in format_profile(profile)


def test_total_memory_counts_the_engines_buffers_held_between_steps():
    """Book-keeping keeps each layer's per-example gradient workspace from step to step. On CPU the held
    part of the total is counted from the tensors and only the step is measured, so a workspace that is
    already resident when the measured step starts was once missing from the total: full DP's total on
    ddpm32 was ~1 GiB short, which flattered it next to the adapters."""
    import torch

    from dpbench.config.suite import TrainingSettings
    from dpbench.engine.measure import StepProbe
    from dpbench.engine.setup import ModelRecipe
    from dpbench.models.diffusion import build_unet, make_noise_scheduler

    torch.manual_seed(0)
    recipe = ModelRecipe.of(build_unet("tiny", 8, 1, 10), "full", {}, 10, "cpu", scheduler=make_noise_scheduler())
    probe = StepProbe(recipe, TrainingSettings(ema_decay=None), batch=4, private=True, image_shape=(1, 8, 8))
    try:
        memory = probe.memory(steps=1)
        held = probe.trainer.backend.held_bytes()
    finally:
        probe.close()
    breakdown = memory["memory_breakdown"]
    # the instantiated weight gradients (most of full DP's per-example state; biases and norms come fresh)
    assert 0.5 * breakdown["per_sample_gradients"] < held <= breakdown["per_sample_gradients"]
    assert memory["total_peak_memory_bytes"] - memory["peak_memory_bytes"] == (
        breakdown["parameters"] + breakdown["optimizer_state"] + breakdown["ema"] + held)
