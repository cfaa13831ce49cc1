"""Which stored sweep points make one row of the robustness tables, and how rows combine per example.

A sweep is identified by its attack, gradient mode and the settings that change what it measures:
loss, steps, restarts, queries, n examples, the epsilon grid and, for ensemble members, the ensemble
(with the gradient modes its chain ran in: members' results are cumulative over the chain). Two sweeps
that differ in any of these are different rows, never averaged. Per target and identity the newest
finished attack run counts (a rerun replaces its predecessor); the attack seed, which follows the
training seed in recipes, is not part of a row (it is the replicate), but it decides with n which test
examples were attacked, so per-example combinations check it (and the run's stored indices).
"""
from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd

IDENTITY = ("loss", "steps", "restarts", "queries", "n", "eps", "ensemble")
NA_EXAMPLES = "n/a (different examples)"
NA_BITS = "n/a (no per-example bits)"
WORST_ALL = ("worst of all", "all")  # (attack, mode) of the per-example worst case over everything


def _param(p: Any, key: str) -> Any:
    return (p or {}).get(key) if isinstance(p, dict) else None


def _grid_label(eps: list[float]) -> str:
    """'0..0.1 (11)': the grid of a sweep in a few characters (its ends and size tell grids apart)."""
    eps = sorted(set(eps))
    return f"{eps[0]:g}" if len(eps) == 1 else f"{eps[0]:g}..{eps[-1]:g} ({len(eps)})"


def _ensemble_label(sw: pd.DataFrame) -> pd.Series:
    """'autoattack[exact]' for a member of an ensemble run, naming the gradient modes of the run's
    chain (the member's bits are cumulative over all of them); None for a stand-alone sweep."""
    name = sw["params"].map(lambda p: _param(p, "ensemble"))
    member = name.notna()
    modes: dict[int, str] = {}
    for run_id, mode in zip(sw.loc[member, "run_id"], sw.loc[member, "mode"]):
        if mode != "query":
            modes.setdefault(int(run_id), set()).add(mode)  # type: ignore[arg-type]
    label = {r: "+".join(sorted(m)) for r, m in modes.items()}  # type: ignore[arg-type]
    return pd.Series([None if pd.isna(e) else f"{e}[{label.get(int(r), 'query')}]" for e, r in zip(name, sw["run_id"])],
                     index=sw.index, dtype=object)


def add_identity(sw: pd.DataFrame) -> pd.DataFrame:
    """Columns `atk_seed` (the attack seed: params.seed, else the attack run's seed), `ident` (dict of the
    IDENTITY settings a sweep has) and `ident_key` (its canonical text, for grouping)."""
    sw = sw.copy()
    seeds = sw["params"].map(lambda p: _param(p, "seed"))
    sw["atk_seed"] = [s if s is not None else (None if pd.isna(r) else int(r)) for s, r in zip(seeds, sw["attack_seed"])]
    sweep_col = sw["sweep"] if "sweep" in sw.columns else pd.Series(0, index=sw.index)
    grids = sw.groupby([sw["run_id"], sweep_col, sw["attack"], sw["mode"]], sort=False)["epsilon"].transform(
        lambda e: _grid_label(list(e)))
    ens = _ensemble_label(sw)
    idents = []
    for p, n, grid, e in zip(sw["params"], sw["n"], grids, ens):
        d = {"loss": _param(p, "loss"), "steps": _param(p, "steps"), "restarts": _param(p, "restarts"),
             "queries": _param(p, "queries"), "n": int(n), "eps": grid, "ensemble": e}
        idents.append({k: v for k, v in d.items() if v is not None})
    sw["ident"] = idents
    sw["ident_key"] = [json.dumps(d, sort_keys=True, default=str) for d in idents]
    return sw


def newest_per_identity(sw: pd.DataFrame) -> pd.DataFrame:
    """Per target x attack x metric x mode x identity: all points of the newest attack run (and of its
    last sweep, should one run have swept the same thing twice). Never points of two runs."""
    keys = ["target", "attack", "metric", "mode", "ident_key"]
    newest = sw.groupby(keys, sort=False, dropna=False)["run_id"].transform("max")
    sw = sw[sw["run_id"] == newest]
    if "sweep" in sw.columns:
        last = sw.groupby(keys, sort=False, dropna=False)["sweep"].transform("max")
        sw = sw[sw["sweep"] == last]
    return sw.reset_index(drop=True)


