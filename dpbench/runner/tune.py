"""`dpbench tune SUITE`: each method's learning rate (and C when clipping is fixed), chosen without
touching private data.

Tuning on the private test set spends privacy no accountant sees, and tuning on the private training
set is worse. So the sweep runs on a **proxy task made of public data only**: the suite's public
training set, shuffled with a fixed seed, is split into

- a proxy *private* training set of exactly N examples (the private set's size, so q = B/N, T and σ
  are the suite's own at the chosen ε),
- a proxy test split (classifier accuracy and FID are measured on it),
- the rest, on which a proxy model is pretrained with the suite's pretraining settings (cached), so
  the proxy private examples are never seen in pretraining — as in the real task.

Labels are the public classes, renamed by a fixed derangement (no class keeps its number): the private
class embedding starts from the public rows (private class i from public class i), which on an
unrenamed proxy would already be right, and the proxy would measure nothing. Renamed, the method must
learn under DP which class generates what, as on the real task. With more public classes than private
ones, only the first K public classes are kept.

The proxy's private and test images are also **shifted** (``--proxy-shift``, :data:`PROXY_SHIFTS`) so that
the proxy model, pretrained on the unshifted pretraining split, does not already draw them: the private
task's images are shapes the public model never drew (Fashion-MNIST → digits), and a proxy whose images
the model already draws is an easier task that favours small steps (mnist10k-cpu's unshifted proxy: the
pretrained proxy model's FID 8.1; its rule-picked rates, applied to the private task by peft-zoo-cpu, sat
at the grid's low edge for 8 of 11 methods). The default shift transposes every proxy image (rows become
columns): the same N, classes, chance level, q, σ and T, images of the same kind, but in shapes the proxy
model has to learn. It was chosen for those properties, before any tune on it ran; ``none`` keeps the
images as they are (the proxy of the suites' earlier sweeps). Every candidate (method × lr × C) is a
real run of the suite's DP loop, at two seeds by default; one candidate per method is selected by the rule of
dpbench/runner/tune_selection.py (candidates whose FID ends above the pretrained proxy model's on a seed —
twice it on the unshifted proxy — or whose seeds disagree, are set aside; then the smallest lr within noise
of the best mean proxy accuracy). A candidate run already finished
with the same settings (its config hash) is reused, so adding seeds or learning rates later runs only
what is new. Output under
``<results>/<suite>/tune-<shift>/``: the runs, ``tune.json`` (:class:`dpbench.results.TuneResult`) and
``<suite>-tuned.yaml``, the suite with the selected values and a header saying where they came from.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import yaml

from dpbench.config.suite import DatasetRef, MethodSpec, Suite, stable_hash, with_absolute_data_roots
from dpbench.errors import UserError
from dpbench.results import (TuneCandidate, TuneResult, check_name, display_epsilon, format_epsilon, load_results,
                             parse_epsilon, run_dir, write_bytes_atomic, write_model)
from dpbench.runner.context import RunContext, RunnerSettings
from dpbench.runner.tune_selection import (DEFAULT_PROXY_SHIFT, MIN_SEEDS, PROXY_SHIFTS, CandidateScores, rule,
                                          sampling_steps_rule, select)

log = logging.getLogger("dpbench")

PROXY_SEED = 0
DEFAULT_SEEDS = tuple(range(MIN_SEEDS))  # the selection rule needs this many seeds per candidate
DEFAULT_LR_FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)
FIXED_LR_FACTORS = (0.25, 1.0, 4.0)
FIXED_C_FACTORS = (0.01, 0.1, 1.0)


def derangement(n: int) -> torch.Tensor:
    """A fixed permutation of 0..n-1 with no fixed point (the first seeded shuffle that has none)."""
    gen = torch.Generator().manual_seed(PROXY_SEED)
    while True:
        perm = torch.randperm(n, generator=gen)
        if n < 2 or not (perm == torch.arange(n)).any():
            return perm


def proxy_split(images: torch.Tensor, labels: torch.Tensor, num_classes: int, train_size: int,
                shift: str = DEFAULT_PROXY_SHIFT) -> dict:
    """Disjoint proxy splits of the public data: pretrain, train (N examples), test; train and test
    renamed and shifted (:data:`PROXY_SHIFTS`), pretrain as it is."""
    keep = labels < num_classes
    if int(labels.max()) + 1 < num_classes:
        raise UserError(f"tune: the public data has {int(labels.max()) + 1} classes, fewer than the private data's "
                        f"{num_classes} — the proxy task needs at least as many")
    images, labels = images[keep], labels[keep]
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(PROXY_SEED))
    test_size = min(2000, max(num_classes * 20, (len(images) - train_size) // 5))
    if len(images) < train_size + test_size + 1000:
        raise UserError(f"tune: the public set ({len(images)} examples in the first {num_classes} classes) is too small "
                        f"for a proxy of the private size N={train_size} plus a test split and a pretraining set")
    parts = {"train": order[:train_size], "test": order[train_size:train_size + test_size],
             "pretrain": order[train_size + test_size:]}
    # The proxy model is pretrained on the public names; the proxy task renames its classes.
    rename = {"train": derangement(num_classes), "test": derangement(num_classes), "pretrain": torch.arange(num_classes)}
    splits = {name: (images[idx], rename[name][labels[idx]]) for name, idx in parts.items()}
    shifted = PROXY_SHIFTS[shift].shift
    return {**splits, **{name: (shifted(splits[name][0]), splits[name][1]) for name in ("train", "test")}}


def candidates(method: MethodSpec, suite: Suite, lrs: list[float] | None,
               lr_factors: list[float] | None = None) -> list[tuple[float, object]]:
    """(lr, clipping spec) pairs to try for one method: ``lrs``, or the method's lr times ``lr_factors``."""
    base_lr = method.lr or suite.training.lr
    clipping = method.max_grad_norm if method.max_grad_norm is not None else suite.privacy.max_grad_norm
    fixed = isinstance(clipping, (int, float)) and not isinstance(clipping, bool)
    factors = lr_factors or (FIXED_LR_FACTORS if fixed else DEFAULT_LR_FACTORS)
    grid = lrs or [base_lr * f for f in factors]
    clips = [clipping * f for f in FIXED_C_FACTORS] if fixed else [clipping]
    return [(float(f"{lr:.3g}"), c) for lr in grid for c in clips]


