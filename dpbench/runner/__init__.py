"""What a suite invocation does, given a loaded suite: plan the grid (σ, q, T per run), execute each run
(train → sample → evaluate → store) through an executor, and the runner's other uses of the same plan —
the dry run's estimates, the tuning sweep on a proxy task, the automatic physical batch. Printing and
argument parsing are the command layer's (dpbench/commands/); summaries and reports are reporting's."""

from dpbench.registry import EXECUTORS

EXECUTORS.register("local", "dpbench.runner.executors:LocalExecutor", "runs the grid sequentially in this process")
EXECUTORS.register("ray", "dpbench.runner.ray_executor:RayExecutor",
                   "one Ray task per run, on a local Ray instance or a cluster (pip install 'dpbench[ray]')")
