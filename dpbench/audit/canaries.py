"""Gradient canaries: m fixed directions in the trainable-parameter space, each a secret coin flip away
from the private dataset.

A *gradient canary* (Steinke, Nasr & Jagielski 2023, white-box audit) is an example whose
per-example gradient, whatever the parameters, is a fixed vector ``g_j = ‖g‖·d_j`` with ``‖d_j‖ = 1``.
It needs no image that fools the model: the audit measures the mechanism (sampling, clipping, noise,
division, accounting), not how memorable an image is.

Canary ``j`` joins the private dataset iff its coin ``secret_in[j]`` is True (a fair coin drawn from
the operating system's entropy, recorded only in the audit's result once training is done). The
``m_in`` included canaries are appended to the population the trainer Poisson-samples (positions
``N .. N + m_in - 1``), so every one of them is sampled with the same probability q as every example;
a sampled canary's gradient goes through the trainer's own clipping rule (``weights_fn``) and into
the same noised sum (:meth:`DPTrainer.compute_step_gradient`). Its norm is ``norm`` — by default ten
times the rule's sensitivity — so the clipping rule must act on it: a loop that does not clip lets a
canary contribute 10·C instead of C.

Directions
----------
- ``random``: a Gaussian direction, normalised. When m ≤ D (D trainable coordinates) and the QR is
  cheap (D·m² ≤ 2³³) the m directions are orthonormalised, so the other canaries sampled at a step add
  nothing to a canary's score: with D = 2,801 bias terms and ~30 canaries a step, independent random
  directions would add ≈ √(30/D)·C ≈ 0.1·C of crosstalk per step, as much as the noise of a low-noise
  fault; at D ≥ 25k it is ≤ 0.04·C. When ``m·D`` exceeds ``max_elements`` each direction lives on its
  own random support of ``s = max_elements // m`` coordinates (a uniformly random unit vector there;
  overlaps ≈ 1/√D); the noise is isotropic, so a canary's signal-to-noise ratio does not depend on s.
- ``dirac``: ``d_j = e_{i_j}`` on m distinct random coordinates (needs D ≥ m).

The directions are a function of ``seed`` only (public, like the rest of the suite); the coins are not.
"""

from __future__ import annotations

import secrets
import warnings
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from dpbench.privacy.clipping import accumulation_dtype

CANARY_KINDS = ("random", "dirac", "engine")
DEFAULT_MAX_ELEMENTS = 2 ** 25  # 128 MiB of float32 directions at most
ORTHONORMAL_FLOPS = 2 ** 33  # orthonormalise dense directions when the QR costs at most this (~3 s on a core)


def secret_coins(m: int) -> np.ndarray:
    """m fair coins from the operating system's entropy (not from any seed written down)."""
    bits = secrets.randbits(m) if m > 0 else 0
    return np.array([(bits >> i) & 1 == 1 for i in range(m)], dtype=bool)


