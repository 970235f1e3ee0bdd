"""The result contract's types: every producer (run, profile, selfcheck, audit, tune, docs) writes one of
these pydantic records, every reader (report, regress) reads only them. Documented field by field here and
in docs/results.md; :mod:`dpbench.results.files` reads and writes them."""

from __future__ import annotations

import math
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from dpbench.results.epsilon import Epsilon

SCHEMA_VERSION = 2


class Record(BaseModel):
    """Strict on what it knows, tolerant of fields written by newer versions (kept, not interpreted)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)


class Provenance(Record):
    device: Optional[str] = Field(None, description="device description, e.g. 'cuda:NVIDIA H200' or 'cpu:x86_64 x2 threads'")
    versions: dict[str, Optional[str]] = Field(default_factory=dict, description="python, dpbench, torch, opacus, ...")
    git_sha: Optional[str] = Field(None, description="commit of the dpbench checkout, '-dirty' if modified")
    created_at: Optional[str] = Field(None, description="UTC ISO-8601 time the file was written")


class ClippingInfo(Record):
    mode: Literal["fixed", "auto", "quantile", "none"] = Field(description="per-example clipping rule; none = ε=∞")
    max_grad_norm: Optional[float] = Field(None, description="C (fixed); the initial C (quantile); null for auto/none")
    final_max_grad_norm: Optional[float] = Field(None, description="quantile: the privately adapted C at the end")
    target_quantile: Optional[float] = Field(None, description="quantile: the target fraction of unclipped examples")
    gradient_noise_multiplier: Optional[float] = Field(
        None, description="σ applied to the clipped gradient sum (quantile: recalibrated so the total is still ε)")
    count_noise_multiplier: Optional[float] = Field(None, description="quantile: noise of the clipped-count query")


class ClippingDiagnostics(Record):
    """How much clipping acted, from privatised quantities only (never raw private statistics)."""

    source: Literal["private_count_query", "public_data", "none"] = Field(
        description="private_count_query: the quantile mechanism's noisy counts (their cost is in the budget); "
                    "public_data: measured on public images before training")
    unclipped_fraction: Optional[float] = Field(None, description="fraction of examples with ‖g‖ ≤ C")
    median_gradient_norm: Optional[float] = Field(None, description="public_data: median per-example ‖g‖ at the start")
    signal_to_noise: Optional[float] = Field(
        None, description="estimated ‖mean clipped gradient‖ / ‖noise on the averaged step‖ (σ·C/B·√P)")
    warning: Optional[str] = Field(None, description="set when clipping barely acts or noise drowns the signal")


class GpuPhase(Record):
    """One phase of a run (train, sample, evaluate) as NVML saw the run's GPU (the whole GPU's counters)."""

    seconds: float = Field(description="wall time of the phase")
    energy_joules: Optional[float] = Field(None, description="NVML total-energy counter difference (Volta and newer)")
    mean_power_watts: Optional[float] = Field(None, description="energy / seconds (sampled power without the counter)")
    mean_utilization_percent: Optional[float] = Field(None, description="GPU utilisation sampled every 100 ms, mean")
    peak_process_memory_bytes: Optional[int] = Field(
        None, description="this process's device memory per NVML, peak of the samples; null where NVML hides it")


class RunResult(Provenance):
    """One finished (or failed) run of a suite: a method at one ε and seed (``runs/<run_id>/result.json``)."""

    schema_version: int = Field(SCHEMA_VERSION, description="2; version-1 files are converted on load")
    status: Literal["ok", "failed"] = Field("ok", description="failed: see error and phase; metrics may be null")
    error: Optional[str] = Field(None, description="failed runs: the error, one line")
    phase: Optional[str] = Field(None, description="failed runs: train, sample or evaluate")
    smoke: bool = Field(False, description="a `--smoke` run (2 steps, minimal sampling and evaluation): checks the "
                                           "pipeline, measures nothing; reports refuse to mix it with real runs")
    # identity
    run_id: str = Field(description="<method label>-eps<ε>-seed<seed>")
    suite: str
    method: str = Field(description="registered method name")
    method_label: str = Field(description="the suite's label for this method entry (defaults to the name)")
    method_options: dict[str, Any] = Field(default_factory=dict, description="the method's options as run")
    method_index: Optional[int] = Field(None, description="position of the method in the suite; reports order by it")
    seed: int = Field(description="fine-tuning seed (Poisson sampling, diffusion draws, sampling); never the DP noise")
    config_hash: Optional[str] = Field(None, description="hash of everything that determines the run (skip/resume key)")
    dataset: str = Field(description="private dataset name")
    dataset_label: str = Field(description="how reports label it, e.g. MNIST-10k")
    public_dataset: Optional[str] = None
    # privacy
    epsilon: Epsilon = Field(description="target ε; inf (\"inf\" in JSON) = the non-private reference")
    delta: float
    epsilon_spent: Optional[float] = Field(None, description="ε recomputed from the accountant's history (≤ ε); null if ε=∞")
    accountant: Optional[str] = Field(None, description="prv or rdp; null if ε=∞")
    noise_multiplier: float = Field(description="σ of the run's budget, shared by every method (0 if ε=∞)")
    noise_source: Literal["os_entropy", "seeded", "none"] = Field(
        "none", description="os_entropy: DP noise seeded from os.urandom, never written; seeded: reproducible "
                            "from the seed — NOT a DP release; none: ε=∞")
    sampling_source: Optional[Literal["os_entropy", "seeded"]] = Field(
        None, description="the Poisson sampling's generator: os_entropy (secret, as amplification by subsampling "
                          "assumes), seeded (privacy.reproducible — NOT a DP release); null: written by a dpbench "
                          "before 0.2, whose sampling was derived from the published seed")
    sample_rate: float = Field(description="Poisson sampling rate q = B / N")
    steps: int = Field(description="logical steps T")
    expected_batch_size: int
    physical_batch_size: int = Field(description="examples per forward/backward actually used (after any halving on "
                                                 "out of memory)")
    physical_batch_size_setting: Optional[int | Literal["auto"]] = Field(
        None, description="what the suite asked for: a number, or auto (the largest that fits the GPU)")
    world_size: int = Field(1, description="processes that trained the run together (torchrun), 1 otherwise")
    noise_multiplicity: int = Field(description="K noised copies averaged inside each example's loss")
    clipping: ClippingInfo
    clipping_diagnostics: Optional[ClippingDiagnostics] = None
    lr: Optional[float] = Field(None, description="learning rate of the method's parameters")
    class_embedding_lr: Optional[float] = None
    # utility (samples → classifier on the real test split; FID against real images)
    downstream_accuracy: Optional[float] = Field(None, description="mean over classifier seeds")
    downstream_accuracy_std: Optional[float] = Field(None, description="std over classifier seeds (not over fine-tuning seeds)")
    downstream_accuracies: list[float] = Field(default_factory=list, description="one per classifier seed")
    per_class_accuracy: list[float] = Field(default_factory=list, description="test accuracy per class, mean over classifier seeds")
    classifier: Optional[str] = None
    fid: Optional[float] = None
    fid_backbone: Optional[str] = None
    fid_num_samples: Optional[int] = None
    fid_reference: Optional[str] = Field(None, description="<dataset>:<split>[:n]")
    precision: Optional[float] = None
    recall: Optional[float] = None
    # cost
    trainable_params: int
    total_params: int
    peak_memory_bytes: Optional[int] = Field(
        None, description="peak of one DP step at a full physical batch above what was allocated before it")
    total_peak_memory_bytes: Optional[int] = Field(
        None, description="peak of training in total: weights + optimizer + EMA + the clipping engine's buffers "
                          "held between steps + activations + per-sample state")
    memory_kind: Optional[str] = Field(None, description="cuda_max_allocated or cpu_rss")
    memory_breakdown: dict[str, int] = Field(
        default_factory=dict, description="analytic bytes: parameters, trainable, optimizer_state, ema, per_sample_gradients")
    nvml_peak_memory_bytes: Optional[int] = Field(
        None, description="the GPU's used memory per NVML during the memory probe (all processes on it)")
    nvml_process_memory_bytes: Optional[int] = Field(
        None, description="this run's process's own GPU memory per NVML, peak over its phases; null without NVML")
    energy_joules: Optional[float] = Field(None, description="GPU energy of train + sample + evaluate per NVML; null "
                                                             "without NVML or its energy counter")
    gpu_phases: dict[str, GpuPhase] = Field(
        default_factory=dict, description="train, sample, evaluate: energy, mean power and utilisation; empty without NVML")
    throughput_examples_per_s: Optional[float] = Field(None, description="expected batch / median step time")
    step_time_s: Optional[float] = Field(None, description="median logical-step time after warm-up")
    train_seconds: Optional[float] = None
    sample_seconds: Optional[float] = None
    eval_seconds: Optional[float] = None
    curves: dict[str, list[float]] = Field(
        default_factory=dict, description="per logical step: step_time_s (every run), loss (ε=∞ runs only: a private "
        "run's loss is never kept), max_grad_norm (quantile clipping: C after each step, from the privatised counts)")
    final_loss: Optional[float] = Field(
        None, description="ε=∞ runs only: mean training loss of the last steps (never written for private runs)")
    samples_grid: Optional[str] = Field(None, description="sample grid, relative to the run folder")

    @property
    def scored(self) -> bool:
        """Finished with a downstream accuracy: a run the tune rules and re-sampling can compare."""
        return self.status == "ok" and self.downstream_accuracy is not None


class Baselines(Provenance):
    """Suite-level references (``baselines.json``). Non-private: computed on the private data without the
    mechanism, like the ε=∞ runs, they are references for the benchmark, not a DP release."""

    schema_version: int = SCHEMA_VERSION
    suite: str
    dataset: str
    dataset_label: str
    fid_backbone: str
    fid_num_samples: int
    fid_reference: str
    classifier: str
    config_hash: Optional[str] = Field(None, description="hash of the settings the baselines depend on")
    pretrained_fid: Optional[float] = Field(None, description="the pretrained model (fresh class embedding) before fine-tuning")
    pretrained_precision: Optional[float] = None
    pretrained_recall: Optional[float] = None
    pretrained_accuracy: Optional[float] = None
    pretrained_accuracies: list[float] = Field(default_factory=list)
    real_data_accuracy: Optional[float] = Field(None, description="classifier trained on the real private training set")
    real_data_accuracy_std: Optional[float] = None
    samples_grid: Optional[str] = None


class ProfileEntry(Record):
    method: str
    method_label: str
    mode: Literal["dp", "nonprivate"]
    physical_batch_size: int = Field(gt=0)
    preset: Optional[str] = None
    image_size: Optional[int] = None
    grad_sample_mode: Optional[str] = None
    step_time_s: Optional[float] = None
    examples_per_s: Optional[float] = None
    peak_memory_bytes: Optional[int] = Field(None, description="peak of one step above what was allocated before")
    total_peak_memory_bytes: Optional[int] = Field(
        None, description="weights + optimizer + EMA + the engine's buffers held between steps + the step's peak")
    memory_kind: Optional[str] = None
    memory_breakdown: dict[str, int] = Field(default_factory=dict)
    energy_per_step_joules: Optional[float] = Field(None, description="NVML energy of one step (CUDA, when asked)")
    trainable_params: Optional[int] = None
    total_params: Optional[int] = None
    error: Optional[str] = Field(None, description="why this setting could not be measured (e.g. out of memory)")


class Profile(Provenance):
    """``dpbench profile``: DP and non-private steps measured side by side (``profile*.json``)."""

    schema_version: int = SCHEMA_VERSION
    kind: Literal["dpbench-profile"] = "dpbench-profile"
    source: str = Field(description="suite:<name> or preset:<name>")
    image_size: Optional[int] = None
    noise_multiplicity: int = 1
    grad_sample_mode: Optional[str] = None
    bookkeeping_rule: Optional[str] = Field(None, description="bookkeeping's per-layer rule: memory or time")
    entries: list[ProfileEntry] = Field(default_factory=list)
    max_batch_size: dict[str, dict[str, Optional[int]]] = Field(default_factory=dict, description="GPU only")


class DpOverheadMethod(Record):
    ratio: float = Field(description="DP step time / non-private step time, measured interleaved in one loop")
    dp_step_time_s: float
    nonprivate_step_time_s: float
    target: Optional[float] = Field(None, description="the ratio the project committed to (the benchmark fails above)")


class DpOverheadBaseline(Record):
    """``benchmarks/baseline/dp_overhead_cpu.json``: the DP engine's cost per method, written by
    ``benchmarks/test_dp_overhead.py`` (DPBENCH_REFRESH_BASELINE=1) and compared against by it."""

    setting: str = Field(description="model, image size, physical batch and threads of the measurement")
    methods: dict[str, DpOverheadMethod]


class Estimate(Record):
    """A mean over fine-tuning seeds with its 95% Student-t interval (low/high null for one seed)."""

    mean: float
    low: Optional[float] = None
    high: Optional[float] = None
    n: int = Field(1, description="fine-tuning seeds")


class SummaryCell(Record):
    method_label: str
    epsilon: Epsilon
    downstream_accuracy: Optional[Estimate] = None
    fid: Optional[Estimate] = None


class SummaryMethod(Record):
    method_label: str
    trainable_params: Optional[int] = None
    dp_examples_per_s: Optional[float] = Field(None, description="mean throughput of the DP runs at cost_epsilon")
    dp_total_peak_memory_bytes: Optional[int] = Field(None, description="mean total peak of the DP runs at cost_epsilon")


class ResultsSummary(Provenance):
    """A suite's results in a few numbers per (method, ε) table cell (``docs/data/<name>-summary.json``): what the README's
    results tables are generated from (``dpbench docs``), written by ``dpbench docs --from-results``."""

    schema_version: int = SCHEMA_VERSION
    kind: Literal["dpbench-results-summary"] = "dpbench-results-summary"
    suite: str
    provenance: str = Field(description="where the numbers come from: the command and results folder, or a transcription")
    cost_epsilon: Optional[Epsilon] = Field(
        None, description="the ε of the DP runs whose throughput and memory the methods show; null: not recorded")
    methods: list[SummaryMethod] = Field(default_factory=list)
    cells: list[SummaryCell] = Field(default_factory=list)
    pretrained_accuracy: Optional[float] = None
    pretrained_fid: Optional[float] = None
    real_data_accuracy: Optional[float] = None


class ThreatModelResult(Record):
    """One threat model of an audit: its best (scoring rule, k₊, k₋) candidate, at the family-wise confidence."""

    name: str = Field(description="final-weights (the released trainable weights) or all-steps (every released gradient)")
    eps_low: float = Field(description="the best ε_low of this threat model's candidates (family-wise confidence)")
    guesses: int = Field(description="r = k_plus + k_minus of the best candidate")
    correct: int = Field(description="v: correct guesses of the best candidate")
    k_plus: int = Field(description="canaries guessed 'in' (highest scores)")
    k_minus: int = Field(description="canaries guessed 'out' (lowest scores)")
    rule: Optional[str] = Field(None, description="the scoring rule of the best candidate, e.g. sum, consecutive-differences")
    rules: list[str] = Field(default_factory=list, description="every scoring rule of this threat model in the family")
    observes: Optional[str] = Field(None, description="what the auditor sees under this threat model")
    # f-DP (absent in audits before it): the candidate with the largest μ_low, a refuting one first
    mu_low: Optional[float] = Field(None, description="largest Gaussian μ refuted by this threat model's guesses")
    refutes_claim: Optional[bool] = Field(None, description="some candidate refutes the run's claimed trade-off curve")
    fdp_guesses: Optional[int] = Field(None, description="r of the f-DP candidate reported")
    fdp_correct: Optional[int] = Field(None, description="v of the f-DP candidate reported")
    fdp_rule: Optional[str] = Field(None, description="scoring rule of the f-DP candidate reported")


class AuditResult(Provenance):
    """``dpbench audit``: an empirical lower bound on ε from one training run (``runs/<run_id>/audit.json``,
    ``audit-<fault>.json`` for a negative control)."""

    schema_version: int = SCHEMA_VERSION
    kind: Literal["dpbench-audit"] = "dpbench-audit"
    run_id: str
    suite: str
    method: str
    method_label: str
    epsilon: Epsilon
    delta: float
    fault: Optional[str] = Field(None, description="injected fault (negative control), or null")
    canaries: int
    threat_models: list[ThreatModelResult] = Field(
        default_factory=list, description="per threat model: name, eps_low, guesses, correct, k_plus, k_minus, rule")
    epsilon_lower_bound: float = Field(description="the largest ε_low over threat models (each at its confidence)")
    confidence: float
    replay: Optional[dict[str, Any]] = Field(None, description="record/replay sensitivity check")
    passed: bool = Field(description="ε_low ≤ ε, the claimed trade-off curve not refuted, and the replay check held")
    seconds: float
    candidates: Optional[int] = Field(
        None, description="K: tests of (threat model, scoring rule, k₊, k₋) candidates — an ε bound and, since the "
                          "f-DP audit, an f-DP test each — every one at significance (1-confidence)/K")
    mu_lower_bound: Optional[float] = Field(
        None, description="f-DP: the largest Gaussian μ any candidate refutes (family-wise confidence); null before f-DP")
    fdp_refutes_claim: Optional[bool] = Field(
        None, description="f-DP: the guesses refute the claimed trade-off curve (claimed_curve); null before f-DP")
    claimed_curve: Optional[str] = Field(None, description="the curve tested: the accountant's privacy profile of (σ, q, T)")
    claimed_mu_clt: Optional[float] = Field(
        None, description="the CLT approximation μ = q·√(T(e^{1/σ²}−1)) of the audited run: an estimate, not a bound")
    canaries_included: Optional[int] = Field(None, description="m_in: canaries whose secret coin put them in the dataset")
    canary_kind: Optional[str] = Field(None, description="random (a random unit direction), dirac (one coordinate), or "
                                                         "engine (entered through the class embedding's backward)")
    canary_norm: Optional[float] = Field(None, description="every canary's gradient norm (a multiple of the sensitivity)")
    canary_support: Optional[int] = Field(None, description="coordinates each canary direction lives on")
    trainable_params: Optional[int] = None
    population: Optional[int] = Field(None, description="N + m_in: the Poisson-sampled population of the audited run")
    sample_rate: Optional[float] = Field(None, description="q = B / (N + m_in) of the audited run (σ and T are the suite's)")
    suite_sample_rate: Optional[float] = Field(None, description="q = B / N of the suite's run")
    noise_multiplier: Optional[float] = Field(None, description="σ of the audited run's budget, kept for the audit")
    steps: Optional[int] = Field(None, description="T, the suite's")
    epsilon_audited_mechanism: Optional[float] = Field(
        None, description="the accountant's ε for the audited run's (σ, q, T): ≤ epsilon, since the canaries lower q")
    secret_in: Optional[str] = Field(None, description="the canaries' coins, '1' = included, revealed after training")
    train_seconds: Optional[float] = Field(None, description="training with canaries (and the replay check)")


class SelfcheckMethod(Record):
    method: str
    trainable_params: int = 0
    max_rel_error: float = Field(math.nan, description="per-example gradients vs an explicit loop (float64)")
    trainable_changed: bool = False
    frozen_unchanged: bool = False
    clip_ok: bool = False
    max_clipped_norm_ratio: float = math.nan
    mixed_precision_max_ratio: float = Field(math.nan, description="max ‖w_i g_i‖ / C under bf16 autocast")
    divisor_rel_error: float = Field(math.nan, description="noise-free step vs Σ clip(g_i) / B_expected")
    noise_std_ratio: float = math.nan
    noise_ok: bool = False
    noise_unpredictable: bool = False
    sampling_unpredictable: Optional[bool] = Field(
        None, description="same seed: different Poisson batches by default, the same under privacy.reproducible "
                          "(null in reports written before this check existed)")
    error: Optional[str] = None
    details: list[str] = Field(default_factory=list, description="parameters with wrong per-example gradients")
    passed: bool = False

    def finalize(self, limit: float) -> "SelfcheckMethod":
        self.passed = bool(self.error is None and self.max_rel_error <= limit and self.trainable_changed
                           and self.frozen_unchanged and self.clip_ok and self.mixed_precision_max_ratio <= 1 + 1e-6
                           and self.divisor_rel_error <= limit and self.noise_ok and self.noise_unpredictable
                           and self.sampling_unpredictable is True)
        return self


class SelfcheckReport(Provenance):
    """``dpbench selfcheck``: the DP engine's arithmetic verified on this machine."""

    schema_version: int = SCHEMA_VERSION
    kind: Literal["dpbench-selfcheck"] = "dpbench-selfcheck"
    passed: bool
    grad_sample_mode: str
    fault: Optional[str] = None
    rel_error_limit: float
    methods: list[SelfcheckMethod]


