"""Realistic small result directories, profiles and audits for the report, summary and regression tests,
built as the typed result models (dpbench.results) and written with ``write_model``, as a suite run writes them.

The numbers follow a small cost and accuracy model, chosen so that the statistics have something to find:

* three seeds per cell, with a shared per-seed effect (the seeds' data order and sampling) that pairing cancels;
* at every ε, full has the highest mean accuracy; its lead over lora is NOT significant (their per-seed
  differences change sign), its lead over loda IS significant (loda is consistently 0.07 lower);
* precision and recall are 0 for every run, as they are at this scale;
* DP steps are slower and larger than non-private ones by a per-method factor (full 4x / 3x).
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Optional

import numpy as np

from dpbench.results import (AuditResult, Baselines, ClippingDiagnostics, ClippingInfo, Profile, ProfileEntry,
                             RunResult, format_epsilon, read_model, write_bytes_atomic, write_model)

METHODS = ("full", "lora", "loda")
EPSILONS = (1.0, 10.0, math.inf)
SEEDS = (0, 1, 2)
SUITE = "tiny-mnist"
GIT_SHA = "0123456789abcdef0123456789abcdef01234567"
DATASET_LABEL = "MNIST-10k (16x16)"
DEVICE = "cpu:x86_64 x2 threads"
VERSIONS = {"python": "3.11.7", "torch": "2.5.1", "opacus": "1.6.0", "dpbench": "0.1.0"}
TOTAL_PARAMS = 150_000
PHYSICAL_BATCH = 64
EXPECTED_BATCH = 256
PRETRAINED_ACCURACY = 0.45
REAL_DATA_ACCURACY = 0.985

METHOD_SETTINGS = {  # trainable params, lr, options, non-private step time (s), activations (bytes)
    "full": (TOTAL_PARAMS, 5e-4, {}, 0.050, 60 * 2**20),
    "lora": (8_000, 5e-3, {"rank": 4, "target": "all"}, 0.030, 48 * 2**20),
    "loda": (2_000, 5e-3, {"rank": 4, "hidden": 16, "target": "all"}, 0.020, 44 * 2**20),
    "bias": (600, 5e-3, {}, 0.018, 40 * 2**20),
}
DP_TIME_FACTOR = {"full": 4.0, "lora": 1.8, "loda": 1.4, "bias": 1.3}
NONPRIVATE_ACCURACY = {"full": 0.93, "lora": 0.925, "loda": 0.86, "bias": 0.84}
PRIVACY_COST = 0.25  # accuracy lost at ε = 1 (cost / ε)
SEED_EFFECT = (0.0, 0.02, -0.015)
METHOD_SEED_JITTER = {"full": (0.0, 0.0, 0.0), "lora": (-0.02, 0.025, -0.015), "loda": (0.005, -0.005, 0.0),
                      "bias": (0.01, -0.01, 0.0)}
NONPRIVATE_FID = {"full": 4.0, "lora": 6.0, "loda": 7.5, "bias": 12.0}


def sample_grid_png(seed: int, classes: int = 10, per_class: int = 8, cell: int = 12) -> bytes:
    """A real PNG sample grid (rows = classes) drawn with PIL."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = (rng.random((classes * cell, (per_class + 2) * cell)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def run_id_of(method: str, eps: float, seed: int) -> str:
    return f"{method}-eps{format_epsilon(eps)}-seed{seed}"


def accuracy_of(method: str, eps: float, seed: int) -> float:
    cost = PRIVACY_COST / eps if math.isfinite(eps) else 0.0
    small_noise = 0.003 * ((7 * seed + (int(eps) if math.isfinite(eps) else 5)) % 3 - 1)
    shared = SEED_EFFECT[seed % 3] + small_noise  # cancels in a paired difference
    return NONPRIVATE_ACCURACY[method] - cost + shared + METHOD_SEED_JITTER[method][seed % 3]


def _memory(method: str, private: bool, mem_scale: float) -> dict:
    trainable, _, _, _, activations = METHOD_SETTINGS[method]
    breakdown = {"parameters": TOTAL_PARAMS * 4, "trainable": trainable * 4, "optimizer_state": trainable * 8,
                 "ema": trainable * 4}
    if private:
        breakdown["per_sample_gradients"] = trainable * 4 * PHYSICAL_BATCH
    step = int((activations * (1.5 if private else 1.0) + breakdown.get("per_sample_gradients", 0)) * mem_scale)
    total = int(step + (breakdown["parameters"] + breakdown["optimizer_state"] + breakdown["ema"]) * mem_scale)
    return {"peak_memory_bytes": step, "total_peak_memory_bytes": total, "memory_breakdown": breakdown,
            "memory_kind": "cpu_rss"}


