"""Data audit (``cifarlab audit``): mislabelled images, near-duplicates, train/test leaks and outliers.

It sits on top of training and evaluation (it trains cross-fitted nets and reports like a run);
nothing imports it. Modules: ``folds`` (cross-fitting), ``labels`` (confident learning through
cleanlab), ``duplicates``, ``outliers``, ``report`` (audit.html) and ``run`` (the whole audit).
"""

from __future__ import annotations

__all__ = ["AuditConfig", "audit"]


def __getattr__(name: str):
    if name in __all__:
        from cifarlab.audit import run

        return getattr(run, name)
    raise AttributeError(f"module 'cifarlab.audit' has no attribute {name!r}")
