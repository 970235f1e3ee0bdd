"""Realistic small result directories and profile files for the report and regression tests (input data:
every RESULT_KEY / BASELINE_KEY is written, as a finished suite run would)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from dpbench.results import BASELINE_KEYS, RESULT_KEYS, write_bytes_atomic, write_json_atomic

METHODS = ("full", "lora", "loda")
EPSILONS = (1.0, 10.0, math.inf)
SEEDS = (0, 1)
SUITE = "tiny-mnist"
GIT_SHA = "0123456789abcdef0123456789abcdef01234567"
DATASET_LABEL = "MNIST-10k"

# per method: trainable params, non-private step time (s), non-private peak memory (bytes)
METHOD_COST = {"full": (120_000, 0.050, 300 * 2**20), "lora": (8_000, 0.030, 120 * 2**20),
               "loda": (2_000, 0.020, 90 * 2**20), "bias": (600, 0.018, 80 * 2**20)}
DP_TIME_FACTOR = {"full": 4.0, "lora": 1.8, "loda": 1.4, "bias": 1.3}
DP_MEMORY_FACTOR = {"full": 3.0, "lora": 1.5, "loda": 1.2, "bias": 1.1}


def sample_grid_png(seed: int, classes: int = 10, per_class: int = 8, size: int = 12) -> bytes:
    """A small real PNG sample grid (rows = classes) drawn with PIL."""
    import io

    from PIL import Image

    rng = np.random.default_rng(seed)
    grid = (rng.random((classes * size, per_class * size)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(grid, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def run_id_of(method: str, eps: float, seed: int) -> str:
    return f"{method}-eps{'inf' if math.isinf(eps) else f'{eps:g}'}-seed{seed}"


def make_results_dir(root, suite: str = SUITE, methods=METHODS, epsilons=EPSILONS, seeds=SEEDS,
                     mem_scale: float = 1.0, dp_time_scale: float = 1.0, np_time_scale: float = 1.0,
                     samples: bool = True, baselines: bool = True, null_fid_for: tuple = ()) -> Path:
    """Write ``root/runs/<run_id>/result.json`` (+ samples.png) for methods × ε × seeds, and baselines.json.

    ``mem_scale`` scales every peak memory, ``dp_time_scale`` / ``np_time_scale`` the step time of the DP /
    non-private runs (throughput follows)."""
    root = Path(root)
    for method in methods:
        params, np_step, np_mem = METHOD_COST[method]
        for eps in epsilons:
            for seed in seeds:
                private = math.isfinite(eps)
                jitter = 1.0 + 0.01 * seed
                step = np_step * jitter * (DP_TIME_FACTOR[method] * dp_time_scale if private else np_time_scale)
                mem = int(np_mem * (DP_MEMORY_FACTOR[method] if private else 1.0) * mem_scale)
                acc_np = {"full": 0.95, "lora": 0.93, "loda": 0.92, "bias": 0.88}[method]
                acc = acc_np - (0.3 / eps if private else 0.0) - 0.01 * seed
                fid_np = {"full": 4.0, "lora": 6.0, "loda": 7.5, "bias": 12.0}[method]
                fid = None if method in null_fid_for else round(
                    fid_np + ((30.0 + 5 * fid_np) / eps if private else 0.0) + 0.5 * seed, 3)
                run_id = run_id_of(method, eps, seed)
                record = {
                    "schema_version": 1, "run_id": run_id, "suite": suite, "method": method,
                    "method_label": method, "dataset": "mnist", "dataset_label": DATASET_LABEL,
                    "public_dataset": "emnist-letters", "seed": seed, "epsilon": eps, "delta": 1e-5,
                    "epsilon_spent": eps * 0.98 if private else None, "accountant": "prv",
                    "noise_multiplier": 1.1 / math.sqrt(eps) if private else 0.0, "sample_rate": 0.0256,
                    "steps": 200, "expected_batch_size": 256, "physical_batch_size": 64,
                    "max_grad_norm": 1.0, "noise_multiplicity": 1, "trainable_params": params,
                    "total_params": 150_000, "downstream_accuracy": acc, "downstream_accuracy_std": 0.004,
                    "downstream_accuracies": [acc - 0.004, acc, acc + 0.004], "classifier": "cnn",
                    "fid": fid, "fid_backbone": "random_cnn", "fid_num_samples": 1000,
                    "fid_reference": "mnist:test[:10000]", "precision": 0.6 + 0.01 * seed,
                    "recall": 0.5 - 0.01 * seed, "peak_memory_bytes": mem, "memory_kind": "cpu_rss_delta",
                    "nvml_peak_memory_bytes": None, "throughput_examples_per_s": 64 / step,
                    "step_time_s": step, "train_seconds": step * 200, "sample_seconds": 3.5,
                    "eval_seconds": 7.25, "final_loss": 0.05 + 0.01 * seed,
                    "samples_grid": "samples.png" if samples else None, "device": "cpu",
                    "versions": {"python": "3.11.7", "torch": "2.5.1", "opacus": "1.6.0", "dpbench": "0.1.0"},
                    "git_sha": GIT_SHA, "created_at": f"2025-01-0{1 + seed}T12:00:00+00:00", "status": "ok",
                }
                record = {k: record.get(k) for k in RESULT_KEYS}  # exactly the schema's keys, even as it grows
                run = root / "runs" / run_id
                write_json_atomic(run / "result.json", record)
                if samples:
                    write_bytes_atomic(run / "samples.png", sample_grid_png(seed))
    if baselines:
        base = {
            "schema_version": 1, "suite": suite, "dataset": "mnist", "dataset_label": DATASET_LABEL,
            "fid_backbone": "random_cnn", "fid_num_samples": 1000, "fid_reference": "mnist:test[:10000]",
            "pretrained_fid": 60.0, "pretrained_precision": 0.3, "pretrained_recall": 0.2,
            "pretrained_accuracy": 0.45, "real_data_accuracy": 0.985, "real_data_accuracy_std": 0.002,
            "classifier": "cnn",
        }
        base = {k: base.get(k) for k in BASELINE_KEYS}
        write_json_atomic(root / "baselines.json", base)
    return root


def make_profile(path, methods=METHODS, batch_sizes=(16, 32, 64), mem_scale: float = 1.0,
                 dp_time_scale: float = 1.0, np_time_scale: float = 1.0, max_batch: bool = False) -> Path:
    """A profile JSON file as the profiler writes it."""
    entries = []
    for method in methods:
        params, np_step, np_mem = METHOD_COST[method]
        for batch in batch_sizes:
            for mode in ("dp", "nonprivate"):
                private = mode == "dp"
                step = np_step * batch / 64 * (DP_TIME_FACTOR[method] * dp_time_scale if private else np_time_scale)
                mem = int(np_mem * batch / 64 * (DP_MEMORY_FACTOR[method] if private else 1.0) * mem_scale)
                entries.append({
                    "method": method, "method_label": method, "mode": mode, "physical_batch_size": batch,
                    "step_time_s": step, "examples_per_s": batch / step, "peak_memory_bytes": mem,
                    "memory_kind": "cpu_rss_delta", "trainable_params": params, "total_params": 150_000,
                })
    profile = {
        "schema_version": 1, "kind": "dpbench-profile", "created_at": "2025-01-03T10:00:00+00:00",
        "device": "cpu", "versions": {"torch": "2.5.1", "opacus": "1.6.0"}, "git_sha": GIT_SHA,
        "source": "preset:small", "image_size": 28, "entries": entries,
    }
    if max_batch:
        profile["max_batch_size"] = {m: {"dp": 512, "nonprivate": 2048} for m in methods}
    write_json_atomic(path, profile)
    return Path(path)
