"""Robustness reporting to a reviewer's standard: sweep identity (no row mixes two attack runs),
Wilson intervals, the per-example worst case over every attack and mode, and the leaderboard.
Every expected number is computed here from the bitstrings written to the store."""
from __future__ import annotations

import csv
import io
import math

import numpy as np
import pytest
from pydantic import BaseModel
from typer.testing import CliRunner

from ssbench.store import SanityCheck, SweepPoint, open_store

Z = 1.959963984540054
EPS = (0.0, 0.1, 0.2)


class Cfg(BaseModel):
    tag: str
    seed: int = 0
    rule: str = "bp"


def bits(a) -> str:
    return "".join("1" if v else "0" for v in a)


def frac(a) -> float:
    return float(np.mean(a))


def make_target(store, rule: str, seed: int, recipe: str = "lb") -> int:
    with store.run("finetune", config=Cfg(tag="t", seed=seed, rule=rule), seed=seed, rule=rule, model="lenet",
                   dataset="fashion-mnist", task="classification", recipe=recipe) as rec:
        rec.log_evaluation("accuracy", 0.9, split="test")
    return rec.run_id


def make_attack(store, target: int, rule: str, sweeps, *, n: int, seed: int = 0, clean=None, indices=None,
                tag: str = "a", sanity=(), recipe: str = "lb", metric: str = "accuracy") -> int:
    """sweeps: [(attack, mode, {eps: bool array}, params)]; one add_sweep per entry, as the job does."""
    with store.run("attack", config=Cfg(tag=tag, seed=seed, rule=rule), seed=seed, parent_id=target, rule=rule,
                   model="lenet", dataset="fashion-mnist", recipe=recipe) as atk:
        if clean is not None:
            atk.log_evaluation("accuracy", frac(clean), split="test", params={"n": n, "clean": True})
        for attack, mode, curve, params in sweeps:
            atk.add_sweep([SweepPoint(attack, mode, e, n, frac(a) if metric == "accuracy" else float(a), metric=metric,
                                      correct=bits(a) if metric == "accuracy" else None,
                                      params={"norm": "linf", "seed": seed, **params}) for e, a in curve.items()])
        if sanity:
            atk.add_sanity(list(sanity))
        atk.set_summary(indices=list(range(n)) if indices is None else indices, n=n)
    return atk.run_id


def curve(rng, n: int, clean, scale: float) -> dict[float, np.ndarray]:
    """Monotone per-example survival: broken at eps >= a random threshold."""
    thr = rng.exponential(scale, size=n)
    return {e: clean & ((thr > e) | (e == 0)) for e in EPS}


@pytest.fixture
def store(tmp_path):
    s = open_store(f"sqlite:///{tmp_path / 'r.db'}")
    yield s
    s.close()


# -- Wilson ------------------------------------------------------------------------------------

def wilson_by_quadratic(k: int, n: int) -> tuple[float, float]:
    """The score interval as the roots of (p_hat - p)^2 = z^2 p (1 - p) / n (written out independently)."""
    ph = k / n
    a = 1 + Z * Z / n
    b = -(2 * ph + Z * Z / n)
    c = ph * ph
    disc = math.sqrt(b * b - 4 * a * c)
    return (-b - disc) / (2 * a), (-b + disc) / (2 * a)


@pytest.mark.parametrize("k,n", [(0, 10), (10, 10), (3, 10), (50, 100), (1, 1000), (999, 1000), (0, 1), (1, 1), (17, 40)])
def test_wilson_matches_closed_form_and_scipy(k, n):
    from ssbench.report.stats import wilson

    lo, hi = wilson(k, n)
    qlo, qhi = wilson_by_quadratic(k, n)
    assert lo == pytest.approx(max(qlo, 0.0), abs=1e-12) and hi == pytest.approx(min(qhi, 1.0), abs=1e-12)
    stats = pytest.importorskip("scipy.stats")
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert lo == pytest.approx(ci.low, abs=1e-9) and hi == pytest.approx(ci.high, abs=1e-9)
    if k == 0:
        assert lo == pytest.approx(0.0, abs=1e-12) and hi > 0.1  # the interval does not collapse at the boundary (Wald's would)
    if k == n:
        assert hi == pytest.approx(1.0, abs=1e-12) and lo < 0.9


