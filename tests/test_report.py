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
                if rule == "fa":  # the expected obfuscation: feedback-mode gradients are not the loss gradient
                    atk.add_sanity([SanityCheck("gradient_consistency", False, 0.2, "obfuscated", mode="feedback"),
                                    SanityCheck("falls_to_chance", True, 0.1, "", attack="pgd", mode="exact")])
                if rule == "usf":  # an honest-mode failure: the worst case rests on it
                    atk.add_sanity([SanityCheck("falls_to_chance", False, 0.3, "pgd exact stays above chance",
                                                attack="pgd", mode="exact")])
                if rule == "bp" and seed == 0:  # a check about the whole run (no attack, no mode)
                    atk.add_sanity([SanityCheck("run_integrity", False, 1.0, "whole run")])
            info["attack"][(rule, seed)] = atk.run_id
    return info


def hash_map(bits: int, seed: int) -> float:
    return 0.5 + bits / 100 + 0.02 * seed


def hash_precision(bits: int, seed: int) -> float:
    return 0.3 + bits / 200 + 0.03 * seed


def hash_robust(bits: int, seed: int, mode: str, e: float) -> float:
    # the two bit lengths differ: a table that averaged 16 and 32 bits would not match either
    return 0.6 - e * (2 if mode == "exact" else 1) + bits / 400 + 0.01 * seed


def populate_hashing(store) -> None:
    for bits in (16, 32):
        for seed in (0, 1):
            with store.run("train", config=Cfg(seed=seed, rule="fa", hashing={"bits": bits}), seed=seed, rule="fa",
                           model="resnet20", dataset="cifar10", task="hashing", recipe="hash") as rec:
                for epoch in (1, 2):
                    rec.log_epoch(epoch, "train", {"loss": 2.0 / epoch})
                    rec.log_epoch(epoch, "val", {"map@1000": hash_map(bits, seed) - 0.1 / epoch})
                rec.log_evaluation("map@1000", hash_map(bits, seed), split="test")
                rec.log_evaluation("precision@1000", hash_precision(bits, seed), split="test")
            with store.run("attack", config=Cfg(seed=seed, rule="fa", stage="hatk", hashing={"bits": bits}),
                           parent_id=rec.run_id, rule="fa", model="resnet20", dataset="cifar10", task="hashing",
                           recipe="hash") as atk:
                for mode in ("feedback", "exact"):
                    atk.add_sweep([SweepPoint("hag", mode, e, 50, hash_robust(bits, seed, mode, e),
                                              metric="map@1000") for e in (0.0, 0.1, 0.2)])


# -- variants: ifa at two angles, two MLP shapes, two training-set sizes, two epoch counts ------------

VARIANTS = {  # key -> (rule, theta, hidden, train_limit, epochs)
    "ifa30": ("ifa", 30.0, (256, 256, 256), 1500, 3),
    "ifa60": ("ifa", 60.0, (256, 256, 256), 1500, 3),
    "ifa30-wide": ("ifa", 30.0, (512, 256), 1500, 3),
    "ifa30-6000": ("ifa", 30.0, (256, 256, 256), 6000, 3),
    "ifa30-e5": ("ifa", 30.0, (256, 256, 256), 1500, 5),
    "bp": ("bp", None, (256, 256, 256), 1500, 3),
}
VSEEDS = (0, 1, 2)
VLAYERS = ("fc1", "fc2")


def v_acc(key: str, seed: int) -> float:
    return 0.5 + 0.07 * list(VARIANTS).index(key) + 0.004 * seed * (1 if seed % 2 else -1)


def v_angle(key: str, seed: int, epoch: int, k: int) -> float:
    theta = VARIANTS[key][1] or 0.0
    return (theta + 10 * k + seed) * 0.9 ** (epoch * (1 + list(VARIANTS).index(key)))


def v_grad(key: str, seed: int, epoch: int, k: int) -> float:
    return 40 + 5 * k + 2 * seed + list(VARIANTS).index(key) - epoch


def v_robust(key: str, seed: int, mode: str, e: float) -> float:
    return max(0.0, v_acc(key, seed) - e * (1 if mode == "feedback" else 3) * (1 + 0.2 * list(VARIANTS).index(key)))


def train_spec(key: str, seed: int):
    from ssbench.specs import DataSpec, ModelSpec, RuleSpec, TrainSpec

    rule, theta, hidden, limit, epochs = VARIANTS[key]
    return TrainSpec(kind="finetune", source="1", seed=seed, epochs=epochs, rule=RuleSpec(name=rule, theta=theta),
                     model=ModelSpec(name="mlp", hidden=hidden),
                     data=DataSpec(classes=(5, 6, 7, 8, 9), train_limit=limit), recipe="variants")


def populate_variants(store) -> dict:
    runs: dict = {}
    for key, (rule, *_rest) in VARIANTS.items():
        epochs = VARIANTS[key][4]
        for seed in VSEEDS:
            with store.run("finetune", config=train_spec(key, seed), seed=seed, rule=rule, model="mlp",
                           dataset="fashion-mnist", task="classification", recipe="variants") as rec:
                for epoch in range(epochs + 1):
                    if rule != "bp":  # grad angles only from epoch 1 on, as training/job.py logs them
                        rec.log_alignment(epoch, [AlignmentRow(layer, v_angle(key, seed, epoch, k), 1 + 0.1 * epoch + k,
                                                               v_grad(key, seed, epoch, k) if epoch else None)
                                                  for k, layer in enumerate(VLAYERS)])
                    if epoch:
                        rec.log_epoch(epoch, "val", {"accuracy": v_acc(key, seed) - 0.05 / epoch, "loss": 1.0 / epoch})
                rec.log_evaluation("accuracy", v_acc(key, seed), split="test")
            runs[(key, seed)] = rec.run_id
            with store.run("attack", config=Cfg(seed=seed, stage="vatk"), seed=0, parent_id=rec.run_id, rule=rule,
                           model="mlp", dataset="fashion-mnist", recipe="variants") as atk:
                for mode in ("feedback", "exact"):
                    atk.add_sweep([SweepPoint("fgsm", mode, e, 20, v_robust(key, seed, mode, e), params={"norm": "linf"})
                                   for e in (0.0, 0.1, 0.2)])
    return runs


