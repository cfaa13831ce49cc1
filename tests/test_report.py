from __future__ import annotations

import csv
import io
import re
import statistics

import numpy as np
import pandas as pd
import pytest
import typer
from pydantic import BaseModel
from typer.testing import CliRunner

from ssbench.store import AlignmentRow, SanityCheck, SweepPoint, open_store

RULES = ("bp", "fa", "usf")
SEEDS = (0, 1, 2)
EPS = (0.0, 0.05, 0.1, 0.2, 0.3)
N = 40
LAYERS = ("conv1", "conv2", "fc1", "fc2")
# per-example "breaking" epsilon scale by rule x mode: feedback gradients look robust for fa/usf
SCALE = {"bp": {"feedback": 0.08, "exact": 0.08, "transfer": 0.15},
         "fa": {"feedback": 0.6, "exact": 0.09, "transfer": 0.16},
         "usf": {"feedback": 0.3, "exact": 0.1, "transfer": 0.14}}


class Cfg(BaseModel):
    seed: int = 0
    rule: str = "bp"
    stage: str = "x"
    hashing: dict | None = None


def acc_of(rule: str, seed: int) -> float:
    return {"bp": 0.90, "fa": 0.80, "usf": 0.86}[rule] + 0.01 * seed * (1 if seed % 2 else -1)


def populate(store, *, recipe="demo", eps=EPS, n=N) -> dict:
    """A small fake study: pretrain -> finetune (3 rules x 3 seeds) -> attack (fgsm, pgd x 3 modes)."""
    rng = np.random.default_rng(0)
    info: dict = {"finetune": {}, "attack": {}, "thresholds": {}}
    for seed in SEEDS:
        with store.run("pretrain", config=Cfg(seed=seed, stage="pre"), seed=seed, rule="bp", model="lenet",
                       dataset="fashion-mnist", task="classification", recipe=recipe) as pre:
            pre.log_evaluation("accuracy", 0.95, split="test")
        for rule in RULES:
            with store.run("finetune", config=Cfg(seed=seed, rule=rule), seed=seed, parent_id=pre.run_id, rule=rule,
                           model="lenet", dataset="fashion-mnist", task="classification", recipe=recipe,
                           tags=("paper",)) as rec:
                for epoch in range(0, 6):
                    if epoch:
                        rec.log_epoch(epoch, "train", {"loss": 1.0 / epoch + 0.1 * RULES.index(rule), "accuracy": 0.7})
                        rec.log_epoch(epoch, "val", {"accuracy": acc_of(rule, seed) - 0.1 / epoch, "loss": 0.9 / epoch + 0.2})
                    if rule != "bp":
                        rec.log_alignment(epoch, [
                            AlignmentRow(layer, 90.0 - (epoch * (8 + 3 * k) if rule == "fa" else 40 + 2 * k) + seed,
                                         1.0 + 0.1 * k + 0.01 * seed)
                            for k, layer in enumerate(LAYERS)])
                rec.log_evaluation("accuracy", acc_of(rule, seed), split="test")
                rec.log_evaluation("accuracy", 0.5, split="val")  # must not leak into the clean table
            info["finetune"][(rule, seed)] = rec.run_id
            with store.run("attack", config=Cfg(seed=seed, rule=rule, stage="atk"), seed=0, parent_id=rec.run_id,
                           rule=rule, model="lenet", dataset="fashion-mnist", recipe=recipe) as atk:
                for attack in ("fgsm", "pgd"):
                    for mode in ("feedback", "exact", "transfer"):
                        thr = rng.exponential(SCALE[rule][mode] * (1.0 if attack == "fgsm" else 0.7), size=n)
                        info["thresholds"][(rule, seed, attack, mode)] = thr
                        points = []
                        for e in eps:
                            alive = (thr > e) | (e == 0)
                            bits = "".join("1" if a else "0" for a in alive)
                            points.append(SweepPoint(attack, mode, e, n, float(alive.mean()), correct=bits,
                                                     params={"norm": "linf"}))
                        atk.add_sweep(points)
                if rule == "fa":
                    atk.add_sanity([SanityCheck("gradient_consistency", False, 0.2, "obfuscated", mode="feedback"),
                                    SanityCheck("falls_to_chance", True, 0.1, "", attack="pgd", mode="exact")])
            info["attack"][(rule, seed)] = atk.run_id
    return info