def test_wilson_vectorised_and_empty():
    from ssbench.report.stats import wilson

    lo, hi = wilson(np.array([0, 3, 10]), np.array([10, 10, 10]))
    for i, k in enumerate((0, 3, 10)):
        assert (lo[i], hi[i]) == pytest.approx(wilson(k, 10))
    assert all(math.isnan(v) for v in wilson(0, 0))


# -- identity: never one row from two attack runs --------------------------------------------------

def test_two_runs_with_different_loss_are_two_rows_never_merged(store):
    from ssbench.report import display_frame
    from ssbench.report.tables import ReportFilter, robust_table

    rng = np.random.default_rng(1)
    tgt = make_target(store, "usf", 0)
    n = 40
    clean = rng.random(n) < 0.9
    margin = curve(rng, n, clean, 0.05)
    ce = curve(rng, n, clean, 0.3)
    r_margin = make_attack(store, tgt, "usf", [("pgd", "feedback", margin, {"loss": "margin", "steps": 40})], n=n, tag="m")
    r_ce = make_attack(store, tgt, "usf", [("pgd", "feedback", ce, {"loss": "ce", "steps": 40})], n=n, tag="c")
    t = robust_table(store, ReportFilter(recipe="lb"))
    pgd = t[(t["attack"] == "pgd") & (t["mode"] == "feedback")]
    assert sorted(set(pgd["setting"])) == ["loss=ce", "loss=margin"]  # two rows per eps, named by what differs
    for setting, data, run in (("loss=margin", margin, r_margin), ("loss=ce", ce, r_ce)):
        rows = pgd[pgd["setting"] == setting].set_index("epsilon")
        for e in EPS:
            assert rows.loc[e, "robust_mean"] == pytest.approx(frac(data[e]))
            assert rows.loc[e, "runs"] == str(run) and rows.loc[e, "n"] == 1 and rows.loc[e, "examples"] == n
    shown = display_frame("robust", t)
    assert {"setting", "runs"} <= set(shown.columns)
    assert set(shown[shown["mode"] == "feedback"]["setting"]) == {"loss=ce", "loss=margin"}
    # a rerun with the margin identity replaces the older margin run (all its points), not the ce one
    again = curve(rng, n, clean, 0.01)
    r_again = make_attack(store, tgt, "usf", [("pgd", "feedback", again, {"loss": "margin", "steps": 40})], n=n, tag="m2")
    t = robust_table(store, ReportFilter(recipe="lb"))
    rows = t[(t["attack"] == "pgd") & (t["mode"] == "feedback")].set_index(["setting", "epsilon"])
    assert rows.loc[("loss=margin", 0.1), "robust_mean"] == pytest.approx(frac(again[0.1]))
    assert rows.loc[("loss=margin", 0.1), "runs"] == str(r_again)
    assert rows.loc[("loss=ce", 0.1), "runs"] == str(r_ce)


def test_n_and_grid_differences_are_named_and_a_single_setting_is_not(store):
    from ssbench.report.tables import ReportFilter, robust_table

    rng = np.random.default_rng(2)
    tgt = make_target(store, "fa", 0)
    c40, c100 = rng.random(40) < 0.9, rng.random(100) < 0.9
    make_attack(store, tgt, "fa", [("pgd", "exact", curve(rng, 40, c40, 0.1), {"loss": "ce"})], n=40, tag="a")
    wide = {e: v for e, v in curve(rng, 100, c100, 0.1).items()}
    wide[0.5] = np.zeros(100, dtype=bool)
    make_attack(store, tgt, "fa", [("pgd", "exact", wide, {"loss": "ce"}),
                                   ("fgsm", "exact", curve(rng, 100, c100, 0.1), {"loss": "ce"})], n=100, tag="b")
    t = robust_table(store, ReportFilter(recipe="lb"))
    settings = set(t[t["attack"] == "pgd"]["setting"])
    assert settings == {"n=40, eps=0..0.2 (3)", "n=100, eps=0..0.5 (4)"}
    assert set(t[t["attack"] == "fgsm"]["setting"]) == {""}  # run one way only: nothing to name


