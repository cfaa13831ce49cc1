"""Attacks: one per file (classification and hashing, one registry), gradient modes, scorers,
epsilon sweeps, sanity checks and the attack job.

    from ssbench.attacks import ATTACKS, gradient_source, run_sweep
    atk = ATTACKS.get("pgd")(steps=40, seed=0)
    with gradient_source("exact", target) as g:
        curve = run_sweep(atk, target, g, x, y, resolve_eps("paper"), mode="exact")
"""
from ssbench.attacks import apgd, boundary, fab, fgsm, hopskipjump, onepixel, pgd, square, tpgd  # noqa: F401
from ssbench.attacks import fgsm_hash, hag, hsj_label, pgd_hash, sdha  # noqa: F401
from ssbench.attacks.base import ATTACKS, Attack, eval_guard, suite_attacks
from ssbench.attacks.modes import QUERY_MODE, gradient_source
from ssbench.attacks.scoring import Accuracy, Scorer
from ssbench.attacks.sanity import curve_checks, directional_agreement, gradient_consistency
from ssbench.attacks.sweep import SweepCurve, run_sweep, select_indices, stack_examples

__all__ = [
    "ATTACKS", "Accuracy", "Attack", "Scorer", "eval_guard", "suite_attacks", "QUERY_MODE", "gradient_source",
    "curve_checks", "directional_agreement", "gradient_consistency", "SweepCurve", "run_sweep",
    "select_indices", "stack_examples", "run_attack",
]


def run_attack(spec, store, **kw):  # noqa: ANN001, ANN003, ANN201  (lazy: the job pulls in store/training)
    from ssbench.attacks.job import run_attack as _run

    return _run(spec, store, **kw)