def _label(method: MethodSpec, lr: float, clipping) -> str:
    clip = "" if not isinstance(clipping, (int, float)) else f"-C{clipping:.3g}"
    return check_name(f"{method.method_label}-lr{lr:.3g}{clip}", "tune candidate")


def tune(settings: RunnerSettings, *, methods: list[str] | None = None, epsilon: str | None = None,
         lrs: list[float] | None = None, lr_factors: list[float] | None = None,
         seeds: list[int] | None = None, proxy_shift: str = DEFAULT_PROXY_SHIFT,
         sampling_steps: list[int] | None = None) -> tuple[Path, TuneResult]:
    """Sweep each chosen method's candidates on the proxy task; with ``sampling_steps``, re-sample the selected
    ones at those DDIM step counts (dpbench/runner/tune_sampling.py); write ``tune.json`` and the tuned suite."""
    from dpbench.provenance import provenance

    suite = settings.suite
    if sampling_steps is not None:
        from dpbench.runner.tune_sampling import check_step_counts

        check_step_counts(sampling_steps, suite, "--sampling-steps", "10,5")
    task = proxy_task(settings, methods=methods, epsilon=epsilon, lrs=lrs, lr_factors=lr_factors, seeds=seeds,
                      proxy_shift=proxy_shift)
    ctx, n, eps, splits, num_classes = task.ctx, task.n, task.epsilon, task.splits, task.num_classes
    public = suite.data.public
    log.info("dpbench tune: %d candidates × %d seed(s) at ε=%s on a proxy of %s (N=%d, test %d, pretrain %d)",
             len(ctx.suite.methods), len(ctx.suite.seeds), display_epsilon(eps), public.name, n, len(ctx.test[0]),
             len(splits["pretrain"][0]))
    pretrained_fid = _pretrained_proxy_fid(ctx)
    fid_factor = PROXY_SHIFTS[proxy_shift].fid_bar_factor
    results = _run_candidates(ctx, n)
    rows = _rank(task.chosen, task.proxies, results, pretrained_fid, fid_factor)
    steps_rows = []
    if sampling_steps:
        from dpbench.runner.tune_sampling import tune_sampling_steps

        by_id = {r.run_id: r for group in results.values() for r in group}
        steps_rows = tune_sampling_steps(ctx, rows, by_id, sampling_steps, pretrained_fid, fid_factor)
    tuned_name = f"{suite.name}-tuned.yaml"
    proxy = (f"{public.name} train split (seed {PROXY_SEED}): {n} proxy-private, {len(ctx.test[0])} proxy-test, "
             f"{len(splits['pretrain'][0])} pretraining examples; classes 0..{num_classes - 1} renamed by a fixed "
             f"derangement; proxy {PROXY_SHIFTS[proxy_shift].description}")
    record = TuneResult(suite=suite.name, proxy=proxy, epsilon=eps, seeds=list(ctx.suite.seeds), candidates=rows,
                        proxy_shift=proxy_shift, pretrained_proxy_fid=pretrained_fid,
                        selection_rule=rule(fid_factor), tuned_suite=tuned_name, sampling_steps=steps_rows,
                        sampling_steps_rule=sampling_steps_rule(fid_factor) if steps_rows else "",
                        **provenance(ctx.device))
    write_model(ctx.results_dir / "tune.json", record, inside=ctx.results_dir)
    write_bytes_atomic(ctx.results_dir / tuned_name,
                       _tuned_yaml(settings, record).encode(), inside=ctx.results_dir)
    return ctx.results_dir, record