# -- analysis runs (what `ssbench analyze hessian / corruptions` store) ---------------------------

CORRUPTIONS = ("gaussian_noise", "fog")
SEVERITIES = (1, 2, 3)


def hess_trace(rule: str, seed: int) -> float:
    return {"bp": 80.0, "fa": 120.0, "usf": 95.0}[rule] + 3 * seed


def hess_top(rule: str, seed: int) -> float:
    return {"bp": 10.0, "fa": 16.0, "usf": 12.0}[rule] + 0.5 * seed


def corr_acc(rule: str, seed: int, corruption: str, severity: int) -> float:
    return {"bp": 0.8, "fa": 0.7, "usf": 0.75}[rule] - 0.1 * severity * (1 + CORRUPTIONS.index(corruption)) + 0.01 * seed


def populate_analysis(store, finetune: dict) -> None:
    from ssbench.analysis.specs import CorruptionSpec, HessianSpec

    for (rule, seed), target in finetune.items():
        # an older Hessian analysis of the same run with other numbers: the report takes the latest
        with store.run("analysis", config=HessianSpec(target=str(target)), seed=0, parent_id=target, rule=rule,
                       model="lenet", dataset="fashion-mnist", task="classification") as old:
            old.log_evaluation("hessian_trace", 1e6, split="train")
        with store.run("analysis", config=HessianSpec(target=str(target), density=True, surface=True), seed=0,
                       parent_id=target, rule=rule, model="lenet", dataset="fashion-mnist",
                       task="classification") as rec:
            common = {"n": 64, "split": "train", "params": 1000}
            rec.log_evaluation("hessian_loss", 0.3 + 0.1 * seed, split="train", params=common)
            rec.log_evaluation("hessian_trace", hess_trace(rule, seed), split="train", params={**common, "stderr": 1.0})
            # power iteration finds the largest magnitude: a different number, which the table must not take
            rec.log_evaluation("hessian_top_eig", hess_top(rule, seed) - 1.5, split="train", params={**common, "method": "power"})
            rec.log_evaluation("hessian_top_eig", hess_top(rule, seed), split="train", params={**common, "method": "lanczos"})
            grid = np.linspace(-1, hess_top(rule, seed) + 1, 200)
            dens = np.exp(-0.5 * (grid / 0.05) ** 2) * 0.9 / 0.125 + 0.1 * np.exp(-0.5 * ((grid - hess_top(rule, seed)) / 0.2) ** 2) / 0.5
            rec.log_evaluation("hessian_density", 0.1, split="train",
                               params={**common, "grid": grid.tolist(), "density": dens.tolist()})
            ab = np.linspace(-1, 1, 7)
            surf = 0.3 + 0.5 * hess_top(rule, seed) * ab[:, None] ** 2 + 2.0 * ab[None, :] ** 2
            rec.log_evaluation("loss_surface", 0.3, split="train", params={**common, "alphas": ab.tolist(),
                               "betas": ab.tolist(), "grid": surf.tolist(), "eigenvalues": [hess_top(rule, seed), 4.0]})
        with store.run("analysis", config=CorruptionSpec(target=str(target), corruptions=CORRUPTIONS, severities=SEVERITIES),
                       seed=0, parent_id=target, rule=rule, model="lenet", dataset="fashion-mnist",
                       task="classification") as rec:
            rec.log_evaluation("accuracy", acc_of(rule, seed), params={"n": 100, "clean": True})
            values = []
            for c in CORRUPTIONS:
                for sev in SEVERITIES:
                    values.append(corr_acc(rule, seed, c, sev))
                    rec.log_evaluation("corruption_accuracy", values[-1], params={"corruption": c, "severity": sev, "n": 100})
            rec.log_evaluation("mean_corruption_accuracy", float(np.mean(values)), params={"n": 100})


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    path = tmp_path_factory.mktemp("report") / "results.db"
    store = open_store(f"sqlite:///{path}")
    info = populate(store)
    populate_hashing(store)
    info["variants"] = populate_variants(store)
    populate_analysis(store, info["finetune"])
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
        assert fine.loc[rule, "variant"] == ""  # the crashed fa run's other config does not make a variant
    pre = t[t["kind"] == "pretrain"].iloc[0]
    assert pre["accuracy_mean"] == pytest.approx(0.95) and pre["accuracy_std"] == pytest.approx(0.0)
    only_fa = clean_table(store, ReportFilter(recipe="demo", rule="fa"))
    assert set(only_fa["rule"]) == {"fa"}
    assert clean_table(store, ReportFilter(dataset="mnist")).empty


# what the labels of each VARIANTS entry must read, written out by hand
EXPECTED_LABELS = {
    "ifa30": ("ifa(θ=30)", "mlp[256x3]", "fashion-mnist[5-9, train=1500]", "epochs=3"),
    "ifa60": ("ifa(θ=60)", "mlp[256x3]", "fashion-mnist[5-9, train=1500]", ""),
    "ifa30-wide": ("ifa(θ=30)", "mlp[512-256]", "fashion-mnist[5-9, train=1500]", ""),
    "ifa30-6000": ("ifa(θ=30)", "mlp[256x3]", "fashion-mnist[5-9, train=6000]", ""),
    "ifa30-e5": ("ifa(θ=30)", "mlp[256x3]", "fashion-mnist[5-9, train=1500]", "epochs=5"),
    "bp": ("bp", "mlp[256x3]", "fashion-mnist[5-9, train=1500]", ""),
}


