"""Step time of book-keeping clipping vs. Opacus' hooks vs. a non-private step, per method (plain script).

    OMP_NUM_THREADS=2 PYTHONPATH=. python benchmarks/bench_bookkeeping.py [--steps 6] [--path auto] [--rule memory] [--profile]
    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bench_bookkeeping.py --clock cpu

On the ``small`` preset at 28×28, batch 32, K = 1, float32 on CPU, three steps are timed *interleaved*
(drift on a shared machine hits all alike) on three copies of one model and one fixed batch:

- non-private: per-example losses (as DPTrainer.example_losses builds them), ``losses.sum().backward()``;
- Opacus DP: DPTrainer.per_example_gradients (GradSampleHooks) + clip + the clipped sum, as the trainer does;
- BK DP: BookKeepingClipper.weighted_sum with clipping weights min(1, C/‖g_i‖).

Noise, the optimiser and accounting are left out: they are the same for both DP engines. ``--profile``
prints, per method, the layers whose BK post-processing (norms + weighted sum) costs most.

``--clock cpu`` times with the process's CPU time instead of the wall clock: with one thread, it does
not count the time other processes on a shared machine take the core (wall-clock ratios at 2 threads
were seen to swing by 2x and more while other jobs ran).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections import defaultdict

import torch

from dpbench.engine.bookkeeping import BookKeepingClipper
from dpbench.config.suite import TrainingSettings
from dpbench.engine.measure import probe_step
from dpbench.engine.trainer import DPTrainer, TrainerSetup, prepare_model
from dpbench.models.diffusion import build_unet, make_noise_scheduler
from dpbench.registry import METHODS

BATCH, IMAGE, CLASSES, MAX_GRAD_NORM = 32, 28, 10, 1.0
METHOD_CASES = {
    "full": ("full", {}),
    "bias": ("bias", {}),
    "attention": ("attention", {}),
    "lora": ("lora", {"target": "attention"}),
    "loda": ("loda", {}),
}


def trainer_for(model, images, labels, private: bool) -> DPTrainer:
    from dpbench.privacy.accounting import ClippingRule

    step = probe_step(BATCH, private, clipping=ClippingRule("fixed", MAX_GRAD_NORM))
    # The Opacus engine, explicitly: this script compares it with the book-keeping clipper.
    return DPTrainer(model, make_noise_scheduler(), images, labels,
                     TrainerSetup(step, TrainingSettings(ema_decay=None, grad_sample_mode="hooks"), 0), "cpu")


def clipping_weights(norms: torch.Tensor) -> torch.Tensor:
    return (MAX_GRAD_NORM / norms.clamp_min(1e-12)).clamp(max=1.0)


class LayerTimer:
    """Accumulates the wall time of each BK layer's norm + weighted-sum work (for --profile)."""

    def __init__(self, clipper: BookKeepingClipper, clock):
        self.seconds, self.clock = defaultdict(float), clock
        for layer in clipper._layers:
            layer.per_example = self._timed(layer.name, layer.per_example)

    def _timed(self, name, per_example):
        def run(batch, path):
            t0 = self.clock()
            norms, sums = per_example(batch, path)
            self.seconds[name] += self.clock() - t0
            return norms, {attr: self._timed_sum(name, fn) for attr, fn in sums.items()}
        return run

    def _timed_sum(self, name, fn):
        def run(weights):
            t0 = self.clock()
            out = fn(weights)
            self.seconds[name] += self.clock() - t0
            return out
        return run


def bench_method(method: str, pretrained, steps: int, path: str, profile: bool, clock=time.perf_counter,
                 rule: str = "memory") -> dict:
    name, options = METHOD_CASES[method]
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(BATCH, 1, IMAGE, IMAGE, generator=gen) * 2 - 1
    labels = torch.randint(0, CLASSES, (BATCH,), generator=gen)
    model = prepare_model(pretrained, METHODS.get(name)(options), CLASSES, "cpu")
    nonprivate = trainer_for(model, images, labels, private=False)
    opacus = trainer_for(copy.deepcopy(model), images, labels, private=True)
    bk = trainer_for(copy.deepcopy(model), images, labels, private=False)
    clipper = BookKeepingClipper(bk.model, bk.params, 1, path=path, rule=rule)
    batch = (images, *nonprivate.draw_diffusion_inputs(labels))

    def nonprivate_step():
        nonprivate.example_losses(*batch).sum().backward()
        nonprivate.optimizer.zero_grad(set_to_none=True)

    def opacus_step():
        return opacus.backend.weighted_sum(lambda: opacus.example_losses(*batch), clipping_weights)

    def bk_step():
        return clipper.weighted_sum(lambda: bk.example_losses(*batch), clipping_weights)

    runs = {"nonprivate": nonprivate_step, "opacus": opacus_step, "bk": bk_step}
    times = defaultdict(list)
    for step in range(2 + steps):  # two warm-up rounds
        for key, run in runs.items():
            t0 = clock()
            run()
            if step >= 2:
                times[key].append(clock() - t0)
    result = {key: statistics.median(ts) * 1e3 for key, ts in times.items()}
    result["trainable"] = sum(p.numel() for p in bk.params)
    result["paths"] = clipper.weight_paths
    if profile:
        timer = LayerTimer(clipper, clock)
        for _ in range(3):
            bk_step()
        result["layer_ms"] = {k: v / 3 * 1e3 for k, v in timer.seconds.items()}
    clipper.remove()
    opacus.finish()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--methods", nargs="*", default=list(METHOD_CASES), choices=list(METHOD_CASES))
    parser.add_argument("--path", default="auto", choices=["auto", "ghost", "instantiate"])
    parser.add_argument("--rule", default="memory", choices=["memory", "time"], help="BK's per-layer rule for path=auto")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--clock", default="wall", choices=["wall", "cpu"])
    args = parser.parse_args()
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    torch.manual_seed(0)
    pretrained = build_unet("small", IMAGE, 1, CLASSES)
    print(f"small preset, {IMAGE}x{IMAGE}, batch {BATCH}, K=1, float32, {torch.get_num_threads()} threads, "
          f"median of {args.steps} interleaved steps, {args.clock} clock, BK path={args.path}, rule={args.rule}")
    head = (f"{'method':<10} {'trainable':>9} {'non-priv ms':>11} {'opacus ms':>9} {'BK ms':>7} "
            f"{'opacus/np':>9} {'BK/np':>6} {'BK ex/s':>8}")
    print(head + "\n" + "-" * len(head))
    for method in args.methods:
        r = bench_method(method, pretrained, args.steps, args.path, args.profile, clock, args.rule)
        npv = r["nonprivate"]
        print(f"{method:<10} {r['trainable']:>9} {npv:>11.0f} {r['opacus']:>9.0f} {r['bk']:>7.0f} "
              f"{r['opacus'] / npv:>9.2f} {r['bk'] / npv:>6.2f} {BATCH / r['bk'] * 1e3:>8.1f}", flush=True)
        if args.profile:
            ghosts = sorted(n for n, p in r["paths"].items() if p == "ghost")
            print(f"    ghost-norm weights: {len(ghosts)} of {len(r['paths'])} ({', '.join(ghosts[:4])}{', …' if len(ghosts) > 4 else ''})")
            top = sorted(r["layer_ms"].items(), key=lambda kv: -kv[1])[:6]
            total = sum(r["layer_ms"].values())
            print(f"    BK per-layer work {total:.0f} ms; costliest: "
                  + ", ".join(f"{n} {ms:.1f} ({r['paths'].get(n, 'bias')})" for n, ms in top), flush=True)


if __name__ == "__main__":
    main()
