"""The report for papers and for programs: every table of a populated store as LaTeX, \\input into an
article and compiled with pdflatex (no error, no overfull box); and `--format json`, parsed and
checked against the numbers written to the store."""
from __future__ import annotations

import json
import math
import re
import shutil
import statistics
import subprocess

import numpy as np
import pytest
from typer.testing import CliRunner

from ssbench.store import SanityCheck, open_store

# the stores tests/test_report.py and tests/test_report_robust.py build (tests/ is on sys.path)
from test_report import (SEEDS, _app, acc_of, corr_acc, hash_map, hess_trace, populate, populate_analysis, populate_hashing,
                         populate_variants)
from test_report_robust import build_leaderboard_store

# free text with every character LaTeX treats specially, and Unicode a default pdflatex cannot print
TRICKY = r"50% of x_1 & y: {a} ~ ^ $5 #3 \ |B|/|W| <1> \"q\" [lo, hi] -- ± θ ε → 😀"
OVERFULL_PT = 2.0  # an overfull box wider than this fails the test (pdflatex reports down to 0.1 pt)


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    """A store with a run of every table kind: the demo study (clean, robust, alignment, sanity), hashing,
    variants, Hessian and corruption analyses, a leaderboard study with AutoAttack, a trajectory and
    a trainability analysis (their evaluations as the analysis jobs store them), a sanity check
    whose detail holds every LaTeX special character."""
    from ssbench.analysis.specs import TrajectorySpec
    from ssbench.analysis.trainability import METRIC, NONFINITE, TrainabilitySpec

    path = tmp_path_factory.mktemp("latex") / "results.db"
    store = open_store(f"sqlite:///{path}")
    info = populate(store)
    populate_hashing(store)
    populate_variants(store)
    populate_analysis(store, info["finetune"])
    build_leaderboard_store(store)
    target = info["finetune"][("fa", 0)]
    with store.run("analysis", config=TrajectorySpec(target=str(target)), seed=0, parent_id=target, rule="fa", model="lenet",
                   dataset="fashion-mnist", task="classification") as rec:
        for epoch in (0, 2, 5):
            p = {"epoch": epoch, "n": 64}
            rec.log_evaluation("trajectory_trace", 100.0 - 10 * epoch, split="train", params=p)
            rec.log_evaluation("trajectory_top_eig", 12.0 - epoch, split="train", params={**p, "method": "lanczos"})
            rec.log_evaluation("trajectory_loss", 2.0 / (1 + epoch), split="train", params=p)
    spec = TrainabilitySpec(rule="fa", weight_vars=(1.0, 2.0), feedback_vars=(0.5, 2.0))
    with store.run("analysis", config=spec, seed=0, rule="fa", model="mlp", dataset="fashion-mnist",
                   task="classification") as rec:
        for k, (w, b) in enumerate([(1.0, 0.5), (2.0, 0.5), (1.0, 2.0), (2.0, 2.0)]):
            bad = (w, b) == (2.0, 2.0)
            rec.log_evaluation(METRIC, 0.1 if bad else 0.6 + 0.1 * k, split="train",
                               params={"weight_var": w, "feedback_var": b, "cell_run": 1000 + k, "diverged": NONFINITE if bad else None})
    with store.run("attack", config=info_cfg(), seed=0, parent_id=target, rule="fa", model="lenet", dataset="fashion-mnist",
                   recipe="demo") as atk:
        atk.add_sanity([SanityCheck("free_text", False, 0.5, TRICKY, attack="pgd", mode="exact")])
    store.close()
    return f"sqlite:///{path}", info


def info_cfg():
    from test_report import Cfg

    return Cfg(stage="tricky")


# -- LaTeX --------------------------------------------------------------------------------------

DOCUMENT = r"""\documentclass{article}
\usepackage{booktabs,graphicx,array}
\begin{document}
%s
\end{document}
"""


def _compile(folder, body: str) -> str:
    (folder / "paper.tex").write_text(DOCUMENT % body, encoding="utf-8")
    for _ in range(2):  # the second pass resolves the "As Table N" references
        r = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "paper.tex"], cwd=folder,
                           capture_output=True, text=True, timeout=120)
    log = (folder / "paper.log").read_text(encoding="latin-1")
    assert r.returncode == 0, log[-3000:]
    return log


