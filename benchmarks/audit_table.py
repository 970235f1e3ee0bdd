"""The audit table of docs/audit.md from a suite's results directory (``audit*.json`` and ``result.json``).

    python benchmarks/audit_table.py RESULTS/<suite> [MORE_RESULTS/<suite> ...]

One row per audit: the canary kind, claimed ε, ε_low per threat model with correct / guesses, the
f-DP audit (μ_low with its correct / guesses, the CLT μ of the audited run — an estimate — and whether
the guesses refute the claimed curve, the accountant's privacy profile), the replay verdict, the
audit's wall time next to the run's own train + sample + evaluation time (when the run was made), and
the verdict against what is expected (a fault must fail, the real loop must pass). Then, per audit
that failed on its bound, the smallest canary count at which the same guess accuracy would still
have crossed ε (same fraction of canaries guessed, same family of K candidates), and the largest ε_low
any canary count can certify at the suite's δ.
"""

from __future__ import annotations

import sys
from pathlib import Path

from dpbench.audit.bound import epsilon_lower_bound
from dpbench.results import RunResult, format_epsilon, load_audits, read_model

CANARY_COUNTS = (100, 200, 300, 500, 700, 1000, 2000, 5000)


def _cell(t) -> str:
    return f"{t.eps_low:.2f} ({t.correct}/{t.guesses}{', ' + t.rule if t.rule else ''})"


def _mu_cell(audit) -> str:
    """μ_low and the correct / guesses of the threat model's f-DP candidate that reached it."""
    if audit.mu_lower_bound is None:
        return "—"
    best = max((t for t in audit.threat_models if t.mu_low is not None), key=lambda t: t.mu_low)
    return f"{audit.mu_lower_bound:.2f} ({best.fdp_correct}/{best.fdp_guesses} {best.name})"


def _claim_cell(audit) -> str:
    if audit.fdp_refutes_claim is None:
        return "—"
    return "REFUTED" if audit.fdp_refutes_claim else "stands"


def _needed(audit) -> str:
    """Smallest m of CANARY_COUNTS whose bound, at the observed accuracy and guessed fraction, exceeds ε."""
    best = max(audit.threat_models, key=lambda t: t.eps_low)
    if best.eps_low <= audit.epsilon:
        return "—"
    fraction, accuracy = best.guesses / audit.canaries, best.correct / best.guesses
    confidence = 1 - (1 - audit.confidence) / (audit.candidates or 1)
    for m in CANARY_COUNTS:
        r = max(2, round(fraction * m / 2) * 2)
        if epsilon_lower_bound(m, r, int(accuracy * r), audit.delta, confidence) > audit.epsilon:
            return str(m)
    return f"> {CANARY_COUNTS[-1]}"


def main(*results_dirs: str) -> int:
    """One table over every folder (e.g. one per canary kind or count, whose audit files would collide)."""
    found = [(Path(d), a) for d in results_dirs for a in load_audits(Path(d))]
    if not found:
        print(f"no audit*.json under {', '.join(f'{d}/runs' for d in results_dirs)}", file=sys.stderr)
        return 2
    audits = [a for _, a in found]
    print("| run | fault | canaries | ε | ε_low final-weights | ε_low all-steps | μ_low | CLT μ | claimed curve "
          "| replay (max B·Δ/S) | audit s | run+eval s | verdict | expected | canaries needed |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    ok = True
    for folder, a in sorted(found, key=lambda f: (f[1].fault or "", f[1].epsilon, f[1].method_label, f[1].canaries)):
        models = {t.name: t for t in a.threat_models}
        replay = a.replay or {}
        ratio = replay.get("max_difference_over_sensitivity")
        replay_cell = ("held" if replay.get("passed") else "FAILED") + (f" ({ratio:.3g})" if ratio is not None else "")
        run_file = folder / "runs" / a.run_id / "result.json"
        run_seconds = ""
        if run_file.is_file():
            run = read_model(run_file, RunResult)
            parts = [run.train_seconds, run.sample_seconds, run.eval_seconds]
            if all(p is not None for p in parts):
                run_seconds = f"{sum(parts):.0f} ({a.seconds / sum(parts):.1f}×)"
        expected = "passed" if a.fault is None else "FAILED"
        verdict = "passed" if a.passed else "FAILED"
        ok &= verdict == expected
        print(f"| {a.run_id} | {a.fault or 'none'} | {a.canaries} {a.canary_kind or ''} | {format_epsilon(a.epsilon)} | "
              f"{_cell(models['final-weights']) if 'final-weights' in models else '—'} | "
              f"{_cell(models['all-steps']) if 'all-steps' in models else '—'} | {_mu_cell(a)} | "
              f"{'—' if a.claimed_mu_clt is None else f'{a.claimed_mu_clt:.2f}'} | {_claim_cell(a)} | {replay_cell} | "
              f"{a.seconds:.0f} | {run_seconds or '—'} | {verdict} | {expected} | {_needed(a)} |")
    delta, k = audits[0].delta, audits[0].candidates or 1
    confidence = 1 - (1 - audits[0].confidence) / k
    caps = ", ".join(f"m={m}: {max(epsilon_lower_bound(m, r, r, delta, confidence) for r in (m // 2, 3 * m // 4, m)):.2f}"
                     for m in (200, 500, 1000, 5000))
    print(f"\nlargest ε_low any run can reach (every guess right) at δ={delta:g}, K={k}: {caps}")
    print("all verdicts as expected" if ok else "SOME VERDICTS ARE NOT AS EXPECTED")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main(*sys.argv[1:]))