def populate_hashing(store) -> None:
    for bits in (16, 32):
        for seed in (0, 1):
            with store.run("train", config=Cfg(seed=seed, rule="fa", hashing={"bits": bits}), seed=seed, rule="fa",
                           model="resnet20", dataset="cifar10", task="hashing", recipe="hash") as rec:
                rec.log_evaluation("map@1000", 0.5 + bits / 100 + 0.02 * seed, split="test")
            with store.run("attack", config=Cfg(seed=seed, rule="fa", stage="hatk", hashing={"bits": bits}),
                           parent_id=rec.run_id, rule="fa", model="resnet20", dataset="cifar10", task="hashing",
                           recipe="hash") as atk:
                for mode in ("feedback", "exact"):
                    atk.add_sweep([SweepPoint("hag", mode, e, 50, 0.6 - e * (2 if mode == "exact" else 1),
                                              metric="map@1000") for e in (0.0, 0.1, 0.2)])


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    path = tmp_path_factory.mktemp("report") / "results.db"
    store = open_store(f"sqlite:///{path}")
    info = populate(store)
    populate_hashing(store)
    # noise that filters / status must drop
    with pytest.raises(RuntimeError):
        with store.run("finetune", config=Cfg(stage="broken"), rule="fa", model="lenet", dataset="fashion-mnist",
                       recipe="demo") as rec:
            rec.log_evaluation("accuracy", 0.01)
            raise RuntimeError("crash")
    store.close()
    return f"sqlite:///{path}", info


@pytest.fixture
def store(db):
    s = open_store(db[0])
    yield s
    s.close()


# -- tables -------------------------------------------------------------------------------------

def test_clean_table_matches_independent_mean_and_std(store):
    from ssbench.report.tables import ReportFilter, clean_table

    t = clean_table(store, ReportFilter(recipe="demo"))
    fine = t[t["kind"] == "finetune"].set_index("rule")
    assert list(fine.index) == ["bp", "fa", "usf"]  # the failed fa run with 0.01 is not there
    for rule in RULES:
        values = [acc_of(rule, s) for s in SEEDS]
        assert fine.loc[rule, "accuracy_mean"] == pytest.approx(statistics.fmean(values))
        assert fine.loc[rule, "accuracy_std"] == pytest.approx(statistics.stdev(values))
        assert fine.loc[rule, "n"] == 3 and fine.loc[rule, "seeds"] == "0,1,2"
    pre = t[t["kind"] == "pretrain"].iloc[0]
    assert pre["accuracy_mean"] == pytest.approx(0.95) and pre["accuracy_std"] == pytest.approx(0.0)
    only_fa = clean_table(store, ReportFilter(recipe="demo", rule="fa"))
    assert set(only_fa["rule"]) == {"fa"}
    assert clean_table(store, ReportFilter(dataset="mnist")).empty


def test_robust_table_means_over_seeds_and_per_example_worst_case(store, db):
    from ssbench.report.tables import ReportFilter, robust_table

    info = db[1]
    t = robust_table(store, ReportFilter(recipe="demo"))
    idx = t.set_index(["rule", "attack", "epsilon", "mode"])
    strictly_lower = 0
    for rule in RULES:
        for attack in ("fgsm", "pgd"):
            for e in EPS[1:]:
                per_mode = {m: [float((info["thresholds"][(rule, s, attack, m)] > e).mean()) for s in SEEDS]
                            for m in ("feedback", "exact", "transfer")}
                for m, vals in per_mode.items():
                    row = idx.loc[(rule, attack, e, m)]
                    assert row["robust_mean"] == pytest.approx(np.mean(vals))
                    assert row["robust_std"] == pytest.approx(np.std(vals, ddof=1))
                    assert row["n"] == 3 and row["examples"] == 3 * N
                # worst: an example is robust only if it survives all three modes (independent AND)
                worst = [float(np.logical_and.reduce([info["thresholds"][(rule, s, attack, m)] > e
                                                      for m in per_mode]).mean()) for s in SEEDS]
                got = idx.loc[(rule, attack, e, "worst"), "robust_mean"]
                assert got == pytest.approx(np.mean(worst))
                min_over_modes = np.mean([min(per_mode[m][i] for m in per_mode) for i in range(3)])
                assert got <= min_over_modes + 1e-12
                strictly_lower += got < min_over_modes - 1e-9
    assert strictly_lower > 0  # the data makes the per-example worst case matter
    # failed sanity check (fa, feedback mode, whole run) flags fa/feedback and fa/worst, not fa/exact
    assert idx.loc[("fa", "pgd", 0.1, "feedback"), "failed_checks"] == 3
    assert idx.loc[("fa", "pgd", 0.1, "worst"), "failed_checks"] == 3
    assert idx.loc[("fa", "pgd", 0.1, "exact"), "failed_checks"] == 0
    assert idx.loc[("bp", "pgd", 0.1, "feedback"), "failed_checks"] == 0


