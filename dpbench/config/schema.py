"""The suite schema (documented in docs/suite.md): the pydantic types of a suite file, section by section.

A suite is strict: unknown keys, wrong types and impossible values are errors (worded for people by
:mod:`dpbench.config.messages`). Everything shared by the methods of a suite — data, model, pretraining,
privacy budget, training, sampling and evaluation settings — lives here once, so that every method at one
(ε, seed) runs under exactly the same settings. :class:`TrainingSettings` is also the engine's
settings type.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import (AliasChoices, BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, PrivateAttr, Tag,
                      field_validator, model_validator)

from dpbench.results import NAME_PATTERN, format_epsilon, parse_epsilon


class Strict(BaseModel):
    # No inf/nan numbers: a suite's ∞ is only ever the string "inf" in privacy.epsilons.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class DatasetRef(Strict):
    name: str = Field(description="registered dataset name (`dpbench ls datasets`)")
    image_size: int = Field(gt=0, le=512, description="images are resized to image_size x image_size")
    channels: Literal[1, 3] = Field(description="1 = grayscale, 3 = RGB; datasets are converted")
    root: Optional[str] = Field(default=None, description="data folder (overrides data.root)")
    options: dict[str, Any] = Field(default_factory=dict, description="dataset-specific options (e.g. path)")

    def identity(self) -> dict:
        return {"name": self.name, "options": self.options}


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
            raise ValueError("model.preset and model.pretrained: both or neither given — give exactly one of them")
        return self


class PretrainSettings(Strict):
    steps: int = Field(default=2000, gt=0)
    batch_size: int = Field(default=64, gt=0)
    lr: float = Field(default=2e-3, gt=0)
    seed: int = 0
    ema_decay: Optional[float] = Field(default=None, ge=0, lt=1, description="EMA of the weights (what is saved); null = off")
    mixed_precision: Literal["auto", "no"] = Field(default="auto", description="auto: bf16 autocast where CUDA supports it")
    checkpoint_seconds: float = Field(default=60.0, ge=0, description="resume checkpoint interval (0 = every step)")


class QuantileClipping(Strict):
    """Adaptive clipping toward a quantile of per-example norms (Andrew et al. 2021)."""

    quantile: float = Field(gt=0, lt=1, description="target fraction of examples left unclipped")
    initial: float = Field(default=1.0, gt=0, description="C at the first step")
    learning_rate: float = Field(default=0.2, gt=0, description="η of the geometric update of C")
    count_noise: Optional[float] = Field(default=None, gt=0, description="std of the count noise (default B/20)")


def _clipping_kind(value: Any) -> str | None:
    """Which form of clipping spec a value is, so a mistake is reported against that form alone."""
    if isinstance(value, (dict, QuantileClipping)):
        return "clip-quantile"
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "clip-auto"
    return "clip-number"


ClippingSpec = Annotated[
    Union[Annotated[float, Tag("clip-number")], Annotated[Literal["auto"], Tag("clip-auto")],
          Annotated[QuantileClipping, Tag("clip-quantile")]],
    Discriminator(_clipping_kind),
]


def _check_clipping(value):
    if isinstance(value, (int, float)) and not isinstance(value, bool) and not value > 0:
        raise ValueError(f"a clipping norm must be > 0 (got {value}) — give C > 0, auto, or {{quantile: q}}")
    return value


def _check_physical_batch(value):
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value > 0):
        return value
    raise ValueError(f"{value!r} is not a batch size — give a positive integer or auto")


PhysicalBatchSize = Annotated[Union[int, Literal["auto"]], BeforeValidator(_check_physical_batch)]


class PrivacySettings(Strict):
    epsilons: list[Union[float, Literal["inf"]]] = Field(min_length=1, description="targets; inf = non-private reference")
    delta: float = Field(gt=0, lt=1)
    accountant: Literal["prv", "rdp"] = "prv"
    expected_batch_size: int = Field(gt=0, description="expected logical (Poisson) batch size")
    epochs: Optional[float] = Field(default=None, gt=0, le=1e6)
    steps: Optional[int] = Field(default=None, gt=0, le=100_000, description="logical steps T (at most 100,000)")
    max_grad_norm: ClippingSpec = Field(description="C (a number), auto, or {quantile: q}")
    noise_multiplicity: int = Field(default=1, ge=1, description="K noised copies averaged inside each example's loss")
    physical_batch_size: PhysicalBatchSize = Field(
        description="examples per forward/backward (virtual batching); auto: the largest that fits the GPU")
    reproducible: bool = Field(
        default=False, validation_alias=AliasChoices("reproducible", "reproducible_noise"),
        description="derive the Poisson sampling and the DP noise from the seed (reproducible_noise is the old "
                    "name): for tests and debugging only, NOT a DP release")

    @field_validator("epsilons", mode="before")
    @classmethod
    def _parse_inf(cls, value):
        if isinstance(value, list):
            out = []
            for v in value:
                try:
                    eps = parse_epsilon(v)
                except ValueError:
                    out.append(v)  # pydantic reports the type error
                    continue
                out.append("inf" if math.isinf(eps) else eps)
            return out
        return value

    @field_validator("epsilons")
    @classmethod
    def _positive(cls, value):
        for eps in value:
            if eps != "inf" and not eps > 0:
                raise ValueError(f"epsilon must be > 0 (got {eps}) — give ε > 0, or inf for the non-private reference")
        if len({float(e) for e in value}) != len(value):
            raise ValueError("epsilons are repeated — list each ε once")
        return value

    _clip = field_validator("max_grad_norm")(classmethod(lambda cls, v: _check_clipping(v)))

    @model_validator(mode="after")
    def _length(self):
        if (self.epochs is None) == (self.steps is None):
            raise ValueError("privacy.epochs and privacy.steps: both or neither given — give exactly one of them")
        return self


class MethodSpec(Strict):
    name: str = Field(description="registered method (`dpbench ls methods`)")
    label: Optional[str] = Field(default=None, pattern=NAME_PATTERN,
                                 description="distinguishes two entries of one method; defaults to name")
    options: dict[str, Any] = Field(default_factory=dict)
    lr: Optional[float] = Field(default=None, gt=0, description="overrides training.lr for this method")
    max_grad_norm: Optional[ClippingSpec] = Field(default=None, description="overrides privacy.max_grad_norm")
    physical_batch_size: Optional[PhysicalBatchSize] = Field(
        default=None, description="overrides privacy.physical_batch_size for this method")

    _clip = field_validator("max_grad_norm")(classmethod(lambda cls, v: _check_clipping(v)))

    @property
    def method_label(self) -> str:
        """The entry's name in run ids, results (``RunResult.method_label``), ``--only label=`` and reports:
        ``label`` when given, else the method's name."""
        # a plug-in named by its import target (module:Class) gets a name that can be a path component
        return self.label or self.name.replace(":", ".")


