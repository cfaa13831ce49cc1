"""`ssbench runs` (list) and `ssbench show RUN` (everything about one run); `--json` prints the stored
values (ssbench/store/export.py), the tables what ssbench/listing.py says about them."""
from __future__ import annotations

import json
from typing import Annotated, Any, Literal

import typer

from ssbench.cli.options import Artifacts, Db, check_filters
from ssbench.printing import SafeConsole
from ssbench.specs import RUN_KINDS, RUN_STATUSES


def _fmt_time(t: Any) -> str:
    return t.strftime("%Y-%m-%d %H:%M") if t is not None else ""


def _fmt_seconds(s: Any) -> str:
    if s is None:
        return ""
    return f"{s:.1f}" if s < 100 else f"{s / 60:.1f} min" if s < 6000 else f"{s / 3600:.1f} h"


# the choices typer shows and checks (an unknown kind matched nothing, silently)
RunKind = Literal[RUN_KINDS]  # type: ignore[valid-type]
RunStatus = Literal[RUN_STATUSES]  # type: ignore[valid-type]
STATUS_STYLE = {"finished": "green", "failed": "bold red", "running": "yellow"}


def _status_cell(store: Any, run: Any) -> str:
    if store.liveness(run) == "gone":
        return "[bold red]running (gone)[/]"
    return f"[{STATUS_STYLE.get(run.status, '')}]{run.status}[/]"