def test_worst_falls_back_to_min_without_strings():
    from ssbench.report.tables import worst_case

    pts = pd.DataFrame({
        "target": [1, 1, 1], "attack": ["pgd"] * 3, "metric": ["accuracy"] * 3, "epsilon": [0.1] * 3,
        "mode": ["feedback", "exact", "transfer"], "robust": [0.7, 0.3, 0.5], "n": [10, 10, 10],
        "attack_seed": [0, 0, 0], "correct": ["1111111000", None, "1111100000"], "run_id": [5, 5, 5],
        "failed_checks": [0, 1, 0],
    })
    w = worst_case(pts)
    assert w["robust"].tolist() == [0.3] and w["combined"].tolist() == ["min"] and w["failed_checks"].tolist() == [1]
    pts["correct"] = ["1111111000", "0001111111", "1111100000"]
    w = worst_case(pts)
    assert w["robust"].tolist() == [0.2] and w["correct"].tolist() == ["0001100000"]


def test_alignment_table_last_epoch(store):
    from ssbench.report.tables import ReportFilter, alignment_table

    t = alignment_table(store, ReportFilter(recipe="demo")).set_index(["rule", "layer"])
    assert set(t.index.get_level_values(0)) == {"fa", "usf"}
    for k, layer in enumerate(LAYERS):
        angles = [90.0 - 5 * (8 + 3 * k) + s for s in SEEDS]
        assert t.loc[("fa", layer), "angle_mean"] == pytest.approx(np.mean(angles))
        assert t.loc[("fa", layer), "angle_std"] == pytest.approx(np.std(angles, ddof=1))
        assert t.loc[("fa", layer), "norm_ratio_mean"] == pytest.approx(np.mean([1 + 0.1 * k + 0.01 * s for s in SEEDS]))
        assert t.loc[("fa", layer), "epoch"] == 5
    assert list(t.loc["fa"].index) == list(LAYERS)  # model order, not alphabetical


def test_hashing_tables(store):
    from ssbench.report.tables import ReportFilter, hashing_attack_table, hashing_table

    h = hashing_table(store, ReportFilter(recipe="hash")).set_index("bits")
    for bits in (16, 32):
        vals = [0.5 + bits / 100 + 0.02 * s for s in (0, 1)]
        assert h.loc[bits, "map_mean"] == pytest.approx(np.mean(vals))
        assert h.loc[bits, "map_std"] == pytest.approx(np.std(vals, ddof=1))
    a = hashing_attack_table(store, ReportFilter(recipe="hash")).set_index(["epsilon", "mode"])
    assert a.loc[(0.2, "exact"), "robust_mean"] == pytest.approx(0.2)
    assert a.loc[(0.2, "worst"), "robust_mean"] == pytest.approx(0.2)  # no strings: min over modes
    assert (a["metric"] == "map@1000").all()


def test_sanity_table_lists_failed_checks_only(store, db):
    from ssbench.report.tables import ReportFilter, sanity_table

    s = sanity_table(store, ReportFilter(recipe="demo"))
    assert len(s) == 3 and set(s["check"]) == {"gradient_consistency"} and set(s["rule"]) == {"fa"}
    assert sorted(s["target"].astype(int)) == sorted(db[1]["finetune"][("fa", k)] for k in SEEDS)
    assert sorted(s["seed"].astype(int)) == [0, 1, 2]