@dataclass
class ProxyTask:
    """The proxy task of one tune: its run context (the candidates as the suite's methods), N, the ε, the suite's
    methods being tuned and their candidates, the public splits and the class count."""

    ctx: RunContext
    n: int
    epsilon: float
    chosen: list
    proxies: dict
    splits: dict
    num_classes: int


def proxy_task(settings: RunnerSettings, *, methods: list[str] | None = None, epsilon: str | None = None,
               lrs: list[float] | None = None, lr_factors: list[float] | None = None, seeds: list[int] | None = None,
               proxy_shift: str = DEFAULT_PROXY_SHIFT) -> ProxyTask:
    """The proxy task built from the public data alone, its proxy model pretrained (cached); nothing runs yet."""
    from dpbench.data.base import dataset_num_classes, dataset_train_size, load_dataset
    from dpbench.runner.devices import resolve_device

    suite = settings.suite
    if proxy_shift not in PROXY_SHIFTS:  # before anything is read
        raise UserError(f"--proxy-shift {proxy_shift}: unknown; give one of {', '.join(PROXY_SHIFTS)}")
    eps, chosen = _tune_target(settings, methods, epsilon)
    if seeds is not None and len(set(seeds)) < MIN_SEEDS:
        raise UserError(f"--seeds {','.join(map(str, seeds))}: the selection rule needs {MIN_SEEDS} seeds per candidate "
                        "(dpbench/runner/tune_selection.py) — give e.g. --seeds 0,1, or leave it out")
    public = suite.data.public
    private_root = suite.data_root(suite.data.private, settings.data_root)
    n, _ = dataset_train_size(suite.data.private, private_root)  # N is public (threat model); no private data loaded
    num_classes = dataset_num_classes(suite.data.private, private_root)
    public_root = suite.data_root(public, settings.data_root)
    splits = proxy_split(*load_dataset(public, public_root, "train", download=suite.data.download), num_classes, n,
                         proxy_shift)
    proxies = {m.method_label: [MethodSpec(name=m.name, label=_label(m, lr, c), options=m.options, lr=lr, max_grad_norm=c)
                       for lr, c in candidates(m, suite, lrs, lr_factors)] for m in chosen}
    proxy_suite = _proxy_suite(suite, [p for group in proxies.values() for p in group], eps, seeds)
    device = resolve_device(settings.device or suite.device)
    ctx = _proxy_context(settings, proxy_suite, splits, num_classes, device, proxy_shift)
    return ProxyTask(ctx, n, eps, chosen, proxies, splits, num_classes)