def test_hashing_attack_rows_keep_identities_apart(store):
    from ssbench.report.tables import ReportFilter, hashing_attack_table

    with store.run("train", config=Cfg(tag="h"), seed=0, rule="fa", model="resnet20", dataset="cifar10",
                   task="hashing", recipe="lb") as rec:
        rec.log_evaluation("map@1000", 0.6, split="test")
    for steps, value in ((10, 0.5), (20, 0.3)):
        with store.run("attack", config=Cfg(tag=f"h{steps}"), parent_id=rec.run_id, rule="fa", model="resnet20",
                       dataset="cifar10", task="hashing", recipe="lb") as atk:
            atk.add_sweep([SweepPoint("hag", "exact", e, 50, value - e, metric="map@1000", params={"steps": steps})
                           for e in (0.0, 0.1)])
    a = hashing_attack_table(store, ReportFilter(recipe="lb"))
    rows = a[a["mode"] == "exact"].set_index(["setting", "epsilon"])
    assert rows.loc[("steps=10", 0.1), "robust_mean"] == pytest.approx(0.4)
    assert rows.loc[("steps=20", 0.1), "robust_mean"] == pytest.approx(0.2)
    assert a["robust_lo"].isna().all()  # mAP is not a proportion of examples: no Wilson interval


# -- worst case over everything --------------------------------------------------------------------

def test_worst_of_all_is_the_and_over_every_attack_and_mode(store):
    from ssbench.report import display_frame
    from ssbench.report.tables import ReportFilter, robust_table

    rng = np.random.default_rng(3)
    n = 60
    expected = {}
    for seed in (0, 1):
        tgt = make_target(store, "fa", seed)
        clean = rng.random(n) < 0.85
        fb, ex = curve(rng, n, clean, 0.5), curve(rng, n, clean, 0.12)
        sq, tr = curve(rng, n, clean, 0.2), curve(rng, n, clean, 0.15)
        make_attack(store, tgt, "fa", [("pgd", "feedback", fb, {"loss": "ce"}), ("pgd", "exact", ex, {"loss": "ce"}),
                                       ("fgsm", "transfer", tr, {"loss": "ce"})], n=n, seed=seed, tag="w")
        make_attack(store, tgt, "fa", [("square", "query", sq, {"queries": 5000})], n=n, seed=seed, tag="s")
        expected[seed] = {e: fb[e] & ex[e] & sq[e] & tr[e] for e in EPS}
    t = robust_table(store, ReportFilter(recipe="lb"))
    rows = t[(t["attack"] == "worst of all") & (t["mode"] == "all")].set_index("epsilon")
    for e in EPS:
        per_seed = [frac(expected[s][e]) for s in (0, 1)]
        assert rows.loc[e, "robust_mean"] == pytest.approx(np.mean(per_seed))
        assert rows.loc[e, "robust_std"] == pytest.approx(np.std(per_seed, ddof=1))
        k = sum(int(expected[s][e].sum()) for s in (0, 1))
        lo, hi = wilson_by_quadratic(k, 2 * n)
        assert rows.loc[e, "robust_lo"] == pytest.approx(max(lo, 0)) and rows.loc[e, "robust_hi"] == pytest.approx(min(hi, 1))
        assert rows.loc[e, "examples"] == 2 * n
        # the per-attack worst over modes stays, and is never below the worst of all
        pgd_worst = t[(t["attack"] == "pgd") & (t["mode"] == "worst") & (t["epsilon"] == e)]["robust_mean"].iloc[0]
        assert pgd_worst >= rows.loc[e, "robust_mean"] - 1e-12
    assert rows.loc[0.2, "robust_mean"] < t[(t["attack"] == "pgd") & (t["mode"] == "worst") & (t["epsilon"] == 0.2)]["robust_mean"].iloc[0]
    shown = display_frame("robust", t)
    last = shown.iloc[-1]
    assert last["attack"] == "worst of all" and last["mode"] == "all"  # the headline row closes the table
    m, s, lo, hi = (rows.loc[0.1, c] for c in ("robust_mean", "robust_std", "robust_lo", "robust_hi"))
    assert last["0.1"] == f"{m:.3f} ± {s:.3f} [{lo:.3f}, {hi:.3f}]"