def make_run(method: str, eps: float, seed: int, *, suite: str = SUITE, method_index: Optional[int] = None,
             mem_scale: float = 1.0, dp_time_scale: float = 1.0, np_time_scale: float = 1.0,
             samples: bool = True) -> RunResult:
    """One finished run as the runner writes it."""
    trainable, lr, options, np_step, _ = METHOD_SETTINGS[method]
    private = math.isfinite(eps)
    step = np_step * (1 + 0.01 * seed) * (DP_TIME_FACTOR[method] * dp_time_scale if private else np_time_scale)
    accuracy = accuracy_of(method, eps, seed)
    sigma = 1.1 / math.sqrt(eps) if private else 0.0
    diagnostics = None
    if private:
        weak = method == "loda" and eps <= 1
        diagnostics = ClippingDiagnostics(
            source="public_data", unclipped_fraction=0.3, median_gradient_norm=2.5,
            signal_to_noise=0.04 if weak else 1.2,
            warning="signal-to-noise 0.04: the noise drowns the clipped gradient" if weak else None)
    return RunResult(
        run_id=run_id_of(method, eps, seed), suite=suite, method=method, method_label=method,
        method_options=options, method_index=method_index if method_index is not None else _index(method),
        seed=seed, config_hash=f"hash-{method}-{format_epsilon(eps)}", dataset="mnist", dataset_label=DATASET_LABEL,
        public_dataset="fashion_mnist", epsilon=eps, delta=1e-5, epsilon_spent=eps * 0.98 if private else None,
        accountant="prv" if private else None, noise_multiplier=sigma,
        noise_source="os_entropy" if private else "none", sampling_source="os_entropy", sample_rate=EXPECTED_BATCH / 10_000, steps=79,
        expected_batch_size=EXPECTED_BATCH, physical_batch_size=PHYSICAL_BATCH, noise_multiplicity=1,
        clipping=ClippingInfo(mode="fixed", max_grad_norm=1.0, gradient_noise_multiplier=sigma) if private
        else ClippingInfo(mode="none"),
        clipping_diagnostics=diagnostics, lr=lr, class_embedding_lr=0.03,
        downstream_accuracy=accuracy, downstream_accuracy_std=0.004,
        downstream_accuracies=[accuracy - 0.004, accuracy, accuracy + 0.004],
        per_class_accuracy=[round(min(1.0, accuracy + 0.04 * math.cos(k + seed)), 4) for k in range(10)],
        classifier="cnn", fid=round(NONPRIVATE_FID[method] + ((30 + 5 * NONPRIVATE_FID[method]) / eps if private else 0)
                                    + 0.5 * seed, 3),
        fid_backbone="random_cnn", fid_num_samples=500, fid_reference="mnist:test[:10000]", precision=0.0, recall=0.0,
        trainable_params=trainable, total_params=TOTAL_PARAMS, **_memory(method, private, mem_scale),
        throughput_examples_per_s=EXPECTED_BATCH / step, step_time_s=step, train_seconds=step * 79,
        sample_seconds=18.0, eval_seconds=16.0, final_loss=None if private else 0.05 + 0.01 * seed,
        samples_grid="samples.png" if samples else None, device=DEVICE, versions=VERSIONS, git_sha=GIT_SHA,
        created_at=f"2025-01-0{1 + seed % 9}T12:00:00+00:00")


def _index(method: str) -> int:
    return list(METHOD_SETTINGS).index(method)


def make_results_dir(root, suite: str = SUITE, methods=METHODS, epsilons=EPSILONS, seeds=SEEDS, *,
                     samples: bool = True, baselines: bool = True, **run_options) -> Path:
    """``root/runs/<run_id>/result.json`` (+ samples.png) for methods × ε × seeds, and baselines.json.
    ``run_options`` go to :func:`make_run` (mem_scale, dp_time_scale, np_time_scale)."""
    root = Path(root)
    for method in methods:
        for eps in epsilons:
            for seed in seeds:
                run = make_run(method, eps, seed, suite=suite, samples=samples, **run_options)
                folder = root / "runs" / run.run_id
                write_model(folder / "result.json", run, inside=root)
                if samples:
                    write_bytes_atomic(folder / "samples.png", sample_grid_png(seed), inside=root)
    if baselines:
        write_model(root / "baselines.json", make_baselines(suite, samples), inside=root)
        if samples:
            write_bytes_atomic(root / "baseline" / "samples.png", sample_grid_png(99), inside=root)
    return root


def make_baselines(suite: str = SUITE, samples: bool = True) -> Baselines:
    return Baselines(
        suite=suite, dataset="mnist", dataset_label=DATASET_LABEL, fid_backbone="random_cnn", fid_num_samples=500,
        fid_reference="mnist:test[:10000]", classifier="cnn", pretrained_fid=60.0, pretrained_precision=0.0,
        pretrained_recall=0.0, pretrained_accuracy=PRETRAINED_ACCURACY,
        pretrained_accuracies=[0.44, 0.45, 0.46], real_data_accuracy=REAL_DATA_ACCURACY,
        real_data_accuracy_std=0.002, samples_grid="baseline/samples.png" if samples else None, device=DEVICE,
        versions=VERSIONS, git_sha=GIT_SHA, created_at="2025-01-01T10:00:00+00:00")


