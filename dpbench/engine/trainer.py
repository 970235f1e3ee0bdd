"""The one DP-SGD loop every method trains with: sampling, per-example gradients, clipping, noise, accounting.

Per logical step t = 1..T:

1. **Poisson sampling**: each private example joins the logical batch independently with probability
   q (the amplification-by-sampling assumption of the accountant). An empty batch is a *noise-only*
   step — it still adds noise, steps the optimiser and the accountant — never skipped (skipping would
   make the step count data-dependent) and never forwarded (the UNet crashes on an empty batch).
2. **Virtual batches**: the logical batch is processed in physical chunks of ``physical_batch_size``.
3. **Noise multiplicity K**: each example is repeated K times with independent (timestep, noise)
   pairs, and the K losses are *averaged inside the example's loss* before its gradient is clipped,
   so one example still contributes one gradient of norm ≤ C (treating K rows as K examples would
   multiply the sensitivity by K).
4. **Per-example gradients** from Opacus' grad-sample hooks (or its functorch mode), with the
   channels_last conv fix of dpbench/privacy/grad_samplers.py; clipped to norm C and summed.
5. **Noise** N(0, σ²C²) on the sum, divided by the *expected* batch size (unbiased under Poisson
   sampling), then the optimiser step, an EMA update of the trainable weights (post-processing, free
   in privacy) and one accountant step with (σ, q).

ε = inf is the non-private reference: same sampling, batches, K, optimiser and step count, plain
autograd gradients (no hooks, no clipping, no noise).

Step times exclude everything but training steps (the runner samples and evaluates after ``train``).
Peak memory is measured apart, on the same loop at a full physical batch of random images
(dpbench/engine/measure.py): it costs no privacy and repeats to within ~1%.
"""

from __future__ import annotations

import statistics
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.nn as nn

from dpbench.models.diffusion import denoising_loss_rows, num_label_rows
from dpbench.privacy import grad_samplers  # noqa: F401  (registers the conv workaround)
from dpbench.privacy.accounting import PrivacyPlan, epsilon_spent, make_accountant

# Opacus' hooks on a model whose input needs no grad trigger this harmless PyTorch warning every step.
warnings.filterwarnings("ignore", message="Full backward hook is firing")


@dataclass
class OptimSettings:
    optimizer: str = "adamw"
    lr: float = 1e-3
    class_embedding_lr: Optional[float] = None  # None: same as lr
    weight_decay: float = 0.0
    momentum: float = 0.9
    ema_decay: Optional[float] = 0.999
    grad_sample_mode: str = "hooks"
    label_dropout: float = 0.0
    mixed_precision: str = "auto"
    warmup_steps: int = 2


@dataclass
class TrainStats:
    steps: int = 0
    examples: int = 0
    step_times: list = field(default_factory=list)
    losses: list = field(default_factory=list)
    train_seconds: float = 0.0
    epsilon_spent: Optional[float] = None

    def step_time(self, warmup: int) -> Optional[float]:
        times = self.step_times[warmup:] if len(self.step_times) > warmup else self.step_times
        return statistics.median(times) if times else None

    def examples_per_second(self, expected_batch_size: int, warmup: int) -> Optional[float]:
        median = self.step_time(warmup)
        return expected_batch_size / median if median else None


