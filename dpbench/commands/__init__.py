"""The command layer: one module per group of `dpbench` subcommands. A command turns its parsed
arguments into one call of the libraries below (the runner, the audit, the reports) and prints what
comes back; it is also where the suite is loaded and checked, once (:mod:`dpbench.commands.suites`).
dpbench/cli.py only parses the command line and dispatches here."""