def test_variants_get_their_own_rows_and_only_seeds_are_averaged(store):
    from ssbench.report.tables import ReportFilter, clean_table, robust_table

    t = clean_table(store, ReportFilter(recipe="variants"))
    assert len(t) == len(VARIANTS)  # six configurations: none merged
    idx = t.set_index(["rule", "model", "dataset", "variant"])
    for key, labels in EXPECTED_LABELS.items():
        row = idx.loc[labels]
        vals = [v_acc(key, s) for s in VSEEDS]
        assert row["accuracy_mean"] == pytest.approx(np.mean(vals)) and row["accuracy_std"] == pytest.approx(np.std(vals, ddof=1))
        assert row["n"] == 3 and row["seeds"] == "0,1,2"
    # ifa variants sort by angle, bp first
    same = t[(t["model"] == "mlp[256x3]") & (t["dataset"] == "fashion-mnist[5-9, train=1500]")]
    assert same["rule"].tolist() == ["bp", "ifa(θ=30)", "ifa(θ=30)", "ifa(θ=60)"]
    r = robust_table(store, ReportFilter(recipe="variants")).set_index(["rule", "model", "dataset", "variant", "mode", "epsilon"])
    for key, labels in EXPECTED_LABELS.items():
        for mode in ("feedback", "exact"):
            got = r.loc[(*labels, mode, 0.1)]
            assert got["robust_mean"] == pytest.approx(np.mean([v_robust(key, s, mode, 0.1) for s in VSEEDS]))
            assert got["n"] == 3


def test_labels_from_stored_configs():
    from ssbench.report.variants import dataset_label, model_label, rule_label, rule_sort_key

    cfg = {"rule": {"name": "fa", "skip": ["conv1", "fc*"]}, "model": {"name": "resnet18", "pretrained": True},
           "data": {"name": "cifar10", "classes": [0, 2, 4]}}
    assert rule_label(cfg, "fa") == "fa(skip=conv1,fc*)"
    assert model_label(cfg, "x") == "resnet18[pretrained]"
    assert dataset_label(cfg, "x") == "cifar10[0,2,4]"
    assert rule_label({"rule": "bp"}, "bp") == "bp" and model_label(None, "lenet") == "lenet"  # configs of other shapes
    assert model_label({"model": {"name": "resnet18", "weights": "/w/resnet18.pth"}}, "x") == "resnet18[pretrained]"
    # how a job ran is not a variant (seeds of a bf16 run on 1 or 2 GPUs average); its precision is
    from ssbench.report.variants import _other_keys

    compute = {"precision": "bf16", "channels_last": True, "compile": True, "workers": 4, "gpus": 2}
    assert _other_keys({"compute": compute, "model": {"name": "resnet18", "weights": "/w/r.pth"}}) == {"compute.precision": "bf16"}
    assert sorted(["ifa(θ=45)", "fa", "ifa(θ=5)", "bp", "ifa(θ=15)"], key=rule_sort_key) == \
        ["bp", "fa", "ifa(θ=5)", "ifa(θ=15)", "ifa(θ=45)"]


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


def test_worst_row_is_flagged_only_by_checks_it_rests_on(store):
    from ssbench.report.tables import ReportFilter, robust_table

    idx = robust_table(store, ReportFilter(recipe="demo")).set_index(["rule", "attack", "epsilon", "mode"])
    fc = lambda *k: idx.loc[k, "failed_checks"]  # noqa: E731
    # fa: failed gradient consistency in feedback mode flags feedback cells (3 seeds), not exact, not worst:
    # the worst case takes the minimum over modes, exact included, so it does not trust the feedback gradient
    assert fc("fa", "pgd", 0.1, "feedback") == 3 and fc("fa", "fgsm", 0.1, "feedback") == 3
    assert fc("fa", "pgd", 0.1, "exact") == 0 and fc("fa", "pgd", 0.1, "worst") == 0
    # usf: a failed exact-mode pgd check flags pgd exact and pgd worst, not fgsm or feedback
    assert fc("usf", "pgd", 0.1, "exact") == 3 and fc("usf", "pgd", 0.1, "worst") == 3
    assert fc("usf", "fgsm", 0.1, "worst") == 0 and fc("usf", "pgd", 0.1, "feedback") == 0
    # bp seed 0: a check about the whole run flags every cell of that seed, worst included (once, not per mode)
    for mode in ("feedback", "exact", "transfer", "worst"):
        assert fc("bp", "fgsm", 0.1, mode) == 1


def test_worst_is_na_without_strings_or_on_different_examples():
    """Accuracy: no per-example bits, or sweeps of other examples -> the worst case cannot be formed
    (NaN and why), never the min over modes passed off as a worst case. mAP: the min (no per-example form)."""
    from ssbench.report.sweeps import NA_BITS, NA_EXAMPLES
    from ssbench.report.tables import worst_case

    pts = pd.DataFrame({
        "target": [1, 1, 1], "attack": ["pgd"] * 3, "metric": ["accuracy"] * 3, "epsilon": [0.1] * 3,
        "mode": ["feedback", "exact", "transfer"], "robust": [0.7, 0.3, 0.5], "n": [10, 10, 10],
        "attack_seed": [0, 0, 0], "correct": ["1111111000", None, "1111100000"], "run_id": [5, 5, 5],
        "failed_checks": [0, 1, 0],
    })
    w = worst_case(pts)
    assert np.isnan(w["robust"].iloc[0]) and w["combined"].tolist() == [NA_BITS] and w["failed_checks"].tolist() == [1]
    pts["correct"] = ["1111111000", "0001111111", "1111100000"]
    w = worst_case(pts)
    assert w["robust"].tolist() == [0.2] and w["correct"].tolist() == ["0001100000"]
    pts["failed_checks"] = [2, 0, 0]  # only the feedback mode failed: the worst case does not rest on it
    assert worst_case(pts)["failed_checks"].tolist() == [0]
    other_seed = pts.assign(attack_seed=[0, 1, 0])
    assert np.isnan(worst_case(other_seed)["robust"].iloc[0]) and worst_case(other_seed)["combined"].tolist() == [NA_EXAMPLES]
    # same n and seed, but the runs stored other indices (e.g. another test set): not the same examples
    two_runs = pts.assign(run_id=[5, 6, 5])
    assert worst_case(two_runs, {5: [3, 1, 4], 6: [3, 1, 4]})["robust"].tolist() == [0.2]
    assert worst_case(two_runs, {5: [3, 1, 4], 6: [2, 7, 1]})["combined"].tolist() == [NA_EXAMPLES]
    mean_ap = pts.assign(metric="map@1000", correct=None)
    assert worst_case(mean_ap)["robust"].tolist() == [0.3] and worst_case(mean_ap)["combined"].tolist() == ["min"]


