"""Figures without defects (issue 14 item 2): every figure kind build_plots makes from a populated
store keeps every drawn text on the saved canvas (and on the figure itself: the layout fits, the tight
bounding box only trims); robustness plots draw chance level, the worst case as a line and Wilson
interval bands; the alignment figure has no empty panel and no BP panel; score axes are not zoomed to
a sliver; one-epoch runs make no training figure; colour bars tick at round values; titles are in
words; PDF is written beside PNG and SVG.

Figures are drawn on an Agg canvas, not saved (savefig takes seconds per figure here); one is saved."""
from __future__ import annotations

import math
import re
import struct
import xml.etree.ElementTree as ET
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from matplotlib.collections import PolyCollection
from matplotlib.legend import Legend
from matplotlib.lines import Line2D
from matplotlib.text import Text
from matplotlib.transforms import Bbox
from test_report import Cfg, populate_analysis

from ssbench.store import AlignmentRow, SweepPoint, open_store

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

RULES = ("bp", "fa", "dfa", "usf", "frsf", "brsf")  # five non-BP variants: rows of 3 and 2 panels
SEEDS = (0, 1)
CLASSES = (5, 6, 7, 8, 9)  # chance = 1/5
EPS = (0.0, 0.05, 0.1, 0.2)
N = 60
LAYERS = ("conv1", "conv2", "fc1")


def val_acc(rule: str, seed: int, epoch: int) -> float:
    """0.926 .. 0.964: the sliver an auto-zoomed axis blew up to full height."""
    return 0.926 + 0.006 * RULES.index(rule) + 0.004 * seed + 0.003 * epoch


def thresholds(rule: str, seed: int, attack: str, mode: str) -> np.ndarray:
    """Per-example breaking ε: an example stays correct at ε while its threshold exceeds ε."""
    rng = np.random.default_rng([RULES.index(rule), seed, len(attack), len(mode)])
    return rng.exponential(0.3 if mode == "feedback" else 0.08, size=N)


def _train_spec(rule: str, seed: int, **kw):
    from ssbench.specs import DataSpec, ModelSpec, RuleSpec, TrainSpec

    kind = kw.pop("kind", "finetune")
    source = {"source": "1"} if kind == "finetune" else {}
    return TrainSpec(kind=kind, seed=seed, rule=RuleSpec(name=rule), recipe="figs", **source,
                     **{"epochs": 2, "model": ModelSpec(name="lenet"), "data": DataSpec(classes=CLASSES), **kw})