def _problems(log: str) -> list[str]:
    """LaTeX errors, overfull boxes wider than OVERFULL_PT, floats taller than the page, missing glyphs."""
    out = [ln for ln in log.splitlines() if ln.startswith("!")]
    out += [m[0] for m in re.finditer(r"Overfull \\[hv]box \(([\d.]+)pt too \w+\)[^\n]*", log) if float(m[1]) > OVERFULL_PT]
    out += re.findall(r"Float too large[^\n]*", log)
    out += re.findall(r"Missing character[^\n]*", log)
    out += re.findall(r"Reference `[^']*' on page \d+ undefined[^\n]*", log)
    return out


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex is not installed (make paper-tools installs it)")
def test_every_table_compiles_in_an_article_without_overfull_boxes(db, tmp_path):
    from ssbench.report import build_report
    from ssbench.report.registry import REGISTRY

    store = open_store(db[0])
    report = build_report(store, formats=("latex",), out=tmp_path, plots=False)
    written = {p.stem: p for p in report.files}
    assert set(written) == set(REGISTRY)  # every table of the registry has data here, and was written
    body = "\n\\clearpage\n".join(rf"\input{{{name}.tex}}" for name in written)
    log = _compile(tmp_path, body)
    assert _problems(log) == []
    assert "Overfull" not in log or all(float(x) <= OVERFULL_PT for x in re.findall(r"Overfull \\hbox \(([\d.]+)pt", log))

    for name, path in written.items():
        tex = path.read_text()
        assert tex.count(r"\begin{table}") == tex.count(r"\caption") >= 1 and rf"\label{{tab:{name}}}" in tex
        assert r"\toprule" in tex and r"\bottomrule" in tex
    clean = written["clean"].read_text()
    # accuracies in percent with one decimal: bp's fine-tuned mean over seeds, computed here
    bp = 100 * statistics.fmean(acc_of("bp", s) for s in SEEDS)
    bp_sd = 100 * statistics.stdev(acc_of("bp", s) for s in SEEDS)
    assert f"{bp:.1f} $\\pm$ {bp_sd:.1f}" in clean and r"Accuracies in \%" in clean
    robust = written["robust"].read_text()
    assert re.search(r"\\ssbenchcell\{[\d.]+ \$\\pm\$ [\d.]+\\rlap\{\$\^\\dagger\$\}\}\{\{\[\}[\d.]+, [\d.]+\{\]\}\}", robust)
    assert r"$^\dagger$ = rests on failed sanity checks" in robust  # the mark, explained under the table
    assert "runs" not in re.findall(r"\\toprule\n(.*)\\\\", robust)[0]  # run lists stay in the CSV
    # split per model x dataset x attack: one float each, labelled; the rest refer to the first
    assert robust.count(r"\begin{table}") >= 3 and r"\label{tab:robust:lenet-fashion-mnist-pgd}" in robust
    assert r"As Table~\ref{tab:robust}" in robust
    assert "- = not run" in written["leaderboard"].read_text()
    assert "x = a seed's loss turned non-finite" in written["trainability"].read_text()
    sanity = written["sanity"].read_text()
    assert r">{\raggedright\arraybackslash}p{14em}" in sanity  # the free-text detail wraps
    assert r"\textbar{}B\textbar{}/\textbar{}W\textbar{}" in sanity and r"\texttt{U+1F600}" in sanity
    assert r"\textbar{}B\textbar{}/\textbar{}W\textbar{}" in written["alignment"].read_text()


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex is not installed (make paper-tools installs it)")
def test_a_table_too_wide_for_the_page_is_fitted_and_every_special_character_compiles(tmp_path):
    import pandas as pd

    from ssbench.report.latex import latex_escape, to_latex

    wide = pd.DataFrame({f"col {k}": [f"{0.1 * k:.3f} ± 0.010 [0.050, 0.150]!"] * 3 for k in range(14)})
    wide.insert(0, TRICKY, [TRICKY[:20], "a", "b"])
    (tmp_path / "wide.tex").write_text(to_latex(wide, f"A wide table: {TRICKY}"), encoding="utf-8")
    text = pd.DataFrame({"name": ["a"], "detail": [TRICKY * 4]})
    (tmp_path / "text.tex").write_text(to_latex(text, "Free text"), encoding="utf-8")
    log = _compile(tmp_path, r"\input{wide.tex}\input{text.tex}\input{wide.tex}")  # twice: the macros are provided once
    assert _problems(log) == []
    # the check itself: a bare tabular as wide as the old writer's is caught
    bare_tabular = r"\begin{tabular}{l}" + "x" * 150 + r"\end{tabular}"
    assert any(p.startswith("Overfull") for p in _problems(_compile(tmp_path, bare_tabular)))
    # every special character is escaped: nothing of TRICKY reaches LaTeX as markup
    escaped = latex_escape(TRICKY)
    bare = re.sub(r"\\texttt\{[^{}]*\}|\\[a-zA-Z]+(\{\})?|\\[&%$#_{}]|\$\\[a-z]+\$|\{[\[\]]\}|-\{\}-", "", escaped)
    assert not set(bare) & set("&%$#_{}~^\\|<>\"[]"), bare


# -- JSON ---------------------------------------------------------------------------------------

