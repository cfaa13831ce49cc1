"""The README's main job, end to end through the CLI at reduced size: the quickstart recipe on
Fashion-MNIST (pretrain 0-4 -> finetune 5-9 with five rules -> FGSM/PGD feedback & exact -> report).
Checks that the report's numbers are the database's and that the plots hold the expected series."""
from __future__ import annotations

import csv
import struct
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ssbench.cli import app
from ssbench.report.plots import plot_robustness
from ssbench.report.tables import ReportFilter, robust_table
from ssbench.store import open_store

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(), reason="apt-get install dataset-fashion-mnist")


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    tmp = tmp_path_factory.mktemp("qs")
    url = f"sqlite:///{tmp / 'results.db'}"
    out = tmp / "report"
    result = CliRunner(env={"COLUMNS": "200"}).invoke(app, [
        "run", str(REPO / "recipes" / "quickstart.yaml"), "--epochs", "1", "--train-limit", "1500",
        "--test-limit", "400", "--n", "40", "--out", str(out), "--db", url, "--quiet",
    ])
    assert result.exit_code == 0, result.output
    return out, url


def test_runs_are_all_there(quickstart: tuple[Path, str]) -> None:
    _, url = quickstart
    runs = open_store(url).list_runs()
    assert [r.kind for r in runs].count("pretrain") == 1
    assert sorted(r.rule for r in runs if r.kind == "finetune") == ["bp", "brsf", "fa", "frsf", "usf"]
    attacks = [r for r in runs if r.kind == "attack"]
    assert len(attacks) == 10  # per fine-tune: FGSM/PGD in both modes, then the AutoAttack headline
    headline = [r for r in attacks if r.config["suite"] == "autoattack"]
    assert sorted(r.rule for r in headline) == sorted(RULES) and all(r.config["modes"] == ["exact"] for r in headline)
    assert all(r.status == "finished" for r in runs)


def test_csv_tables_equal_the_database(quickstart: tuple[Path, str]) -> None:
    out, url = quickstart
    store = open_store(url)
    with open(out / "robust.csv") as fh:
        rows = list(csv.DictReader(fh))
    sweeps = store.frame_sweeps()
    assert len(sweeps) > 0
    by_key = {(r.rule, r.attack, r.mode, round(r.epsilon, 6)): r.robust for r in sweeps.itertuples()}
    seen = 0
    for row in rows:
        key = (row["rule"], row["attack"], row["mode"], round(float(row["epsilon"]), 6))
        if row["mode"] in ("worst", "all"):  # per-example worst cases, not stored points
            continue
        assert float(row["robust_mean"]) == pytest.approx(by_key[key], abs=1e-12)
        seen += 1
    assert seen == len(sweeps)  # every stored point is in the table, once
    with open(out / "clean.csv") as fh:
        clean = {(r["kind"], r["rule"]): float(r["accuracy_mean"]) for r in csv.DictReader(fh)}
    evals = store.frame_evaluations()
    for run in store.list_runs(kind="finetune"):
        stored = evals[(evals.run_id == run.id) & (evals.metric == "accuracy")].value.item()
        assert clean[("finetune", run.rule)] == pytest.approx(stored, abs=1e-12)
    md = (out / "clean.md").read_text()
    assert "usf" in md and "frsf" in md


RULES = ("bp", "usf", "frsf", "brsf", "fa")


def _png_size(path: Path) -> tuple[int, int]:
    """Width and height from the PNG's IHDR chunk (the first chunk, right after the signature)."""
    data = path.read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_written_plots_hold_every_rule_and_attack(quickstart: tuple[Path, str]) -> None:
    out, url = quickstart
    svgs = sorted(out.glob("robust_*.svg"))
    assert len(svgs) == 1, list(out.iterdir())  # one model x dataset: one robustness figure
    svg = svgs[0]
    root = ET.parse(svg).getroot()
    texts = {"".join(t.itertext()).strip() for t in root.iter("{http://www.w3.org/2000/svg}text")}
    # svg.fonttype none: labels are <text>, editable in a paper, not glyph paths
    assert not any(el.get("id", "").startswith("DejaVuSans-") for el in root.iter())
    assert set(RULES) <= texts  # every rule's legend entry
    assert {"fgsm", "pgd"} <= texts  # every attack's panel title
    assert {"exact gradient", "feedback (rule) gradient", "worst case over modes"} <= texts
    # the figure's title names the fine-tuned runs' variant in words (report/words.py)
    assert "Robust accuracy under attack: LeNet, Fashion-MNIST classes 5-9, 1,500 training images" in texts
    assert any(t.startswith("chance level") for t in texts)
    # the PNG is the same figure at 200 dpi: SVG points / 72 * 200 pixels, and big enough to print
    w_pt, h_pt = (float(root.get(k).removesuffix("pt")) for k in ("width", "height"))
    w_px, h_px = _png_size(svg.with_suffix(".png"))
    # (within 1%: each format is cropped to its own tight bounding box, and the PNG and SVG renderers
    # measure text a few pixels apart)
    assert abs(w_px - w_pt / 72 * 200) <= 0.01 * w_px and abs(h_px - h_pt / 72 * 200) <= 0.01 * h_px
    assert w_px >= 1200 and 0.2 < h_px / w_px < 1.0
    # the figure's lines: every rule, exact solid and feedback dashed, in every attack panel
    fig = plot_robustness(robust_table(open_store(url), ReportFilter(recipe="quickstart")))
    panels = [ax for ax in fig.axes if ax.get_visible() and ax.get_title() in ("fgsm", "pgd")]
    assert sorted(ax.get_title() for ax in panels) == ["fgsm", "pgd"]
    for ax in panels:
        styles = {line.get_label(): line.get_linestyle() for line in ax.get_lines()}
        for rule in RULES:
            assert styles[f"{rule} exact"] == "-" and styles[f"{rule} feedback"] == "--"


def test_the_quickstart_writes_its_html_page(quickstart: tuple[Path, str]) -> None:
    out, _ = quickstart
    page = (out / "report.html").read_text(encoding="utf-8")
    # every robustness figure inlined, the tables and the runs' provenance on the one page
    assert page.count("<svg") >= len(list(out.glob("robust_*.svg"))) >= 1
    for anchor in ('id="table-clean"', 'id="table-robust"', 'id="table-leaderboard"', 'id="runs"'):
        assert anchor in page, anchor
    assert "http://" not in page.replace("http://www.w3.org", "")  # self-contained