def test_worst_of_all_says_na_when_examples_differ(store, tmp_path):
    from ssbench.report import build_report
    from ssbench.report.sweeps import NA_EXAMPLES
    from ssbench.report.tables import ReportFilter, robust_table

    rng = np.random.default_rng(4)
    n = 30
    tgt = make_target(store, "bp", 0)
    clean = rng.random(n) < 0.9
    make_attack(store, tgt, "bp", [("pgd", "exact", curve(rng, n, clean, 0.1), {"loss": "ce"})], n=n, seed=0, tag="x")
    # another attack seed is another permutation: no example in common with the first run
    make_attack(store, tgt, "bp", [("square", "query", curve(rng, n, clean, 0.2), {"queries": 10})], n=n, seed=7,
                tag="y", indices=list(range(1000, 1000 + n)))
    t = robust_table(store, ReportFilter(recipe="lb"))
    rows = t[t["attack"] == "worst of all"]
    assert len(rows) == len(EPS) and rows["robust_mean"].isna().all() and set(rows["note"]) == {NA_EXAMPLES}
    assert rows["robust_lo"].isna().all()
    build_report(store, recipe="lb", tables="robust", formats=("markdown",), out=tmp_path, plots=False)
    md = (tmp_path / "robust.md").read_text()
    line = next(ln for ln in md.splitlines() if ln.startswith("| worst of all"))
    assert line.count(NA_EXAMPLES) == len(EPS)


# -- leaderboard ----------------------------------------------------------------------------------

def autoattack_sweeps(rng, n, clean, modes=("exact",)):
    """The members of one autoattack run, cumulative as the ensemble stores them: each member's bits are
    AND(clean, its own survival, every member before it)."""
    members = [("apgd-ce", m) for m in modes] + [("apgd-t", m) for m in modes] + [("fab-t", m) for m in modes] + [("square", "query")]
    standing = {e: clean.copy() for e in EPS}
    sweeps, chain = [], []
    for attack, mode in members:
        own = curve(rng, n, clean, 0.3)
        standing = {e: standing[e] & own[e] for e in EPS}
        sweeps.append((attack, mode, dict(standing), {"ensemble": "autoattack", "chain": list(chain), "steps": 100}))
        chain.append(f"{attack}/{mode}")
    return sweeps, standing


