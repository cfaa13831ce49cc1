"""The ``--suite hashing`` attack job: clean mAP, then every hashing attack x gradient mode x epsilon.

Entry point for the attack job: :func:`hashing_sweeps`. The work is done by
:func:`run_hashing_suite`, which only needs plain modules and a data bundle (tests call it directly)
and hands each finished sweep (one attack x one mode, all epsilons) to a sink as plain dicts, so a
crash keeps the sweeps already written.

Quality is always the *target's*: adversarial queries are encoded by the target and ranked against
the target's database codes. Metric of the sweep points: ``map@1000`` (robust = mAP@1000 of the
attacked queries); map@5000, map@all and precision@1000 ride along in ``params``.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Subset

from ssbench.errors import SpecError
from ssbench.retrieval.attacks import (
    ALL_ATTACKS,
    GRADIENT_ATTACKS,
    HASH_ATTACKS,
    HSJLabel,
    Knowledge,
    RetrievalLabeler,
    at_budget,
    clean_codes,
)
from ssbench.retrieval.metrics import TEST_METRICS, binarize, ranking_scores, relevance
from ssbench.retrieval.protocol import (
    SPLIT_FILE,
    ListRetrievalData,
    RetrievalSplit,
    bundle_pool,
    class_balanced_split,
    encode,
    load_split_record,
    split_from_record,
)
from ssbench.specs import AttackSpec, resolve_eps

METRIC = "map@1000"
QUERY_MODE = "query"
TOL = 1e-9


@dataclass
class RetrievalSets:
    """Everything the sweeps need: attacked queries (images), the target's database codes, and the
    labelled reference set the attacker knows (the hash-training set)."""

    query_x: Tensor
    query_y: Tensor
    db_codes: Tensor
    db_labels: Tensor
    train_ds: Any
    train_labels: Tensor
    train_codes: Tensor  # target's codes of the training set
    num_classes: int
    split: dict | None = None  # RetrievalSplit.to_dict() for single-label pools


@dataclass
class SuiteResult:
    clean: dict[str, float]
    points: list[dict] = field(default_factory=list)
    checks: list[dict] = field(default_factory=list)


def _gather(ds, indices: Sequence[int]) -> tuple[Tensor, Tensor]:  # noqa: ANN001
    xs, ys = [], []
    for i in indices:
        x, y = ds[i]
        xs.append(torch.as_tensor(x))
        ys.append(torch.as_tensor(y))
    return torch.stack(xs), torch.stack(ys)


def build_sets(
    model: nn.Module, bundle, n: int, device: torch.device, *, split_seed: int = 0,  # noqa: ANN001
    queries_per_class: int = 100, train_per_class: int = 500, split: RetrievalSplit | None = None,
) -> RetrievalSets:
    """``split``: the one recorded with the fine-tune run (reused as is); None draws it afresh."""
    lists = getattr(bundle, "retrieval", None)
    if isinstance(lists, ListRetrievalData):
        qx, qy = _gather(lists.query, range(min(n, len(lists.query))))
        dc, dl = encode(model, lists.database, device)
        tc, tl = encode(model, lists.train, device)
        return RetrievalSets(qx, qy, binarize(dc), dl, lists.train, tl, binarize(tc), lists.num_classes)
    parts, sizes = bundle_pool(bundle)
    enc = [encode(model, p, device) for p in parts]
    codes, labels = torch.cat([c for c, _ in enc]), torch.cat([y for _, y in enc])
    if split is None:
        split = class_balanced_split(labels, sizes, queries_per_class=queries_per_class, train_per_class=train_per_class, seed=split_seed)
    elif dict(split.sizes) != sizes:
        raise SpecError(f"retrieval split drawn on a pool of {dict(split.sizes)}, the data gives {sizes}")
    by_name = dict(zip(sizes, parts))
    located = [split.locate(i) for i in split.query[:n]]
    pairs = [_gather(by_name[name], [j]) for name, j in located]
    qx, qy = torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])
    d = torch.tensor(split.database, dtype=torch.long)
    t = torch.tensor(split.train, dtype=torch.long)
    start = split.offsets()["train"]
    train_ds = Subset(bundle.train, [i - start for i in split.train])
    return RetrievalSets(
        qx, qy, binarize(codes[d]), labels[d], train_ds, labels[t], binarize(codes[t]),
        int(getattr(bundle, "num_classes", int(labels.max()) + 1)), split.to_dict(),
    )


def _scores(model: nn.Module, x: Tensor, sets: RetrievalSets, batch_size: int, device: torch.device) -> dict[str, float]:
    codes = clean_codes(model, x.to(device), batch_size).cpu()
    return ranking_scores(codes, sets.db_codes, sets.query_y, sets.db_labels, **TEST_METRICS)  # type: ignore[return-value]


def run_hashing_suite(
    target: nn.Module,
    surrogate: nn.Module | None,
    bundle,  # noqa: ANN001
    spec: AttackSpec,
    device: torch.device | str,
    *,
    on_sweep: Callable[[list[dict]], None] | None = None,
    on_sanity: Callable[[list[dict]], None] | None = None,
    split_seed: int = 0,
    queries_per_class: int = 100,
    train_per_class: int = 500,
    sets: RetrievalSets | None = None,
    progress: Any = None,
) -> SuiteResult:
    """``progress``: a rich Progress (or None) that gets one bar per attack x mode, one step per epsilon."""
    device = torch.device(device)
    from ssbench.attacks.modes import gradient_source

    names = list(spec.attacks) if spec.attacks else list(ALL_ATTACKS)
    for name in names:
        HASH_ATTACKS.get(name)  # unknown names fail before any work
    if "transfer" in spec.modes and surrogate is None and any(n in GRADIENT_ATTACKS for n in names):
        raise SpecError("transfer mode needs a BP surrogate: pass --surrogate RUN or drop transfer from --modes")
    eps_grid = resolve_eps(spec.eps)
    target.eval()
    if surrogate is not None:
        surrogate.eval()
    sets = sets or build_sets(
        target, bundle, spec.n_examples, device, split_seed=split_seed,
        queries_per_class=queries_per_class, train_per_class=train_per_class,
    )
    x, y, n = sets.query_x, sets.query_y, len(sets.query_y)
    bs = spec.batch_size
    clean = _scores(target, x, sets, bs, device)
    result = SuiteResult(clean=clean)
    knowledge_codes = {"feedback": sets.train_codes, "exact": sets.train_codes}
    if surrogate is not None and "transfer" in spec.modes:
        sc, _ = encode(surrogate, sets.train_ds, device)
        knowledge_codes["transfer"] = binarize(sc)

    def emit(points: list[dict], checks: list[dict]) -> None:
        result.points.extend(points)
        result.checks.extend(checks)
        if on_sweep is not None and points:
            on_sweep(points)
        if on_sanity is not None and checks:
            on_sanity(checks)

    def point(attack: str, mode: str, eps: float, scores: dict, seconds: float, params: dict) -> dict:
        extra = {k: v for k, v in scores.items() if k != METRIC}
        return {"attack": attack, "mode": mode, "epsilon": float(eps), "n": n, "robust": scores[METRIC],
                "metric": METRIC, "seconds": seconds, "params": {**params, **extra, "clean": clean[METRIC]}}

    def sweep_checks(attack: str, mode: str, pts: list[dict], budget_ok: bool, budget_detail: str) -> list[dict]:
        checks = [{"name": "perturbation-within-budget", "passed": budget_ok, "detail": budget_detail, "attack": attack, "mode": mode}]
        zero = [p for p in pts if p["epsilon"] == 0.0]
        if zero:
            diff = abs(zero[0]["robust"] - clean[METRIC])
            checks.append({"name": "eps0-reproduces-clean", "passed": diff <= TOL, "value": diff,
                           "detail": f"map@1000 at eps=0 {zero[0]['robust']:.6f} vs clean {clean[METRIC]:.6f}",
                           "attack": attack, "mode": mode})
        top = max(pts, key=lambda p: p["epsilon"])
        if top["epsilon"] > 0:
            checks.append({"name": "map-falls-at-max-eps", "passed": top["robust"] < clean[METRIC], "value": top["robust"],
                           "detail": f"eps={top['epsilon']:.4f}: {top['robust']:.4f} vs clean {clean[METRIC]:.4f}",
                           "attack": attack, "mode": mode})
        return checks

    def bar(label: str, total: int) -> Callable[[], None]:
        if progress is None:
            return lambda: None
        from rich.markup import escape

        task = progress.add_task(escape(label), total=total)
        return lambda: progress.advance(task)

    for call_a, name in enumerate(names):
        cls = HASH_ATTACKS.get(name)
        atk = cls(steps=spec.steps, seed=spec.seed)
        if not cls.uses_gradients:
            step = bar(f"{name} [{QUERY_MODE}]", 1)
            emit(*_hsj_sweep(atk, target, sets, eps_grid, device, bs, point, sweep_checks, call_a))
            step()
            continue
        for call_m, mode in enumerate(spec.modes):
            step = bar(f"{name} [{mode}]", len(eps_grid))
            pts: list[dict] = []
            worst, inside = 0.0, True
            with gradient_source(mode, target, surrogate) as grad_model:
                for call_e, eps in enumerate(eps_grid):
                    t0 = time.perf_counter()
                    advs = []
                    for s in range(0, n, bs):
                        xb = x[s : s + bs].to(device)
                        know = Knowledge(knowledge_codes[mode].to(device), relevance(y[s : s + bs], sets.train_labels).to(device))
                        call = ((call_a * 7 + call_m) * 101 + call_e) * 100_003 + s
                        advs.append(atk.perturb(grad_model, xb, eps, know, call=call).cpu())
                    adv = torch.cat(advs)
                    delta = (adv - x).abs().flatten(1).amax(1).max().item() if n else 0.0
                    worst = max(worst, delta - eps)
                    inside &= bool(delta <= eps + 1e-6 and adv.min() >= 0 and adv.max() <= 1)
                    scores = _scores(target, adv, sets, bs, device)
                    pts.append(point(name, mode, eps, scores, time.perf_counter() - t0, atk.params(eps)))
                    step()
            checks = sweep_checks(name, mode, pts, inside, f"max(|delta|_inf - eps) = {worst:.2e}; images in [0, 1]")
            emit(pts, checks)

    emit([], _cross_checks(result, clean))
    return result


def _hsj_sweep(atk: HSJLabel, target, sets, eps_grid, device, bs, point, sweep_checks, call_a):  # noqa: ANN001, ANN202
    if sets.db_labels.dim() != 1:
        return [], [{"name": "hsj-label-skipped", "passed": True, "detail": "multi-label database: no retrieval label",
                     "attack": atk.name, "mode": QUERY_MODE}]
    labeler = RetrievalLabeler(target, sets.db_codes.to(device), sets.db_labels.to(device), sets.num_classes, k=int(atk.options["k"]))
    g = torch.Generator().manual_seed(atk.seed)
    pick = torch.randperm(len(sets.train_ds), generator=g)[:500].tolist()
    pool_x, pool_y = _gather(sets.train_ds, pick)
    x, y = sets.query_x.to(device), sets.query_y.to(device)
    t0 = time.perf_counter()
    adv, dist = atk.min_distance(labeler, x, y, pool_x.to(device), pool_y.to(device), call=call_a)
    seconds = time.perf_counter() - t0
    adv, dist, x = adv.cpu(), dist.cpu(), x.cpu()
    pts, inside = [], True
    for eps in eps_grid:
        xe = at_budget(x, adv, dist, eps)
        inside &= bool((xe - x).abs().flatten(1).amax(1).max() <= eps + 1e-6 and xe.min() >= 0 and xe.max() <= 1)
        scores = _scores(target, xe, sets, bs, device)
        found = float((dist <= eps).float().mean())
        pts.append(point(atk.name, QUERY_MODE, eps, scores, seconds / len(eps_grid), {**atk.params(eps), "label_changed": found}))
    return pts, sweep_checks(atk.name, QUERY_MODE, pts, inside, "adversarial used only where its L-inf distance <= eps")


def _cross_checks(result: SuiteResult, clean: dict[str, float]) -> list[dict]:
    """exact >= feedback (an honest gradient should not be weaker than the rule's pseudo-gradient) and
    white-box >= black-box, both at the largest epsilon, 0.01 mAP slack."""
    checks = []
    if not result.points:
        return checks
    top = max(p["epsilon"] for p in result.points)
    at_top = {(p["attack"], p["mode"]): p["robust"] for p in result.points if p["epsilon"] == top}
    for attack in {a for a, _ in at_top}:
        if (attack, "exact") in at_top and (attack, "feedback") in at_top:
            e, f = at_top[(attack, "exact")], at_top[(attack, "feedback")]
            checks.append({"name": "exact-at-least-feedback", "passed": e <= f + 0.01, "value": e - f,
                           "detail": f"eps={top:.4f}: exact {e:.4f} vs feedback {f:.4f}", "attack": attack})
    white = [v for (a, m), v in at_top.items() if m != QUERY_MODE]
    black = [v for (a, m), v in at_top.items() if m == QUERY_MODE]
    if white and black:
        checks.append({"name": "whitebox-at-least-blackbox", "passed": min(white) <= min(black) + 0.01,
                       "value": min(white) - min(black), "detail": f"eps={top:.4f}: best white-box {min(white):.4f} vs black-box {min(black):.4f}"})
    return checks


def hashing_sweeps(target, surrogate, spec: AttackSpec, recorder, device, *, bundle=None,  # noqa: ANN001
                   progress: Any = None) -> SuiteResult:
    """Attack-job entry for ``--suite hashing``: ``target``/``surrogate`` are TrainedModel objects
    (``.model`` in eval mode with a HashHead, inputs in [0, 1]; ``.spec`` the TrainSpec). Logs the
    clean retrieval metrics as evaluations and persists one sweep per attack x mode, then the
    sanity checks; returns what it stored (the job prints it)."""
    from ssbench.store import SanityCheck, SweepPoint

    if bundle is None:
        from ssbench.data import load_data

        bundle = load_data(target.spec.data)
    dev = torch.device(device) if not isinstance(device, torch.device) else device

    def on_sweep(points: list[dict]) -> None:
        recorder.add_sweep([SweepPoint(**p) for p in points])

    def on_sanity(checks: list[dict]) -> None:
        recorder.add_sanity([SanityCheck(**c) for c in checks])

    split, used = recorded_split(target, bundle)
    recorder.set_summary(retrieval_split=used)
    sets = build_sets(target.model, bundle, spec.n_examples, dev, split=split)
    clean = _scores(target.model.eval(), sets.query_x, sets, spec.batch_size, dev)
    for metric, value in clean.items():
        recorder.log_evaluation(metric, value, split="test", params={"queries": len(sets.query_y), "suite": "hashing", "clean": True})
    return run_hashing_suite(
        target.model, surrogate.model if surrogate is not None else None, bundle, spec, dev,
        on_sweep=on_sweep, on_sanity=on_sanity, sets=sets, progress=progress,
    )


def recorded_split(target, bundle) -> tuple[RetrievalSplit | None, dict]:  # noqa: ANN001
    """The split the target's fine-tune run recorded (sha256 and data checked), and what the attack
    run notes about it. Older runs without one: None, and the split is drawn afresh (same protocol)."""
    run = getattr(target, "run", None)
    entry = ((getattr(run, "summary", None) or {}).get("retrieval_split")) if run is not None else None
    source = f"run {run.id}" if run is not None else str(target.path)
    root = getattr(target, "artifacts", None)  # the store's artifact root: recorded paths are relative to it
    if entry is None:
        # no run (a checkpoint attacked by path): the file beside it, when copied with its folder
        beside = Path(target.path).parent / SPLIT_FILE if run is None else None
        if beside is None or not beside.is_file():
            return None, {"source": "computed"}
        entry, root = {"path": str(beside)}, None
    record = load_split_record(entry, source, root)
    split = split_from_record(record, bundle, source)
    return split, {"source": "recorded", "path": entry["path"], "sha256": entry.get("sha256")}