class GradientCanaries:
    """The trainer's ``canaries=`` hook: ``num_included`` and :meth:`weighted_sum`, plus projections for scoring.

    ``params`` are the trainable parameters of the prepared model (the method's, in the trainer's
    order); ``norm`` is every canary's gradient norm.
    """

    def __init__(self, params: Sequence[torch.Tensor], m: int, *, norm: float, seed: int, kind: str = "random",
                 secret_in: Optional[np.ndarray] = None, max_elements: int = DEFAULT_MAX_ELEMENTS,
                 directions: Optional[tuple[torch.Tensor, torch.Tensor]] = None):
        """``directions`` (index [m, s] into the flat trainable vector, unit values [m, s]) replaces the
        directions of ``kind`` (a subclass that chooses its own)."""
        if m < 1:
            raise ValueError(f"need at least one canary, got {m}")
        if kind not in CANARY_KINDS:
            raise ValueError(f"canary kind {kind!r}: choose one of {', '.join(CANARY_KINDS)}")
        if not norm > 0:
            raise ValueError(f"canary gradient norm must be > 0, got {norm}")
        self.m, self.kind, self.norm = int(m), kind, float(norm)
        self.shapes = [tuple(p.shape) for p in params]
        self.sizes = [p.numel() for p in params]
        self.dim = sum(self.sizes)
        self.device = params[0].device
        self.dtype = accumulation_dtype(params[0].dtype)
        gen = torch.Generator().manual_seed(int(seed))
        self.index: Optional[torch.Tensor] = None  # [m, s] coordinates (None: dense, all D)
        if directions is not None:
            self.index, self.values = directions[0].int(), directions[1].to(self.dtype)
        elif kind == "engine":
            raise ValueError("engine canaries are built by EngineCanaries (they need the model's class embedding)")
        elif kind == "dirac":
            if self.dim < m:
                raise ValueError(f"{m} Dirac canaries need {m} distinct coordinates; the method trains only {self.dim}")
            self.index = torch.randperm(self.dim, generator=gen)[:m].int().unsqueeze(1)
            self.values = torch.ones(m, 1, dtype=self.dtype)
        else:
            support = self.dim if m * self.dim <= max_elements else max(1, max_elements // m)
            if support < self.dim:  # int32: half the memory of the default int64 indices
                self.index = torch.stack([torch.randperm(self.dim, generator=gen)[:support].sort().values.int()
                                          for _ in range(m)])
            values = torch.randn(m, support, generator=gen, dtype=torch.float64)
            if support == self.dim and m <= self.dim and self.dim * m * m <= ORTHONORMAL_FLOPS:
                # no canary's clipped gradient leaks into another's score (a QR of D·m² flops)
                values = torch.linalg.qr(values.T)[0].T
            self.values = (values / values.norm(dim=1, keepdim=True)).to(self.dtype)
        self.values = self.values.to(self.device)
        self._matrix = None  # sparse directions: one CSR matrix [m, D] sharing index and values
        if self.index is not None:
            self.index = self.index.to(self.device)
            rows = torch.arange(0, m * self.values.shape[1] + 1, self.values.shape[1], dtype=torch.int32)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Sparse")
                self._matrix = torch.sparse_csr_tensor(rows.to(self.device), self.index.reshape(-1),
                                                       self.values.reshape(-1), size=(m, self.dim))
        self.support = self.values.shape[1]
        coins = secret_coins(m) if secret_in is None else np.asarray(secret_in, dtype=bool)
        if coins.shape != (m,):
            raise ValueError(f"secret_in must have shape ({m},), got {coins.shape}")
        self.secret_in = coins
        self.included = torch.as_tensor(np.flatnonzero(coins), dtype=torch.long)
        self.calls: list[torch.Tensor] = []  # canaries (ids 0..m-1) handed to each weighted_sum call

    # ------------------------------------------------------------------------------ trainer hook
    @property
    def num_included(self) -> int:
        return len(self.included)

    def weighted_sum(self, canary_ids: torch.Tensor, weights_fn: Callable[[torch.Tensor], torch.Tensor], engine=None):
        """Σ_j w_j·g_j for the sampled included canaries (positions among the included ones), and ‖g_j‖.

        Gradient canaries set their norms here and ignore ``engine`` (the trainer):
        :class:`EngineCanaries` go through it."""
        ids = self.included[canary_ids.to("cpu", torch.long)]
        self.calls.append(ids.clone())
        norms = torch.full((len(ids),), self.norm, dtype=self.dtype, device=self.device)
        flat = torch.zeros(self.dim, dtype=self.dtype, device=self.device)
        if len(ids):
            weights = weights_fn(norms).to(self.dtype)
            scaled = self.values[ids.to(self.device)] * (weights * norms).unsqueeze(1)  # [b, s]
            if self.index is None:
                flat += scaled.sum(0)
            else:
                flat.index_add_(0, self.index[ids.to(self.device)].flatten().long(), scaled.flatten())
        return self.unflatten(flat), norms

    # ----------------------------------------------------------------------------------- scoring
    def direction(self, j: int) -> torch.Tensor:
        """Canary j's unit direction as one flat vector of D coordinates."""
        flat = torch.zeros(self.dim, dtype=self.dtype, device=self.device)
        if self.index is None:
            flat += self.values[j]
        else:
            flat[self.index[j].long()] = self.values[j]
        return flat

    def flatten(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat([t.detach().reshape(-1).to(self.device, self.dtype) for t in tensors])

    def unflatten(self, flat: torch.Tensor) -> list[torch.Tensor]:
        return [part.view(shape) for part, shape in zip(flat.split(self.sizes), self.shapes)]

    def project(self, tensors: Sequence[torch.Tensor]) -> np.ndarray:
        """⟨v, d_j⟩ for every canary j (included or not), v given per trainable parameter: shape [m], float64."""
        flat = self.flatten(tensors)
        out = self.values @ flat if self._matrix is None else self._matrix @ flat
        return out.double().cpu().numpy()


class EngineCanaries(GradientCanaries):
    """Canaries whose per-example gradient, norm and clipping weight the engine under audit computes.

    A sampled canary is a row of its own physical chunk: the model's forward on a public constant input
    (a zero image, timestep 0, zero noise) with label ``ℓ_j``, whose per-example loss is
    ``0·(denoising loss) + ⟨e_j, v_j⟩`` with ``e_j`` the class embedding's output for ℓ_j (a second
    call of the embedding in the same forward) and ``v_j = norm·d_j``. The trainer's clipping backend runs that loss like any chunk's: its hooks see
    the backprop ``v_j`` at the class embedding and zeros everywhere else, so the canary's per-example
    gradient is exactly ``v_j`` on row ℓ_j of the embedding table — a fixed vector, whatever the
    weights, as a gradient canary's — but its norm and its clipping weight come out of the engine (a
    backend that halves norms doubles the canary's contribution, and the scores see it). The class
    embedding is trainable in every method and an embedding's per-example gradient is any vector on
    its row, which is why the canaries enter there; the price is room: directions live on the
    (classes + 1) × width coordinates of the table (quickstart 11 × 64), m/(classes + 1) canaries
    share each row, and they are orthonormal within a row only when that many fit (≤ width).
    """

    def __init__(self, params: Sequence[torch.Tensor], m: int, *, norm: float, seed: int, embedding: torch.nn.Embedding,
                 secret_in: Optional[np.ndarray] = None):
        weight = embedding.weight
        offset = 0
        for p in params:
            if p is weight:
                break
            offset += p.numel()
        else:
            raise ValueError("engine canaries enter through the class embedding, which this method does not train")
        rows, width = weight.shape
        gen = torch.Generator().manual_seed(int(seed))
        labels = torch.arange(m) % rows
        values = torch.randn(m, width, generator=gen, dtype=torch.float64)
        for row in range(rows):  # orthonormal within a row when the row's canaries fit
            members = (labels == row).nonzero().flatten()
            if 0 < len(members) <= width:
                values[members] = torch.linalg.qr(values[members].T)[0].T
        values = values / values.norm(dim=1, keepdim=True)
        index = offset + labels[:, None] * width + torch.arange(width)[None, :]
        super().__init__(params, m, norm=norm, seed=seed, kind="engine", secret_in=secret_in,
                         directions=(index, values))
        self.embedding, self.labels = embedding, labels

    def weighted_sum(self, canary_ids: torch.Tensor, weights_fn: Callable[[torch.Tensor], torch.Tensor], engine=None):
        """The sampled included canaries' rows through ``engine.backend`` (the trainer's), in physical chunks."""
        ids = self.included[canary_ids.to("cpu", torch.long)]
        self.calls.append(ids.clone())
        sums = [torch.zeros(shape, dtype=self.dtype, device=self.device) for shape in self.shapes]
        norms = []
        for start in range(0, len(ids), engine.physical_batch_size):
            chunk = ids[start:start + engine.physical_batch_size]
            parts, chunk_norms, _ = engine.backend.weighted_sum(self._loss_fn(engine, chunk), weights_fn)
            for acc, g in zip(sums, parts):
                if g is not None:
                    acc.add_(g.to(acc.dtype))
            norms.append(chunk_norms.to(self.dtype))
        return sums, torch.cat(norms) if norms else torch.zeros(0, dtype=self.dtype, device=self.device)

    def _loss_fn(self, engine, ids: torch.Tensor):
        b, k = len(ids), engine.config.noise_multiplicity
        device = engine.device
        x = torch.zeros((b, *engine.images.shape[1:]), device=device, dtype=engine.dtype)
        t = torch.zeros((b, k), dtype=torch.long, device=device)
        noise = torch.zeros((b, k, *engine.images.shape[1:]), device=device, dtype=engine.dtype)
        labels = self.labels[ids].to(device)[:, None].expand(b, k)
        push = (self.norm * self.values[ids.to(self.device)]).to(device)  # v_j, [b, width]

        def loss_fn() -> torch.Tensor:
            denoising = engine.example_losses(x, t, noise, labels)
            # A second call of the embedding on the same rows: a module call, so every backend's hooks see
            # its backprop (a forward hook's copy of the first call's output would bypass Opacus' backward hook).
            rows = self.embedding(labels.reshape(-1)).reshape(b, k, -1).to(push.dtype)
            # each of the K rows carries v_j / K, so the example's gradient (their sum) is v_j
            return 0.0 * denoising + (rows * push[:, None, :]).sum(-1).mean(1)

        return loss_fn
