"""`ssbench analyze hessian|corruptions RUN`: curvature and corruption robustness of a trained run."""
from __future__ import annotations

from typing import Annotated

import typer

from ssbench.cli.options import Artifacts, Db, Device, ExampleSeed, ExampleSplit, Quiet
from ssbench.printing import SafeConsole

analyze_app = typer.Typer(
    name="analyze",
    help="Analyse a trained run: loss curvature (Hessian), curvature and weights over training (trajectory), accuracy under corruptions. Results are stored as an 'analysis' run.",
    no_args_is_help=True,
)

HESSIAN_HELP = (
    "Hessian of the run's loss w.r.t. its parameters, on the first --n of a seeded permutation of the "
    "train split (model in eval mode: BatchNorm running statistics; true gradients of the forward "
    "function for rule-trained models). Exact Hessian-vector products (double backward); trace by "
    "Hutchinson (--probes Rademacher probes, with standard error); top eigenvalue by power iteration "
    "and Lanczos (--iters steps); --density adds the stochastic Lanczos quadrature eigenvalue density; "
    "--surface the 2-D loss surface along the top two eigenvectors.\n\n"
    "Example: ssbench analyze hessian 4 --n 512 --probes 100 --density"
)

CORRUPTIONS_HELP = (
    "Accuracy of a trained run on the first --n of a seeded test permutation under procedural "
    "corruptions (noise, blur, weather, digital, geometric) at severities 1..5. Offline, any image size.\n\n"
    "Example: ssbench analyze corruptions 4 --corruption fog --corruption jpeg --severity 3"
)


@analyze_app.command("hessian", help=HESSIAN_HELP)
def hessian(
    run: Annotated[str, typer.Argument(help="run id (see `ssbench runs`) or checkpoint path")],
    n: Annotated[int, typer.Option("--n", help="examples the loss is averaged over")] = 512,
    probes: Annotated[int, typer.Option(help="Hutchinson probes for the trace")] = 100,
    iters: Annotated[int, typer.Option(help="power-iteration and Lanczos steps")] = 50,
    top_k: Annotated[int, typer.Option("--top-k", help="top eigenvalues reported (Lanczos)")] = 2,
    density: Annotated[bool, typer.Option("--density", help="eigenvalue density by stochastic Lanczos quadrature")] = False,
    density_probes: Annotated[int, typer.Option(help="SLQ probes")] = 4,
    surface: Annotated[bool, typer.Option("--surface", help="2-D loss surface along the top two eigenvectors")] = False,
    points: Annotated[int, typer.Option(help="loss surface: points per axis")] = 21,
    radius: Annotated[float, typer.Option(help="loss surface: alphas, betas in [-radius, radius]")] = 1.0,
    split: ExampleSplit = "train",
    batch_size: Annotated[int, typer.Option(help="examples per Hessian-vector product batch")] = 256,
    seed: ExampleSeed = 0,
    db: Db = None,
    artifacts: Artifacts = None,
    device: Device = "auto",
    quiet: Quiet = False,
) -> None:
    from ssbench.analysis.jobs import run_hessian
    from ssbench.analysis.specs import HessianSpec
    from ssbench.store import open_store

    spec = HessianSpec(
        target=run, n_examples=n, probes=probes, iters=iters, top_k=top_k, density=density,
        density_probes=density_probes, surface=surface, surface_points=points, surface_radius=radius,
        split=split, batch_size=batch_size, seed=seed, device=device,
    )
    run_hessian(spec, open_store(db, artifacts=artifacts), console=SafeConsole(stderr=True), quiet=quiet)