SCOPE = ["model", "dataset", "bits", "attack", "metric"]  # rows a reader compares: one model x data, one attack


def setting_labels(sw: pd.DataFrame) -> list[str]:
    """Per point: 'loss=margin, n=100', the identity settings in which its sweep differs from other sweeps
    of the same attack x metric on the same model and data ('' where the attack was run one way only)."""
    out = [""] * len(sw)
    pos = {i: k for k, i in enumerate(sw.index)}
    for _, g in sw.groupby([c for c in SCOPE if c in sw.columns], sort=False, dropna=False):
        distinct = list({k: d for k, d in zip(g["ident_key"], g["ident"])}.values())
        if len(distinct) < 2:
            continue
        varying = [k for k in IDENTITY if len({json.dumps(d.get(k), default=str) for d in distinct}) > 1]
        for i, d in zip(g.index, g["ident"]):
            out[pos[i]] = ", ".join(f"{k}={'-' if d.get(k) is None else d.get(k)}" for k in varying)
    return out


def and_strings(strings: list[str]) -> str:
    """Per example: '1' only where every string has '1' (robust to every sweep)."""
    arr = np.array([np.frombuffer(s.encode(), dtype=np.uint8) == ord("1") for s in strings])
    return "".join("1" if v else "0" for v in arr.all(axis=0))


def examples_of(n: Any, atk_seed: Any, indices: Any) -> tuple[Any, ...]:
    """What decides which test examples a sweep attacked: n and the attack seed, and the attack run's
    stored indices when it has them."""
    seed = None if atk_seed is None or (isinstance(atk_seed, float) and np.isnan(atk_seed)) else int(atk_seed)
    return int(n), seed, None if indices is None else tuple(indices)


def same_examples(signatures: list[tuple[Any, ...]]) -> bool:
    """Whether sweeps attacked the same examples: same n and seed, and equal indices where two runs
    both stored theirs (an older run without indices is judged by n and seed)."""
    if len({s[:2] for s in signatures}) != 1:
        return False
    stored = {s[2] for s in signatures if s[2] is not None}
    return len(stored) <= 1


def _on_shared_examples(strings: list[str], signatures: list[tuple[Any, ...]]) -> str | None:
    """AND of the bits of the test indices every sweep attacked (None: indices not stored, none shared)."""
    if not all(s[2] is not None and len(s[2]) == len(b) for s, b in zip(signatures, strings)):
        return None
    bits = [dict(zip(s[2], b)) for s, b in zip(signatures, strings)]
    shared = [i for i in signatures[0][2] if all(i in m for m in bits[1:])]
    if not shared:
        return None
    return "".join("1" if all(m[i] == "1" for m in bits) else "0" for i in shared)


def combine(strings: list[Any], robust: list[float], signatures: list[tuple[Any, ...]], metric: str) -> tuple[float, str | None, str | None]:
    """The per-example worst case of several sweeps at one epsilon: (robust, correct bits, how).

    Accuracy: an example counts only if it survived every sweep (AND of the bitstrings). Sweeps of runs
    that stored their indices but attacked different sets (a 500-example PGD run and a 100-example
    AutoAttack run: the first 100 of the same seeded permutation) combine on the examples they all
    attacked, in the first sweep's order (the bits then have that length). Otherwise, when the sweeps
    did not attack the same examples, or a sweep has no bits, it cannot be formed (NaN, the reason).
    A retrieval metric (mAP) has no per-example form: the minimum over sweeps, an upper bound ('min')."""
    if metric != "accuracy":
        return float(np.min(robust)), None, "min"
    if not all(isinstance(s, str) and s for s in strings):
        return float("nan"), None, NA_BITS
    if not same_examples(signatures) or len({len(s) for s in strings}) != 1:
        shared = _on_shared_examples(strings, signatures)
        if shared is None:
            return float("nan"), None, NA_EXAMPLES
        return shared.count("1") / len(shared), shared, "per-example (shared examples)"
    alive = and_strings(strings)
    return alive.count("1") / len(alive), alive, "per-example"
