"""One DP run on several processes, on CPU with the gloo backend: 2 processes compute the update of 1
(noise off), the noise on the sum is N(0, σ²C²) — added once, not once per process — and the ε
accounted is unchanged; then `torchrun -m dpbench run` end to end."""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp

from dpbench.config.suite import TrainingSettings
from dpbench.engine.trainer import DPTrainer, TrainerSetup, prepare_model
from dpbench.models.diffusion import build_unet, make_noise_scheduler
from dpbench.privacy.accounting import Budget, ClippingRule, DPStep
from dpbench.registry import METHODS

SIGMA, C = 1.3, 0.05
BUDGET = Budget(epsilon=4.0, delta=1e-5, accountant="rdp", noise_multiplier=SIGMA)


def _data():
    from dpbench.config.suite import DatasetRef
    from dpbench.data.base import load_dataset

    x, y = load_dataset(DatasetRef(name="digits", image_size=8, channels=1), None, "train")
    return x[:48].clone(), y[:48].clone()


def _trainer(data, distributed=None, sigma=0.0, clipping=None, method="lora", steps=3, ema=None,
             reproducible=True) -> DPTrainer:
    torch.manual_seed(0)
    x, y = data
    model = prepare_model(build_unet("tiny", 8, 1, 10), METHODS.get(method)({"target": "all"} if method == "lora" else None),
                          10, "cpu", torch.float64)
    step = DPStep(private=True, noise_multiplier=sigma, clipping=clipping or ClippingRule("fixed", max_grad_norm=C),
                  sample_rate=1 / 3, steps=steps, expected_batch_size=16, physical_batch_size=3, noise_multiplicity=2,
                  num_examples=len(x))
    return DPTrainer(model, make_noise_scheduler(), x, y,
                     TrainerSetup(step, TrainingSettings(ema_decay=ema), 0, budget=BUDGET, reproducible=reproducible),
                     "cpu", distributed=distributed)


def scenarios(distributed=None) -> dict:
    """What the tests compare, computed the same way by one process or by each rank of a group."""
    data = _data()
    out = {}
    tr = _trainer(data, distributed)
    out["update"] = torch.cat([g.flatten() for g in tr.compute_step_gradient(tr.sample_logical_batch())])

    quantile = ClippingRule("quantile", max_grad_norm=C, target_quantile=0.5, count_noise_std=1e-9)
    tr = _trainer(data, distributed, clipping=quantile)
    for _ in range(3):
        tr.train_step()
    out["quantile_params"] = torch.cat([p.detach().flatten() for p in tr.params])
    out["quantile_C"] = tr.clipper.max_grad_norm

    noised, clean = _trainer(data, distributed, sigma=SIGMA, method="full"), _trainer(data, distributed, method="full")
    indices = noised.sample_logical_batch()
    out["noise_on_sum"] = torch.cat([(a - b).flatten() for a, b in zip(noised.compute_step_gradient(indices),
                                                                        clean.compute_step_gradient(indices))]) * 16

    # default (secret) sampling: rank 0's OS-entropy seed is shared by the group, never derived from the seed
    tr = _trainer(data, distributed, reproducible=False)
    out["secret_batches"] = torch.stack([torch.zeros(len(data[1]), dtype=torch.bool).index_fill_(0, tr.sample_logical_batch(), True)
                                         for _ in range(6)])

    tr = _trainer(data, distributed, sigma=SIGMA, steps=3, ema=0.9)
    tr.train(progress=False)
    out["epsilon"], out["has_ema"] = tr.epsilon_spent(), tr.ema is not None
    out["params"] = torch.cat([p.detach().flatten() for p in tr.params])
    return out


