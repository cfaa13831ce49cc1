"""The attack job: target (+ surrogate) x suite x attacks x gradient modes x epsilons -> store.

Every sweep is one transaction; sanity checks are computed, stored and printed (failures in red).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from torch import nn

from ssbench.attacks.base import ATTACKS, Attack, loss_attacks, make_attack, suite_attacks
from ssbench.attacks.ensemble import ENSEMBLES
from ssbench.attacks.examples import examples_for
from ssbench.attacks.modes import QUERY_MODE, gradient_source
from ssbench.attacks.sanity import (
    CHECK_EXAMPLES,
    curve_checks,
    doubled_steps,
    gradient_consistency,
    zero_gradients,
)
from ssbench.attacks.scoring import Accuracy, Scorer
from ssbench.attacks.sweep import SweepCurve, run_sweep
from ssbench.store.records import SanityCheck
from ssbench.errors import SpecError
from ssbench.printing import SafeConsole
from ssbench.specs import AttackSpec, resolve_eps



def build_attack(name: str, spec: AttackSpec) -> Attack:
    return make_attack(name, steps=spec.steps, seed=spec.seed, loss=spec.loss)


def attack_names(spec: AttackSpec) -> list[str]:
    suite = suite_attacks(spec.suite)
    if spec.attacks is None:
        names = suite
    else:
        for name in spec.attacks:
            ATTACKS.get(name)  # unknown names: one line listing the choices
            if name.lower() not in suite:
                raise SpecError(f"attack {name!r} is not in suite {spec.suite!r} ({', '.join(suite)}); use --suite all")
        chosen = {n.lower() for n in spec.attacks}
        names = [n for n in suite if n in chosen] if spec.suite in ENSEMBLES else [n.lower() for n in spec.attacks]
    if spec.loss != "ce" and not any(ATTACKS.get(n).loss_choices for n in names):
        raise SpecError(f"--loss {spec.loss} applies to {', '.join(loss_attacks())}; none is selected "
                        "(apgd-dlr is APGD's non-saturating loss)")
    return names


BP_TRANSFER_NOTE = ("the target is trained with bp: a BP surrogate of it is itself, so transfer mode is the "
                    "white-box attack in exact mode (run that mode; pass --surrogate RUN to transfer from another BP model)")


def target_rule(t: Any) -> str:
    """The rule a trained model was trained with (an unconverted network is plain BP)."""
    return t.meta.rule["name"] if t.meta.rule else t.spec.rule.name


def surrogate_mismatch(sur: Any, target: Any) -> str | None:
    """Why ``sur`` cannot stand in for ``target`` in transfer mode (None: it can). A transfer attack
    is only the BP control of the target if the surrogate is backprop-trained, has the target's
    architecture and saw the same data set and classes."""
    rule = target_rule(sur)
    if rule != "bp":
        return f"it was trained with rule {rule}, not bp"

    def arch(t: Any) -> tuple[Any, ...]:  # 'pretrained' only changes the initialisation, not the network
        model = {k: v for k, v in t.meta.model.items() if k != "pretrained"}
        return model, t.meta.num_classes, t.meta.in_channels, t.meta.image_size, t.meta.task

    def data(t: Any) -> tuple[Any, ...]:
        return t.spec.data.name, t.spec.data.classes, t.spec.data.image_size, t.spec.data.channels

    def shown(t: Any) -> str:
        hidden = t.meta.model.get("hidden")
        return (f"{t.meta.model.get('name')}{'' if not hidden else ' ' + 'x'.join(map(str, hidden))} "
                f"({t.meta.num_classes} classes, {t.meta.in_channels}x{t.meta.image_size}px, {t.meta.task})")

    if arch(sur) != arch(target):
        return f"its architecture {shown(sur)} differs from the target's {shown(target)}"
    if data(sur) != data(target):
        return (f"it was trained on {sur.spec.data.name} classes {sur.spec.data.classes or 'all'}, the target on "
                f"{target.spec.data.name} classes {target.spec.data.classes or 'all'}")
    return None


def find_surrogate(store: Any, target: Any, device: torch.device, ref: str | None) -> Any:
    """The BP-fine-tuned sibling of the target: named by ``ref`` (validated: rule bp, same architecture,
    same data and classes), else the newest finished finetune run with rule bp, the same parent
    (pretrained backbone) and the same data. Raises SpecError when there is none."""
    from ssbench.training.checkpoint import load_trained

    if ref is not None:
        sur = load_trained(store, ref, device)
        why = surrogate_mismatch(sur, target)
        if why is not None:
            raise SpecError(f"--surrogate {ref}: {why}; transfer mode needs a BP fine-tune of the target's model and data")
        return sur
    parent = getattr(target.run, "parent_id", None)
    if parent is None:
        raise SpecError("transfer mode: the target has no parent run to find a BP sibling; pass --surrogate RUN")
    runs = store.list_runs(kind="finetune", status="finished", rule="bp", parent_id=parent)
    for r in sorted((r for r in runs if r.id != target.run.id), key=lambda r: r.id, reverse=True):
        cand = load_trained(store, r.id, device)
        if cand.spec.data == target.spec.data and surrogate_mismatch(cand, target) is None:
            return cand
    raise SpecError(
        f"transfer mode: no finished BP fine-tune of parent run {parent} on the same data; "
        f"run `ssbench finetune --from {parent} --rule bp ...` with the target's data, or pass --surrogate RUN"
    )


def run_attack(spec: AttackSpec, store: Any, *, console: Console | None = None, quiet: bool = False) -> int:
    """Run one attack job; returns the attack run's id. Classification and hashing targets go through
    the same engine: their examples and scorer differ (``examples.examples_for``), nothing else."""
    from ssbench.training.checkpoint import load_trained
    from ssbench.training.device import resolve_device

    console = console or SafeConsole(stderr=True)
    device = resolve_device(spec.device)
    target = load_trained(store, spec.target, device)
    check_suite(spec, target)
    modes: list[str] = list(spec.modes)
    surrogate, skipped = None, {}
    if "transfer" in modes and spec.surrogate is None and target_rule(target) == "bp":
        # a BP target is its own BP control: transfer from it is the exact attack, already run in
        # exact mode; searching a sibling would fail on the very fine-tune a recipe's group needs
        modes.remove("transfer")
        skipped["transfer"] = BP_TRANSFER_NOTE
        console.print(f"[yellow]transfer mode skipped: {escape(BP_TRANSFER_NOTE)}[/]")
    if "transfer" in modes:
        try:
            surrogate = find_surrogate(store, target, device, spec.surrogate)
        except SpecError as err:
            # --mode all: transfer is run where a BP sibling exists; a missing one is a note, not an
            # abort. A surrogate named with --surrogate that does not fit stays an error.
            if not (spec.transfer_optional and spec.surrogate is None):
                raise
            modes.remove("transfer")
            skipped["transfer"] = str(err)
            console.print(f"[yellow]transfer mode skipped: {escape(str(err))}[/]")
    if spec.precision == "train":  # autocast as each model was trained; fp32 by default (AttackSpec.precision)
        from ssbench.training.precision import at_training_precision

        target = at_training_precision(target)
        surrogate = at_training_precision(surrogate) if surrogate is not None else None

    names = attack_names(spec)
    names, skipped_attacks = defined_for(names, target.meta.num_classes, optional=spec.suite in ENSEMBLES and not spec.attacks)
    for why in skipped_attacks.values():
        console.print(f"[yellow]{escape(why)}[/]")
    eps_grid = resolve_eps(spec.eps)
    ex = examples_for(target, surrogate, spec, device)
    x, y, scorer = ex.x, ex.y, ex.scorer
    model = target.model.eval()
    sur_model = surrogate.model.eval() if surrogate is not None else None
    clean_scores = ex.clean_scores
    clean = ex.clean[scorer.metric]

    jobs: list[tuple[Attack, str]] = []
    for name in names:
        atk = build_attack(name, spec)
        if atk.minimum_norm and scorer.query_model is None:  # e.g. a multi-label database has no label to query
            skipped_attacks[name] = f"{name} skipped: {scorer.no_query_model}"
            console.print(f"[yellow]{escape(skipped_attacks[name])}[/]")
            continue
        for mode in (modes if atk.uses_gradients else [QUERY_MODE]):
            jobs.append((atk, mode))

    run_kw = dict(
        config=spec, seed=spec.seed, parent_id=target.run.id if target.run is not None else None,
        rule=target.spec.rule.name, model=target.spec.model.name, dataset=target.spec.data.name,
        task=target.spec.task, device=str(device), recipe=spec.recipe, tags=spec.tags,
    )
    # an ensemble's attacks share one chain of survivors: each attacks what the ones before left standing
    standing = {float(e): clean_scores.clone() for e in eps_grid} if spec.suite in ENSEMBLES else None
    with store.run("attack", **run_kw) as rec:
        if skipped:
            rec.set_summary(skipped_modes=skipped)
        for metric, value in ex.clean.items():
            rec.log_evaluation(metric, value, split="test", params=ex.clean_params)
        curves: list[SweepCurve] = []
        with _progress(console, quiet) as progress:
            for atk, mode in jobs:
                grid = atk.budget_grid or eps_grid
                task = progress.add_task(escape(f"{atk.name} [{mode}]"), total=len(grid))
                with gradient_source(mode, model, sur_model) as g:
                    curve = run_sweep(atk, scorer, g, x, y, eps_grid, mode=mode, batch_size=spec.batch_size,
                                      pool=ex.pool, on_eps=lambda _e, t=task: progress.advance(t), standing=standing,
                                      reference=ex.references.get(mode))
                if standing is not None:
                    chain = [f"{c.attack}/{c.mode}" for c in curves]
                    for p in curve.params:
                        p.update(ensemble=spec.suite, chain=chain)
                    standing.update({e: c.to(x.device) for e, c in zip(curve.eps, curve.correct)})
                rec.add_sweep(curve.to_points())  # one transaction per sweep
                curves.append(curve)

        standing_x = clean_scores > 0  # the examples the target gets (partly) right when clean
        checks = consistency_checks(modes if any(a.uses_gradients for a, _ in jobs) else [],
                                    model, sur_model, x[standing_x], y[standing_x], spec.seed, scorer)
        for (atk, mode), curve in zip(jobs, curves):
            if atk.uses_gradients and atk.doubling_check and not (atk.single_step or atk.minimum_norm):
                with gradient_source(mode, model, sur_model) as g:
                    check = doubled_steps(atk, curve, scorer, g, x, y, clean_scores, reference=ex.references.get(mode))
                if check is not None:
                    checks.append(check)
        checks += curve_checks(curves, clean, ex.num_classes, clean_correct=clean_scores, chance=scorer.chance)
        rec.add_sanity(list(checks))
        worst = worst_case(curves)
        rec.set_summary(
            **ex.summary, n=len(x), **{f"clean_{scorer.metric}": clean},
            surrogate_id=(surrogate.run.id if surrogate is not None and surrogate.run is not None else None),
            **({"worst_case": {f"{e:g}": r for e, r in worst.items()}} if scorer.binary else {}),
            checks_failed=sum(c.passed is False for c in checks),
            **({"skipped_modes": skipped} if skipped else {}),
            **({"skipped_attacks": skipped_attacks} if skipped_attacks else {}),
        )
        print_summary(console, rec.run_id, curves, checks, clean, worst, scorer.metric)
        return rec.run_id


def check_suite(spec: AttackSpec, target: Any) -> None:
    """Hashing attacks attack hashing models, and only they do: one line otherwise."""
    hashing = target.spec.task == "hashing"
    if hashing != (spec.suite == "hashing"):
        what = "a hashing model: attack it with --suite hashing" if hashing else \
            f"a {target.spec.task} model; --suite hashing attacks hashing models"
        raise SpecError(f"run {spec.target} is {what}")


def defined_for(names: list[str], classes: int, *, optional: bool) -> tuple[list[str], dict[str, str]]:
    """The attacks defined for a classifier of ``classes`` outputs (APGD-T's targeted DLR needs 4).
    Members of a whole ensemble that are not are skipped with a note (AutoAttack's standard on a
    3-class task is the rest of it); an attack named with --attack is an error."""
    keep, skipped = [], {}
    for name in names:
        need = ATTACKS.get(name).min_classes
        if classes >= need:
            keep.append(name)
        elif optional:
            skipped[name] = f"{name} skipped: it needs at least {need} classes, the target has {classes}"
        else:
            raise SpecError(f"attack {name} needs at least {need} classes; the target has {classes}")
    return keep, skipped


def _progress(console: Console, quiet: bool) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, disable=quiet)


def consistency_checks(modes: Sequence[str], target: nn.Module, surrogate: nn.Module | None,
                       x: torch.Tensor, y: torch.Tensor, seed: int, scorer: Scorer | None = None) -> list[SanityCheck]:
    x, y = x[:CHECK_EXAMPLES], y[:CHECK_EXAMPLES]
    out = []
    if len(x) == 0:
        return out
    scorer = scorer or Accuracy(target, y)
    for mode in modes:
        with gradient_source(mode, target, surrogate) as g:
            out.append(gradient_consistency(mode, g, target, x, y, seed=seed, cotangent=scorer.cotangent))
            out.append(zero_gradients(mode, g, x, y, loss=scorer.attack_loss))
    return out


def worst_case(curves: Sequence[SweepCurve]) -> dict[float, float]:
    """Per-example worst case over every linf curve (attacks x modes): robust only if robust to all
    (binary scores; a graded score such as AP has no per-example 'survives all')."""
    linf = [c for c in curves if c.norm == "linf" and c.binary]
    if not linf:
        return {}
    eps = sorted(set.intersection(*(set(c.eps) for c in linf)))
    out = {}
    for e in eps:
        alive = None
        for c in linf:
            k = next(i for i, ce in enumerate(c.eps) if abs(ce - e) < 1e-9)
            alive = c.correct[k] if alive is None else alive & c.correct[k]
        out[e] = float(alive.float().mean())
    return out


def print_summary(console: Console, run_id: int, curves: Sequence[SweepCurve], checks: Sequence[SanityCheck],
                  clean: float, worst: dict[float, float], metric: str = "accuracy") -> None:
    rows = [(c.attack, c.mode, dict(zip(c.eps, c.robust()))) for c in curves if c.norm == "linf"]
    what = "robust accuracy" if metric == "accuracy" else f"{metric} under attack"
    print_sweeps(console, f"attack run {run_id}: {what} (clean {clean:.3f})", rows, worst)
    for c in curves:
        if c.norm != "linf":
            console.print(escape(f"{c.attack} [{c.mode}] budget = pixels ") + ", ".join(
                f"{int(e)}: {r:.3f}" for e, r in zip(c.eps, c.robust())))
    print_checks(console, checks)


def print_sweeps(console: Console, title: str, rows: Sequence[tuple[str, str, dict[float, float]]],
                 worst: dict[float, float] | None = None) -> None:
    """One row per attack x mode, one column per epsilon (any metric: accuracy, mAP)."""
    eps = sorted({e for _, _, values in rows for e in values})
    table = Table(title=title)
    table.add_column("attack")
    table.add_column("mode")
    for e in eps:
        table.add_column(f"{e:g}", justify="right")
    for attack, mode, values in rows:
        table.add_row(attack, mode, *[f"{values[e]:.3f}" if e in values else "" for e in eps])
    if worst:
        table.add_row("[bold]worst case[/]", "all", *[f"[bold]{worst.get(e, float('nan')):.3f}[/]" for e in eps])
    console.print(table)


def print_checks(console: Console, checks: Sequence[SanityCheck]) -> None:
    """Failed checks in red, undecided ones grouped by reason, then the count."""
    failed = [c for c in checks if c.passed is False]
    skipped = [c for c in checks if c.passed is None]
    for c in failed:
        who = "/".join(v for v in (c.attack, c.mode) if v)
        value = f"{c.value:.3f}" if c.value is not None else "-"
        console.print(f"[bold red]SANITY CHECK FAILED[/] [red]{escape(f'{c.name} ({who}): value {value}; {c.detail}')}[/]")
    grouped: dict[tuple[str, str], list[str]] = {}
    for c in skipped:  # one line per (check, reason), naming every sweep it applies to
        grouped.setdefault((c.name, c.detail), []).append("/".join(v for v in (c.attack, c.mode) if v))
    for (name, detail), who in grouped.items():
        names = ", ".join(who)
        console.print(f"[yellow]{escape(f'sanity {name} ({names}) not decided: {detail}')}[/]")
    passed = sum(c.passed is True for c in checks)
    style = "bold red" if failed else "green"
    console.print(f"[{style}]sanity checks: {passed} passed, {len(failed)} failed, {len(skipped)} not applicable[/]")
    if failed:
        console.print("[bold red]A robustness claim from this run that ignores the failed checks is not supported.[/]")