def populate_figures(store) -> dict:  # noqa: ANN001
    from ssbench.analysis.specs import TrajectorySpec
    from ssbench.analysis.trainability import METRIC, NONFINITE, TrainabilitySpec
    from ssbench.specs import DataSpec, ModelSpec

    finetune = {}
    for rule in RULES:
        for seed in SEEDS:
            with store.run("finetune", config=_train_spec(rule, seed), seed=seed, rule=rule, model="lenet",
                           dataset="fashion-mnist", task="classification", recipe="figs") as rec:
                for epoch in (0, 1, 2):
                    rec.log_alignment(epoch, [
                        AlignmentRow(layer, 0.0 if rule == "bp" else 85.0 - 10 * epoch - 5 * k + seed, 1.0,
                                     40.0 - epoch if rule == "fa" and epoch else None)  # gradient angles: fa only
                        for k, layer in enumerate(LAYERS)])
                    if epoch:
                        rec.log_epoch(epoch, "train", {"loss": 0.5 / epoch})
                        rec.log_epoch(epoch, "val", {"accuracy": val_acc(rule, seed, epoch), "loss": 0.6 / epoch})
                rec.log_evaluation("accuracy", val_acc(rule, seed, 2), split="test")
            finetune[(rule, seed)] = rec.run_id
            with store.run("attack", config=Cfg(seed=seed, rule=rule, stage="atk"), seed=0, parent_id=rec.run_id,
                           rule=rule, model="lenet", dataset="fashion-mnist", recipe="figs") as atk:
                for attack in ("fgsm", "pgd"):
                    for mode in ("feedback", "exact"):
                        thr = thresholds(rule, seed, attack, mode)
                        points = []
                        for e in EPS:
                            alive = (thr > e) | (e == 0)
                            points.append(SweepPoint(attack, mode, e, N, float(alive.mean()),
                                                     correct="".join("1" if a else "0" for a in alive),
                                                     params={"norm": "linf"}))
                        atk.add_sweep(points)
    # one-epoch training runs: no training figure (a dot per run is no curve)
    for seed in SEEDS:
        spec = _train_spec("fa", seed, kind="train", epochs=1, model=ModelSpec(name="mlp", hidden=(16,)),
                           data=DataSpec(name="digits"))
        with store.run("train", config=spec, seed=seed, rule="fa", model="mlp", dataset="digits", task="classification",
                       recipe="figs") as rec:
            rec.log_epoch(1, "val", {"accuracy": 0.5, "loss": 1.0})
    populate_analysis(store, {k: v for k, v in finetune.items() if k[0] in ("bp", "fa", "usf")})  # Hessian, corruptions
    ab = np.linspace(-1, 1, 7)
    for rule in ("fa", "usf"):
        for seed in SEEDS:
            target = finetune[(rule, seed)]
            with store.run("analysis", config=TrajectorySpec(target=str(target)), seed=0, parent_id=target, rule=rule,
                           model="lenet", dataset="fashion-mnist", task="classification") as rec:
                for epoch in range(3):
                    p = {"epoch": epoch, "n": 64}
                    rec.log_evaluation("trajectory_trace", 50.0 + 10 * epoch + seed, split="train", params=p)
                    rec.log_evaluation("trajectory_top_eig", 5.0 + epoch, split="train", params=p)
                    rec.log_evaluation("trajectory_loss", 1.0 / (epoch + 1), split="train", params=p)
                rec.log_evaluation("trajectory_pca", 0.9, split="train", params={
                    "coords": [[1.0, 0.5], [0.4, 0.2], [0.0, 0.0]], "explained": [0.7, 0.2], "alphas": ab.tolist(),
                    "betas": ab.tolist(), "grid": (0.3 + np.add.outer(ab ** 2, ab ** 2)).tolist()})
    spec = TrainabilitySpec(rule="fa", model=ModelSpec(name="mlp", hidden=(16,)), data=DataSpec(name="digits"),
                            weight_vars=(1.0, 2.0), feedback_vars=(0.5, 2.0), epochs=1)
    with store.run("analysis", config=spec, seed=0, rule="fa", model="mlp", dataset="digits", task="classification") as rec:
        for w in (1.0, 2.0):
            for b in (0.5, 2.0):
                rec.log_evaluation(METRIC, 0.9 if w == 1 else 0.1, split="train", params={
                    "weight_var": w, "feedback_var": b, "cell_run": 1, "diverged": NONFINITE if w == b == 2 else None})
    return finetune


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    s = open_store(f"sqlite:///{tmp_path_factory.mktemp('figures') / 'results.db'}")
    populate_figures(s)
    yield s
    s.close()


@pytest.fixture(scope="module")
def figures(store):
    """stem -> Figure for everything build_plots makes from the store (save_figure recording, not saving)."""
    from ssbench.report import plots
    from ssbench.report.figures import build_plots
    from ssbench.report.tables import ReportFilter

    made: dict = {}

    def record(fig, out, stem):
        assert stem not in made, f"two figures named {stem}"
        made[stem] = fig
        return [out / f"{stem}.{fmt}" for fmt in plots.FORMATS]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(plots, "save_figure", record)
        files = build_plots(store, ReportFilter(), Path("unused"))
    assert len(files) == len(plots.FORMATS) * len(made)
    yield made
    plt.close("all")


def _kind(stem: str) -> str:
    return stem.split("_", 1)[0]


def _one(figures: dict, kind: str):
    (fig,) = [f for stem, f in figures.items() if _kind(stem) == kind]
    return fig


def drawn_texts(fig) -> list[tuple[str, Bbox]]:
    """(text, window extent in pixels) of every non-empty Text artist a draw of `fig` renders, recorded
    as Text.draw runs (tick labels outside the view limits exist but are not drawn)."""
    seen: list[Text] = []
    draw = Text.draw

    def recording(self, renderer):  # noqa: ANN001
        draw(self, renderer)
        if self.get_visible() and self.get_text().strip():
            seen.append(self)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Text, "draw", recording)
        fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    return [(t.get_text(), t.get_window_extent(renderer)) for t in seen]


