"""`dpbench selfcheck` (the DP loop's mechanics, per method) and `dpbench audit SUITE` (a lower bound on
ε from one run with canaries); both exit 1 when a check fails."""

from __future__ import annotations

import sys

from dpbench.errors import EXIT_CHECK_FAILED, EXIT_OK


def cmd_selfcheck(args) -> int:
    from dpbench.commands.arguments import only_selection
    from dpbench.engine.selfcheck import format_selfcheck, run_selfcheck
    from dpbench.results import to_json_bytes, write_model
    from dpbench.runner.devices import resolve_device

    device = str(resolve_device(args.device))
    if args.inject:
        from dpbench.engine.faults import trainer_class

        trainer_class(args.inject)  # an unknown fault is a one-line error before any work
    methods = (args.method or []) + only_selection(args.only, ("method",), "selfcheck").get("method", [])
    report = run_selfcheck(methods or None, device=device, grad_sample_mode=args.grad_sample_mode, fault=args.inject)
    if args.out:
        write_model(args.out, report)
    print(to_json_bytes(report).decode() if args.json else format_selfcheck(report))
    return EXIT_OK if report.passed else EXIT_CHECK_FAILED


def cmd_audit(args) -> int:
    from dpbench.audit.run import audit_suite
    from dpbench.commands.suites import in_file, runner_settings

    settings = runner_settings(args)
    results = in_file(settings.suite_path, audit_suite, settings, args.only, canaries=args.canaries,
                      fault=args.inject, canary_kind=args.canary_kind)
    print(format_audits(results), flush=True)
    failed = [r for r in results if not r.passed]
    for r in failed:
        print(f"dpbench: audit failed: {r.run_id}{f' ({r.fault})' if r.fault else ''}: {'; '.join(_failures(r))}",
              file=sys.stderr)
    return EXIT_CHECK_FAILED if failed else EXIT_OK


def _failures(r) -> list[str]:
    """Why an :class:`AuditResult` failed, one phrase per failed test."""
    why = []
    if r.epsilon_lower_bound > r.epsilon:
        why.append(f"ε_low {r.epsilon_lower_bound:.3f} > ε {r.epsilon:g}")
    if r.fdp_refutes_claim:
        why.append(f"the guesses refute the claimed trade-off curve (f-DP μ_low {r.mu_lower_bound:.3f})")
    if r.replay is not None and not r.replay.get("passed", True):
        why.append("the replay sensitivity check failed")
    return why


def format_audits(results: list) -> str:
    """One line per audited run: ε_low per threat model, the f-DP test, the replay check, the verdict."""
    from dpbench.audit.scoring import THREAT_MODELS
    from dpbench.results import format_epsilon

    header = (f"{'run':<24} {'fault':<16} {'ε':>5} {'ε_low':>7} {'final-weights':>22} {'all-steps':>22} "
              f"{'μ_low':>6} {'μ_CLT':>6} {'f-DP':>8} {'replay':>8} {'time':>7}  verdict")
    lines = [header]
    for r in results:
        models = {t.name: t for t in r.threat_models}
        cells = [f"{models[n].eps_low:.3f} ({models[n].correct}/{models[n].guesses})" if n in models else "—"
                 for n in THREAT_MODELS]
        replay = "—" if r.replay is None else ("held" if r.replay.get("passed") else "FAILED")
        mu = "—" if r.mu_lower_bound is None else f"{r.mu_lower_bound:.2f}"
        clt = "—" if r.claimed_mu_clt is None else f"{r.claimed_mu_clt:.2f}"
        fdp = "—" if r.fdp_refutes_claim is None else ("REFUTED" if r.fdp_refutes_claim else "stands")
        lines.append(f"{r.run_id:<24} {r.fault or 'none':<16} {format_epsilon(r.epsilon):>5} "
                     f"{r.epsilon_lower_bound:>7.3f} {cells[0]:>22} {cells[1]:>22} {mu:>6} {clt:>6} {fdp:>8} "
                     f"{replay:>8} {r.seconds:>6.0f}s  "
                     f"{'passed' if r.passed else 'FAILED'}")
    return "\n".join(lines)