def _rank(rank: int, world_size: int, port: int, folder: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from dpbench.engine.distributed import Distributed

    distributed = Distributed.from_env("cpu")
    try:
        torch.save(scenarios(distributed), os.path.join(folder, f"rank{rank}.pt"))
    finally:
        distributed.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Spawning the group and running every scenario three times takes ~30 s on 2 CPU cores.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gloo")
    mp.spawn(_rank, args=(2, _free_port(), str(folder)), nprocs=2, join=True)
    return [torch.load(folder / f"rank{r}.pt", weights_only=True) for r in range(2)], scenarios()


def test_two_processes_compute_the_update_of_one(two_processes):
    (rank0, rank1), single = two_processes
    assert torch.allclose(rank0["update"], single["update"], rtol=1e-10, atol=1e-15)
    assert torch.equal(rank0["update"], rank1["update"]), "every rank applies the same all-reduced update"
    # the quantile rule's clipped count is summed over ranks too: C follows the same path
    assert rank0["quantile_C"] == pytest.approx(single["quantile_C"], rel=1e-9) == rank1["quantile_C"]
    assert torch.allclose(rank0["quantile_params"], single["quantile_params"], rtol=1e-9, atol=1e-12)


def test_secret_poisson_batches_are_the_same_on_every_rank(two_processes):
    """Sampling comes from OS entropy (not the seed), yet both ranks must shard the same logical batch."""
    (rank0, rank1), single = two_processes
    assert torch.equal(rank0["secret_batches"], rank1["secret_batches"])
    assert not torch.equal(rank0["secret_batches"], single["secret_batches"]), "another group draws other batches"


def test_noise_is_added_once_with_std_sigma_C(two_processes):
    """The released sum minus the noise-free sum over ~10⁵ coordinates: N(0, (σC)²), not √2·σC (each rank
    adding its own noise) and not 0."""
    from scipy import stats

    (rank0, rank1), _ = two_processes
    noise = rank0["noise_on_sum"]
    assert torch.equal(noise, rank1["noise_on_sum"])
    n = noise.numel()
    assert n > 50_000
    std = float(noise.std())
    assert abs(std / (SIGMA * C) - 1) < 4 / math.sqrt(2 * n), f"std {std} vs σC = {SIGMA * C}"
    assert abs(float(noise.mean())) < 4 * SIGMA * C / math.sqrt(n)
    assert stats.kstest(noise.numpy() / (SIGMA * C), "norm").pvalue > 1e-3


def test_epsilon_is_accounted_once_on_rank_0(two_processes):
    (rank0, rank1), single = two_processes
    assert rank0["epsilon"] == single["epsilon"] > 0
    assert rank1["epsilon"] is None and rank0["has_ema"] and not rank1["has_ema"], "accountant and EMA on rank 0"
    assert torch.equal(rank0["params"], rank1["params"]), "the same weights on every rank"


def test_torchrun_trains_one_run_on_two_processes(tmp_path):
    """`torchrun --nproc-per-node 2 -m dpbench run SUITE --only ...` on CPU (gloo), with reproducible noise:
    the same weights as one process, one result written by rank 0, world_size recorded."""
    from safetensors.torch import load_file

    from dpbench.results import load_results

    try:
        from tests.test_runner import MICRO, _write_suite
    except ImportError:
        from test_runner import MICRO, _write_suite

    suite = _write_suite(tmp_path, privacy={**MICRO["privacy"], "reproducible": True, "physical_batch_size": 7})
    only = ["--only", "method=bias", "--only", "epsilon=5", "--no-progress", "--no-report"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DPBENCH_CACHE": str(tmp_path / "cache")}
    single = subprocess.run([sys.executable, "-m", "dpbench", "run", str(suite), *only, "--results-dir",
                             str(tmp_path / "one")], env=env, capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    group = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                            "--master-port", str(_free_port()), "-m", "dpbench", "run", str(suite), *only,
                            "--results-dir", str(tmp_path / "two")], env=env, capture_output=True, text=True,
                           timeout=600)
    assert group.returncode == 0, group.stderr[-3000:]
    assert group.stdout.count("micro: 1 finished run") == 1, "rank 0 alone reports"
    (one,), (two,) = load_results(tmp_path / "one" / "micro"), load_results(tmp_path / "two" / "micro")
    assert one.world_size == 1 and two.world_size == 2 and two.status == "ok"
    assert two.epsilon_spent == one.epsilon_spent
    a, b = (load_file(tmp_path / d / "micro" / "runs" / "bias-eps5-seed0" / "trainable.safetensors") for d in ("one", "two"))
    for name in a:
        assert torch.allclose(a[name], b[name], rtol=1e-4, atol=1e-6), name