def _tune_target(settings: RunnerSettings, methods: list[str] | None, epsilon: str | None) -> tuple[float, list]:
    """The ε to tune at and the suite's methods to tune; a one-line error when the suite cannot be tuned."""
    suite = settings.suite
    if suite.data.public is None or suite.model.preset is None:
        raise UserError(f"{settings.suite_path}: tune builds its proxy task from data.public and pretrains a proxy "
                        "model from model.preset — add both")
    finite = [float(e) for e in suite.privacy.epsilons if e != "inf"]
    if not finite:
        raise UserError(f"{settings.suite_path}: privacy.epsilons has no finite ε to tune at")
    eps = parse_epsilon(epsilon) if epsilon is not None else max(finite)
    chosen = [m for m in suite.methods if not methods or m.method_label in methods or m.name in methods]
    if not chosen:
        raise UserError(f"--methods {','.join(methods)}: matches no method of the suite")
    return eps, chosen


def _proxy_suite(suite: Suite, proxy_methods: list[MethodSpec], eps: float, seeds: list[int] | None) -> Suite:
    """The suite with the candidates as its methods, one ε, the public data as its private data."""
    public = suite.data.public
    proxy_ref = DatasetRef(name=public.name, image_size=public.image_size, channels=public.channels,
                           options=public.options)
    return suite.model_copy(update={
        "seeds": seeds or list(DEFAULT_SEEDS), "epsilon_seeds": {}, "methods": proxy_methods,
        "privacy": suite.privacy.model_copy(update={"epsilons": [eps]}),
        "data": suite.data.model_copy(update={"private": proxy_ref, "label": f"proxy task from {public.name}"}),
        "evaluation": suite.evaluation.model_copy(update={"real_data_ceiling": False}),
    })


def _proxy_context(settings: RunnerSettings, proxy_suite: Suite, splits: dict, num_classes: int,
                   device, proxy_shift: str) -> RunContext:
    """The run context of the proxy task, results under ``<results>/<suite>/tune-<shift>/`` (one folder per
    shift: a candidate's runs are only reused on the same proxy), with the proxy model pretrained (cached) on
    the proxy's pretraining split, which no shift touches."""
    from dpbench.models.pretrain import pretrain_cached, pretrain_spec

    suite = settings.suite
    tune_dir = Path(settings.results_root) / check_name(suite.name, "name") / f"tune-{proxy_shift}"
    ctx = RunContext(settings, proxy_suite, device, tune_dir)
    ctx.train, ctx.test, ctx.num_classes = splits["train"], splits["test"], num_classes
    n = len(ctx.train[0])
    spec = {**pretrain_spec(suite, num_classes), "proxy": {"seed": PROXY_SEED, "held_out": n + len(ctx.test[0]),
                                                          "classes": num_classes, "renamed": True}}
    ctx._pretrained = pretrain_cached(suite, spec, lambda: splits["pretrain"], num_classes,
                                      cache_dir=settings.cache_dir, device=str(device), progress=settings.progress)
    return ctx


def _pretrained_proxy_fid(ctx: RunContext) -> Optional[float]:
    """The proxy model before fine-tuning, sampled and evaluated like a candidate (cached as the tune
    folder's baselines.json): the FID no selected candidate may end above."""
    from dpbench.runner.baselines import ensure_baselines

    return ensure_baselines(ctx).pretrained_fid


