"""Reports, summaries, profiles and regression checks, built from result files alone (docs/report.md).

* :func:`dpbench.reporting.report.build_report` — ``index.html`` + ``report.md`` + PNGs for one suite.
* :func:`dpbench.reporting.summary.format_summary` — the terminal table `dpbench run` / `report` print.
* :func:`dpbench.reporting.profiles.format_profile` — one profile as a terminal table.
* :func:`dpbench.reporting.regress.regress` / :func:`~dpbench.reporting.regress.format_regress_table` —
  peak memory and DP-overhead regression checks of results or profiles against a baseline.

This package reads only the typed results of :mod:`dpbench.results` (and imports nothing else of
dpbench but :mod:`dpbench.errors`). Submodules are imported on use: they pull in matplotlib and scipy.
"""