@analyze_app.command("corruptions", help=CORRUPTIONS_HELP)
def corruptions(
    run: Annotated[str, typer.Argument(help="run id (see `ssbench runs`) or checkpoint path")],
    n: Annotated[int, typer.Option("--n", help="test examples")] = 1000,
    corruption: Annotated[list[str] | None, typer.Option("--corruption", help="corruption name; repeatable [default: all]")] = None,
    severity: Annotated[list[int] | None, typer.Option("--severity", min=1, max=5, help="1..5; repeatable [default: 1 to 5]")] = None,
    batch_size: Annotated[int, typer.Option(help="examples per batch")] = 256,
    seed: Annotated[int, typer.Option(help="example selection and corruption randomness")] = 0,
    db: Db = None,
    artifacts: Artifacts = None,
    device: Device = "auto",
    quiet: Quiet = False,
) -> None:
    from ssbench.analysis.jobs import corruption_list, run_corruptions
    from ssbench.analysis.specs import CorruptionSpec
    from ssbench.store import open_store

    spec = CorruptionSpec(
        target=run, corruptions=tuple(corruption) if corruption else None,
        severities=tuple(sorted(set(severity))) if severity else (1, 2, 3, 4, 5),
        n_examples=n, batch_size=batch_size, seed=seed, device=device,
    )
    corruption_list(spec)  # bad names fail before the store is opened
    run_corruptions(spec, open_store(db, artifacts=artifacts), console=SafeConsole(stderr=True), quiet=quiet)


TRAJECTORY_HELP = (
    "The course of training of a run that kept its weights per epoch (train with --keep-epochs N): "
    "the Hessian trace (Hutchinson) and top eigenvalue (Lanczos) at every --every-th kept epoch, "
    "computed as `analyze hessian` does on the same --n examples (so the last epoch's values equal "
    "it on the final weights), and the weight trajectory projected on its first two principal "
    "directions (PCA of theta_epoch - theta_final) with the loss on a --points x --points grid of "
    "that plane around the path. Plotted by `ssbench report`.\n\n"
    "Example: ssbench train --rule fa --model mlp --epochs 20 --keep-epochs 1 && "
    "ssbench analyze trajectory 7 --n 512 --probes 50 --every 2"
)


@analyze_app.command("trajectory", help=TRAJECTORY_HELP)
def trajectory(
    run: Annotated[str, typer.Argument(help="run id (see `ssbench runs`) of a run trained with --keep-epochs")],
    n: Annotated[int, typer.Option("--n", help="examples the loss is averaged over")] = 512,
    probes: Annotated[int, typer.Option(help="Hutchinson probes for the trace")] = 100,
    iters: Annotated[int, typer.Option(help="Lanczos steps for the top eigenvalue")] = 50,
    every: Annotated[int, typer.Option(min=1, help="Hessian at every N-th kept epoch (and the first and last)")] = 1,
    hessian: Annotated[bool, typer.Option("--hessian/--no-hessian", help="curvature at the analysed epochs")] = True,
    pca: Annotated[bool, typer.Option("--pca/--no-pca", help="PCA trajectory and the loss plane around it")] = True,
    points: Annotated[int, typer.Option(help="loss plane: points per axis")] = 21,
    margin: Annotated[float, typer.Option(help="loss plane: widen the path's extent by this share per side")] = 0.25,
    split: ExampleSplit = "train",
    batch_size: Annotated[int, typer.Option(help="examples per batch")] = 256,
    seed: ExampleSeed = 0,
    db: Db = None,
    artifacts: Artifacts = None,
    device: Device = "auto",
    quiet: Quiet = False,
) -> None:
    from ssbench.analysis.specs import TrajectorySpec
    from ssbench.analysis.trajectory import run_trajectory
    from ssbench.store import open_store

    spec = TrajectorySpec(
        target=run, n_examples=n, probes=probes, iters=iters, every=every, hessian=hessian, pca=pca, points=points,
        margin=margin, split=split, batch_size=batch_size, seed=seed, device=device,
    )
    run_trajectory(spec, open_store(db, artifacts=artifacts), console=SafeConsole(stderr=True), quiet=quiet)


@analyze_app.command("list-corruptions", help="The registered corruptions and what severity scales.")
def list_corruptions() -> None:
    from rich.table import Table

    from ssbench.analysis.corruptions import CORRUPTIONS, corruption_names

    table = Table(title="corruptions (severity 0 = identity)")
    for col in ("name", "family", "severity 1..5", "what"):
        table.add_column(col)
    for name in corruption_names():
        c = CORRUPTIONS.get(name)
        table.add_row(name, c.family, ", ".join(f"{p:g}" for p in c.params), c.help)
    SafeConsole().print(table)


