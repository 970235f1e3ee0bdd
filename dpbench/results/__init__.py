"""The result contract: every producer (run, profile, selfcheck, audit) writes these types, every reader
(report, regress) reads only them. ``from dpbench.results import X`` is the contract's one entry point:

* :mod:`~dpbench.results.schema` — the records (RunResult, Baselines, Profile, AuditResult, ...);
* :mod:`~dpbench.results.epsilon` — the ε codec (a float in Python, ``"inf"`` in JSON);
* :mod:`~dpbench.results.files` — atomic writes, validated reads, the scans of a results directory;
* :mod:`~dpbench.results.upgrade` — version-1 files converted on load.

ε travels as a float everywhere in Python (``math.inf`` = the non-private reference) and as the
string ``"inf"`` in JSON: :data:`Epsilon` is the one codec. Writes are atomic (temporary file in the
same folder + ``os.replace``), honour the umask, and never leave their results directory.
"""

from dpbench.results.epsilon import Epsilon, display_epsilon, format_epsilon, parse_epsilon
from dpbench.results.files import (CSV_EXCLUDE, NAME_PATTERN, check_name, csv_rows, ensure_inside, is_profile_file,
                                   iter_result_dirs, load_audits, load_baselines, load_profiles, load_results,
                                   read_model, rebuild_csv, run_dir, to_json_bytes, write_bytes_atomic,
                                   write_json_atomic, write_model)
from dpbench.results.schema import (SCHEMA_VERSION, AuditResult, Baselines, ClippingDiagnostics, ClippingInfo,
                                    DpOverheadBaseline, DpOverheadMethod, Estimate, GpuPhase, Profile, ProfileEntry,
                                    Provenance, Record, ResultsSummary, RunResult, SelfcheckMethod, SelfcheckReport,
                                    SamplingStepsCandidate, SummaryCell, SummaryMethod, ThreatModelResult, TuneCandidate,
                                    TuneResult)

__all__ = [
    "Epsilon", "display_epsilon", "format_epsilon", "parse_epsilon",
    "CSV_EXCLUDE", "NAME_PATTERN", "check_name", "csv_rows", "ensure_inside", "is_profile_file", "iter_result_dirs",
    "load_audits", "load_baselines", "load_profiles", "load_results", "read_model", "rebuild_csv", "run_dir",
    "to_json_bytes", "write_bytes_atomic", "write_json_atomic", "write_model",
    "SCHEMA_VERSION", "AuditResult", "Baselines", "ClippingDiagnostics", "ClippingInfo", "DpOverheadBaseline",
    "DpOverheadMethod", "Estimate", "GpuPhase", "Profile", "ProfileEntry", "Provenance", "Record", "ResultsSummary",
    "RunResult", "SelfcheckMethod", "SelfcheckReport", "SummaryCell", "SummaryMethod", "ThreatModelResult",
    "SamplingStepsCandidate", "TuneCandidate", "TuneResult",
]