def test_alignment_table_initial_and_final(store):
    from ssbench.report.tables import ReportFilter, alignment_table

    t = alignment_table(store, ReportFilter(recipe="demo")).set_index(["rule", "layer"])
    assert set(t.index.get_level_values(0)) == {"fa", "usf"}
    for k, layer in enumerate(LAYERS):
        first = [90.0 - 0 + s for s in SEEDS]
        last = [90.0 - 5 * (8 + 3 * k) + s for s in SEEDS]
        assert t.loc[("fa", layer), "angle_initial_mean"] == pytest.approx(np.mean(first))
        assert t.loc[("fa", layer), "angle_final_mean"] == pytest.approx(np.mean(last))
        assert t.loc[("fa", layer), "angle_final_std"] == pytest.approx(np.std(last, ddof=1))
        ratios = [1 + 0.1 * k + 0.01 * s for s in SEEDS]
        assert t.loc[("fa", layer), "norm_ratio_final_mean"] == pytest.approx(np.mean(ratios))
        assert t.loc[("fa", layer), "norm_ratio_initial_mean"] == pytest.approx(np.mean(ratios))
        assert t.loc[("fa", layer), "initial_epoch"] == 0 and t.loc[("fa", layer), "final_epoch"] == 5
        assert np.isnan(t.loc[("fa", layer), "grad_angle_final_mean"])  # not tracked in these runs
    assert list(t.loc["fa"].index) == list(LAYERS)  # model order, not alphabetical
    v = alignment_table(store, ReportFilter(recipe="variants")).set_index(["rule", "model", "dataset", "variant", "layer"])
    for key, labels in EXPECTED_LABELS.items():
        if key == "bp":
            continue
        last = VARIANTS[key][4]
        for k, layer in enumerate(VLAYERS):
            row = v.loc[(*labels, layer)]
            assert row["angle_initial_mean"] == pytest.approx(np.mean([v_angle(key, s, 0, k) for s in VSEEDS]))
            assert row["angle_final_mean"] == pytest.approx(np.mean([v_angle(key, s, last, k) for s in VSEEDS]))
            assert row["norm_ratio_initial_mean"] == pytest.approx(1 + k)
            assert row["norm_ratio_final_mean"] == pytest.approx(1 + 0.1 * last + k)
            grads = [v_grad(key, s, last, k) for s in VSEEDS]
            assert row["grad_angle_final_mean"] == pytest.approx(np.mean(grads))
            assert row["grad_angle_final_std"] == pytest.approx(np.std(grads, ddof=1))
            assert row["n"] == 3


def test_hashing_tables_keep_bit_lengths_apart(store):
    from ssbench.report import display_frame
    from ssbench.report.tables import ReportFilter, hashing_attack_table, hashing_table

    h = hashing_table(store, ReportFilter(recipe="hash")).set_index(["bits", "metric"])
    for bits in (16, 32):
        for metric, fn in (("map@1000", hash_map), ("precision@1000", hash_precision)):
            vals = [fn(bits, s) for s in (0, 1)]
            assert h.loc[(bits, metric), "value_mean"] == pytest.approx(np.mean(vals))
            assert h.loc[(bits, metric), "value_std"] == pytest.approx(np.std(vals, ddof=1))
            assert h.loc[(bits, metric), "n"] == 2
    shown = display_frame("hashing", hashing_table(store, ReportFilter(recipe="hash")))
    assert {"map@1000", "precision@1000", "bits"} <= set(shown.columns) and len(shown) == 2
    a = hashing_attack_table(store, ReportFilter(recipe="hash")).set_index(["bits", "epsilon", "mode"])
    for bits in (16, 32):
        for mode in ("feedback", "exact"):
            for e in (0.0, 0.1, 0.2):
                vals = [hash_robust(bits, s, mode, e) for s in (0, 1)]
                assert a.loc[(bits, e, mode), "robust_mean"] == pytest.approx(np.mean(vals))
                assert a.loc[(bits, e, mode), "n"] == 2
        # no per-example strings: worst = min over modes, per target, then the mean over seeds
        assert a.loc[(bits, 0.2, "worst"), "robust_mean"] == pytest.approx(np.mean([hash_robust(bits, s, "exact", 0.2) for s in (0, 1)]))
    assert (a.reset_index()["metric"] == "map@1000").all()


def test_hessian_table_matches_stored_evaluations(store):
    from ssbench.report.tables import ReportFilter, hessian_table

    t = hessian_table(store, ReportFilter(recipe="demo")).set_index("rule")
    assert set(t.index) == set(RULES) and (t["split"] == "train").all()
    ev = store.frame_evaluations(kind="analysis")
    for rule in RULES:
        traces = [hess_trace(rule, s) for s in SEEDS]
        assert t.loc[rule, "trace_mean"] == pytest.approx(np.mean(traces))  # the older analysis (1e6) is superseded
        assert t.loc[rule, "trace_std"] == pytest.approx(np.std(traces, ddof=1))
        # the Lanczos estimate, read back from the DB by its params, not the power iteration's
        lanczos = ev[(ev["metric"] == "hessian_top_eig") & (ev["rule"] == rule)
                     & ev["params"].map(lambda p: p.get("method") == "lanczos")]["value"]
        assert t.loc[rule, "top_eig_mean"] == pytest.approx(lanczos.mean())
        assert t.loc[rule, "top_eig_mean"] == pytest.approx(np.mean([hess_top(rule, s) for s in SEEDS]))
        assert t.loc[rule, "n"] == 3 and t.loc[rule, "seeds"] == "0,1,2"
    assert hessian_table(store, ReportFilter(recipe="hash")).empty  # the analysed runs' recipe filters