# -- rendering ----------------------------------------------------------------------------------

def _parse_markdown(text: str) -> list[list[str]]:
    rows = [line for line in text.splitlines() if line.startswith("|")]
    cells = [[c.strip().replace(r"\|", "|") for c in re.split(r"(?<!\\)\|", r)[1:-1]] for r in rows]
    assert all(set(c) <= set(":-") for c in cells[1])
    return [cells[0], *cells[2:]]


def _parse_latex(text: str) -> list[list[str]]:
    body = text.split(r"\toprule")[1].split(r"\bottomrule")[0].replace(r"\midrule", "")
    rows = [r.strip().removesuffix(r"\\").strip() for r in body.strip().splitlines() if r.strip()]
    unescape = lambda s: s.replace(r"$\pm$", "±").replace(r"\_", "_").replace(r"\&", "&").replace(r"\%", "%")  # noqa: E731
    return [[unescape(c.strip()) for c in re.split(r"(?<!\\)&", r)] for r in rows]


def test_render_round_trips(store):
    from ssbench.report.render import render
    from ssbench.report.tables import ReportFilter, build_tables, display_frame

    tables = build_tables(store, ReportFilter(recipe="demo"))
    assert {"clean", "robust", "alignment", "sanity"} <= set(tables)
    for name, raw in tables.items():
        shown = display_frame(name, raw)
        expected = [list(map(str, shown.columns)), *shown.astype(str).values.tolist()]
        assert _parse_markdown(render(shown, "markdown", title=name)) == expected
        assert _parse_latex(render(shown, "latex")) == expected
        back = pd.read_csv(io.StringIO(render(raw, "csv")))
        assert list(back.columns) == list(raw.columns) and len(back) == len(raw)
        for col in raw.columns:
            if pd.api.types.is_float_dtype(raw[col]):
                np.testing.assert_allclose(back[col].to_numpy(float), raw[col].to_numpy(float), equal_nan=True)
    # the display of the robust table pivots epsilons into columns, with mean ± std and flags
    wide = display_frame("robust", tables["robust"])
    assert list(wide.columns[:3]) == ["attack", "rule", "mode"] and "0.1" in wide.columns
    fa_fb = wide[(wide.attack == "pgd") & (wide["rule"] == "fa") & (wide["mode"] == "feedback")].iloc[0]
    assert fa_fb["0.1"].endswith("!") and " ± " in fa_fb["0.1"]
    text = render(wide, "terminal")
    assert "worst" in text and "feedback" in text
    tricky = pd.DataFrame({"a_b": ["x|y & 50%"], "v": ["1.0 ± 0.1"]})
    assert _parse_markdown(render(tricky, "markdown")) == [["a_b", "v"], ["x|y & 50%", "1.0 ± 0.1"]]
    assert _parse_latex(render(tricky, "latex")) == [["a_b", "v"], ["x|y & 50%", "1.0 ± 0.1"]]


# -- plots --------------------------------------------------------------------------------------

def test_robustness_plot_series(store, tmp_path):
    from ssbench.report.plots import plot_robustness, rule_color, save_figure
    from ssbench.report.tables import ReportFilter, robust_table

    t = robust_table(store, ReportFilter(recipe="demo"))
    fig = plot_robustness(t, title="lenet")
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == ["fgsm", "pgd"]
    lines = {ln.get_label(): ln for ln in axes[1].get_lines()}
    assert set(lines) == {f"{r} {m}" for r in RULES for m in ("feedback", "exact", "transfer", "worst")}
    assert lines["fa feedback"].get_linestyle() == "--" and lines["fa exact"].get_linestyle() == "-"
    assert lines["fa transfer"].get_linestyle() == ":"
    assert lines["fa worst"].get_linewidth() > 2 * lines["fa exact"].get_linewidth()
    assert lines["fa feedback"].get_color() == lines["fa exact"].get_color() == rule_color("fa")
    assert lines["bp exact"].get_color() != lines["fa exact"].get_color()
    x, y = lines["usf exact"].get_data()
    expect = t[(t.rule == "usf") & (t.attack == "pgd") & (t["mode"] == "exact")].sort_values("epsilon")
    np.testing.assert_allclose(x, expect["epsilon"]) and np.testing.assert_allclose(y, expect["robust_mean"])
    assert "robust accuracy" in axes[0].get_ylabel() and "ε" in axes[0].get_xlabel()
    png, svg = save_figure(fig, tmp_path, "robust")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and svg.read_text().lstrip().startswith("<?xml")


