"""`ssbench analyze hessian|corruptions RUN`: curvature and corruption robustness of a trained run."""
from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from ssbench.cli.options import Artifacts, Db, Device, Quiet

analyze_app = typer.Typer(
    name="analyze",
    help="Analyse a trained run: loss curvature (Hessian) or accuracy under corruptions. Results are stored as an 'analysis' run.",
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
    split: Annotated[str, typer.Option(help="train or test")] = "train",
    batch_size: Annotated[int, typer.Option(help="examples per Hessian-vector product batch")] = 256,
    seed: Annotated[int, typer.Option(help="example selection and random probes")] = 0,
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
    run_hessian(spec, open_store(db, artifacts=artifacts), console=Console(stderr=True), quiet=quiet)


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
    run_corruptions(spec, open_store(db, artifacts=artifacts), console=Console(stderr=True), quiet=quiet)


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
    Console().print(table)


def register(app: typer.Typer) -> None:
    app.add_typer(analyze_app, name="analyze")
