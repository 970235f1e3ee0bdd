"""The one DP-SGD loop every method trains with: sampling, per-example gradients, clipping, noise, accounting.

Per logical step t = 1..T:

1. **Poisson sampling**: each private example joins the logical batch independently with probability
   q, drawn from a generator seeded by the operating system (amplification by subsampling assumes
   nobody knows who was sampled; dpbench/privacy/noise.py). An empty batch is a *noise-only*
   step — it still adds noise, steps the optimiser and the accountant — never skipped (skipping would
   make the step count data-dependent) and never forwarded (the UNet crashes on an empty batch).
2. **Diffusion draws** for the whole logical batch: each example is repeated K times with independent
   (timestep, noise, label-dropout) draws. Drawn per logical batch, so the physical batch size and
   the number of processes never change what an example sees.
3. **Virtual batches**: the logical batch (this process's shard of it) is processed in physical chunks.
   A chunk that runs out of GPU memory is dropped and redone at half the physical batch (down to
   ``training.min_physical_batch_size``): nothing of it was counted yet, the draws were made before
   and the noise is added after the chunks, so the step's update is the one the smaller physical
   batch computes, at no cost in privacy.
4. **Noise multiplicity K**: the K losses are *averaged inside the example's loss* before its
   gradient is clipped, so one example still contributes one gradient of sensitivity-bounded norm
   (treating K rows as K examples would multiply the sensitivity by K).
5. **Clipping** (dpbench/privacy/clipping.py: fixed C, automatic, or adaptive quantile) of per-example
   gradients from a backend (dpbench/engine/backends.py), in fp32 or wider, summed.
6. **Noise** N(0, σ²·S²) on the sum (S the rule's sensitivity), added once — across processes too —
   from a generator seeded by the operating system (dpbench/privacy/noise.py), divided by the
   *expected* batch size (unbiased under Poisson sampling); then the optimiser step, an EMA update
   of the trainable weights (post-processing, free in privacy) and one accountant step.

ε = inf is the non-private reference: same sampling, draws, batches, K, optimiser and step count,
plain autograd gradients (no clipping, no noise). Only such runs keep their training losses: a
private run's loss is a statistic of private data that did not pass through the mechanism.
"""

from __future__ import annotations

import copy
import logging
import statistics
import time
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Optional

import torch
import torch.nn as nn

from dpbench.engine.backends import make_backend
from dpbench.engine.memory import is_out_of_memory
from dpbench.models.diffusion import denoising_loss_rows, num_label_rows
from dpbench.privacy.accounting import Budget, DPStep, epsilon_spent, make_accountant
from dpbench.privacy.clipping import Clipper, accumulation_dtype
from dpbench.privacy.noise import DIFFUSION_STREAM, SAMPLING_STREAM, derive_seed, noise_generator, secret_seed

if TYPE_CHECKING:
    from dpbench.config.suite import TrainingSettings

# Opacus' hooks on a model whose input needs no grad trigger this harmless PyTorch warning every step.
warnings.filterwarnings("ignore", message="Full backward hook is firing")
log = logging.getLogger("dpbench")


@dataclass
class TrainStats:
    steps: int = 0
    examples: int = 0
    step_times: list = field(default_factory=list)
    losses: list = field(default_factory=list)  # non-private runs only
    train_seconds: float = 0.0
    epsilon_spent: Optional[float] = None

    def step_time(self, warmup: int) -> Optional[float]:
        times = self.step_times[warmup:] if len(self.step_times) > warmup else self.step_times
        return statistics.median(times) if times else None

    def examples_per_second(self, expected_batch_size: int, warmup: int) -> Optional[float]:
        median = self.step_time(warmup)
        return expected_batch_size / median if median else None


def autocast_dtype(device: torch.device, mixed_precision: str) -> Optional[torch.dtype]:
    """bf16 where it is asked for and supported: ``auto`` on CUDA with bf16, ``bf16`` also on CPU."""
    if mixed_precision == "no":
        return None
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16
        if mixed_precision == "bf16":
            from dpbench.errors import UserError

            raise UserError("training.mixed_precision: bf16 is not supported on this GPU — use auto or no")
        return None
    return torch.bfloat16 if mixed_precision == "bf16" else None