def test_alignment_and_training_plots(store):
    from ssbench.report.plots import plot_alignment, plot_training
    from ssbench.report.tables import ReportFilter, alignment_curves

    curves = alignment_curves(store, ReportFilter(recipe="demo"))
    fig = plot_alignment(curves)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == ["rule fa", "rule usf"]
    fc1 = next(ln for ln in axes[0].get_lines() if ln.get_label() == "fc1")
    x, y = fc1.get_data()
    np.testing.assert_allclose(x, range(6))
    np.testing.assert_allclose(y, [90.0 - e * (8 + 3 * 2) + 1 for e in range(6)])  # mean over seeds 0,1,2
    metrics = store.frame_metrics(recipe="demo", kind="finetune", status="finished")
    fig = plot_training(metrics)
    acc_ax, loss_ax = fig.axes[:2]
    assert len(acc_ax.get_lines()) == 9 and len(loss_ax.get_lines()) == 18
    assert {ln.get_linestyle() for ln in loss_ax.get_lines()} == {"-", "--"}


# -- CLI ----------------------------------------------------------------------------------------

def _app() -> typer.Typer:
    from ssbench.cli import report, runs
    from ssbench.cli.app import SsbenchGroup  # the lead's group: SsbenchError -> one line, exit 2

    app = typer.Typer(cls=SsbenchGroup, add_completion=False)

    @app.callback()
    def main() -> None:
        """test app"""

    report.register(app)
    runs.register(app)
    return app


def test_cli_report_writes_tables_and_plots(db, tmp_path):
    app = _app()
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["report", "--db", db[0], "--recipe", "demo", "--format", "markdown", "--out", str(out)])
    assert r.exit_code == 0, r.output
    md = (out / "clean.md").read_text()
    assert "finetune" in md and "±" in md
    assert (out / "robust_lenet_fashion-mnist.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "alignment_lenet_fashion-mnist.svg").exists() and (out / "training_finetune_lenet_fashion-mnist.png").exists()
    assert "sanity check(s) failed" in r.output
    r = CliRunner().invoke(app, ["report", "--db", db[0], "--table", "clean", "--format", "csv", "--rule", "usf"])
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(io.StringIO(r.output[r.output.index("kind,"):])))
    fine = [row for row in rows if row["kind"] == "finetune"]
    assert len(fine) == 1 and float(fine[0]["accuracy_mean"]) == pytest.approx(statistics.fmean(acc_of("usf", s) for s in SEEDS))
    r = CliRunner().invoke(app, ["report", "--db", db[0], "--table", "robust", "--recipe", "hash", "--no-plots"])
    assert r.exit_code == 0


def test_cli_runs_and_show(db):
    app = _app()
    runner = CliRunner(env={"COLUMNS": "200"})
    r = runner.invoke(app, ["runs", "--db", db[0], "--kind", "finetune", "--rule", "fa"])
    assert r.exit_code == 0, r.output
    ids = {str(db[1]["finetune"][("fa", s)]) for s in SEEDS}
    shown = set(re.findall(r"^\s*│?\s*(\d+)\s", r.output, flags=re.M))
    assert ids <= shown and "failed" in r.output  # the crashed fa run is listed with its status
    rid = db[1]["attack"][("fa", 0)]
    r = runner.invoke(app, ["show", str(rid), "--db", db[0]])
    assert r.exit_code == 0, r.output
    assert "pgd" in r.output and "gradient_consistency" in r.output and "worst" in r.output
    r = runner.invoke(app, ["show", "99999", "--db", db[0]])
    assert r.exit_code == 2 and "no run 99999" in r.output and r.output.strip().count("\n") == 0