def register(app: typer.Typer) -> None:
    @app.command("runs")
    def runs(
        db: Db = None,
        artifacts: Artifacts = None,
        kind: Annotated[RunKind | None, typer.Option(help="kind of run")] = None,
        status: Annotated[RunStatus | None, typer.Option(help="state of the run")] = None,
        rule: Annotated[str | None, typer.Option("--rule", "-r", help="learning rule (attack runs: the target's)")] = None,
        model: Annotated[str | None, typer.Option("--model", "-m")] = None,
        dataset: Annotated[str | None, typer.Option("--dataset", "-d")] = None,
        recipe: Annotated[str | None, typer.Option(help="runs of this recipe")] = None,
        tag: Annotated[str | None, typer.Option(help="runs carrying this tag")] = None,
        parent: Annotated[int | None, typer.Option(help="children of this run (fine-tunes of a pretrain, attacks of a model)")] = None,
        limit: Annotated[int, typer.Option("--limit", "-n", min=0, help="show the newest N runs (0 = all)")] = 50,
        fail_stale: Annotated[bool, typer.Option("--fail-stale", help="mark failed the 'running' runs of this host whose process is gone (SIGKILL, out of memory)")] = False,
        as_json: Annotated[bool, typer.Option("--json", help="print the runs as a JSON array: every stored column, exact, plus labels and liveness (keys above)")] = False,
    ) -> None:
        """List runs in the results store, oldest first (the newest --limit of them).

        The id is what `ssbench show ID`, `finetune --from ID` and `attack ID` take. Key metric:
        test accuracy (or mAP) of training runs, the worst case over gradient modes at the largest ε
        of attack runs, the error of failed runs. A 'running' run whose process on this host is gone
        (SIGKILL, out of memory: no Python code ran to mark it) shows as 'running (gone)';
        --fail-stale marks those failed. Labels as the report groups runs (`ifa(θ=30)`, `mlp[256x3]`,
        `digits[0-4]`); an attack run shows its target's.

        --json prints a JSON array, one object per run with stable keys: every column of the `runs`
        table (docs/schema.md: id, kind, status, ..., config, summary) as stored (floats exact, times ISO
        8601, NULL as null), `liveness` (alive / gone / unknown for a 'running' run, else null) and
        `labels` (rule, model, dataset as in the table).
        """
        from rich import box as rich_box
        from rich.markup import escape
        from rich.table import Table

        from ssbench.listing import key_metric, labels, test_metrics
        from ssbench.store import open_store
        from ssbench.store.export import dumps, run_record

        rule, model, dataset = check_filters(rule=rule, model=model, dataset=dataset)
        store = open_store(db, artifacts=artifacts)
        console = SafeConsole(stderr=as_json)  # --json: stdout holds the JSON alone
        if fail_stale:
            ids = store.fail_stale()
            console.print(f"marked {len(ids)} stale run(s) failed" + (f": {', '.join(map(str, ids))}" if ids else ""))
        rows = store.list_runs(kind=kind, status=status, rule=rule, model=model, dataset=dataset, recipe=recipe,
                               tag=tag, parent_id=parent, limit=limit or None)
        names = labels(store, rows)
        if as_json:
            typer.echo(dumps([{**run_record(store, r), "labels": names[r.id]} for r in rows]))
            return
        if not rows:
            console.print("no runs match; start with `ssbench pretrain` or `ssbench run recipes/quickstart.yaml`")
            return
        evaluations = test_metrics(store, rows)
        # at terminal widths under 120 the time columns go (see them with `ssbench show`): the rest
        # then fits 80 columns without cutting names to "fash…"
        wide = console.width >= 120
        table = Table(title=f"runs in {store!r}", title_justify="left", header_style="bold",
                      box=None if not wide else rich_box.SIMPLE_HEAD, pad_edge=False)
        columns = [("id", "right"), ("kind", "left"), ("status", "left"), ("from", "right"), ("rule", "left"),
                   ("model", "left"), ("dataset", "left"), ("seed", "right"), ("key metric", "left")]
        if wide:
            columns += [("started", "left"), ("seconds", "right")]
        for col, justify in columns:
            table.add_column(col, justify=justify, overflow="fold", no_wrap=col not in ("key metric", "dataset"))  # type: ignore[arg-type]
        for r in rows:
            cells = [
                str(r.id), r.kind, _status_cell(store, r),
                "" if r.parent_id is None else str(r.parent_id),
                escape(names[r.id]["rule"]), escape(names[r.id]["model"]), escape(names[r.id]["dataset"]),
                "" if r.seed is None else str(r.seed), key_metric(r, evaluations).replace("[", r"\["),
            ]
            if wide:
                cells += [_fmt_time(r.started_at), _fmt_seconds(r.seconds)]
            table.add_row(*cells)
        console.print(table)

    @app.command("show")
    def show(
        run_ref: Annotated[str, typer.Argument(metavar="RUN", help="run id (see `ssbench runs`)")],
        db: Db = None,
        artifacts: Artifacts = None,
        config: Annotated[bool, typer.Option("--config/--no-config", help="print the configuration JSON (--full does too)")] = False,
        full: Annotated[bool, typer.Option("--full", help="everything as stored: the configuration, the summary's lists in full and floats unrounded, every child run")] = False,
        as_json: Annotated[bool, typer.Option("--json", help="print the run as JSON: every stored column and row of it, exact (keys above)")] = False,
    ) -> None:
        """Everything stored about one run: provenance (git commit, package versions, host), summary,
        per-epoch metrics (last and best), evaluations, checkpoints, attack sweeps (robust accuracy
        per attack x mode x ε, with the per-example worst case) and sanity checks.

        Compact by default: floats to 4 significant digits, long lists (the attacked example
        indices) cut to their first items and a count, no configuration. --config adds the
        configuration, --full prints all of it as stored.

        --json prints one JSON object with stable keys, the values as stored (floats exact, times ISO
        8601, NULL as null): the keys of `ssbench runs --json` (the run's columns, `liveness`,
        `labels`), then one list per table of rows belonging to the run, each row's columns but id and
        run_id (docs/schema.md): `metrics`, `alignment`, `evaluations`, `sweeps` (sweep_points, with the
        per-example `correct` bits), `sanity_checks`, `checkpoints` (tag, epoch, metric, sha256, path
        resolved against the artifact root, created_at) and `children` (ids of the runs made from it)."""
        from rich.markup import escape
        from rich.table import Table

        from ssbench.listing import LIST_MAX, compact, labels
        from ssbench.report.render import to_rich
        from ssbench.report.display import robust_wide
        from ssbench.report.tables import worst_case
        from ssbench.store import open_store
        from ssbench.store.export import dumps, run_details

        store = open_store(db, artifacts=artifacts)
        run = store.get_run(run_ref)
        names = labels(store, [run])[run.id]
        if as_json:
            typer.echo(dumps({**run_details(store, run), "labels": names}))
            return
        console = SafeConsole()
        console.print(f"[bold]run {run.id}[/] {run.kind} {_status_cell(store, run)}"
                      + (f"  parent {run.parent_id}" if run.parent_id is not None else ""))
        facts = {
            # the labels `runs` shows: an attack's are its target's
            "rule": names["rule"] or None, "model": names["model"] or None, "dataset": names["dataset"] or None,
            "task": run.task, "seed": run.seed,
            "recipe": run.recipe, "tags": ", ".join(run.tags or []) or None, "device": run.device, "host": run.host,
            "started": _fmt_time(run.started_at), "seconds": _fmt_seconds(run.seconds), "git": run.git_commit,
            "config hash": run.config_hash[:16],
        }
        for k, v in facts.items():
            if v not in (None, ""):
                console.print(f"  {k:<12} {v}", highlight=False, markup=False)
        console.print("  versions     " + ", ".join(f"{k} {v}" for k, v in (run.versions or {}).items() if v),
                      highlight=False, markup=False)
        if run.error:
            console.print(f"[bold red]error:[/] {escape(run.error)}", markup=True, highlight=False)
        if config or full:
            console.print("[bold]config[/]")
            console.print_json(json.dumps(run.config))
        if run.summary and full:
            console.print("[bold]summary[/]")
            console.print_json(json.dumps(run.summary))
        elif run.summary:
            console.print("[bold]summary[/]")
            width = max(len(str(k)) for k in run.summary)
            for k, v in run.summary.items():
                console.print(f"  {str(k):<{width}}  {compact(v)}", highlight=False, markup=False)

        m = store.frame_metrics()
        m = m[m["run_id"] == run.id]
        if not m.empty:
            t = Table(title="metrics per epoch (last / best)", title_justify="left", header_style="bold")
            for col in ("split", "name", "epochs", "last", "min", "max"):
                t.add_column(col, justify="left" if col in ("split", "name") else "right")
            for (split, name), g in m.groupby(["split", "name"], sort=False):
                g = g.sort_values("epoch")
                t.add_row(split, name, str(int(g["epoch"].max())), f"{g['value'].iloc[-1]:.4g}",
                          f"{g['value'].min():.4g}", f"{g['value'].max():.4g}")
            console.print(t)
        ev = store.frame_evaluations()
        ev = ev[ev["run_id"] == run.id]
        if not ev.empty:
            t = Table(title="evaluations", title_justify="left", header_style="bold")
            for col in ("metric", "split", "value", "params"):
                t.add_column(col, justify="right" if col == "value" else "left")
            for metric, split, value, params in zip(ev["metric"], ev["split"], ev["value"], ev["params"]):
                t.add_row(metric, split, "" if value is None or value != value else f"{value:.4f}",
                          (json.dumps(params) if full else compact(params)).replace("[", r"\["))
            console.print(t)
        ckpts = store.checkpoints(run.id)
        if ckpts:
            t = Table(title="checkpoints", title_justify="left", header_style="bold")
            for col in ("tag", "epoch", "metric", "sha256", "path"):
                t.add_column(col)
            for c in ckpts:
                t.add_row(c.tag, "" if c.epoch is None else str(c.epoch), "" if c.metric is None else f"{c.metric:.4f}",
                          c.sha256[:12], c.path)
            console.print(t)
        sw = store.frame_sweeps()
        sw = sw[sw["run_id"] == run.id].copy()
        if not sw.empty:
            sw["target"] = run.parent_id if run.parent_id is not None else -run.id
            sw["norm"] = sw["params"].map(lambda p: (p or {}).get("norm", "linf"))
            sw["failed_checks"] = 0
            worst = worst_case(sw)
            both = sw if worst.empty else __import__("pandas").concat([sw, worst], ignore_index=True)
            both = both.rename(columns={"robust": "robust_mean"})
            both["robust_std"] = float("nan")
            for metric, g in both.groupby("metric", sort=False):
                console.print(to_rich(robust_wide(g), title=f"sweeps: {metric} under attack (worst = per-example over modes)"))
        sanity = store.frame_sanity()
        sanity = sanity[sanity["run_id"] == run.id]
        if not sanity.empty:
            t = Table(title="sanity checks", title_justify="left", header_style="bold")
            for col in ("check", "attack", "mode", "result", "value", "detail"):
                t.add_column(col, overflow="fold")
            for r in sanity.itertuples(index=False):
                result = {True: "[green]passed[/]", False: "[bold red]FAILED[/]"}.get(r.passed, "[yellow]n/a[/]")
                t.add_row(r.name, r.attack if isinstance(r.attack, str) else "", r.mode if isinstance(r.mode, str) else "",
                          result, "" if r.value is None or r.value != r.value else f"{r.value:.3f}",
                          str(r.detail).replace("[", r"\["))
            console.print(t)
        kids = store.children(run.id)
        if kids:
            shown = kids if full or len(kids) <= LIST_MAX else kids[:LIST_MAX]
            more = f", … ({len(kids)} in all; --full lists them)" if len(shown) < len(kids) else ""
            console.print("children: " + ", ".join(f"{k.id} ({k.kind} {k.rule or ''} {k.status})" for k in shown) + more,
                          highlight=False)