def update_run(results_dir, run_id: str, **changes) -> RunResult:
    """Rewrite one run's result.json with ``changes`` applied (validated like any result)."""
    path = Path(results_dir) / "runs" / run_id / "result.json"
    run = read_model(path, RunResult)
    updated = RunResult.model_validate({**run.model_dump(), **changes})
    write_model(path, updated, inside=results_dir)
    return updated


def write_audit(results_dir, run: RunResult, *, eps_low: float, fault: Optional[str] = None,
                fdp: Optional[dict] = None) -> Path:
    """``fdp``: mu_lower_bound, claimed_mu_clt, fdp_refutes_claim (absent: an audit from before the f-DP audit)."""
    audit = AuditResult(
        run_id=run.run_id, suite=run.suite, method=run.method, method_label=run.method_label, epsilon=run.epsilon,
        delta=run.delta, fault=fault, canaries=1000, epsilon_lower_bound=eps_low, confidence=0.95,
        threat_models=[{"name": "gradient canary", "eps_low": eps_low, "guesses": 200, "correct": 131 if fault else 104,
                        "k_plus": 100, "k_minus": 100}],
        passed=eps_low <= run.epsilon and fault is None, seconds=120.0, device=DEVICE, git_sha=GIT_SHA, **(fdp or {}))
    return write_model(Path(results_dir) / "runs" / run.run_id / "audit.json", audit, inside=results_dir)


# ------------------------------------------------------------------------------------------ profiles
# (preset, image size, total parameters): the crossover lies between tiny and small for lora's DP step time.
MODEL_SIZES = (("tiny", 16, TOTAL_PARAMS), ("small", 28, 1_200_000), ("base", 32, 9_000_000))


def _profile_entry(method: str, preset: str, image_size: int, params: int, batch: int, mode: str,
                   mem_scale: float, dp_time_scale: float, np_time_scale: float) -> ProfileEntry:
    """A small cost model: full's DP step scales with all its parameters; an adapter pays a fixed hook
    overhead (which dominates on the tiny model) but per-example gradients of few parameters."""
    trainable = params if method == "full" else max(1, params * METHOD_SETTINGS[method][0] // TOTAL_PARAMS)
    np_step = 0.02 * (params / TOTAL_PARAMS) ** 0.8 * batch / 64 * (1.0 if method == "full" else 1.3)
    dp_step = np_step * 3.0 if method == "full" else np_step * 1.6 + 0.05 * batch / 64
    activations = 20 * 2**20 * (params / TOTAL_PARAMS) ** 0.5 * batch / 64
    weights = params * 4 + trainable * 12
    private = mode == "dp"
    step_memory = activations * (1.2 if private else 1.0) + (trainable * 4 * batch if private else 0)
    step = (dp_step * dp_time_scale) if private else np_step * np_time_scale
    return ProfileEntry(
        method=method, method_label=method, mode=mode, physical_batch_size=batch, preset=preset,
        image_size=image_size, grad_sample_mode="hooks", step_time_s=step, examples_per_s=batch / step,
        peak_memory_bytes=int(step_memory * mem_scale),
        total_peak_memory_bytes=int((step_memory + weights) * mem_scale),
        memory_kind="cpu_rss", trainable_params=trainable, total_params=params + (0 if method == "full" else trainable))


def make_profile(path, methods=METHODS, batch_sizes=(16, 32, 64), model_sizes=MODEL_SIZES[:1], *,
                 mem_scale: float = 1.0, dp_time_scale: float = 1.0, np_time_scale: float = 1.0,
                 max_batch: bool = False) -> Path:
    """A profile file as `dpbench profile` writes it (one model size by default; MODEL_SIZES for scaling)."""
    entries = [_profile_entry(method, preset, size, params, batch, mode, mem_scale, dp_time_scale, np_time_scale)
               for preset, size, params in model_sizes for method in methods for batch in batch_sizes
               for mode in ("nonprivate", "dp")]
    profile = Profile(source="preset:" + ",".join(p for p, _, _ in model_sizes),
                      image_size=model_sizes[0][1] if len(model_sizes) == 1 else None, grad_sample_mode="hooks",
                      entries=entries, max_batch_size={m: {"dp": 512, "nonprivate": 2048} for m in methods} if max_batch
                      else {}, device=DEVICE, versions=VERSIONS, git_sha=GIT_SHA,
                      created_at="2025-01-03T10:00:00+00:00")
    return write_model(path, profile)