class DPTrainer:
    """Trains the trainable parameters of a prepared model under one :class:`PrivacyPlan`."""

    def __init__(self, model: nn.Module, scheduler, images: torch.Tensor, labels: torch.Tensor,
                 plan: PrivacyPlan, settings: OptimSettings, seed: int, device: torch.device | str):
        self.device = torch.device(device)
        self.model, self.scheduler, self.plan, self.settings = model, scheduler, plan, settings
        # Training mode matters beyond dropout: Opacus' hooks store activations only in training mode,
        # and from_pretrained() returns models in eval mode.
        model.train()
        self.dtype = next(model.parameters()).dtype
        self.images = images.to(self.device, self.dtype)
        self.labels = labels.to(self.device)
        if len(self.images) != plan.num_examples:
            raise ValueError("the privacy plan was made for another dataset size")
        self.null_label = num_label_rows(model) - 1
        self.named_params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.params = [p for _, p in self.named_params]
        if not self.params:
            raise ValueError("the method left no trainable parameters")
        self.optimizer = self._make_optimizer()
        self.ema = [p.detach().clone() for p in self.params] if settings.ema_decay is not None else None
        self.hooks = None
        if plan.private:
            from opacus.grad_sample.grad_sample_module import GradSampleHooks

            self.hooks = GradSampleHooks(model, batch_first=True, loss_reduction="sum",
                                         force_functorch=settings.grad_sample_mode == "functorch")
        # Separate, seeded streams: which examples are sampled, the diffusion (t, noise, label
        # dropout) draws, and the DP noise. Their states are checkpointed for exact resumption.
        self.sampling_gen = torch.Generator().manual_seed(_derive(seed, 1))
        self.diffusion_gen = torch.Generator(self.device).manual_seed(_derive(seed, 2))
        self.noise_gen = torch.Generator(self.device).manual_seed(_derive(seed, 3))
        self.accountant = make_accountant(plan.accountant)
        self.step = 0
        self.stats = TrainStats()
        self.autocast = self.device.type == "cuda" and settings.mixed_precision in ("auto", "bf16") and self.dtype == torch.float32

    # ----------------------------------------------------------------------------------------- setup
    def _make_optimizer(self):
        s = self.settings
        embedding = [p for n, p in self.named_params if n.startswith("class_embedding.")]
        rest = [p for n, p in self.named_params if not n.startswith("class_embedding.")]
        groups = [g for g in ({"params": rest}, {"params": embedding, "lr": s.class_embedding_lr or s.lr}) if g["params"]]
        if s.optimizer == "sgd":
            return torch.optim.SGD(groups, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay)
        cls = torch.optim.AdamW if s.optimizer == "adamw" else torch.optim.Adam
        return cls(groups, lr=s.lr, weight_decay=s.weight_decay)

    # ---------------------------------------------------------------------------- one logical step
    def sample_logical_batch(self) -> torch.Tensor:
        mask = torch.rand(self.plan.num_examples, generator=self.sampling_gen) < self.plan.sample_rate
        return mask.nonzero().flatten()

    def draw_diffusion_inputs(self, x: torch.Tensor, y: torch.Tensor):
        """K (timestep, noise, label) draws per example: t [b,K], noise [b,K,C,H,W], labels [b,K]."""
        b, k = len(x), self.plan.noise_multiplicity
        g = self.diffusion_gen
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (b, k), generator=g, device=self.device)
        noise = torch.randn((b, k, *x.shape[1:]), generator=g, device=self.device, dtype=self.dtype)
        labels = y[:, None].expand(b, k).clone()
        if self.settings.label_dropout > 0:
            drop = torch.rand((b, k), generator=g, device=self.device) < self.settings.label_dropout
            labels[drop] = self.null_label
        return t, noise, labels

    def example_losses(self, x, t, noise, labels) -> torch.Tensor:
        """Loss per *example*, shape [b]: the mean over its K noised copies."""
        b, k = t.shape
        rows = lambda z: z.reshape(b * k, *z.shape[2:])  # noqa: E731
        x_rows = x.repeat_interleave(k, dim=0)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.autocast):
            loss_rows = denoising_loss_rows(self.model, self.scheduler, x_rows, rows(labels), rows(t), rows(noise))
        return loss_rows.view(b, k).mean(1)

    def per_example_gradients(self, x, t, noise, labels) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Per-example gradients (one [b, *shape] tensor per trainable parameter) and the losses [b]."""
        if self.hooks is None:
            raise RuntimeError("per-example gradients are only computed for private runs")
        b, k = t.shape
        for p in self.params:
            p.grad_sample = None
            p.grad = None
        losses = self.example_losses(x, t, noise, labels)
        losses.sum().backward()
        grads = []
        for name, p in self.named_params:
            gs = p.grad_sample
            if gs is None:
                raise RuntimeError(f"no per-sample gradient for trainable parameter {name}")
            if isinstance(gs, list):  # parameter used twice in one forward: Opacus keeps one entry per use
                gs = torch.stack(gs).sum(0)
            # Opacus yields one row per (example, copy); the K copies of one example sum to its gradient.
            grads.append(gs.reshape(b, k, *p.shape).sum(1) if k > 1 else gs.reshape(b, *p.shape))
            p.grad_sample = None
            p.grad = None
        return grads, losses.detach()

    def clip(self, grads: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-example clipping factors min(1, C/‖g_i‖) and the unclipped norms ‖g_i‖."""
        norms = torch.stack([g.reshape(len(g), -1).norm(2, dim=1) for g in grads], dim=1).norm(2, dim=1)
        factors = (self.plan.max_grad_norm / norms.clamp_min(1e-12)).clamp(max=1.0)
        return factors, norms

    def dp_noise(self, like: torch.Tensor) -> torch.Tensor:
        std = self.plan.noise_multiplier * self.plan.max_grad_norm
        return torch.normal(0.0, std, like.shape, generator=self.noise_gen, device=like.device, dtype=like.dtype)

    def compute_step_gradient(self, indices: torch.Tensor) -> list[torch.Tensor]:
        """The gradient the optimiser will see for one logical batch (noised and averaged when private)."""
        summed = [torch.zeros_like(p) for p in self.params]
        losses = []
        for chunk in indices.split(self.plan.physical_batch_size) if len(indices) else ():
            x, y = self.images[chunk], self.labels[chunk]
            t, noise, labels = self.draw_diffusion_inputs(x, y)
            if self.plan.private:
                grads, loss = self.per_example_gradients(x, t, noise, labels)
                factors, _ = self.clip(grads)
                for acc, g in zip(summed, grads):
                    acc.add_(torch.einsum("i,i...->...", factors.to(g.dtype), g))
            else:
                loss = self.example_losses(x, t, noise, labels)
                step_grads = torch.autograd.grad(loss.sum(), self.params, allow_unused=True)
                for acc, g in zip(summed, step_grads):
                    if g is not None:
                        acc.add_(g)
                loss = loss.detach()
            losses.append(loss)
        if self.plan.private:
            for acc in summed:
                acc.add_(self.dp_noise(acc))
        if losses:
            self.stats.losses.append(float(torch.cat(losses).mean()))
        return [acc / self.plan.expected_batch_size for acc in summed]

    def train_step(self) -> int:
        indices = self.sample_logical_batch()
        step_grads = self.compute_step_gradient(indices)
        for p, g in zip(self.params, step_grads):
            p.grad = g
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._update_ema()
        if self.plan.private:
            self.accountant.step(noise_multiplier=self.plan.noise_multiplier, sample_rate=self.plan.sample_rate)
        self.step += 1
        return len(indices)

    def _update_ema(self):
        if self.ema is None:
            return
        decay = min(self.settings.ema_decay, (1 + self.step) / (10 + self.step))
        with torch.no_grad():
            for e, p in zip(self.ema, self.params):
                e.lerp_(p.detach(), 1 - decay)

    # ------------------------------------------------------------------------------------ the loop
    def train(self, progress: bool = True, on_checkpoint: Optional[Callable[["DPTrainer"], None]] = None,
              checkpoint_seconds: float = 30.0) -> TrainStats:
        from tqdm.auto import tqdm

        self.model.train()
        initial = [p.detach().clone() for p in self.params] if self.step == 0 and self.plan.private else None
        bar = tqdm(total=self.plan.steps, initial=self.step, desc="  train", unit="step", disable=not progress,
                   leave=False, dynamic_ncols=True)
        last_checkpoint = time.monotonic()
        start = time.perf_counter()
        while self.step < self.plan.steps:
            t0 = time.perf_counter()
            n = self.train_step()
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.stats.step_times.append(time.perf_counter() - t0)
            self.stats.examples += n
            bar.update(1)
            if self.stats.losses:
                bar.set_postfix(loss=f"{self.stats.losses[-1]:.4f}", batch=n)
            if on_checkpoint and time.monotonic() - last_checkpoint >= checkpoint_seconds and self.step < self.plan.steps:
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
        if not self.plan.private:
            return None
        return epsilon_spent(self.plan.accountant, self.accountant.history, self.plan.delta)

    def finish(self) -> None:
        """Detach the hooks and load the EMA weights (what is sampled and evaluated)."""
        if self.hooks is not None:
            self.hooks.remove_hooks()
            self.hooks = None
        if self.ema is not None:
            with torch.no_grad():
                for p, e in zip(self.params, self.ema):
                    p.copy_(e)
        self.model.eval()

    # ------------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        """Everything needed to resume bit-exactly; loadable with ``torch.load(weights_only=True)``."""
        return {
            "step": self.step,
            "params": {n: p.detach().cpu() for n, p in self.named_params},
            "ema": [e.cpu() for e in self.ema] if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "sampling_gen": self.sampling_gen.get_state(),
            "diffusion_gen": self.diffusion_gen.get_state(),
            "noise_gen": self.noise_gen.get_state(),
            "accountant_history": [list(h) for h in self.accountant.history],
            "losses": list(self.stats.losses),
            "examples": self.stats.examples,
            "train_seconds": self.stats.train_seconds,
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
        self.accountant.history = [tuple(h) for h in state["accountant_history"]]
        self.step = int(state["step"])
        self.stats.losses = list(state["losses"])
        self.stats.examples = int(state["examples"])
        self.stats.train_seconds = float(state["train_seconds"])


def _derive(seed: int, stream: int) -> int:
    return (int(seed) * 1_000_003 + stream * 7919) % (2**63 - 1)


def prepare_model(pretrained: nn.Module, method, num_classes: int, device, dtype=torch.float32) -> nn.Module:
    """A fresh copy of the pretrained model set up for one method, in the order that is safe for peft + Opacus.

    Move first, then freeze, replace the class embedding, let the method inject/mark its parameters,
    and only then does the caller build the optimiser and hooks (see DPTrainer) — adapters created
    before the move can be silently dropped from the optimiser (opacus#820).
    """
    import copy

    from dpbench.models.diffusion import reset_class_embedding

    model = copy.deepcopy(pretrained).to(device=device, dtype=dtype)
    model.requires_grad_(False)
    reset_class_embedding(model, num_classes)
    model = method.prepare(model)
    model.class_embedding.requires_grad_(True)
    return model
