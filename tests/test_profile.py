"""`dpbench profile` on a real (tiny) model, then `dpbench regress` on what it wrote, through the CLI."""

from __future__ import annotations

import json

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