TRAINABILITY_HELP = (
    "The trainability map (IFA paper, Fig. 3a): final training accuracy of --rule trained from scratch "
    "on a grid of initial variances, W ~ N(0, weight_var / fan_in) (columns) and the random feedback "
    "~ N(0, feedback_var / fan_in) (rows); 1 = LeCun, 2 = He. Every cell is an ordinary `train` run "
    "(init gaussian); cells already in the store are reused. A cell whose loss turns non-finite scores "
    "chance accuracy, marked x.\n\n"
    "Example: ssbench analyze trainability --rule fa --model mlp --hidden 256,256,256 "
    "--weight-vars 0.5,1,2,4 --feedback-vars 0.5,1,2,4 --epochs 2 --train-limit 2000"
)


@analyze_app.command("trainability", help=TRAINABILITY_HELP)
def trainability(
    rule: Annotated[str, typer.Option("--rule", "-r", help="fa, dfa, usf, frsf, brsf (a rule with random feedback)")] = "fa",
    weight_vars: Annotated[str, typer.Option(help="forward variances x fan_in (columns)")] = "0.5,1,2,4",
    feedback_vars: Annotated[str, typer.Option(help="feedback variances x fan_in (rows)")] = "0.5,1,2,4",
    model: Annotated[str, typer.Option("--model", "-m", help="model name (see `ssbench train --help`)")] = "mlp",
    hidden: Annotated[str | None, typer.Option(help="mlp hidden widths [default: 256,256,256 for mlp]")] = None,
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="data set name")] = "fashion-mnist",
    classes: Annotated[str | None, typer.Option(help="class subset, e.g. 0-4")] = None,
    train_limit: Annotated[int | None, typer.Option(help="use only N training images")] = None,
    test_limit: Annotated[int | None, typer.Option(help="evaluate each cell on N test images")] = None,
    val_fraction: Annotated[float, typer.Option(help="share of train held out (the map reads training accuracy: none needed)")] = 0.0,
    epochs: Annotated[int, typer.Option("--epochs", "-e", min=1)] = 2,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1)] = 128,
    optimizer: Annotated[str, typer.Option(help="sgd, adam, adamw")] = "sgd",
    lr: Annotated[float, typer.Option(help="learning rate")] = 0.01,
    momentum: Annotated[float, typer.Option(help="sgd momentum")] = 0.9,
    seed: Annotated[int, typer.Option("--seed", "-s", help="seed of every cell (data order, W and B draws)")] = 0,
    tag: Annotated[list[str] | None, typer.Option(help="label the map and its cells (repeatable)")] = None,
    db: Db = None,
    artifacts: Artifacts = None,
    device: Device = "auto",
    quiet: Quiet = False,
) -> None:
    from ssbench.analysis.trainability import TrainabilitySpec, run_trainability
    from ssbench.cli.options import parse_classes, parse_floats, parse_ints
    from ssbench.specs import DataSpec, ModelSpec, OptimSpec
    from ssbench.store import open_store

    widths = parse_ints(hidden, "--hidden", example="256,256")
    spec = TrainabilitySpec(
        rule=rule, model=ModelSpec(name=model, hidden=widths if widths or model != "mlp" else (256, 256, 256)),  # type: ignore[arg-type]
        data=DataSpec(name=dataset, classes=parse_classes(classes), train_limit=train_limit, test_limit=test_limit,
                      val_fraction=val_fraction),
        weight_vars=parse_floats(weight_vars), feedback_vars=parse_floats(feedback_vars), epochs=epochs,
        batch_size=batch_size, optim=OptimSpec(name=optimizer, lr=lr, momentum=momentum),  # type: ignore[arg-type]
        seed=seed, device=device, tags=tuple(tag or ()),
    )
    run_trainability(spec, open_store(db, artifacts=artifacts), console=SafeConsole(stderr=True), quiet=quiet)


def register(app: typer.Typer) -> None:
    app.add_typer(analyze_app, name="analyze")