def saved_canvas(fig) -> Bbox:
    """The canvas savefig writes, in pixels of `fig`'s own coordinates, with the saving's bbox_inches."""
    from ssbench.report import plots

    if plots.SAVE.get("bbox_inches") == "tight":
        inches = fig.get_tightbbox(fig.canvas.get_renderer()).padded(plots.SAVE.get("pad_inches", 0.1))
        return Bbox(inches.get_points() * fig.dpi)
    return fig.bbox


def _inside(box: Bbox, canvas: Bbox, tol: float = 1.0) -> bool:
    return (box.x0 >= canvas.x0 - tol and box.y0 >= canvas.y0 - tol and box.x1 <= canvas.x1 + tol
            and box.y1 <= canvas.y1 + tol)


def test_every_figure_kind_keeps_its_text_on_the_canvas(figures) -> None:
    from ssbench.report.figures import FIGURES

    assert {_kind(stem) for stem in figures} == {d.name for d in FIGURES}  # the store draws every registered kind
    for stem, fig in figures.items():
        texts = drawn_texts(fig)
        assert texts, stem
        assert any(t == fig.get_suptitle() for t, _ in texts), stem  # the title was drawn
        canvas = saved_canvas(fig)
        for text, box in texts:
            assert _inside(box, canvas), f"{stem}: {text!r} at {box} is cut off the saved canvas {canvas}"
            # stricter: inside the figure's own size (the layout fits; the tight box only trims margins)
            assert _inside(box, fig.bbox), f"{stem}: {text!r} at {box} lies outside the figure {fig.bbox}"


def test_figure_names_are_unique_stem_prefixes() -> None:
    from ssbench.report.figures import FIGURES

    names = [d.name for d in FIGURES]
    assert len(set(names)) == len(names) and all(_kind(n) == n for n in names)  # a stem's first part names its kind


def test_a_registered_figure_kind_is_all_build_plots_draws(store, monkeypatch) -> None:
    """One `Figure` in the registry is all a kind needs, and build_plots draws nothing the registry does not
    list: with a new kind in its place, the files are that kind's groups (less the skipped), titled and
    named by its definition."""
    from ssbench.report import figures, plots
    from ssbench.report.tables import ReportFilter

    def draw(sub, title, k):  # noqa: ANN001
        fig = plt.figure()
        fig.suptitle(f"{title}: seeds {sorted(sub['seed'])}")
        return fig

    runs = figures.Figure("runs-per-rule", lambda fr, built: fr.store.frame_runs().query("kind == 'finetune'"), ("rule",),
                          title=lambda k: f"Runs of {k['rule']}", stem=lambda k: (k["rule"], None), plot=draw,
                          skip=lambda sub: (sub["rule"] == "bp").all())
    made: dict = {}

    def record(fig, out, stem):  # noqa: ANN001
        made[stem] = fig.get_suptitle()
        plt.close(fig)
        return [out / f"{stem}.{fmt}" for fmt in plots.FORMATS]

    monkeypatch.setattr(plots, "save_figure", record)
    monkeypatch.setattr(figures, "FIGURES", (runs,))
    files = figures.build_plots(store, ReportFilter(), Path("out"))
    assert made == {f"runs-per-rule_{rule}": f"Runs of {rule}: seeds {list(SEEDS)}" for rule in RULES if rule != "bp"}
    assert sorted(p.name for p in files) == sorted(f"{stem}.{fmt}" for stem in made for fmt in plots.FORMATS)


def _wilson(k: float, n: float, z: float = 1.959963984540054) -> tuple[float, float]:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def _band_bounds(band: PolyCollection, x: float) -> tuple[float, float]:
    """(lowest, highest) y of a fill_between polygon at x."""
    v = band.get_paths()[0].vertices
    ys = v[np.isclose(v[:, 0], x), 1]
    return float(ys.min()), float(ys.max())