def test_corruption_table_per_severity_and_means(store):
    from ssbench.report import display_frame
    from ssbench.report.tables import ReportFilter, corruption_table

    t = corruption_table(store, ReportFilter(recipe="demo"))
    idx = t.assign(severity=t["severity"].fillna(-1)).set_index(["rule", "corruption", "severity"])
    ev = store.frame_evaluations(kind="analysis")
    for rule in RULES:
        for c in CORRUPTIONS:
            for sev in SEVERITIES:
                vals = [corr_acc(rule, s, c, sev) for s in SEEDS]
                assert idx.loc[(rule, c, sev), "accuracy_mean"] == pytest.approx(np.mean(vals))
                assert idx.loc[(rule, c, sev), "accuracy_std"] == pytest.approx(np.std(vals, ddof=1))
            per_run = [np.mean([corr_acc(rule, s, c, sev) for sev in SEVERITIES]) for s in SEEDS]
            assert idx.loc[(rule, c, -1), "accuracy_mean"] == pytest.approx(np.mean(per_run))
        # the mean corruption accuracy per rule equals the mean of what each analysis run stored
        stored = ev[(ev["metric"] == "mean_corruption_accuracy") & (ev["rule"] == rule)]["value"]
        assert len(stored) == 3 and idx.loc[(rule, "all", -1), "accuracy_mean"] == pytest.approx(stored.mean())
        assert idx.loc[(rule, "all", -1), "accuracy_std"] == pytest.approx(stored.std(ddof=1))
        assert idx.loc[(rule, "none", 0), "accuracy_mean"] == pytest.approx(np.mean([acc_of(rule, s) for s in SEEDS]))
    wide = display_frame("corruptions", t)
    assert list(wide.columns[-6:]) == ["clean", "1", "2", "3", "mean", "n"]
    bp_all = wide[(wide["rule"] == "bp") & (wide["corruption"] == "all")].iloc[0]
    assert bp_all["mean"].startswith(f"{idx.loc[('bp', 'all', -1), 'accuracy_mean']:.3f} ± ")


def test_sanity_table_lists_failed_checks_only(store, db):
    from ssbench.report.tables import ReportFilter, sanity_table

    s = sanity_table(store, ReportFilter(recipe="demo"))
    assert len(s) == 7  # fa: 3 feedback consistency, usf: 3 exact falls_to_chance, bp: 1 whole-run
    assert set(s["check"]) == {"gradient_consistency", "falls_to_chance", "run_integrity"}
    fa = s[s["rule"] == "fa"]
    assert set(fa["check"]) == {"gradient_consistency"}
    assert sorted(fa["target"].astype(int)) == sorted(db[1]["finetune"][("fa", k)] for k in SEEDS)
    assert sorted(fa["seed"].astype(int)) == [0, 1, 2]


# -- rendering ----------------------------------------------------------------------------------

def _parse_markdown(text: str) -> list[list[str]]:
    rows = [line for line in text.splitlines() if line.startswith("|")]
    cells = [[c.strip().replace(r"\|", "|") for c in re.split(r"(?<!\\)\|", r)[1:-1]] for r in rows]
    assert all(set(c) <= set(":-") for c in cells[1])
    return [cells[0], *cells[2:]]


LATEX_UNESCAPE = [(r"$\pm$", "±"), (r"$\theta$", "θ"), (r"$\varepsilon$", "ε"), (r"\_", "_"), (r"\&", "&"), (r"\%", "%"),
                  (r"\textbar{}", "|"), ("{[}", "["), ("{]}", "]"), ("-{}-", "--"), (r"\rlap{$^\dagger$}", "!")]


def _latex_cell(c: str) -> str:
    """A cell back to the display text: '\\ssbenchcell{a}{b}' (interval below the number) is 'a b'."""
    m = re.fullmatch(r"\\ssbenchcell\{(.*)\}\{(.*)\}", c)
    if m:  # the dagger ends the whole cell in the display text
        first, flag = (m[1][: -len(r"\rlap{$^\dagger$}")], "!") if m[1].endswith(r"\rlap{$^\dagger$}") else (m[1], "")
        c = f"{first} {m[2]}{flag}"
    for tex, ch in LATEX_UNESCAPE:
        c = c.replace(tex, ch)
    return c


def _parse_latex(text: str) -> list[list[str]]:
    body = text.split(r"\toprule")[1].split(r"\bottomrule")[0].replace(r"\midrule", "")
    rows = [r.strip().removesuffix(r"\\").strip() for r in body.strip().splitlines() if r.strip()]
    return [[_latex_cell(c.strip()) for c in re.split(r"(?<!\\)&", r)] for r in rows]


def test_render_round_trips(store):
    from ssbench.report.render import render
    from ssbench.report import build_tables, display_frame
    from ssbench.report.tables import ReportFilter

    tables = {**build_tables(store, ReportFilter(recipe="demo")), **build_tables(store, ReportFilter(recipe="variants")),
              **{f"{k}": v for k, v in build_tables(store, ReportFilter(recipe="hash")).items() if k.startswith("hashing")}}
    assert {"clean", "robust", "alignment", "hessian", "corruptions", "sanity", "hashing", "hashing_attacks"} <= set(tables)
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
    demo = build_tables(store, ReportFilter(recipe="demo"))
    wide = display_frame("robust", demo["robust"])
    assert list(wide.columns[:3]) == ["attack", "rule", "mode"] and "0.1" in wide.columns
    fa_fb = wide[(wide.attack == "pgd") & (wide["rule"] == "fa") & (wide["mode"] == "feedback")].iloc[0]
    assert fa_fb["0.1"].endswith("!") and " ± " in fa_fb["0.1"]
    text = render(wide, "terminal")
    assert "worst" in text and "feedback" in text
    assert r"ifa($\theta$=30)" in render(display_frame("clean", tables["clean"]), "latex")  # pdflatex-safe
    tricky = pd.DataFrame({"a_b": ["x|y & 50%"], "v": ["1.0 ± 0.1"]})
    assert _parse_markdown(render(tricky, "markdown")) == [["a_b", "v"], ["x|y & 50%", "1.0 ± 0.1"]]
    assert _parse_latex(render(tricky, "latex")) == [["a_b", "v"], ["x|y & 50%", "1.0 ± 0.1"]]