class TuneCandidate(Record):
    method_label: str = Field(description="the suite's method label")
    method: str
    lr: float
    clipping: str = Field(description="auto, quantile, or the fixed C as a number")
    run_ids: list[str] = Field(default_factory=list, description="the proxy runs (tune-<shift>/runs/<run_id>)")
    proxy_accuracy: Optional[float] = Field(None, description="mean downstream accuracy on the proxy test split")
    proxy_fid: Optional[float] = None
    proxy_accuracies: list[float] = Field(default_factory=list, description="per finished proxy seed")
    proxy_fids: list[float] = Field(default_factory=list, description="per finished proxy seed")
    rejected: Optional[str] = Field(None, description="why the selection rule set this candidate aside")
    selected: bool = False


class SamplingStepsCandidate(Record):
    steps: int = Field(description="DDIM steps the selected candidates' proxy runs were sampled with")
    run_ids: list[str] = Field(default_factory=list, description="the proxy runs re-sampled (the same at every count)")
    proxy_accuracies: list[float] = Field(default_factory=list, description="per run, in run_ids' order")
    proxy_fids: list[float] = Field(default_factory=list, description="per run, in run_ids' order")
    proxy_accuracy: Optional[float] = Field(None, description="mean over the runs")
    sample_seconds: Optional[float] = Field(None, description="mean sampling time per re-sampled run")
    rejected: Optional[str] = Field(None, description="why the sampling-steps rule set this count aside")
    selected: bool = False