def _run_candidates(ctx: RunContext, n: int) -> dict:
    """Every candidate run of the proxy suite, by method label: finished ones with the same settings reused,
    the others run now."""
    from dpbench.runner.single_run import run_one
    from dpbench.runner.plan import plan_runs, split_finished

    planned_runs = plan_runs(ctx.suite, ctx.settings.data_root, num_examples=n)
    done, changed, _ = split_finished(ctx, planned_runs)
    finished = {r.run_id: r for r in load_results(ctx.results_dir)} if done else {}
    reused = {p.spec.run_id for p in done}
    if reused:  # a wider sweep or more seeds later costs only the new candidates
        log.info("dpbench tune: %d candidate run(s) already finished with these settings are reused", len(reused))
    for p in changed:  # proxy runs are disposable: one made with other settings is run again
        (run_dir(ctx.results_dir, p.spec.run_id) / "result.json").unlink(missing_ok=True)
    results = {}
    for planned in planned_runs:
        result = finished[planned.spec.run_id] if planned.spec.run_id in reused else run_one(ctx, planned)
        results.setdefault(planned.spec.method_label, []).append(result)
    return results


def _rank(chosen: list[MethodSpec], proxies: dict[str, list[MethodSpec]], results: dict,
          pretrained_fid: Optional[float], fid_factor: float) -> list[TuneCandidate]:
    """One row per candidate, with its per-seed proxy results; the rule of runner/tune_selection.py marks
    at most one of each method selected (none when it rejects them all)."""
    rows = []
    for method in chosen:
        group, scores = [], []
        for p in proxies[method.method_label]:
            runs = [r for r in results.get(p.method_label, []) if r.scored]
            accuracies, fids = [r.downstream_accuracy for r in runs], [r.fid for r in runs if r.fid is not None]
            scores.append(CandidateScores(lr=p.lr, accuracies=accuracies, fids=fids,
                                          failed_seeds=len(results.get(p.method_label, [])) - len(runs)))
            group.append(TuneCandidate(method_label=method.method_label, method=method.name, lr=p.lr,
                                       clipping=str(p.max_grad_norm if not hasattr(p.max_grad_norm, "quantile")
                                                    else f"quantile {p.max_grad_norm.quantile}"),
                                       run_ids=[r.run_id for r in results.get(p.method_label, [])],
                                       proxy_accuracy=scores[-1].mean_accuracy,
                                       proxy_fid=sum(fids) / len(fids) if fids else None,
                                       proxy_accuracies=accuracies, proxy_fids=fids))
        chosen_index, reasons = select(scores, pretrained_fid, fid_factor)
        for row, reason in zip(group, reasons):
            row.rejected = reason
        if chosen_index is None:
            log.warning("dpbench tune: %s: every candidate was rejected (%s); the tuned suite keeps its lr",
                        method.method_label, "; ".join(sorted(set(reasons))))
        else:
            group[chosen_index].selected = True
        rows += group
    return rows


def _tuned_yaml(settings: RunnerSettings, record: TuneResult) -> str:
    path = Path(settings.suite_path)
    raw = copy.deepcopy(settings.suite_mapping)  # edited below; the command's copy stays as loaded
    # The tuned suite lives in the results folder: roots written relative to the original file are made absolute.
    raw = with_absolute_data_roots(raw, path.resolve().parent)
    selected = {c.method_label: c for c in record.candidates if c.selected}
    for entry in raw["methods"]:
        pick = selected.get(entry.get("label") or entry["name"])
        if pick is None:
            continue
        entry["lr"] = pick.lr
        try:
            entry["max_grad_norm"] = float(pick.clipping)
        except ValueError:
            pass  # auto / quantile: unchanged
    steps = next((row.steps for row in record.sampling_steps if row.selected), None)
    if steps is not None:
        raw.setdefault("sampling", {})["steps"] = steps
    header = (f"# Learning rates (and C where clipping is fixed) selected by `dpbench tune` at ε={format_epsilon(record.epsilon)}\n"
              f"# on a proxy task made of public data only: {record.proxy}.\n"
              f"# Rule over seeds {record.seeds}: {record.selection_rule}.\n"
              + (f"# Sampling steps {steps}: {record.sampling_steps_rule}.\n" if steps is not None else "") +
              f"# Sweep: tune.json beside this file ({stable_hash(record.model_dump(mode='json'))}).\n")
    return header + yaml.safe_dump(raw, sort_keys=False, allow_unicode=True)
