"""The suite runner: plan the grid, run each cell (train → sample → evaluate → store), summarise."""

from dpbench.registry import EXECUTORS

EXECUTORS.register("local", "dpbench.runner.executors:LocalExecutor", "runs the grid sequentially in this process")
EXECUTORS.register("ray", "dpbench.runner.ray_executor:RayExecutor",
                   "one Ray task per run, on a local Ray instance or a cluster (pip install 'dpbench[ray]')")
