"""Empirical privacy auditing: lower bounds on ε from canary membership guesses (`dpbench audit`, docs/audit.md).

* :mod:`dpbench.audit.bound` — the one-run audit bound of Steinke, Nasr & Jagielski (NeurIPS 2023).
* :mod:`dpbench.audit.canaries` — gradient canaries: the trainer's ``canaries=`` hook, secret coins.
* :mod:`dpbench.audit.scoring` — threat models, scoring rules, the Bonferroni family of guesses.
* :mod:`dpbench.audit.replay` — the record/replay sensitivity check of each released step.
* :mod:`dpbench.audit.run` — one audited training run, a suite's audits, the `AuditResult` files.
"""
