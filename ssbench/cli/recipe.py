"""`ssbench run RECIPE.yaml`: a whole grid, resumable."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from ssbench.cli.options import Db, Quiet


def register(app: typer.Typer) -> None:
    @app.command("run")
    def run(
        recipe_path: Annotated[Path, typer.Argument(metavar="RECIPE", help="recipe YAML, e.g. recipes/quickstart.yaml")],
        epochs: Annotated[int | None, typer.Option(help="override every stage's epochs (quick runs)")] = None,
        train_limit: Annotated[int | None, typer.Option(help="override: train on N images")] = None,
        test_limit: Annotated[int | None, typer.Option(help="override: evaluate on N test images")] = None,
        n_examples: Annotated[int | None, typer.Option("--n", help="override: attack N test images")] = None,
        seeds: Annotated[str | None, typer.Option(help="override the recipe's seeds, e.g. 0,1,2")] = None,
        device: Annotated[str | None, typer.Option(help="override the recipe's device")] = None,
        report: Annotated[bool, typer.Option("--report/--no-report", help="render the recipe's report stage at the end")] = True,
        out: Annotated[Path | None, typer.Option(help="report folder (tables + plots) [default: the recipe's]")] = None,
        dry_run: Annotated[bool, typer.Option(help="list the jobs that would run, run nothing")] = False,
        force: Annotated[bool, typer.Option(help="run even when the recipe's `requires` (gpu, network) are not met here")] = False,
        db: Db = None,
        quiet: Quiet = False,
    ) -> None:
        """Run a recipe: pretrain -> finetune(rules) -> attack -> report, over seeds x models.

        Jobs whose exact configuration already finished in the store are skipped, so an
        interrupted recipe resumes where it stopped; failed jobs run again. A failing job does not
        stop the grid: the others run, the failures are listed at the end and the exit code is 1.
        Overrides change the configuration, so a short --epochs run never overwrites a full one.
        """
        from ssbench.recipes import Overrides, check_requirements, load_recipe, missing_requirements, run_recipe
        from ssbench.store import open_store

        console = Console(stderr=True)
        recipe = load_recipe(recipe_path)
        store = open_store(db)
        ov = Overrides(
            epochs=epochs, train_limit=train_limit, test_limit=test_limit, n_examples=n_examples, device=device,
            seeds=tuple(int(s) for s in seeds.split(",")) if seeds else None,
        )
        if not (dry_run or force):
            check_requirements(recipe)  # before any output: an unmet requirement is the one line shown
        console.print(f"[bold]recipe {recipe.name}[/]: {recipe.description.strip()}")
        if dry_run:
            for why in ([] if force else missing_requirements(recipe)):
                console.print(f"  [yellow]note: requires {why}[/]")
            counter = iter(range(10**9))

            def plan(spec, _store) -> int:  # noqa: ANN001
                n = -next(counter) - 1
                what = getattr(spec, "rule", None)
                console.print(f"  would run {getattr(spec, 'kind', 'attack')} {what.name if what else spec.target}")
                return n

            run_recipe(recipe, store, ov, log=console.print, train=plan, attack=plan if recipe.attack else None, force=True)
            return
        from ssbench.attacks import run_attack
        from ssbench.training import run_training

        result = run_recipe(
            recipe, store, ov, log=lambda m: console.print(f"[dim]{m}[/]"),
            train=lambda spec, st: run_training(spec, st, console=console, quiet=quiet),
            attack=(lambda spec, st: run_attack(spec, st, console=console, quiet=quiet)) if recipe.attack else None,
            force=True,  # checked above
        )
        console.print(
            f"recipe {recipe.name}: {len(result.trained)} trained, {len(result.attacks)} attack runs, "
            f"{result.skipped} skipped (already finished), {len(result.failed)} failed"
        )
        for f in result.failed:
            console.print(f"  [red]failed[/] {f.what}: {f.error}")
        if report and recipe.report is not None:
            from ssbench.report import build_report

            build_report(
                store, recipe=recipe.name, formats=recipe.report.formats, out=out or recipe.report.out,
                plots=recipe.report.plots, console=Console(),
            )
        if result.failed:
            console.print(f"{len(result.failed)} job(s) failed; run the recipe again to retry them (finished jobs are skipped)")
            raise typer.Exit(1)
