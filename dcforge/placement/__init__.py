"""Placement: where a step runs and on how many nodes. The only package that imports concrete executors: the target's
executor (targets.py), this machine or a pool machine (scope.py, pool.py), every node (nodes.py), N nodes together
(torchrun.py), node names (naming.py), the serving workload on a cluster (serving.py). A new target changes this
package and executors/ only."""