def build_leaderboard_store(store):
    """bp: one seed; fa: two seeds. Per target: an exact AutoAttack run, an older feedback-mode AutoAttack
    run (not exact: must not count), PGD feedback with ce and margin, transfer fgsm + pgd, black-box square
    + hsj, all on the same examples. Returns the per-target arrays to compute the columns from."""
    rng = np.random.default_rng(5)
    n = 50
    truth = {}
    for rule, seeds in (("bp", (0,)), ("fa", (0, 1))):
        for seed in seeds:
            tgt = make_target(store, rule, seed)
            clean = rng.random(n) < 0.88
            fb_sweeps, _ = autoattack_sweeps(rng, n, clean, modes=("feedback",))
            make_attack(store, tgt, rule, fb_sweeps, n=n, seed=seed, clean=clean, tag="aa-fb")
            aa_sweeps, aa = autoattack_sweeps(rng, n, clean)
            aa_run = make_attack(store, tgt, rule, aa_sweeps, n=n, seed=seed, clean=clean, tag="aa")
            pgd_ce, pgd_margin = curve(rng, n, clean, 0.4), curve(rng, n, clean, 0.1)
            fgsm_tr, pgd_tr = curve(rng, n, clean, 0.2), curve(rng, n, clean, 0.15)
            sq, hsj = curve(rng, n, clean, 0.25), curve(rng, n, clean, 0.3)
            sanity = [SanityCheck("gradient_consistency", False, 0.1, "obfuscated", mode="feedback")] if rule == "fa" else []
            make_attack(store, tgt, rule, [("pgd", "feedback", pgd_ce, {"loss": "ce"}), ("pgd", "feedback", pgd_margin, {"loss": "margin"}),
                                           ("fgsm", "transfer", fgsm_tr, {"loss": "ce"}), ("pgd", "transfer", pgd_tr, {"loss": "ce"})],
                        n=n, seed=seed, clean=clean, tag="w", sanity=sanity)
            make_attack(store, tgt, rule, [("square", "query", sq, {"queries": 5000}), ("hsj", "query", hsj, {"steps": 20})],
                        n=n, seed=seed, clean=clean, tag="b")
            everything = [aa]
            for c in (fb_sweeps, aa_sweeps):
                everything += [s[2] for s in c]
            everything += [pgd_ce, pgd_margin, fgsm_tr, pgd_tr, sq, hsj]
            truth[(rule, seed)] = {
                "clean": {e: clean for e in EPS}, "autoattack": aa, "papers": pgd_ce,
                "transfer": {e: fgsm_tr[e] & pgd_tr[e] for e in EPS}, "blackbox": {e: sq[e] & hsj[e] for e in EPS},
                "worst": {e: np.logical_and.reduce([x[e] for x in everything]) for e in EPS}, "aa_run": aa_run,
            }
    return truth, n


def test_leaderboard_columns_from_the_bitstrings(store):
    from ssbench.report.leaderboard import COLUMNS
    from ssbench.report import build_tables, display_frame
    from ssbench.report.tables import ReportFilter

    truth, n = build_leaderboard_store(store)
    lb = build_tables(store, ReportFilter(recipe="lb"), "leaderboard")["leaderboard"]
    assert list(lb["rule"]) == ["bp", "fa"] and (lb["epsilon"] == 0.2).all()  # default: the largest ε every row has
    for rule, seeds in (("bp", (0,)), ("fa", (0, 1))):
        row = lb[lb["rule"] == rule].iloc[0]
        assert row["n"] == len(seeds) and row["seeds"] == ",".join(map(str, seeds))
        for c in COLUMNS:
            per = [frac(truth[(rule, s)][c][0.2]) for s in seeds]
            assert row[f"{c}_mean"] == pytest.approx(np.mean(per)), c
            if len(seeds) > 1:
                assert row[f"{c}_std"] == pytest.approx(np.std(per, ddof=1)), c
            else:
                assert math.isnan(row[f"{c}_std"])
            k = sum(int(truth[(rule, s)][c][0.2].sum()) for s in seeds)
            lo, hi = wilson_by_quadratic(k, n * len(seeds))
            assert row[f"{c}_lo"] == pytest.approx(max(lo, 0)) and row[f"{c}_hi"] == pytest.approx(min(hi, 1)), c
        # fa: the failed feedback-mode consistency check flags the papers' column, not the worst case
        assert row["flags"] == (2 if rule == "fa" else 0)
        assert row["papers_failed"] == row["flags"] and row["worst_failed"] == 0
    at = build_tables(store, ReportFilter(recipe="lb"), "leaderboard", eps=0.1)["leaderboard"]
    fa = at[at["rule"] == "fa"].iloc[0]
    assert fa["epsilon"] == 0.1
    assert fa["autoattack_mean"] == pytest.approx(np.mean([frac(truth[("fa", s)]["autoattack"][0.1]) for s in (0, 1)]))
    shown = display_frame("leaderboard", lb)
    assert list(shown.columns[:4]) == ["model", "dataset", "rule", "ε"]  # a leaderboard names the model and data
    assert {"clean", "Auto Attack", "papers", "transfer", "black box", "worst", "flags"} <= set(shown.columns)
    fa_shown = shown[shown["rule"] == "fa"].iloc[0]
    assert fa_shown["papers"].endswith("!") and not fa_shown["worst"].endswith("!")
    m, s, lo, hi = (lb[lb["rule"] == "fa"].iloc[0][f"worst_{x}"] for x in ("mean", "std", "lo", "hi"))
    assert fa_shown["worst"] == f"{m:.3f} ± {s:.3f} [{lo:.3f}, {hi:.3f}]"


