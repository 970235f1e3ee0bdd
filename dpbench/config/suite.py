"""The suite schema (documented in docs/suite.md) and its expansion into a grid of runs.

A suite is strict: unknown keys, wrong types and impossible values are errors that name the file, the
field path and the fix (see :func:`load_suite`); every problem of a file is reported at once.
Everything shared by the methods of a suite — data, model, pretraining, privacy budget, training,
sampling and evaluation settings — lives here once, so that every method of a (ε, seed) cell runs
under exactly the same settings. :class:`TrainingSettings` is also the engine's settings type.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import os
import typing
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Sequence, Union

import yaml
from pydantic import (AliasChoices, BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, PrivateAttr, Tag,
                      ValidationError, field_validator, model_validator)

from dpbench.errors import UserError
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
    def key(self) -> str:
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


class Suite(Strict):
    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    seeds: list[Annotated[int, Field(ge=0, lt=2**31)]] = Field(default_factory=lambda: [0], min_length=1)
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
        repeated = sorted({s for s in value if value.count(s) > 1})
        if repeated:
            raise ValueError(f"seed {repeated[0]} is listed twice (two runs would share one run id) — list each seed once")
        return value

    @model_validator(mode="after")
    def _cross_checks(self):
        problems = []
        keys = [m.key for m in self.methods]
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

    def method(self, key: str) -> MethodSpec:
        return next(m for m in self.methods if m.key == key)


class RunSpec(BaseModel):
    """One cell of the grid: a method at one ε and seed. Everything else comes from the suite."""

    model_config = ConfigDict(frozen=True)
    run_id: str
    suite: str
    method: str
    method_key: str
    method_index: int
    dataset: str
    public_dataset: Optional[str]
    epsilon: float
    seed: int

    @property
    def private(self) -> bool:
        return math.isfinite(self.epsilon)


# --------------------------------------------------------------------------------------------- errors
def _format_loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and not part.startswith("function-") and part not in _UNION_TAGS:
            out += ("." if out else "") + part
    return out


_UNION_TAGS = {"float", "literal['inf']", "clip-number", "clip-auto", "clip-quantile"}

_FIXES = {
    "extra_forbidden": "remove it or fix its spelling (see docs/suite.md)",
    "missing": "add this required field (see docs/suite.md)",
}

_BOUNDS = {"greater_than": ("gt", ">"), "greater_than_equal": ("ge", "≥"), "less_than": ("lt", "<"),
           "less_than_equal": ("le", "≤")}
_KIND_NAMES = {"int": "a whole number", "float": "a number", "bool": "true or false", "string": "a string",
               "list": "a list, e.g. [1, 2]", "dict": "a mapping of keys", "model": "a mapping of keys",
               "model_attributes": "a mapping of keys"}


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _explain(e: dict) -> tuple[str, str]:
    """(what is wrong, the fix) for one pydantic error, in the suite's words rather than the validator's."""
    kind, ctx, value = e["type"], e.get("ctx") or {}, e.get("input")
    msg = e["msg"].removeprefix("Value error, ")
    if kind in _BOUNDS:
        key, sign = _BOUNDS[kind]
        bound = ctx.get(key)
        bound = f"{bound:g}" if isinstance(bound, (int, float)) else bound
        return f"must be {sign} {bound} (got {_shown(value)})", f"give a value {sign} {bound}"
    if kind == "string_pattern_mismatch":
        if ctx.get("pattern") == NAME_PATTERN:
            return (f"{_shown(value)} is not a usable name",
                    "start with a letter or digit and use only letters, digits, '.', '_' and '-'")
        return f"{_shown(value)} does not have the expected form", "see docs/suite.md for the allowed values"
    if kind == "finite_number":
        return f"must be a finite number (got {_shown(value)})", "give a finite number"
    if kind == "literal_error":
        return f"{_shown(value)} is not allowed", f"use {ctx.get('expected', 'one of the documented values')}"
    if kind == "too_short":
        return f"needs at least {ctx.get('min_length', 1)} item(s)", "add an entry (see docs/suite.md)"
    if kind == "int_from_float":
        return f"must be a whole number (got {_shown(value)})", "write it without a fraction"
    for name, description in _KIND_NAMES.items():
        if kind in (f"{name}_type", f"{name}_parsing"):
            return f"must be {description} (got {_shown(value)})", f"write {description} (see docs/suite.md)"
    return msg, _FIXES.get(kind, "see docs/suite.md for the allowed values")


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """The pydantic model that owns the field at ``loc`` (for did-you-mean on unknown keys)."""
    model: Any = Suite
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(model, type) and issubclass(model, BaseModel)) or part not in model.model_fields:
            return None
        model = _unwrap(model.model_fields[part].annotation)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _unwrap(annotation):
    for arg in typing.get_args(annotation) or ():
        inner = _unwrap(arg)
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            return inner
    return annotation


def _unknown_key_suggestions(errors: list[dict]) -> dict[tuple, str]:
    """For each unknown key, the known key it probably meant. A misspelled key shows up twice — as
    unknown, and as "Field required" for the key it replaced — so a missing sibling is the best guess."""
    missing = {(tuple(e["loc"][:-1]), e["loc"][-1]) for e in errors if e["type"] == "missing"}
    out = {}
    for e in errors:
        if e["type"] != "extra_forbidden":
            continue
        parent, key = tuple(e["loc"][:-1]), str(e["loc"][-1])
        siblings = [name for p, name in missing if p == parent]
        for candidates in (siblings, list(getattr(_model_at(parent), "model_fields", None) or [])):
            close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
            if close:
                out[tuple(e["loc"])] = close[0]
                break
    return out


def _messages(path: str, err: ValidationError) -> list[str]:
    """One line per problem: file, field path, what is wrong, the fix."""
    errors = err.errors()
    suggestions = _unknown_key_suggestions(errors)
    explained = {loc[:-1] + (meant,) for loc, meant in suggestions.items()}
    out = []
    for e in errors:
        loc, kind = tuple(e["loc"]), e["type"]
        if kind == "missing" and loc in explained:
            continue  # reported as the unknown key that replaced it
        msg, fix = _explain(e) if kind != "value_error" else (e["msg"].removeprefix("Value error, "), "")
        if kind == "extra_forbidden":
            msg = f"unknown key {str(loc[-1])!r}"
            if loc in suggestions:
                fix = f"did you mean {suggestions[loc]!r}?"
        where = _format_loc(loc)
        line = f"{path}: {where}: {msg}" if where else f"{path}: {msg}"
        out.append(line + (f" — {fix}" if fix else ""))
    return list(dict.fromkeys(out))


def parse_suite(raw: Any, path: str = "<suite>") -> Suite:
    if not isinstance(raw, dict):
        raise UserError(f"{path}: this is not a suite — a suite is a YAML mapping with keys name, data, model, privacy, "
                        "methods (see docs/suite.md and the built-in suites: dpbench ls suites)")
    try:
        return Suite.model_validate(raw)
    except ValidationError as err:
        raise UserError(_messages(path, err)) from None


BUILTIN_SUITES = "dpbench.suites"


def builtin_suites() -> dict[str, Path]:
    """The suites that ship with the package: name → file."""
    folder = resources.files(BUILTIN_SUITES)
    return {Path(p.name).stem: Path(str(p)) for p in folder.iterdir() if p.name.endswith(".yaml")}


def resolve_suite_path(name_or_path: str | os.PathLike) -> Path:
    """A suite file path, or the name of a built-in suite (``dpbench run quickstart``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    builtin = builtin_suites()
    if str(name_or_path) in builtin:
        return builtin[str(name_or_path)]
    close = difflib.get_close_matches(path.stem, list(builtin), n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}?" if close else f"built-in suites: {', '.join(sorted(builtin))}"
    raise UserError(f"{name_or_path}: suite file not found — give the path to a suite YAML or a built-in name ({hint})")


MAX_SUITE_BYTES = 1 << 20  # a suite is a page of settings; anything larger is not one


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice in one mapping (plain YAML keeps the last one silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: the schema reports it
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice in one mapping", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def read_suite_yaml(path: Path) -> Any:
    """The suite file's YAML (safe_load semantics, duplicate keys refused); a UserError for anything that
    is not a readable UTF-8 YAML document."""
    try:
        size = path.stat().st_size
        data = path.read_bytes() if size <= MAX_SUITE_BYTES else b""
    except OSError as err:
        raise UserError(f"{path}: cannot read the suite file ({err.strerror}) — check the path and its permissions") from None
    if size > MAX_SUITE_BYTES:
        raise UserError(f"{path}: {size} bytes is not a suite (at most {MAX_SUITE_BYTES} bytes) — give the suite YAML file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start}) — save the suite "
                        "as UTF-8 YAML") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        what, fix = ("duplicate key", "give each key once") if "given twice" in str(problem) else \
            ("YAML syntax error", "fix the YAML syntax")
        raise UserError(f"{path}:{where}: {what}: {problem} — {fix}") from None
    except RecursionError:
        raise UserError(f"{path}: the YAML is nested too deeply to be a suite — see docs/suite.md for its shape") from None


def with_absolute_data_roots(raw: Any, source_dir: Path) -> Any:
    """``raw`` (a suite's mapping) with each relative data root written in it made absolute against
    ``source_dir``, for a copy of the suite written elsewhere (the tuned suite) that must read the same data."""
    data = raw.get("data") if isinstance(raw, dict) else None
    if not isinstance(data, dict):
        return raw
    for holder in (data, data.get("private"), data.get("public")):
        root = holder.get("root") if isinstance(holder, dict) else None
        if isinstance(root, str) and root and not os.path.isabs(os.path.expanduser(root)):
            holder["root"] = os.path.normpath(source_dir / root)
    return raw


def load_suite(path: str | os.PathLike, overrides: Sequence[str] = ()) -> Suite:
    """The suite of a file (or built-in name), with command-line ``--set`` overrides applied to its raw
    mapping before validation (:mod:`dpbench.config.overrides`)."""
    path = resolve_suite_path(path)
    raw = read_suite_yaml(path)
    if overrides:
        from dpbench.config.overrides import apply_overrides

        raw = apply_overrides(raw, overrides)
    try:
        suite = parse_suite(raw, str(path))
    except RecursionError:
        raise UserError(f"{path}: the YAML is nested too deeply to be a suite — see docs/suite.md for its shape") from None
    suite._source_dir = path.resolve().parent
    return suite


# --------------------------------------------------------------------------------------------- grid
def expand_runs(suite: Suite) -> list[RunSpec]:
    runs = []
    for seed in suite.seeds:
        for eps in suite.privacy.epsilons:
            for index, method in enumerate(suite.methods):
                runs.append(
                    RunSpec(
                        run_id=f"{method.key}-eps{format_epsilon(float(eps))}-seed{seed}",
                        suite=suite.name,
                        method=method.name,
                        method_key=method.key,
                        method_index=index,
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


# Settings that do not change what a run computes: excluded from its config hash.
_NOT_IN_HASH = {"training": {"checkpoint_seconds", "warmup_steps", "min_physical_batch_size"},
                "pretrain": {"checkpoint_seconds"}}
# Settings added after results were first written: hashed only when they differ from their default, so
# that adding a setting never makes finished results stale.
_HASHED_UNLESS_DEFAULT = {"pretrain": {"ema_decay": None, "mixed_precision": "auto"},
                          "method": {"physical_batch_size": None}}


def hashed_settings(section: str, values: dict) -> dict:
    """The part of one suite section (a ``model_dump``) that enters config hashes and cache keys."""
    defaults = _HASHED_UNLESS_DEFAULT.get(section, {})
    return {k: v for k, v in values.items()
            if k not in _NOT_IN_HASH.get(section, ()) and not (k in defaults and v == defaults[k])}


def run_config_hash(suite: Suite, spec: RunSpec, num_examples: int) -> str:
    """Hash of everything that determines one run: the sections of the suite it uses, its method entry,
    ε, seed, the private data's identity and size, and the dpbench version. Changing any of them makes
    a finished run stale (``dpbench run`` refuses to skip it silently)."""
    import dpbench

    dump = suite.model_dump(mode="json")
    privacy = {k: v for k, v in dump["privacy"].items() if k != "epsilons"}
    method = hashed_settings("method", suite.method(spec.method_key).model_dump(mode="json"))
    material = {
        "dpbench": dpbench.__version__,
        "data": {"private": suite.data.private.identity(), "public": suite.data.public.identity() if suite.data.public else None,
                 "image_size": suite.data.private.image_size, "channels": suite.data.private.channels,
                 "num_examples": num_examples},
        "model": dump["model"], "pretrain": hashed_settings("pretrain", dump["pretrain"]) if suite.model.preset else None,
        "privacy": privacy, "epsilon": format_epsilon(spec.epsilon), "seed": spec.seed,
        "method": method,
        "training": hashed_settings("training", dump["training"]),
        "sampling": dump["sampling"], "evaluation": dump["evaluation"],
    }
    return stable_hash(material)