def _markdown_cells(path) -> list[dict[str, str]]:
    header, *rows = _parse_markdown(path.read_text())
    return [dict(zip(header, r)) for r in rows]


def test_narrow_terminal_does_not_leak_into_other_formats(db, tmp_path):
    from rich.console import Console

    from ssbench.report import build_report
    from ssbench.store import open_store

    store = open_store(db[0])
    console = Console(width=60, record=True, color_system=None)
    # terminal first: before the fix its means-only table and title carried into robust.md
    build_report(store, recipe="demo", tables="robust", formats=("terminal", "markdown", "latex"), out=tmp_path,
                 plots=False, console=console)
    assert "means only" in console.export_text()
    md = (tmp_path / "robust.md").read_text()
    assert "means only" not in md and "means only" not in (tmp_path / "robust.tex").read_text()
    cells = _markdown_cells(tmp_path / "robust.md")
    eps_cols = [c for c in cells[0] if re.fullmatch(r"[0-9.]+", c)]
    assert len(eps_cols) == len(EPS)
    assert all(" ± " in row[c] for row in cells for c in eps_cols if c != "0")  # every cell keeps its std


def test_terminal_tables_fit_80_columns(db, tmp_path):
    from rich.console import Console

    from ssbench.report import build_report
    from ssbench.store import open_store

    store = open_store(db[0])
    console = Console(width=80, record=True, color_system=None)
    build_report(store, recipe="demo", tables="sanity", formats=("terminal", "markdown"), out=tmp_path, plots=False,
                 console=console)
    text = console.export_text()
    lines = text.splitlines()
    assert max(len(ln) for ln in lines) <= 80
    header = next(ln for ln in lines if "check" in ln and "┃" in ln)
    assert [c.strip() for c in header.strip("┃ ").split("┃")] == ["run", "rule", "check", "attack", "mode", "value"]
    body = [ln for ln in lines if ln.startswith("│")]
    assert len(body) == 7 and all(any(name in ln for name in ("gradient_consistency", "falls_to_chance", "run_integrity"))
                                  for ln in body)  # one row per check, names unbroken
    assert "obfuscated" not in text and "details per check: --format markdown or csv" in " ".join(text.split())
    md = _markdown_cells(tmp_path / "sanity.md")
    assert {r["detail"] for r in md} == {"obfuscated", "pgd exact stays above chance", "whole run"}
    # every table of a mixed study fits: no table is cropped at its right edge
    console = Console(width=80, record=True, color_system=None)
    build_report(store, formats=("terminal",), console=console)
    text = console.export_text()
    tops = [ln for ln in text.splitlines() if ln.startswith("┏")]
    assert len(tops) >= 8 and all(ln.rstrip().endswith("┓") for ln in tops)
    assert max(len(ln) for ln in text.splitlines()) <= 80


# -- plots --------------------------------------------------------------------------------------

def test_robustness_plot_series(store, tmp_path):
    from ssbench.report.plots import plot_robustness, rule_color, save_figure
    from ssbench.report.tables import ReportFilter, robust_table

    t = robust_table(store, ReportFilter(recipe="demo"))
    fig = plot_robustness(t, title="lenet")
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == ["fgsm", "pgd", "worst of all attacks x modes"]
    everything = {ln.get_label(): ln for ln in axes[2].get_lines()}
    assert set(everything) == {f"{r} all" for r in RULES}
    assert all(ln.get_linestyle() == "-" and ln.get_alpha() is None for ln in everything.values())  # solid, not a band
    x, y = everything["fa all"].get_data()
    expect = t[(t.rule == "fa") & (t["mode"] == "all")].sort_values("epsilon")
    np.testing.assert_allclose(y, expect["robust_mean"])
    one = plot_robustness(t[t.rule == "fa"])  # a single series: the headline curve is black
    assert next(ln for ln in one.axes[2].get_lines()).get_color() == "black"
    for ax in axes[:2]:
        lines = {ln.get_label(): ln for ln in ax.get_lines()}
        assert set(lines) == {f"{r} {m}" for r in RULES for m in ("feedback", "exact", "transfer", "worst")}
        assert lines["fa feedback"].get_linestyle() == "--" and lines["fa exact"].get_linestyle() == "-"
        assert lines["fa transfer"].get_linestyle() == ":"
        assert lines["fa worst"].get_linewidth() > 2 * lines["fa exact"].get_linewidth()
        assert lines["fa feedback"].get_color() == lines["fa exact"].get_color() == rule_color("fa")
        assert lines["bp exact"].get_color() != lines["fa exact"].get_color()
        x, y = lines["usf exact"].get_data()
        expect = t[(t.rule == "usf") & (t.attack == ax.get_title()) & (t["mode"] == "exact")].sort_values("epsilon")
        np.testing.assert_allclose(x, expect["epsilon"])
        np.testing.assert_allclose(y, expect["robust_mean"])
    assert "robust accuracy" in axes[0].get_ylabel() and "ε" in axes[0].get_xlabel()
    png, svg, *_ = save_figure(fig, tmp_path, "robust")  # and the PDF (figures' own tests check it)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and svg.read_text().lstrip().startswith("<?xml")


