"""Reports, profiles and regression checks built from result files alone.

* :func:`dpbench.reporting.report.build_report` — ``index.html`` + ``report.md`` + PNGs for one suite.
* :func:`dpbench.reporting.regress.regress` / :func:`~dpbench.reporting.regress.format_regress_table` —
  peak memory and DP-overhead regression checks of results or profiles against a baseline.
* :mod:`dpbench.reporting.profile_files` — reading the profiler's ``dpbench-profile`` JSON files.

Submodules are imported on use (they pull in pandas / matplotlib); see docs/report.md.
"""