class TrainingSettings(Strict):
    """The DP loop's optimisation settings; the engine takes this type (one settings type, not two)."""

    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = Field(default=1e-3, gt=0)
    class_embedding_lr: Optional[float] = Field(default=None, gt=0, description="lr of the private class embedding (default: the method's lr)")
    weight_decay: float = Field(default=0.0, ge=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    ema_decay: Optional[float] = Field(default=0.999, ge=0, lt=1, description="EMA of trainable weights; null = off")
    grad_sample_mode: Literal["bookkeeping", "hooks", "functorch"] = Field(
        default="bookkeeping", description="per-example clipping engine: bookkeeping (ghost norms and one weighted "
                                           "contraction), or Opacus' hooks / functorch; each verified by `dpbench selfcheck`")
    bookkeeping_rule: Literal["memory", "time"] = Field(
        default="memory", description="bookkeeping: per layer, ghost norm or instantiated per-example gradients by "
                                      "the smaller memory (ghost where 2·S² < P, as fastDP) or the fewer multiply-adds")
    label_dropout: float = Field(default=0.0, ge=0, lt=1, description="p of training the null class, for guidance")
    mixed_precision: Literal["auto", "bf16", "no"] = Field(
        default="auto", description="auto: bf16 autocast where CUDA supports it; bf16: also on CPU; no: fp32")
    warmup_steps: int = Field(default=2, ge=0, description="steps excluded from the step-time median")
    checkpoint_seconds: float = Field(default=30.0, ge=0, description="resume checkpoint interval (0 = every step)")
    min_physical_batch_size: int = Field(
        default=1, gt=0, description="out of memory halves the physical batch down to this; below it the run fails")


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


class ExecutorSettings(Strict):
    """Where the runs of a grid execute; a plain string in a suite is the name alone."""

    name: str = Field(default="local", description="a registered executor (`dpbench ls executors`)")
    address: Optional[str] = Field(default=None, description="ray: an existing cluster (e.g. ray://head:10001 or "
                                                             "auto); omitted: start a local one")
    gpus_per_run: float = Field(default=1, ge=0, le=1, description="ray: GPUs per run (0: on CPU; a fraction shares a GPU)")
    cpus_per_run: float = Field(default=1, gt=0, description="ray: CPUs per run")
    max_retries: int = Field(default=2, ge=0, description="ray: retries of a run whose worker died (it resumes from "
                                                          "its checkpoint)")

    @model_validator(mode="before")
    @classmethod
    def _plain_name(cls, value):
        return {"name": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _ray_fields(self):
        given = sorted(self.model_fields_set - {"name"})
        if self.name == "local" and given:
            raise ValueError(f"{given[0]} is for the ray executor only — remove it, or set name: ray")
        return self


Seed = Annotated[int, Field(ge=0, lt=2**31)]


def _repeated_seed(seeds: list[int]) -> Optional[int]:
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    return repeated[0] if repeated else None


class Suite(Strict):
    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    seeds: list[Seed] = Field(default_factory=lambda: [0], min_length=1)
    # More (or other) seeds at some budgets: a close comparison at the headline ε can get the seeds it needs
    # without paying for them at every ε.
    epsilon_seeds: dict[str, list[Seed]] = Field(
        default_factory=dict, description="seeds for particular ε instead of `seeds`, e.g. {10: [0, 1, 2, 3, 4]}")
    data: DataSettings
    model: ModelSettings
    pretrain: PretrainSettings = Field(default_factory=PretrainSettings)
    privacy: PrivacySettings
    methods: list[MethodSpec] = Field(min_length=1)
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    sampling: SamplingSettings = Field(default_factory=SamplingSettings)
    evaluation: EvaluationSettings = Field(default_factory=EvaluationSettings)
    executor: ExecutorSettings = Field(default_factory=ExecutorSettings)
    device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, value):
        if _repeated_seed(value) is not None:
            raise ValueError(f"seed {_repeated_seed(value)} is listed twice (two runs would share one run id) — "
                             "list each seed once")
        return value

    @field_validator("epsilon_seeds", mode="before")
    @classmethod
    def _epsilon_keys(cls, value):
        """Keys as ε are written in privacy.epsilons (10, 10.0 and "10" are one ε; inf, "inf" and ∞ another)."""
        if not isinstance(value, dict):
            return value
        keys = {}
        for key, seeds in value.items():
            try:
                eps = format_epsilon(parse_epsilon(key))
            except (ValueError, TypeError):
                raise ValueError(f"{key!r} is not an ε — key each list by an ε of privacy.epsilons, e.g. {{10: [0, 1, 2]}}")
            if eps in keys:
                raise ValueError(f"ε {eps} is keyed twice — give each ε one list of seeds")
            keys[eps] = seeds
        return keys

    @field_validator("epsilon_seeds")
    @classmethod
    def _distinct_epsilon_seeds(cls, value):
        for eps, seeds in value.items():
            if not seeds:
                raise ValueError(f"ε {eps} has no seeds — list at least one, or remove the entry")
            if _repeated_seed(seeds) is not None:
                raise ValueError(f"ε {eps}: seed {_repeated_seed(seeds)} is listed twice — list each seed once")
        return value

    def seeds_at(self, eps: float) -> list[int]:
        """The fine-tuning seeds run at ε ``eps``: its ``epsilon_seeds`` entry, else ``seeds``."""
        return self.epsilon_seeds.get(format_epsilon(eps), self.seeds)

    def all_seeds(self) -> list[int]:
        """Every seed some ε runs, ``seeds`` first, then the others in the order ``epsilon_seeds`` lists them."""
        ordered = list(self.seeds)
        for seeds in self.epsilon_seeds.values():
            ordered += [s for s in seeds if s not in ordered]
        return ordered

    @model_validator(mode="after")
    def _cross_checks(self):
        problems = []
        keys = [m.method_label for m in self.methods]
        dupes = sorted({k for k in keys if keys.count(k) > 1})
        if dupes:
            problems.append(f"method {dupes[0]!r} appears twice — give each entry a distinct label")
        if self.model.preset is not None and self.data.public is None:
            problems.append("a preset must be pretrained — add data.public (or use model.pretrained)")
        if self.sampling.guidance_scale > 0 and self.training.label_dropout == 0:
            problems.append("sampling.guidance_scale > 0 needs training.label_dropout > 0 — set one, or guidance_scale: 0")
        public, private = self.data.public, self.data.private
        if public is not None and (public.image_size != private.image_size or public.channels != private.channels):
            problems.append("data.public must have the image_size and channels of data.private — make them equal")
        if public is not None and public.identity() == private.identity():
            problems.append("data.public is the private dataset: pretraining on private data outside the DP "
                            "mechanism voids the guarantee — use a different public dataset")
        budgets = [format_epsilon(float(e)) for e in self.privacy.epsilons]
        for eps in self.epsilon_seeds:
            if eps not in budgets:
                problems.append(f"epsilon_seeds: ε {eps} is not in privacy.epsilons {budgets} — key it by one of them")
        private_eps = any(e != "inf" for e in self.privacy.epsilons)
        if private_eps and self.evaluation.fid_reference_split == "train":
            problems.append("evaluation.fid_reference_split: 'train' compares samples with the private training "
                            "images outside the DP mechanism — use test")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    # The folder of the file this suite was read from: relative roots in a suite are relative to it.
    _source_dir: Optional[Path] = PrivateAttr(default=None)

    def data_root(self, ref: DatasetRef, override: Optional[str] = None) -> Optional[str]:
        """The one data-root resolution, an absolute path (or None): --data-root, then the dataset's root,
        data.root, $DPBENCH_DATA. A relative path typed on the command line or in the environment is relative
        to the working directory; a relative path written in a suite file is relative to that file's folder
        (symlinks resolved), so one suite reads the same data wherever it is run from."""
        if override:
            return os.path.abspath(os.path.expanduser(override))
        for written in (ref.root, self.data.root):
            if written:
                path = os.path.expanduser(written)
                base = self._source_dir if self._source_dir is not None else Path.cwd()
                return os.path.normpath(path if os.path.isabs(path) else base / path)
        env = os.environ.get("DPBENCH_DATA")
        return os.path.abspath(os.path.expanduser(env)) if env else None

    def method(self, method_label: str) -> MethodSpec:
        return next(m for m in self.methods if m.method_label == method_label)
