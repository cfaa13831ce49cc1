"""Attack ensembles: several attacks whose per-example worst case is the reported number.

``autoattack`` is AutoAttack's standard L-inf ensemble (Croce & Hein, ICML 2020) with its reference
settings: APGD-CE (100 steps, 1 restart), APGD-T (DLR, top 9 target classes, 100 steps), FAB-T (top
9 target classes, 100 steps), Square (5000 queries, p_init 0.8). As in AutoAttack, each attack runs
only on the examples every earlier one left standing (``run_sweep(standing=...)``), so its stored
curve is the ensemble's robust accuracy after it and the last curve is the ensemble's result. The
white-box members run in every requested gradient mode (default: exact), Square once (it only
queries the target's forward); all of them share one chain of survivors, so a run with several
modes measures the worst case over all of them.
"""
from __future__ import annotations

ENSEMBLES: dict[str, tuple[str, ...]] = {"autoattack": ("apgd-ce", "apgd-t", "fab-t", "square")}
