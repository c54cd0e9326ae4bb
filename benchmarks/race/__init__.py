"""Machinery of the leave-one-task-out search race (benchmarks/search_race.py).

- ``pool``: the held-out task's logged runs as a finite candidate pool answered by xsearch's
  replay evaluator, the experience split (other tasks only), the pool-restricted search space;
- ``contestants``: random search, zero-shot evolutionary search, Optuna TPE, kNN warm start,
  xsearch in full, each producing a ``Trace`` of (simulated) evaluations under one budget;
- ``metrics``: anytime regret, error rate, evaluation time, Pareto counts, energy, targets;
- ``plot``: the anytime curves (PNG).
"""
