"""`ssbench attack RUN`: build an AttackSpec from options and run it."""
from __future__ import annotations

from typing import Annotated, Literal

import typer

from ssbench.cli.options import Artifacts, Db, Device, Quiet
from ssbench.errors import SpecError
from ssbench.printing import SafeConsole
from ssbench.specs import GRADIENT_MODES, AttackSpec, parse_eps

HELP = (
    "Attack a trained run: suite x attacks x gradient modes x epsilons, every point stored.\n\n"
    "Gradient modes (white-box attacks): "
    "feedback = gradients through the model's own rule backward (the B pathway; what the papers did, "
    "obfuscated for non-BP rules); "
    "exact = the true input gradient of the same forward function (honest white-box); "
    "transfer = adversarial examples crafted on a BP-fine-tuned sibling of the same pretrained backbone "
    "(found in the store, or --surrogate: must be rule bp, same architecture, same data and classes). "
    "--mode all runs transfer only where a BP surrogate exists (skipped with a note otherwise). "
    "Black-box attacks (square, onepixel, boundary, hsj) only query the target (mode 'query'). "
    "--suite autoattack runs AutoAttack's standard ensemble with its reference settings, in exact mode "
    "unless --mode says otherwise; its table's last row is the ensemble's robust accuracy. "
    "Robust accuracy is always measured on the target's forward, over the first --n of a seeded "
    "permutation of the test set. Sanity checks (gradient consistency, iterative <= single-step, "
    "white-box <= black-box, white-box <= transfer, chance at large eps, eps=0 = clean) are stored "
    "and printed; failures in red.\n\n"
    "Example: ssbench attack 3 --mode feedback --mode exact --eps paper --n 500"
)


def _eps(text: str) -> tuple[float, ...] | str:
    try:
        return parse_eps(text)
    except ValueError:
        raise SpecError(f"--eps {text!r}: use paper, wide, cifar, hashing or a list like 0,0.05,0.1 or 0,2/255,8/255") from None


def attack(
    run: Annotated[str, typer.Argument(help="run id (see `ssbench runs`) or checkpoint path of the model to attack")],
    suite: Annotated[str, typer.Option(help="whitebox, blackbox, hashing, autoattack (AutoAttack's standard ensemble: apgd-ce, apgd-t, fab-t, square, each on the survivors of the ones before) or all")] = "whitebox",
    mode: Annotated[list[str] | None, typer.Option("--mode", help="feedback, exact, transfer or all; repeatable [default: exact for autoattack, else feedback, exact]")] = None,
    attack_name: Annotated[list[str] | None, typer.Option("--attack", help="whitebox: fgsm, pgd, apgd-ce, apgd-dlr, apgd-t, fab-t, tpgd; blackbox: square, onepixel, boundary, hsj; hashing: hag, sdha, fgsm-hash, pgd-hash, hsj-label; autoattack: a subset of its members; repeatable [default: the whole suite]")] = None,
    eps: Annotated[str | None, typer.Option(help="paper (0..0.1 step 0.01), wide (0..0.5), cifar (k/255), hashing ({2,4,8,16}/255 and 0.1), or a list 0,0.05,0.1 / 0,2/255,8/255; pixel space, inputs in [0, 1] [default: hashing for --suite hashing, else paper]")] = None,
    n: Annotated[int, typer.Option("--n", help="examples attacked (first n of a seeded test permutation)")] = 500,
    steps: Annotated[int | None, typer.Option(help="iterations of iterative gradient attacks [default per attack: pgd 40, apgd 100, tpgd 10]")] = None,
    surrogate: Annotated[str | None, typer.Option(help="transfer mode: run id of the BP surrogate (rule bp, same architecture and data) [default: found in the store]")] = None,
    loss: Annotated[str, typer.Option(help="loss of fgsm and pgd: ce (the papers') or margin (max_{j!=y} z_j - z_y; does not saturate on over-confident models)")] = "ce",
    batch_size: Annotated[int, typer.Option(help="examples per attack batch")] = 256,
    precision: Annotated[Literal["fp32", "train"], typer.Option(help="fp32: the attack's gradients in full precision (a bf16 / fp16 input gradient can underflow or round into a weaker attack); train: the target (and surrogate) run under autocast at the precision they were trained in")] = "fp32",
    db: Db = None,
    artifacts: Artifacts = None,
    device: Device = "auto",
    seed: Annotated[int, typer.Option(help="example selection and attack randomness")] = 0,
    quiet: Quiet = False,
) -> None:
    from ssbench.attacks.job import run_attack
    from ssbench.store import open_store

    every = bool(mode and "all" in mode)
    modes = tuple(GRADIENT_MODES) if every else (tuple(mode) if mode else None)  # None: the suite's default
    spec = AttackSpec(
        target=run, suite=suite, attacks=tuple(attack_name) if attack_name else None, modes=modes,
        eps=_eps(eps) if eps is not None else None, n_examples=n, batch_size=batch_size, steps=steps,
        surrogate=surrogate, seed=seed, device=device, loss=loss, transfer_optional=every, precision=precision,
    )
    run_attack(spec, open_store(db, artifacts=artifacts), console=SafeConsole(stderr=True), quiet=quiet)


def register(app: typer.Typer) -> None:
    app.command("attack", help=HELP)(attack)