@dataclass(frozen=True)
class TrainerSetup:
    """What one trainer is configured with, besides its model and data.

    ``budget`` (optional) is what the accountant steps against; probes and checks run without one.
    ``reproducible`` derives the Poisson sampling and the DP noise from ``seed``: not a DP release
    (see dpbench/privacy/noise.py); by default both come from OS entropy.
    """

    step: DPStep
    training: "TrainingSettings"
    seed: int  # the diffusion draws (and, reproducible, the mechanism's randomness); no default to forget
    budget: Optional[Budget] = None
    reproducible: bool = False


class DPTrainer:
    """Trains the trainable parameters of a prepared model with one :class:`TrainerSetup` (its DP step,
    training settings, seed, budget and whether its randomness is reproducible).

    ``canaries`` (the audit) adds gradient canaries to the sampled population; ``distributed`` (one
    run on several processes, dpbench/engine/distributed.py) shards each logical batch and all-reduces
    the clipped sums; the EMA and the accountant then live on rank 0 only.
    """

    def __init__(self, model: nn.Module, scheduler, images: torch.Tensor, labels: torch.Tensor, setup: TrainerSetup,
                 device: torch.device | str, *, canaries=None, distributed=None):
        step, training, seed, budget = setup.step, setup.training, setup.seed, setup.budget
        self.device = torch.device(device)
        self.model, self.scheduler, self.config, self.training = model, scheduler, step, training
        self.budget = budget
        # Training mode matters beyond dropout: Opacus' hooks store activations only in training mode,
        # and from_pretrained() returns models in eval mode.
        model.train()
        self.dtype = next(model.parameters()).dtype
        self.images = images.to(self.device, self.dtype)
        self.labels = labels.to(self.device)
        self.canaries = canaries
        self.population = len(self.images) + (canaries.num_included if canaries is not None else 0)
        if self.population != step.num_examples:
            raise ValueError("the DP step was configured for another dataset size")
        self.null_label = num_label_rows(model) - 1
        self.named_params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.params = [p for _, p in self.named_params]
        if not self.params:
            raise ValueError("the method left no trainable parameters")
        self.acc_dtype = accumulation_dtype(self.dtype)
        self.optimizer = self._make_optimizer()
        self.distributed = distributed
        self.ema = [p.detach().clone() for p in self.params] if training.ema_decay is not None and self._is_root() else None
        self.backend = make_backend(training.grad_sample_mode, model, self.named_params, step.noise_multiplicity,
                                    training.bookkeeping_rule) if step.private else None
        self.clipper = Clipper(step.clipping, step.expected_batch_size)
        self.physical_batch_size = step.physical_batch_size  # halved when a chunk runs out of memory
        # The mechanism's randomness — who is sampled, and the noise — is secret (OS entropy) unless
        # reproducibility is explicitly asked for; every rank of a torchrun group must draw the same
        # batches, so rank 0's sampling seed is broadcast. The diffusion draws enter an example's loss
        # before clipping and stay seeded, so the methods of one (ε, seed) see the same draws.
        secret = seed if setup.reproducible else None
        sampling_seed, _ = secret_seed(secret, SAMPLING_STREAM)
        if distributed is not None:
            sampling_seed = distributed.broadcast_seed(sampling_seed)
        self.sampling_gen = torch.Generator().manual_seed(sampling_seed)
        del sampling_seed  # never kept beside the generator: its state alone goes into the private checkpoint
        self.diffusion_gen = torch.Generator(self.device).manual_seed(derive_seed(seed, DIFFUSION_STREAM))
        self.noise_gen, self.noise_source = noise_generator(self.device, secret)
        if not step.private:
            self.noise_source = "none"
        self.accountant = make_accountant(budget.accountant) if budget is not None and step.private and self._is_root() else None
        self.step = 0
        self.stats = TrainStats()
        # Called with each step's released gradient (noised, averaged: what the DP guarantee covers),
        # before the optimiser uses it; the audit observes the mechanism's output through this.
        self.release_observers: list[Callable[[int, list[torch.Tensor]], None]] = []
        self.autocast_dtype = autocast_dtype(self.device, training.mixed_precision) if self.dtype == torch.float32 else None

    # ----------------------------------------------------------------------------------------- setup
    def _make_optimizer(self):
        s = self.training
        embedding = [p for n, p in self.named_params if n.startswith("class_embedding.")]
        rest = [p for n, p in self.named_params if not n.startswith("class_embedding.")]
        groups = [g for g in ({"params": rest}, {"params": embedding, "lr": s.class_embedding_lr or s.lr}) if g["params"]]
        if s.optimizer == "sgd":
            return torch.optim.SGD(groups, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay)
        cls = torch.optim.AdamW if s.optimizer == "adamw" else torch.optim.Adam
        return cls(groups, lr=s.lr, weight_decay=s.weight_decay)

    # ---------------------------------------------------------------------------- one logical step
    def sample_logical_batch(self) -> torch.Tensor:
        mask = torch.rand(self.population, generator=self.sampling_gen) < self.config.sample_rate
        return mask.nonzero().flatten()

    def draw_diffusion_inputs(self, labels: torch.Tensor):
        """K (timestep, noise, label) draws per example: t [b,K], noise [b,K,C,H,W], labels [b,K]."""
        b, k = len(labels), self.config.noise_multiplicity
        g = self.diffusion_gen
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (b, k), generator=g, device=self.device)
        noise = torch.randn((b, k, *self.images.shape[1:]), generator=g, device=self.device, dtype=self.dtype)
        rows = labels[:, None].expand(b, k).clone()
        if self.training.label_dropout > 0:
            drop = torch.rand((b, k), generator=g, device=self.device) < self.training.label_dropout
            rows[drop] = self.null_label
        return t, noise, rows

    def example_losses(self, x, t, noise, labels) -> torch.Tensor:
        """Loss per *example*, shape [b]: the mean over its K noised copies."""
        b, k = t.shape
        rows = lambda z: z.reshape(b * k, *z.shape[2:])  # noqa: E731
        x_rows = x.repeat_interleave(k, dim=0)
        with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.bfloat16,
                            enabled=self.autocast_dtype is not None):
            loss_rows = denoising_loss_rows(self.model, self.scheduler, x_rows, rows(labels), rows(t), rows(noise))
        return loss_rows.view(b, k).mean(1)

    def _shard(self, positions: torch.Tensor) -> torch.Tensor:
        if self.distributed is None:
            return positions
        return positions[self.distributed.rank::self.distributed.world_size]

    def compute_step_gradient(self, indices: torch.Tensor) -> list[torch.Tensor]:
        """The gradient the optimiser will see for one logical batch (noised and averaged when private)."""
        real = indices[indices < len(self.images)]
        summed = [torch.zeros(p.shape, device=p.device, dtype=self.acc_dtype) for p in self.params]
        losses = []
        if len(real):
            t, noise, labels = self.draw_diffusion_inputs(self.labels[real])
            local = self._shard(torch.arange(len(real), device=real.device))
            done = 0
            while done < len(local):
                chunk = local[done:done + self.physical_batch_size]
                out = self._chunk_or_halve(self.images[real[chunk]], t[chunk], noise[chunk], labels[chunk])
                if out is None:
                    continue  # the same examples again, in a smaller chunk
                sums, norms, loss = out
                if self.config.private:
                    self.clipper.observe(norms)
                else:
                    losses.append(loss)
                for acc, g in zip(summed, sums):
                    if g is not None:
                        acc.add_(g)
                done += len(chunk)
        if self.canaries is not None and self.config.private and self._is_root():
            sums, norms = self.canaries.weighted_sum(indices[indices >= len(self.images)] - len(self.images),
                                                     self.clipper.weights, engine=self)
            self.clipper.observe(norms)
            for acc, g in zip(summed, sums):
                acc.add_(g.to(acc.dtype))
        count = self.clipper.count_query() if self.config.private else None
        summed, count = self._reduce_and_noise(summed, count)
        if count is not None:
            self.clipper.end_step(float(count))
        if losses:
            self.stats.losses.append(float(torch.cat(losses).mean()))
        divisor = self.step_divisor(indices)
        return [acc / divisor for acc in summed]

    def _chunk_gradient(self, x, t, noise, labels):
        """(summed gradients, per-example norms or None, losses) of one physical chunk; no side effects."""
        loss_fn = lambda: self.example_losses(x, t, noise, labels)  # noqa: E731
        if self.config.private:
            return self.backend.weighted_sum(loss_fn, self.clipper.weights)
        loss = loss_fn()
        return torch.autograd.grad(loss.sum(), self.params, allow_unused=True), None, loss.detach()

    def _chunk_or_halve(self, x, t, noise, labels):
        """The chunk's gradient; None if it ran out of memory, after halving the physical batch."""
        floor = self.training.min_physical_batch_size
        try:
            return self._chunk_gradient(x, t, noise, labels)
        except Exception as err:  # noqa: BLE001 - only running out of memory is retried
            if not is_out_of_memory(err) or self.physical_batch_size <= floor:
                raise
        # Outside the handler, so the failed attempt's frames and tensors are already released.
        if self.backend is not None:
            self.backend.discard()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        smaller = max(floor, self.physical_batch_size // 2)
        log.warning("   out of memory at physical batch %d: retrying the chunk at %d", self.physical_batch_size, smaller)
        self.physical_batch_size = smaller
        return None

    def step_divisor(self, indices: torch.Tensor) -> float:
        """The expected batch size B, never the realised |B|: under Poisson sampling the sum / B is
        unbiased, and its sensitivity to one example is C / B whatever the batch."""
        return float(self.config.expected_batch_size)

    def _is_root(self) -> bool:
        return self.distributed is None or self.distributed.rank == 0

    def _reduce_and_noise(self, summed: list[torch.Tensor], count: Optional[torch.Tensor]):
        """Noise once (on the root process, before the all-reduce), then sum over processes."""
        if self.config.private and self._is_root():
            for acc in summed:
                acc.add_(self.gradient_noise(acc))
            if self.clipper.rule.mode == "quantile":
                count = count + self.count_noise()
        if self.distributed is not None:
            summed, count = self.distributed.all_reduce(summed, count)
        return summed, count

    def gradient_noise(self, like: torch.Tensor) -> torch.Tensor:
        std = self.config.noise_multiplier * self.clipper.sensitivity
        return torch.normal(0.0, std, like.shape, generator=self.noise_gen, device=like.device, dtype=like.dtype)

    def count_noise(self) -> torch.Tensor:
        std = self.config.clipping.count_noise_std
        return torch.normal(0.0, std, (1,), generator=self.noise_gen, device=self.device, dtype=torch.float64).cpu()

    def train_step(self) -> int:
        indices = self.sample_logical_batch()
        step_grads = self.compute_step_gradient(indices)
        for observe in self.release_observers:
            observe(self.step, step_grads)
        for p, g in zip(self.params, step_grads):
            p.grad = g.to(p.dtype)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._update_ema()
        if self.accountant is not None:
            self.accountant.step(noise_multiplier=self.budget.noise_multiplier, sample_rate=self.config.sample_rate)
        self.step += 1
        return len(indices)

    def _update_ema(self):
        if self.ema is None:
            return
        decay = min(self.training.ema_decay, (1 + self.step) / (10 + self.step))
        with torch.no_grad():
            for e, p in zip(self.ema, self.params):
                e.lerp_(p.detach(), 1 - decay)

    # ------------------------------------------------------------------------------------ the loop
    def train(self, progress: bool = True, on_checkpoint: Optional[Callable[["DPTrainer"], None]] = None,
              checkpoint_seconds: float = 30.0, on_step: Optional[Callable[["DPTrainer"], None]] = None) -> TrainStats:
        from tqdm.auto import tqdm

        self.model.train()
        initial = [p.detach().clone() for p in self.params] if self.step == 0 and self.config.private else None
        bar = tqdm(total=self.config.steps, initial=self.step, desc="  train", unit="step", disable=not progress,
                   leave=False, dynamic_ncols=True)
        last_checkpoint = time.monotonic()
        start = time.perf_counter()
        while self.step < self.config.steps:
            t0 = time.perf_counter()
            n = self.train_step()
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.stats.step_times.append(time.perf_counter() - t0)
            self.stats.examples += n
            bar.update(1)
            if on_step is not None:
                on_step(self)
            if on_checkpoint and time.monotonic() - last_checkpoint >= checkpoint_seconds and self.step < self.config.steps:
                on_checkpoint(self)
                last_checkpoint = time.monotonic()
        bar.close()
        self.stats.train_seconds += time.perf_counter() - start
        self.stats.steps = self.step
        if initial is not None:
            self._assert_trained(initial)
        self.stats.epsilon_spent = self.epsilon_spent()
        return self.stats

    def _assert_trained(self, initial):
        """DP noise moves every trainable parameter; one that did not move was never optimised (opacus#820)."""
        frozen = [n for (n, p), p0 in zip(self.named_params, initial) if torch.equal(p.detach(), p0)]
        if frozen:
            raise RuntimeError(f"trainable parameters never changed during DP training: {frozen[:5]}")

    def epsilon_spent(self) -> Optional[float]:
        if self.accountant is None:
            return None
        return epsilon_spent(self.budget.accountant, self.accountant.history, self.budget.delta)

    def finish(self) -> None:
        """Detach the backend and load the EMA weights (what is sampled and evaluated)."""
        if self.backend is not None:
            self.backend.remove()
            self.backend = None
        if self.ema is not None:
            with torch.no_grad():
                for p, e in zip(self.params, self.ema):
                    p.copy_(e)
        self.model.eval()

    # ------------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        """Everything needed to resume bit-exactly; loadable with ``torch.load(weights_only=True)``.

        It holds the DP noise generator's state: a checkpoint is as private as the weights."""
        return {
            "step": self.step,
            "params": {n: p.detach().cpu() for n, p in self.named_params},
            "ema": [e.cpu() for e in self.ema] if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "sampling_gen": self.sampling_gen.get_state(),
            "diffusion_gen": self.diffusion_gen.get_state(),
            "noise_gen": self.noise_gen.get_state(),
            "clipper": self.clipper.state_dict(),
            "accountant_history": [list(h) for h in self.accountant.history] if self.accountant else [],
            "losses": list(self.stats.losses),
            "examples": self.stats.examples,
            "train_seconds": self.stats.train_seconds,
            "physical_batch_size": self.physical_batch_size,
        }

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            for n, p in self.named_params:
                p.copy_(state["params"][n].to(p.device))
        if self.ema is not None and state["ema"] is not None:
            self.ema = [e.to(self.device) for e in state["ema"]]
        self.optimizer.load_state_dict(state["optimizer"])
        self.sampling_gen.set_state(state["sampling_gen"])
        self.diffusion_gen.set_state(state["diffusion_gen"])
        self.noise_gen.set_state(state["noise_gen"])
        self.clipper.load_state_dict(state["clipper"])
        if self.accountant is not None:
            self.accountant.history = [tuple(h) for h in state["accountant_history"]]
        self.step = int(state["step"])
        self.stats.losses = list(state["losses"])
        self.stats.examples = int(state["examples"])
        self.stats.train_seconds = float(state["train_seconds"])
        self.physical_batch_size = int(state.get("physical_batch_size", self.physical_batch_size))


def prepare_model(pretrained: nn.Module, method, num_classes: int, device, dtype=torch.float32) -> nn.Module:
    """A fresh copy of the pretrained model set up for one method, in the order that is safe for peft + Opacus.

    Move first, then freeze, replace the class embedding, let the method inject/mark its parameters,
    and only then does the caller build the optimiser and hooks (see DPTrainer) — adapters created
    before the move can be silently dropped from the optimiser (opacus#820).
    """
    from dpbench.models.diffusion import quiet_diffusers, reset_class_embedding

    quiet_diffusers()  # every caller (run, tune, profile, audit) casts here; diffusers would log a notice each time
    model = copy.deepcopy(pretrained).to(device=device, dtype=dtype)
    model.requires_grad_(False)
    reset_class_embedding(model, num_classes)
    model = method.prepare(model)
    model.class_embedding.requires_grad_(True)
    return model
