"""The suite schema (documented in docs/suite.md) and its expansion into a grid of runs.

A suite is strict: unknown keys, wrong types and impossible values are errors that name the file, the
field path and the fix (see :func:`load_suite`). Everything shared by the methods of a suite — data,
model, pretraining, privacy budget, training, sampling and evaluation settings — lives here once, so
that every method of a (ε, seed) cell runs under exactly the same settings.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dpbench.errors import UserError

class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DatasetRef(Strict):
    name: str = Field(description="registered dataset name (`dpbench ls datasets`)")
    image_size: int = Field(gt=0, le=512, description="images are resized to image_size x image_size")
    channels: Literal[1, 3] = Field(description="1 = grayscale, 3 = RGB; datasets are converted")
    root: Optional[str] = Field(default=None, description="data folder (overrides data.root)")
    options: dict[str, Any] = Field(default_factory=dict, description="dataset-specific options (e.g. path)")


class DataSettings(Strict):
    root: Optional[str] = Field(default=None, description="data root; --data-root and $DPBENCH_DATA override")
    private: DatasetRef
    public: Optional[DatasetRef] = Field(default=None, description="public pretraining data; null if model.pretrained")
    label: Optional[str] = Field(default=None, description="how results are labelled, e.g. MNIST-10k")
    download: bool = Field(default=False, description="let torchvision download missing data")


class ModelSettings(Strict):
    preset: Optional[str] = Field(default=None, description="a registered preset (`dpbench ls presets`)")
    pretrained: Optional[str] = Field(default=None, description="a diffusers directory or hub id (from_pretrained)")
    num_train_timesteps: int = Field(default=1000, gt=0)
    beta_schedule: Literal["linear", "squaredcos_cap_v2", "scaled_linear"] = "linear"

    @model_validator(mode="after")
    def _one_source(self):
        if (self.preset is None) == (self.pretrained is None):
            raise ValueError("give exactly one of model.preset or model.pretrained")
        return self


class PretrainSettings(Strict):
    steps: int = Field(default=2000, gt=0)
    batch_size: int = Field(default=64, gt=0)
    lr: float = Field(default=2e-3, gt=0)
    seed: int = 0


class PrivacySettings(Strict):
    epsilons: list[Union[float, Literal["inf"]]] = Field(min_length=1, description="targets; inf = non-private reference")
    delta: float = Field(gt=0, lt=1)
    accountant: Literal["prv", "rdp"] = "prv"
    expected_batch_size: int = Field(gt=0, description="expected logical (Poisson) batch size")
    epochs: Optional[float] = Field(default=None, gt=0)
    steps: Optional[int] = Field(default=None, gt=0)
    max_grad_norm: float = Field(gt=0, description="per-example clipping norm C")
    noise_multiplicity: int = Field(default=1, ge=1, description="K noised copies averaged inside each example's loss")
    physical_batch_size: int = Field(gt=0, description="examples per forward/backward (virtual batching)")

    @field_validator("epsilons", mode="before")
    @classmethod
    def _parse_inf(cls, value):
        if isinstance(value, list):
            return [("inf" if (isinstance(v, str) and v.strip().lower() in {"inf", ".inf", "infinity"}) or v == math.inf else v) for v in value]
        return value

    @field_validator("epsilons")
    @classmethod
    def _positive(cls, value):
        for eps in value:
            if eps != "inf" and not eps > 0:
                raise ValueError(f"epsilon must be > 0 (got {eps}); use inf for the non-private reference")
        if len(set(map(str, value))) != len(value):
            raise ValueError("epsilons are repeated")
        return value

    @model_validator(mode="after")
    def _length(self):
        if (self.epochs is None) == (self.steps is None):
            raise ValueError("give exactly one of privacy.epochs or privacy.steps")
        return self


class MethodSpec(Strict):
    name: str = Field(description="registered method (`dpbench ls methods`)")
    label: Optional[str] = Field(default=None, description="distinguishes two entries of one method; defaults to name")
    options: dict[str, Any] = Field(default_factory=dict)
    lr: Optional[float] = Field(default=None, gt=0, description="overrides training.lr for this method")

    @property
    def key(self) -> str:
        return self.label or self.name


class TrainingSettings(Strict):
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = Field(default=1e-3, gt=0)
    class_embedding_lr: Optional[float] = Field(default=None, gt=0, description="lr of the private class embedding (default: the method's lr)")
    weight_decay: float = Field(default=0.0, ge=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    ema_decay: Optional[float] = Field(default=0.999, ge=0, lt=1, description="EMA of trainable weights; null = off")
    grad_sample_mode: Literal["hooks", "functorch"] = "hooks"
    label_dropout: float = Field(default=0.0, ge=0, lt=1, description="p of training the null class, for guidance")
    mixed_precision: Literal["auto", "bf16", "no"] = "auto"
    warmup_steps: int = Field(default=2, ge=0, description="steps excluded from the step-time median")
    checkpoint_seconds: float = Field(default=30.0, ge=0, description="resume checkpoint interval (0 = every step)")


class SamplingSettings(Strict):
    scheduler: Literal["ddpm", "ddim"] = "ddim"
    steps: int = Field(default=50, gt=0)
    num_samples: int = Field(default=1000, gt=0, description="synthetic images for the downstream classifier and FID")
    batch_size: int = Field(default=250, gt=0)
    guidance_scale: float = Field(default=0.0, ge=0, description="classifier-free guidance; needs training.label_dropout > 0")
    grid_per_class: int = Field(default=8, gt=0)


class EvaluationSettings(Strict):
    classifier: str = Field(default="cnn", description="registered downstream classifier")
    classifier_seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    classifier_epochs: int = Field(default=10, gt=0)
    classifier_batch_size: int = Field(default=128, gt=0)
    classifier_lr: float = Field(default=1e-3, gt=0)
    fid_backbone: str = Field(default="random_cnn", description="registered FID feature extractor")
    fid_reference_split: Literal["train", "test"] = "test"
    fid_max_reference: int = Field(default=10000, gt=0)
    precision_recall_k: int = Field(default=3, gt=0)
    real_data_ceiling: bool = Field(default=True, description="train the classifier on real private data once")


class Suite(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = ""
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    data: DataSettings
    model: ModelSettings
    pretrain: PretrainSettings = Field(default_factory=PretrainSettings)
    privacy: PrivacySettings
    methods: list[MethodSpec] = Field(min_length=1)
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    sampling: SamplingSettings = Field(default_factory=SamplingSettings)
    evaluation: EvaluationSettings = Field(default_factory=EvaluationSettings)
    executor: str = "local"
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @model_validator(mode="after")
    def _cross_checks(self):
        keys = [m.key for m in self.methods]
        dupes = sorted({k for k in keys if keys.count(k) > 1})
        if dupes:
            raise ValueError(f"method {dupes[0]!r} appears twice; give each entry a distinct label")
        if self.model.preset is not None and self.data.public is None:
            raise ValueError("a preset must be pretrained: add data.public (or use model.pretrained)")
        if self.sampling.guidance_scale > 0 and self.training.label_dropout == 0:
            raise ValueError("sampling.guidance_scale > 0 needs training.label_dropout > 0")
        if self.data.public is not None and (
            self.data.public.image_size != self.data.private.image_size
            or self.data.public.channels != self.data.private.channels
        ):
            raise ValueError("data.public must have the image_size and channels of data.private")
        return self

    def data_root(self, ref: DatasetRef, override: Optional[str] = None) -> Optional[str]:
        return override or ref.root or self.data.root or os.environ.get("DPBENCH_DATA")


class RunSpec(BaseModel):
    """One cell of the grid: a method at one ε and seed. Everything else comes from the suite."""

    model_config = ConfigDict(frozen=True)
    run_id: str
    suite: str
    method: str
    method_key: str
    dataset: str
    public_dataset: Optional[str]
    epsilon: float
    seed: int

    @property
    def private(self) -> bool:
        return math.isfinite(self.epsilon)


def _format_loc(loc: tuple) -> str:
    return ".".join(str(p) for p in loc if not (isinstance(p, str) and p.startswith("function-")))


_FIXES = {
    "extra_forbidden": "remove it or fix its spelling (see docs/suite.md)",
    "missing": "add this required field (see docs/suite.md)",
}


def _validation_message(path: str, err: ValidationError) -> str:
    first = err.errors()[0]
    loc = _format_loc(first["loc"])
    kind = first["type"]
    msg = first["msg"].removeprefix("Value error, ")
    if kind == "extra_forbidden":
        msg = f"unknown key {str(first['loc'][-1])!r}"
    fix = _FIXES.get(kind, "")
    where = f"{path}: {loc}: " if loc else f"{path}: "
    return f"{where}{msg}" + (f" — {fix}" if fix else "")


def parse_suite(raw: Any, path: str = "<suite>") -> Suite:
    if not isinstance(raw, dict):
        raise UserError(f"{path}: a suite must be a YAML mapping with keys name, data, model, privacy, methods")
    try:
        return Suite.model_validate(raw)
    except ValidationError as err:
        raise UserError(_validation_message(path, err)) from None


def load_suite(path: str | os.PathLike) -> Suite:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: suite file not found — give the path to a suite YAML (see suites/)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise UserError(f"{path}:{where}: YAML syntax error: {problem} — fix the YAML syntax") from None
    return parse_suite(raw, str(path))


def format_epsilon(eps: float | str) -> str:
    eps = float(eps)
    return "inf" if math.isinf(eps) else f"{eps:g}"


def expand_runs(suite: Suite) -> list[RunSpec]:
    runs = []
    for seed in suite.seeds:
        for eps in suite.privacy.epsilons:
            for method in suite.methods:
                e = format_epsilon(eps)
                runs.append(
                    RunSpec(
                        run_id=f"{method.key}-eps{e}-seed{seed}",
                        suite=suite.name,
                        method=method.name,
                        method_key=method.key,
                        dataset=suite.data.private.name,
                        public_dataset=suite.data.public.name if suite.data.public else None,
                        epsilon=float(eps),
                        seed=seed,
                    )
                )
    return runs


def stable_hash(obj: Any, length: int = 16) -> str:
    """Hash of a JSON-able object, independent of key order."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]
