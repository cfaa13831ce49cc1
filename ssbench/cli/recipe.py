"""`ssbench run RECIPE.yaml`: a whole grid as a job graph, on this process or a Ray cluster."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from ssbench.cli.options import Artifacts, Db, Quiet, parse_ints
from ssbench.errors import SpecError
from ssbench.printing import SafeConsole
from ssbench.recipes.plan import MAX_JOBS


def _plan_table(plan, states) -> Table:  # noqa: ANN001
    table = Table(title=f"plan of recipe {plan.recipe.name}: {len(plan)} jobs", title_justify="left")
    for col in ("#", "kind", "rule", "model", "seed", "needs", "state"):
        table.add_column(col, justify="right" if col in ("#", "seed") else "left")
    for job in plan:
        rule = getattr(job.spec, "rule", None)
        st = states[job.key]
        state = st.state + (f" (run {st.run_id})" if st.run_id else "") + (f" {st.detail}" if st.detail else "")
        model = job.spec.model.name if hasattr(job.spec, "model") else plan.job(job.source).spec.model.name
        table.add_row(
            str(plan.number(job.key)), job.kind, rule.name if rule else (job.spec.suite if job.kind == "attack" else ""),
            model, str(job.spec.seed), ",".join(str(plan.number(d)) for d in job.deps) or "-", state,
        )
    return table


def register(app: typer.Typer) -> None:
    @app.command("run")
    def run(
        recipe_path: Annotated[Path, typer.Argument(metavar="RECIPE", help="recipe YAML, e.g. recipes/quickstart.yaml")],
        executor: Annotated[str, typer.Option(help="local: jobs one after the other in this process; ray: in parallel on Ray")] = "local",
        address: Annotated[str | None, typer.Option(envvar="RAY_ADDRESS", help="ray: join this cluster (HOST:PORT of `ray start --head`) [default: start a local Ray]")] = None,
        cpus_per_job: Annotated[float | None, typer.Option(help="ray: CPU cores per job (= its torch threads) [default: the recipe's, 1]")] = None,
        gpus_per_job: Annotated[float | None, typer.Option(help="ray: GPUs per job; fractions share a GPU [default: 1 on CUDA, else 0]")] = None,
        retries: Annotated[int, typer.Option(min=0, help="ray: reruns of a job whose worker died (SIGKILL, OOM, node lost)")] = 2,
        epochs: Annotated[int | None, typer.Option(help="override every stage's epochs (quick runs)")] = None,
        train_limit: Annotated[int | None, typer.Option(help="override: train on N images")] = None,
        test_limit: Annotated[int | None, typer.Option(help="override: evaluate on N test images")] = None,
        n_examples: Annotated[int | None, typer.Option("--n", help="override: attack N test images")] = None,
        seeds: Annotated[str | None, typer.Option(help="override the recipe's seeds, e.g. 0,1,2")] = None,
        device: Annotated[str | None, typer.Option(help="override the recipe's device")] = None,
        report: Annotated[bool, typer.Option("--report/--no-report", help="render the recipe's report stage at the end")] = True,
        out: Annotated[Path | None, typer.Option(help="report folder (tables + plots) [default: the recipe's]")] = None,
        dry_run: Annotated[bool, typer.Option(help="print the plan (jobs, dependencies, state in the store), run nothing")] = False,
        force: Annotated[bool, typer.Option(help="run even when the recipe's `requires` (gpu, network) are not met here (not a size limit: see --max-jobs)")] = False,
        max_jobs: Annotated[int, typer.Option(min=1, help="refuse a grid of more jobs than this, counted before it is expanded (--dry-run too); kept apart from --force, which only skips `requires`, so forcing a GPU recipe onto a CPU does not also lift it")] = MAX_JOBS,
        db: Db = None,
        artifacts: Artifacts = None,
        quiet: Quiet = False,
    ) -> None:
        """Run a recipe: pretrain -> finetune(rules) -> attack -> report, over seeds x models.

        The recipe becomes a plan of jobs, each started as soon as the jobs it needs have finished.
        Every job is claimed in the store before it runs, so any number of `ssbench run` of one
        recipe on one store (SQLite here, PostgreSQL across machines) run each job exactly once:
        finished jobs are skipped, jobs held by a live worker are waited for, jobs whose worker
        died are taken over, failed jobs run again. A failing job does not stop the grid: the jobs
        that need it are skipped, the failures are listed at the end and the exit code is 1.
        Overrides change the configuration, so a short --epochs run never overwrites a full one.

        --executor ray runs one Ray task per job (local Ray with this machine's CPUs and GPUs, or
        --address of a cluster; see docs/scale.md).
        """
        from ssbench.executors import EXECUTORS, execute, make_executor
        from ssbench.executors.progress import ConsoleLog
        from ssbench.recipes import Overrides, check_requirements, load_recipe, missing_requirements, plan
        from ssbench.recipes.state import plan_state
        from ssbench.store import open_store

        console = SafeConsole(stderr=True)
        EXECUTORS.get(executor)  # an unknown name is one line before anything else happens
        recipe = load_recipe(recipe_path)
        ov = Overrides(  # --seeds '' was given: refused as naming no seed, not read as unset
            epochs=epochs, train_limit=train_limit, test_limit=test_limit, n_examples=n_examples, device=device,
            seeds=None if seeds is None else parse_ints(seeds, "--seeds") or (),
        )
        resources = recipe.resources.replace(**{k: v for k, v in {"cpus": cpus_per_job, "gpus": gpus_per_job}.items()
                                                  if v is not None})
        jobs = plan(recipe, ov, resources, max_jobs=max_jobs)
        if out is not None and not (report and recipe.report is not None):
            why = "--no-report was given" if not report else f"recipe {recipe.name} has no report stage"
            raise SpecError(f"--out {out}: {why}, so nothing would be written; leave --out out")
        report_out = None
        if report and recipe.report is not None:
            from ssbench.report import check_out_dir

            # before any job (and in --dry-run): a bad folder would otherwise surface after the whole grid
            if out is not None:
                report_out = check_out_dir(out, "--out")
            elif recipe.report.out is not None:
                report_out = check_out_dir(recipe.report.out, "report.out")
        if not (dry_run or force):
            check_requirements(recipe)  # before any output: an unmet requirement is the one line shown
        store = open_store(db, artifacts=artifacts)
        console.print(f"[bold]recipe {escape(recipe.name)}[/]: {escape(recipe.description.strip())}")
        if dry_run:
            for why in ([] if force else missing_requirements(recipe)):
                console.print(f"  [yellow]note: requires {why}[/]")
            SafeConsole().print(_plan_table(jobs, plan_state(jobs, store)))
            return
        runner = make_executor(executor, store, address=address, retries=retries, console=console, quiet=quiet)
        with ConsoleLog(jobs, console, bar=executor != "local" and not quiet) as log:
            result = execute(jobs, store, runner, log=log)
        console.print(
            f"recipe {recipe.name}: {len(result.ran)} jobs ran, {len(result.already)} already finished, "
            f"{len(result.failed)} failed or skipped"
        )
        for job, o in result.failed:
            console.print(f"  [red]{o.status}[/] {job.label}: {o.error}")
        if report and recipe.report is not None:
            from ssbench.report import build_report

            build_report(
                store, recipe=recipe.name, formats=recipe.report.formats, out=report_out,
                plots=recipe.report.plots, console=SafeConsole(), eps=recipe.report.leaderboard_eps,
            )
        if result.failed:
            console.print(f"{len(result.failed)} job(s) failed or skipped; run the recipe again to retry them "
                          "(finished jobs are skipped)")
            raise typer.Exit(1)