def test_robustness_figure_chance_worst_line_and_intervals(figures) -> None:
    fig = _one(figures, "robust")
    assert fig.get_suptitle().replace("\n", " ") == "Robust accuracy under attack: LeNet, Fashion-MNIST classes 5-9"
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == ["fgsm", "pgd", "worst of all attacks x modes"]
    for ax in axes:
        (chance,) = [ln for ln in ax.get_lines() if ln.get_label() == "chance"]
        np.testing.assert_allclose(chance.get_ydata(), [1 / len(CLASSES)] * 2)
        assert ax.get_ylim()[0] <= 0 and ax.get_ylim()[1] >= 1  # the whole [0, 1]: never zoomed to the data
    for ax, attack in zip(axes[:2], ("fgsm", "pgd")):
        lines = {ln.get_label(): ln for ln in ax.get_lines()}
        bands = {c.get_label(): c for c in ax.collections if isinstance(c, PolyCollection)}
        for rule in RULES:
            worst, exact = lines[f"{rule} worst"], lines[f"{rule} exact"]
            # a line, distinct from the modes: opaque, solid, wider, marked (no translucent band)
            assert worst.get_alpha() in (None, 1.0) and worst.get_linestyle() == "-" and worst.get_marker() == "v"
            assert worst.get_linewidth() > exact.get_linewidth() and worst.get_color() == exact.get_color()
            # its band is the Wilson 95% interval of the examples pooled over seeds, where every one survives
            # both modes (the per-example worst case), computed here from the thresholds
            band = bands[f"{rule} worst interval"]
            for e in EPS:
                k = sum(float(np.sum(np.logical_and.reduce([(thresholds(rule, s, attack, m) > e) | (e == 0)
                                                            for m in ("feedback", "exact")]))) for s in SEEDS)
                np.testing.assert_allclose(_band_bounds(band, e), _wilson(k, N * len(SEEDS)), atol=1e-9)
            assert f"{rule} exact interval" not in bands  # six series: bands on the worst cases only
    legends = fig.findobj(Legend)  # in the legend column (a subfigure)
    handles = {t.get_text(): h for leg in legends for h, t in zip(leg.legend_handles, leg.get_texts())}
    assert isinstance(handles["worst case over modes"], Line2D) and handles["worst case over modes"].get_alpha() is None
    assert "chance level (1/5)" in handles


def test_alignment_figure_has_no_empty_and_no_bp_panel(figures) -> None:
    fig = _one(figures, "alignment")
    axes = fig.axes
    assert all(ax.get_visible() and ax.get_lines() for ax in axes)  # every axes drawn holds data
    titles = [ax.get_title() for ax in axes]
    assert titles == ["fa", "dfa", "usf", "frsf", "brsf", "fa: gradients"]  # BP's angle is 0 by definition: no panel
    # five panels in rows of 3 and 2, the short row centred under the full one
    centres = [(round(ax.get_position().y0, 3), (ax.get_position().x0 + ax.get_position().x1) / 2) for ax in axes[:5]]
    rows: dict = {}
    for y, x in centres:
        rows.setdefault(y, []).append(x)
    assert sorted(len(r) for r in rows.values()) == [2, 3]
    assert np.mean(next(r for r in rows.values() if len(r) == 2)) == pytest.approx(
        np.mean(next(r for r in rows.values() if len(r) == 3)), abs=0.01)


def test_training_figure_axis_and_no_one_epoch_figure(figures) -> None:
    from ssbench.report.plots import SCORE_SPAN

    training = [stem for stem in figures if _kind(stem) == "training"]
    assert training == ["training_finetune_lenet_fashion-mnist-5-9"]  # not the one-epoch digits runs
    fig = figures[training[0]]
    assert fig.get_suptitle().replace("\n", " ") == "Fine-tuning curves: LeNet, Fashion-MNIST classes 5-9"
    val_ax = fig.axes[0]
    values = np.concatenate([ln.get_ydata() for ln in val_ax.get_lines()])
    lo, hi = val_ax.get_ylim()
    assert len(values) == len(RULES) * len(SEEDS) * 2 and lo <= values.min() and values.max() <= hi
    assert hi >= 1.0 and hi - lo >= SCORE_SPAN  # 0.926-0.964 is not stretched over the full height
    assert (values.max() - values.min()) / (hi - lo) < 0.5


def test_colour_bar_ticks_are_round_values(figures) -> None:
    for kind in ("loss-surface", "trajectory"):
        fig = _one(figures, kind)
        fig.canvas.draw()
        bar = fig.axes[-1]  # the colour bar: added last
        ticks = [float(t.get_text().replace("−", "-")) for t in bar.get_yticklabels() if t.get_text()]
        lo, hi = bar.get_ylim()
        assert len(ticks) >= 3 and all(lo <= t <= hi for t in ticks)
        for t in ticks:  # one significant digit: 0.5, 1, 2, 5, 10
            mantissa = t / 10 ** math.floor(math.log10(t))
            assert mantissa == pytest.approx(round(mantissa)), (kind, ticks)
        assert not bar.yaxis.get_minorticklocs().size