class TuneResult(Provenance):
    """``dpbench tune``: learning rates (and C when fixed) chosen on a proxy task made of public data only."""

    schema_version: int = SCHEMA_VERSION
    kind: Literal["dpbench-tune"] = "dpbench-tune"
    suite: str
    proxy: str = Field(description="how the proxy task was built from the public data")
    proxy_shift: Optional[str] = Field(None, description="transpose or none: how the proxy's private and test images "
                                       "differ from its pretraining images (None: written before the option, none)")
    epsilon: Epsilon = Field(description="the ε the sweep ran at (the suite's q and T)")
    seeds: list[int]
    candidates: list[TuneCandidate]
    pretrained_proxy_fid: Optional[float] = Field(None, description="the proxy model before fine-tuning, on the "
                                                  "proxy test split: a candidate must not end above it")
    selection_rule: str = Field("", description="how one candidate per method was selected (runner/tune_selection.py)")
    tuned_suite: str = Field(description="the suite with the selected values, relative to the tune folder")
    sampling_steps: list[SamplingStepsCandidate] = Field(
        default_factory=list, description="--sampling-steps: the selected candidates' runs re-sampled at each count "
                                          "(empty without it)")
    sampling_steps_rule: str = Field("", description="how the step count was selected (runner/tune_selection.py)")