def test_json_parses_and_round_trips_the_stored_values(db):
    from ssbench.report.registry import REGISTRY, build_tables
    from ssbench.report.tables import ReportFilter

    r = CliRunner().invoke(_app(), ["report", "--db", db[0], "--format", "json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)  # stdout is the document alone: the sanity message went to stderr
    assert "sanity check(s) failed" in r.stderr
    assert list(doc) == list(REGISTRY)  # every table, in registry order
    built = build_tables(open_store(db[0]), ReportFilter())
    for name, rows in doc.items():
        long = built[name]
        assert len(rows) == len(long) and all(list(row) == list(long.columns) for row in rows)  # the long frame's columns
        assert all(re.fullmatch(r"[a-z][a-z0-9_]*", k) for k in rows[0])  # stable snake_case keys
        for row, (_, want) in zip(rows, long.iterrows()):
            for key, got in row.items():
                v = want[key]
                if key in ("runs", "seeds"):
                    assert got == [int(x) for x in str(v).split(",") if x]
                elif isinstance(v, (float, np.floating)) and math.isnan(v):
                    assert got is None  # NaN is null, never the invalid literal NaN
                elif isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_)):
                    assert isinstance(got, (int, float)) and got == float(v)  # exactly: JSON floats round-trip
    # against the numbers written to the store, computed independently
    usf = [row for row in doc["clean"] if row["rule"] == "usf" and row["kind"] == "finetune"]
    assert len(usf) == 1 and usf[0]["accuracy_mean"] == pytest.approx(statistics.fmean(acc_of("usf", s) for s in SEEDS), abs=1e-12)
    assert usf[0]["accuracy_std"] == pytest.approx(statistics.stdev(acc_of("usf", s) for s in SEEDS), abs=1e-12)
    assert usf[0]["n"] == 3 and usf[0]["bits"] is None and usf[0]["seeds"] == [0, 1, 2]
    fa = next(row for row in doc["hessian"] if row["rule"] == "fa")
    assert fa["trace_mean"] == pytest.approx(np.mean([hess_trace("fa", s) for s in SEEDS]))
    h32 = next(row for row in doc["hashing"] if row["bits"] == 32 and row["metric"] == "map@1000")
    assert h32["value_mean"] == pytest.approx(np.mean([hash_map(32, s) for s in (0, 1)]))
    fog = next(row for row in doc["corruptions"] if row["rule"] == "bp" and row["corruption"] == "fog" and row["severity"] == 2)
    assert fog["accuracy_mean"] == pytest.approx(np.mean([corr_acc("bp", s, "fog", 2) for s in SEEDS]))
    tricky = next(row for row in doc["sanity"] if row["check"] == "free_text")
    assert tricky["detail"] == TRICKY and tricky["value"] == 0.5 and isinstance(tricky["run"], int)
    robust = doc["robust"]
    assert all(isinstance(row["runs"], list) and all(isinstance(i, int) for i in row["runs"]) for row in robust)
    exact = [row for row in robust if row["attack"] == "pgd" and row["mode"] == "exact" and row["rule"] == "bp"
             and row["epsilon"] == 0.1 and row["model"] == "lenet"]
    assert len(exact) == 1 and 0 <= exact[0]["robust_lo"] <= exact[0]["robust_mean"] <= exact[0]["robust_hi"] <= 1
    nonfinite = next(row for row in doc["trainability"] if row["weight_var"] == 2.0 and row["feedback_var"] == 2.0)
    assert nonfinite["nonfinite"] == 1 and nonfinite["accuracy_mean"] == 0.1


def test_json_of_one_table_and_json_files(db, tmp_path):
    r = CliRunner().invoke(_app(), ["report", "--db", db[0], "--table", "hashing", "--format", "json", "--rule", "fa"])
    assert r.exit_code == 0, r.output
    assert set(json.loads(r.stdout)) == {"hashing", "hashing_attacks"}  # built together, as the terminal shows them
    r = CliRunner().invoke(_app(), ["report", "--db", db[0], "--table", "clean", "--format", "json", "--recipe", "nosuch"])
    assert r.exit_code == 0 and json.loads(r.stdout) == {"clean": []}  # a named table is a stable key, even empty
    flag = CliRunner().invoke(_app(), ["report", "--db", db[0], "--table", "hashing", "--json", "--rule", "fa"])
    fmt = CliRunner().invoke(_app(), ["report", "--db", db[0], "--table", "hashing", "--format", "json", "--rule", "fa"])
    assert flag.exit_code == 0 and json.loads(flag.stdout) == json.loads(fmt.stdout)  # --json = --format json
    both = CliRunner().invoke(_app(), ["report", "--db", db[0], "--json", "--format", "csv"])
    assert both.exit_code == 2 and "--json is --format json; it cannot go with --format csv" in both.output
    out = tmp_path / "out"
    r = CliRunner().invoke(_app(), ["report", "--db", db[0], "--recipe", "demo", "--format", "json", "--out", str(out), "--no-plots"])
    assert r.exit_code == 0, r.output
    rows = json.loads((out / "clean.json").read_text())
    assert isinstance(rows, list) and {row["rule"] for row in rows if row["kind"] == "finetune"} == {"bp", "fa", "usf"}
    r = CliRunner().invoke(_app(), ["report", "--db", db[0], "--table", "hashing_attacks"])
    assert r.exit_code == 2 and "'hashing_attacks' is not one of 'all', 'clean'" in r.output
