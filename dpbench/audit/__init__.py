"""Empirical privacy auditing: lower bounds on ε from canary membership guesses.

* :mod:`dpbench.audit.bound` — the one-run audit bound of Steinke, Nasr & Jagielski (NeurIPS 2023).
"""
