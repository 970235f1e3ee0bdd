"""``shapes``: a procedurally generated, PUBLIC pretraining set of pen-stroke shapes (no download).

No person's data is involved: every image is drawn by this module from a seed. Ten classes of
anti-aliased white strokes on black — 0 circle, 1 vertical bar, 2 horizontal bar, 3 diagonal "/",
4 diagonal "\\", 5 plus "+", 6 cross "x", 7 square outline, 8 triangle outline, 9 semicircle arc — each
with a random centre, scale, stroke width and small rotation.

Why it exists: the quickstart fine-tunes on ``digits`` (private) and needs a public dataset to pretrain
on that is available offline and shares nothing with the private data. Pen strokes — bars, diagonals,
loops and arcs — are the parts digits are made of, so a model pretrained on them starts from a useful
prior for handwritten digits while no private example is ever used for pretraining.

Rendering is vectorised with numpy: for each pixel centre, the distance to the nearest line segment of
the shape (circles and arcs as polylines) gives a stroke coverage with a one-pixel linear ramp; images are
drawn at twice the target size and then downsampled (antialiased), so 10k images take a few seconds.

Options: ``seed`` (default 0) and ``size`` (training images, default 10000; the test split has size // 5
images drawn from a different seed derived from ``seed``). Classes are balanced (to within one).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from dpbench.data.base import ArrayDataset
from dpbench.errors import UserError

CLASS_NAMES = ("circle", "vbar", "hbar", "slash", "backslash", "plus", "cross", "square", "triangle", "arc")
DEFAULT_SIZE = 10000


def _polyline(points: list[tuple[float, float]]) -> np.ndarray:
    p = np.asarray(points, dtype=np.float32)
    return np.stack([p[:-1], p[1:]], axis=1)  # [S, 2 (start, end), 2 (x, y)]


def _arc(start: float, stop: float, n: int) -> np.ndarray:
    t = np.linspace(start, stop, n + 1)
    return _polyline(list(zip(np.cos(t), np.sin(t))))


# Templates in a unit frame: x right, y DOWN (image convention), shape within [-1, 1]^2.
_D = 0.75
TEMPLATES: tuple[np.ndarray, ...] = (
    _arc(0.0, 2 * math.pi, 20),  # 0 circle
    _polyline([(0, -1), (0, 1)]),  # 1 vertical bar
    _polyline([(-1, 0), (1, 0)]),  # 2 horizontal bar
    _polyline([(-_D, _D), (_D, -_D)]),  # 3 "/" (bottom-left to top-right)
    _polyline([(-_D, -_D), (_D, _D)]),  # 4 "\"
    np.concatenate([_polyline([(0, -1), (0, 1)]), _polyline([(-1, 0), (1, 0)])]),  # 5 "+"
    np.concatenate([_polyline([(-_D, _D), (_D, -_D)]), _polyline([(-_D, -_D), (_D, _D)])]),  # 6 "x"
    _polyline([(-_D, -_D), (_D, -_D), (_D, _D), (-_D, _D), (-_D, -_D)]),  # 7 square outline
    _polyline([(0, -0.9), (0.85, 0.65), (-0.85, 0.65), (0, -0.9)]),  # 8 triangle outline
    _arc(math.pi, 2 * math.pi, 10) + np.float32([0, 0.4]),  # 9 upper semicircle arc "∩", recentred
)


def render(labels: np.ndarray, resolution: int, rng: np.random.Generator, chunk: int = 256) -> np.ndarray:
    """Draw one image per label at resolution x resolution; float32 [N, R, R] stroke coverage in [0, 1].

    Random per image (drawn from rng in a fixed order, so the result is deterministic): centre in
    [0.38, 0.62]^2, half-size 0.24..0.36, stroke width 0.07..0.13 (fractions of the image side) and a
    rotation within ±15°.
    """
    n = len(labels)
    centre = rng.uniform(0.38, 0.62, size=(n, 2)).astype(np.float32)
    scale = rng.uniform(0.24, 0.36, size=n).astype(np.float32)
    width = rng.uniform(0.07, 0.13, size=n).astype(np.float32)
    angle = rng.uniform(-math.pi / 12, math.pi / 12, size=n).astype(np.float32)

    coords = (np.arange(resolution, dtype=np.float32) + 0.5) / resolution
    gx, gy = np.meshgrid(coords, coords, indexing="xy")
    grid = np.stack([gx.ravel(), gy.ravel()], axis=1)  # [P, 2] pixel centres in [0, 1]^2

    out = np.zeros((n, resolution * resolution), dtype=np.float32)
    for cls, template in enumerate(TEMPLATES):
        (members,) = np.nonzero(labels == cls)
        for s in range(0, len(members), chunk):
            idx = members[s : s + chunk]
            cos, sin = np.cos(angle[idx]), np.sin(angle[idx])
            rot = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)  # [B, 2, 2]
            # segment end points in image coordinates: [B, S, 2, 2]
            pts = np.einsum("bij,sej->bsei", rot, template) * scale[idx, None, None, None]
            pts = pts + centre[idx, None, None, :]
            a, b = pts[:, :, 0, :], pts[:, :, 1, :]  # [B, S, 2]
            ab = b - a
            denom = np.maximum((ab * ab).sum(-1), 1e-12)  # [B, S]
            # distance from every pixel to every segment: [B, S, P]
            apx = grid[None, None, :, 0] - a[..., 0:1]
            apy = grid[None, None, :, 1] - a[..., 1:2]
            t = np.clip((apx * ab[..., 0:1] + apy * ab[..., 1:2]) / denom[..., None], 0.0, 1.0)
            dx = apx - t * ab[..., 0:1]
            dy = apy - t * ab[..., 1:2]
            dist = np.sqrt((dx * dx + dy * dy).min(axis=1))  # [B, P]
            half = 0.5 * width[idx, None]
            out[idx] = np.clip((half - dist) * resolution + 0.5, 0.0, 1.0)  # one-pixel antialiasing ramp
    return out.reshape(n, resolution, resolution)


def generate(size: int, seed: int, image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`size` balanced shape images at image_size (float [N, 1, H, W] in [0, 1]) and labels, from `seed`."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(size) % len(TEMPLATES)).astype(np.int64)
    images = torch.from_numpy(render(labels, 2 * image_size, rng)).unsqueeze(1)
    images = torch.nn.functional.interpolate(
        images, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False
    ).clamp_(0.0, 1.0)
    return images, torch.from_numpy(labels)


def split_seed(seed: int, split: str) -> int:
    """The generator seed of a split: derived from the user seed, different for train and test."""
    return int(np.random.SeedSequence([int(seed), 0 if split == "train" else 1]).generate_state(1)[0])


class Shapes(ArrayDataset):
    name = "shapes"
    num_classes = 10
    nominal_train_size = DEFAULT_SIZE
    description = "procedurally drawn pen-stroke shapes, 10 classes; public, no download (options: seed, size)"
    options_allowed = ("seed", "size")
    root_mode = "unused"

    @staticmethod
    def _sizes(options: dict) -> tuple[int, int]:
        size = options.get("size", DEFAULT_SIZE)
        if isinstance(size, bool) or not isinstance(size, int) or size < 10:
            raise UserError(f"dataset 'shapes': option size must be an integer >= 10 (got {size!r})")
        seed = options.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise UserError(f"dataset 'shapes': option seed must be a non-negative integer (got {seed!r})")
        return size, seed

    def _load_raw(self, root, split, download, options, image_size):
        size, seed = self._sizes(options)
        n = size if split == "train" else max(size // 5, 1)
        return generate(n, split_seed(seed, split), image_size)

    def _present_train_size(self, root, options):
        return self._sizes(options)[0]