def test_leaderboard_without_autoattack_shows_a_dash_and_cli_eps(store, tmp_path):
    rng = np.random.default_rng(6)
    n = 20
    tgt = make_target(store, "bp", 0)
    clean = rng.random(n) < 0.9
    pgd = curve(rng, n, clean, 0.1)
    make_attack(store, tgt, "bp", [("pgd", "feedback", pgd, {"loss": "ce"}), ("pgd", "exact", curve(rng, n, clean, 0.1), {"loss": "ce"})],
                n=n, clean=clean, tag="p")
    store.close()
    from ssbench.cli import report
    from ssbench.cli.app import SsbenchGroup
    import typer

    app = typer.Typer(cls=SsbenchGroup, add_completion=False)

    @app.callback()
    def main() -> None:
        """test app"""

    report.register(app)
    db = f"sqlite:///{tmp_path / 'r.db'}"
    r = CliRunner().invoke(app, ["report", "--db", db, "--table", "leaderboard", "--format", "csv", "--eps", "0.1"])
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert len(rows) == 1 and float(rows[0]["epsilon"]) == 0.1
    assert float(rows[0]["papers_mean"]) == pytest.approx(frac(pgd[0.1]))
    assert rows[0]["autoattack_mean"] == ""  # no autoattack run
    r = CliRunner().invoke(app, ["report", "--db", db, "--table", "leaderboard", "--format", "markdown", "--eps", "1/10"])
    assert r.exit_code == 0, r.output
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("| lenet"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert "-" in cells  # AutoAttack not run
    r = CliRunner().invoke(app, ["report", "--db", db, "--table", "leaderboard", "--eps", "x"])
    assert r.exit_code == 2 and "--eps" in r.output


def test_worst_case_on_the_examples_every_run_attacked() -> None:
    """A 4-example run and a 2-example run whose indices are its first two (the same seeded
    permutation, smaller n): the worst case is formed on those two, in the first run's order."""
    from ssbench.report.sweeps import NA_EXAMPLES, combine, examples_of

    big, small = examples_of(4, 0, [7, 3, 9, 1]), examples_of(2, 0, [7, 3])
    robust, bits, how = combine(["1101", "01"], [0.75, 0.5], [big, small], "accuracy")
    assert bits == "01" and robust == 0.5 and "shared" in how  # 7: 1 and 0 -> 0; 3: 1 and 1 -> 1
    robust, bits, how = combine(["1101", "11"], [0.75, 1.0], [big, examples_of(2, 0, [9, 1])], "accuracy")
    assert bits == "01" and robust == 0.5  # 9: 0, 1: 1, in the big run's order
    # no index in common, or no stored indices: cannot be formed
    assert combine(["1101", "11"], [0.75, 1.0], [big, examples_of(2, 0, [5, 6])], "accuracy")[2] == NA_EXAMPLES
    assert combine(["1101", "11"], [0.75, 1.0], [examples_of(4, 0, None), examples_of(2, 0, None)], "accuracy")[2] == NA_EXAMPLES