def test_nice_log_ticks_and_score_limits() -> None:
    from ssbench.report.plots import nice_log_ticks, score_limits

    assert nice_log_ticks(0.3, 10.8) == pytest.approx([0.5, 1, 2, 5, 10])
    assert nice_log_ticks(0.01, 1000) == pytest.approx([0.01, 0.1, 1, 10, 100, 1000])
    assert nice_log_ticks(1e-6, 1e6) == pytest.approx([1e-6, 1e-4, 1e-2, 1, 1e2, 1e4, 1e6])  # every 2nd decade
    narrow = nice_log_ticks(0.31, 0.36)  # no 1..9 step inside: round linear steps
    assert len(narrow) >= 2 and all(0.31 <= t <= 0.36 and round(t, 2) == pytest.approx(t) for t in narrow)
    assert score_limits([0.926, 0.964]) == pytest.approx((0.8, 1.004))
    assert score_limits([0.1, 0.5])[0] == 0.0 and score_limits([2.0, 3.0]) is None


def test_words_for_labels() -> None:
    from ssbench.report.words import class_count, dataset_words, model_words, subject_words

    assert model_words("lenet") == "LeNet" and model_words("resnet18") == "ResNet-18"
    assert model_words("resnet18[pretrained]") == "ResNet-18 (pretrained)"
    assert model_words("mlp[256x3]") == "MLP (3 hidden layers of 256)" and model_words("mlp[512-256]") == "MLP (hidden layers 512, 256)"
    assert model_words("vgg16_bn") == "VGG-16 (batch norm)" and model_words("mystery") == "mystery"
    assert dataset_words("fashion-mnist[5-9]") == "Fashion-MNIST classes 5-9"
    assert dataset_words("fashion-mnist[5-9, train=1500]") == "Fashion-MNIST classes 5-9, 1,500 training images"
    assert dataset_words("cifar10[0,2,4]") == "CIFAR-10 classes 0, 2, 4" and dataset_words("cifar100") == "CIFAR-100"
    assert subject_words("lenet", "fashion-mnist[5-9]", float("nan")) == "LeNet, Fashion-MNIST classes 5-9"
    assert subject_words("resnet20", "cifar10", 32.0) == "ResNet-20, CIFAR-10, 32-bit codes"
    assert (class_count("fashion-mnist[5-9, train=1500]"), class_count("cifar10[0,2,4]"), class_count("cifar100")) == (5, 3, 100)
    assert class_count("nuswide") is None  # multi-label lists: no single chance level


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_save_figure_writes_png_svg_and_pdf(figures, tmp_path) -> None:
    from ssbench.report import plots

    stem, fig = next((s, f) for s, f in figures.items() if _kind(s) == "hessian-density")
    title = fig.get_suptitle()
    width, height = fig.get_size_inches()
    paths = plots.save_figure(fig, tmp_path, stem)
    assert [p.name for p in paths] == [f"{stem}.png", f"{stem}.svg", f"{stem}.pdf"]
    png, svg, pdf = (p.read_bytes() for p in paths)
    assert pdf.startswith(b"%PDF-") and b"/FontFile2" in pdf  # TrueType embedded: text stays text
    root = ET.fromstring(svg)
    texts = {"".join(t.itertext()).strip() for t in root.iter("{http://www.w3.org/2000/svg}text")}
    assert set(title.split("\n")) <= texts and "eigenvalue of the loss Hessian" in texts  # a line per <text>
    # tight bounding box: the saved canvas is what was drawn plus the pad, no wider than the figure and its
    # pad (test_every_figure_kind_keeps_its_text_on_the_canvas: nothing drawn sticks out of the figure)
    w_px, h_px = _png_size(png)
    pad = 2 * plots.SAVE["pad_inches"]
    for size, px in ((width, w_px), (height, h_px)):
        assert 0.8 * size * plots.DPI <= px <= (size + pad) * plots.DPI + 1
    w_pt = float(re.sub(r"pt$", "", root.get("width")))
    assert abs(w_pt / 72 * plots.DPI - w_px) <= 2  # the same canvas in both files
