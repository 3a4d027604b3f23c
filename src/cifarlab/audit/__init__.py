"""Data audit (``cifarlab audit``): mislabelled images, near-duplicates, train/test leaks and outliers.

It sits on top of training and evaluation (it trains cross-fitted nets and reports like a run);
nothing imports it. Modules: ``folds`` (cross-fitting), ``labels`` (confident learning through
cleanlab), ``duplicates``, ``outliers``, ``report`` (audit.html) and ``run`` (the whole audit:
``cifarlab.audit.run.audit(AuditConfig(...))``). The package itself re-exports nothing, so its modules
importing each other never import it back.
"""