def _stub_save(monkeypatch) -> list:
    """build_plots without rendering files (matplotlib's savefig is seconds per figure here): records
    (stem, figure) and returns the paths save_figure would write."""
    import matplotlib.pyplot as plt

    from ssbench.report import plots

    saved: list = []

    def save(fig, out, stem):
        saved.append((stem, fig))
        plt.close(fig)
        return [out / f"{stem}.png", out / f"{stem}.svg"]

    monkeypatch.setattr(plots, "save_figure", save)
    return saved


def test_variant_plots_separate_series_and_files(store, tmp_path, monkeypatch):
    from ssbench.report import build_plots
    from ssbench.report.plots import plot_robustness
    from ssbench.report.tables import ReportFilter, robust_table

    t = robust_table(store, ReportFilter(recipe="variants"))
    sub = t[(t["model"] == "mlp[256x3]") & (t["dataset"] == "fashion-mnist[5-9, train=1500]")]
    ax = plot_robustness(sub).axes[0]
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    for series, key in (("ifa(θ=30) [epochs=3] exact", "ifa30"), ("ifa(θ=30) [epochs=5] exact", "ifa30-e5"),
                        ("ifa(θ=60) exact", "ifa60"), ("bp exact", "bp")):
        x, y = lines[series].get_data()
        np.testing.assert_allclose(y, [np.mean([v_robust(key, s, "exact", e) for s in VSEEDS]) for e in x])
    colours = {lines[f"{s} exact"].get_color() for s in ("ifa(θ=30) [epochs=3]", "ifa(θ=30) [epochs=5]", "ifa(θ=60)")}
    assert len(colours) == 3  # variants of one rule stay distinguishable
    saved = _stub_save(monkeypatch)
    files = {p.name for p in build_plots(store, ReportFilter(recipe="variants"), tmp_path)}
    assert len(files) == 2 * len(saved)  # no figure overwrites another
    for stem in ("mlp-256x3_fashion-mnist-5-9-train-1500", "mlp-256x3_fashion-mnist-5-9-train-6000",
                 "mlp-512-256_fashion-mnist-5-9-train-1500"):
        assert {f"robust_{stem}.png", f"alignment_{stem}.svg", f"training_finetune_{stem}.png"} <= files


