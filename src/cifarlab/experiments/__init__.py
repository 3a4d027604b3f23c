"""Experiments on top of training: seed sweeps, comparisons, tuning, execution and tracking.

- :mod:`~cifarlab.experiments.sweep`: ``cifarlab sweep``, one run directory per seed and a summary
- :mod:`~cifarlab.experiments.compare`: ``cifarlab compare``, two sweeps, Welch's test and a bootstrap
- :mod:`~cifarlab.experiments.tune`: ``cifarlab tune``, Optuna TPE with median pruning
- :mod:`~cifarlab.experiments.execution`: local worker processes or a Ray cluster
- :mod:`~cifarlab.experiments.tracking`: ``--track mlflow[=URI]``
- :mod:`~cifarlab.experiments.runs`: ``cifarlab runs``, a table of run directories

It uses ``cifarlab.training`` and ``cifarlab.evaluation``; nothing there imports it.
"""
