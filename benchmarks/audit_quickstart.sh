#!/usr/bin/env bash
# Reproduce the audit table of docs/audit.md: the one-run audit of every method of a suite at one ε
# (must pass), and the four injected faults at a small ε (each must fail).
#
#   benchmarks/audit_quickstart.sh [SUITE] [RESULTS_ROOT]
#
# SUITE defaults to suites/quickstart.yaml, RESULTS_ROOT to results-audit (runs and audits go to
# RESULTS_ROOT/<suite name>/). Environment:
#   AUDIT_EPS=10            the ε whose runs are audited without a fault (must pass: exit 0)
#   AUDIT_FAULT_EPS=2       the ε the negative controls run at (each must fail: exit 1). With δ = 1e-4
#                           the (ε, δ) bound cannot certify ε_low above ≈ 3.7 (docs/audit.md); the
#                           f-DP audit can refute ε = 10 too (AUDIT_FAULT_EPS=10), for gross leaks only.
#   AUDIT_CANARIES=5000     canaries per audited run (dpbench audit's default)
#   AUDIT_FAULTS="low-noise no-clip realised-divisor repeated-noise halved-norms"
#   AUDIT_SKIP_RUNS=1       do not train the suite's own runs (no run+eval time column)
#   PYTHON=python           the interpreter (dpbench importable)
# Every ε must be one of the suite's. Exit 0 when every verdict is as expected.
set -u
SUITE=${1:-suites/quickstart.yaml}
ROOT=${2:-results-audit}
EPS=${AUDIT_EPS:-10}
FAULT_EPS=${AUDIT_FAULT_EPS:-2}
CANARIES=${AUDIT_CANARIES:-5000}
FAULTS=${AUDIT_FAULTS:-"low-noise no-clip realised-divisor repeated-noise halved-norms"}
PY=${PYTHON:-python}
NAME=$($PY -c "import sys; from dpbench.config.suite import load_suite, resolve_suite_path; print(load_suite(resolve_suite_path(sys.argv[1])).name)" "$SUITE") || exit 2
status=0

step() {  # step EXPECTED_EXIT DESCRIPTION COMMAND...
  local expected=$1 what=$2; shift 2
  local start=$SECONDS
  echo "== $what: $*" >&2
  "$@"
  local rc=$?
  echo "== $what: exit $rc (expected $expected), $((SECONDS - start)) s wall" >&2
  [ "$rc" -eq "$expected" ] || status=1
}

if [ -z "${AUDIT_SKIP_RUNS:-}" ]; then  # the runs themselves, for the time comparison (finished runs are skipped)
  step 0 "runs at ε=$EPS" $PY -m dpbench run "$SUITE" --only epsilon="$EPS" --results-dir "$ROOT" --no-report --no-progress
fi
step 0 "audit at ε=$EPS" $PY -m dpbench audit "$SUITE" --only epsilon="$EPS" --canaries "$CANARIES" --results-dir "$ROOT" --no-progress
step 0 "audit at ε=$FAULT_EPS" $PY -m dpbench audit "$SUITE" --only epsilon="$FAULT_EPS" --canaries "$CANARIES" --results-dir "$ROOT" --no-progress
for fault in $FAULTS; do
  step 1 "audit at ε=$FAULT_EPS with $fault" $PY -m dpbench audit "$SUITE" --only epsilon="$FAULT_EPS" --inject "$fault" \
    --canaries "$CANARIES" --results-dir "$ROOT" --no-progress
done
$PY "$(dirname "$0")/audit_table.py" "$ROOT/$NAME" || status=1
exit $status