def test_alignment_and_training_plots(store):
    from ssbench.report.plots import plot_alignment, plot_training
    from ssbench.report.tables import ReportFilter, alignment_curves, attach_labels, labels_of

    curves = alignment_curves(store, ReportFilter(recipe="demo"))
    fig = plot_alignment(curves)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == ["fa", "usf"]  # no gradient angles tracked: one block
    fc1 = next(ln for ln in axes[0].get_lines() if ln.get_label() == "fc1")
    x, y = fc1.get_data()
    np.testing.assert_allclose(x, range(6))
    np.testing.assert_allclose(y, [90.0 - e * (8 + 3 * 2) + 1 for e in range(6)])  # mean over seeds 0,1,2
    # tracked gradient angles: a second block of panels with them
    curves = alignment_curves(store, ReportFilter(recipe="variants"))
    sub = curves[(curves["model"] == "mlp[256x3]") & (curves["dataset"] == "fashion-mnist[5-9, train=6000]")]
    axes = [ax for ax in plot_alignment(sub).axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == ["ifa(θ=30)", "ifa(θ=30): gradients"]
    x, y = next(ln for ln in axes[1].get_lines() if ln.get_label() == "fc2").get_data()
    np.testing.assert_allclose(x, [1, 2, 3])
    np.testing.assert_allclose(y, [np.mean([v_grad("ifa30-6000", s, e, 1) for s in VSEEDS]) for e in (1, 2, 3)])
    assert "true grad" in axes[1].get_ylabel()

    metrics = store.frame_metrics(recipe="demo", kind="finetune", status="finished")
    fig = plot_training(metrics)
    val_ax, loss_ax = fig.axes[:2]
    assert len(val_ax.get_lines()) == 9 and len(loss_ax.get_lines()) == 18
    assert {ln.get_linestyle() for ln in loss_ax.get_lines()} == {"-", "--"}
    assert val_ax.get_ylabel() == "validation accuracy" and loss_ax.get_ylabel() == "loss"
    # hashing runs log map@1000 on val: the panel shows it, labelled so
    m = attach_labels(store.frame_metrics(recipe="hash", status="finished"), labels_of(store))
    fig = plot_training(m[m["bits"] == 32])
    val_ax = fig.axes[0]
    assert val_ax.get_ylabel() == "validation mAP@1000" and len(val_ax.get_lines()) == 2
    ys = sorted(tuple(ln.get_ydata()) for ln in val_ax.get_lines())
    np.testing.assert_allclose(ys, sorted(tuple(hash_map(32, s) - 0.1 / e for e in (1, 2)) for s in (0, 1)))


def test_analysis_plots(store, tmp_path, monkeypatch):
    from ssbench.report import build_plots
    from ssbench.report.plots import plot_corruptions, plot_hessian_density, plot_loss_surfaces, rule_color
    from ssbench.report.tables import ReportFilter, corruption_table, hessian_runs

    h = hessian_runs(store, ReportFilter(recipe="demo"))
    fig = plot_hessian_density(h)
    lines = fig.axes[0].get_lines()
    assert len(lines) == 9 and fig.axes[0].get_yscale() == "log"
    assert sum(ln.get_color() == rule_color("fa") for ln in lines) == 3
    # each line is the stored smoothed density of one run: its second peak sits at that run's top eigenvalue
    peaks = sorted(float(ln.get_xdata()[np.argmax(np.where(ln.get_xdata() > 2, ln.get_ydata(), 0))]) for ln in lines)
    np.testing.assert_allclose(peaks, sorted(hess_top(r, s) for r in RULES for s in SEEDS), atol=0.1)
    fig = plot_loss_surfaces(h)
    panels = [ax for ax in fig.axes if ax.get_visible() and ax.get_title()]
    assert sorted(ax.get_title() for ax in panels) == sorted(f"{r}, seed {s}" for r in RULES for s in SEEDS)
    c = corruption_table(store, ReportFilter(recipe="demo"))
    ax = plot_corruptions(c).axes[0]
    line = next(ln for ln in ax.get_lines() if ln.get_label() == "usf")
    x, y = line.get_data()
    np.testing.assert_allclose(x, [0, *SEVERITIES])
    expect = [np.mean([acc_of("usf", s) for s in SEEDS])] + [
        np.mean([np.mean([corr_acc("usf", s, cc, sev) for cc in CORRUPTIONS]) for s in SEEDS]) for sev in SEVERITIES]
    np.testing.assert_allclose(y, expect)
    _stub_save(monkeypatch)  # figures recorded, not rendered (savefig is seconds each)
    files = {p.name for p in build_plots(store, ReportFilter(recipe="demo"), tmp_path)}
    assert {"hessian-density_lenet_fashion-mnist_train.svg", "loss-surface_lenet_fashion-mnist_train.png",
            "corruptions_lenet_fashion-mnist.png"} <= files


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
    rows = list(csv.DictReader(io.StringIO(r.stdout)))  # messages go to stderr: stdout is the CSV alone
    fine = [row for row in rows if row["kind"] == "finetune"]
    assert len(fine) == 1 and float(fine[0]["accuracy_mean"]) == pytest.approx(statistics.fmean(acc_of("usf", s) for s in SEEDS))
    r = CliRunner().invoke(app, ["report", "--db", db[0], "--table", "robust", "--recipe", "hash", "--no-plots"])
    assert r.exit_code == 0
    r = CliRunner().invoke(app, ["report", "--db", db[0], "--table", "hessian", "--format", "csv", "--rule", "fa"])
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert "sanity check(s) failed" in r.stderr
    assert len(rows) == 1 and float(rows[0]["trace_mean"]) == pytest.approx(np.mean([hess_trace("fa", s) for s in SEEDS]))


def test_cli_table_choices_are_the_library_tables():
    import typing

    from ssbench.cli.report import HELP, FormatName, table_name
    from ssbench.report.registry import REGISTRY, TABLES
    from ssbench.report.render import FORMATS

    assert set(typing.get_args(FormatName)) == set(FORMATS)
    assert all(f"{name} =" in HELP for name in TABLES)  # --help describes every table
    assert TABLES == tuple(n for n, t in REGISTRY.items() if t.part_of is None) and "hashing_attacks" not in TABLES
    assert all(table_name(n) == n for n in (*TABLES, "all"))
    with pytest.raises(typer.BadParameter, match="'hashing_attacks' is not one of 'all', 'clean'"):
        table_name("hashing_attacks")  # built with hashing: not a choice of its own
    # the CLI module loads no pandas: the names are checked against the registry only when given
    import subprocess
    import sys

    code = "import sys, ssbench.cli.report; print('pandas' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_one_registry_entry_is_all_a_table_needs(db, tmp_path, monkeypatch):
    """A table added to the registry alone is a --table choice, is built, titled, rendered in every
    format and written to --out: no other list names it."""
    from ssbench.report import build_report, registry

    extra = registry.Table("seeds_per_rule", "Seeds per rule (a test table)",
                           lambda fr: fr.labels[fr.labels["kind"] == "finetune"].groupby("rule", as_index=False)["seed"].nunique(),
                           lambda df, **kw: df.astype(str))
    monkeypatch.setitem(registry.REGISTRY, extra.name, extra)
    monkeypatch.setattr(registry, "TABLES", (*registry.TABLES, extra.name))
    app = _app()
    r = CliRunner().invoke(app, ["report", "--db", db[0], "--table", "seeds_per_rule", "--format", "json"])
    assert r.exit_code == 0, r.output
    import json

    rows = json.loads(r.stdout)["seeds_per_rule"]
    assert {row["rule"]: row["seed"] for row in rows}["fa"] == len(SEEDS)
    build_report(open_store(db[0]), tables="seeds_per_rule", formats=("markdown", "latex", "csv"), out=tmp_path, plots=False)
    assert "### Seeds per rule (a test table)" in (tmp_path / "seeds_per_rule.md").read_text()
    assert r"\label{tab:seeds_per_rule}" in (tmp_path / "seeds_per_rule.tex").read_text()


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


@pytest.mark.parametrize("k", [1, 2, 4, 8, 16])
def test_eps_columns_of_k_over_255_survive_the_stored_rounding(k):
    """Sweep eps are stored rounded to EPS_DECIMALS; 4/255 must still read '4/255' (it read 0.0156863)."""
    from ssbench.report.display import eps_label
    from ssbench.report.tables import EPS_DECIMALS

    assert eps_label(round(k / 255, EPS_DECIMALS), "linf") == f"{k}/255"
    assert eps_label(0.05, "linf") == "0.05" and eps_label(0.1, "linf") == "0.1" and eps_label(3, "l0") == "3px"


@pytest.mark.parametrize("plots", [True, False])
def test_out_with_only_terminal_tables_and_nothing_to_draw_says_so(tmp_path, plots):
    from rich.console import Console

    from ssbench.report import build_report

    store = open_store(f"sqlite:///{tmp_path / 'r.db'}")
    with store.run("pretrain", config=Cfg(stage="one"), rule="bp", model="lenet", dataset="fashion-mnist",
                   task="classification", recipe="one") as rec:
        rec.log_epoch(1, "val", {"accuracy": 0.9})  # one epoch: a dot, not a curve, so no figure
        rec.log_evaluation("accuracy", 0.9, split="test")
    console = Console(width=200, record=True, color_system=None)
    report = build_report(store, formats=("terminal",), out=tmp_path / "o", plots=plots, console=console)
    text = " ".join(console.export_text().split())
    assert "0.900" in text  # the clean table was printed
    assert report.files == [] and not (tmp_path / "o").exists()
    assert f"wrote nothing to {tmp_path / 'o'}" in text
    assert ("no figure has data" if plots else "--no-plots") in text
    store.close()
