"""`ssbench finetune --task hashing` and `ssbench attack RUN --suite hashing` through the CLI and the
store: stored mAP values against a brute-force recomputation, the recorded retrieval split reused by
the attack, and multi-label list-file data end to end."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ssbench.cli import app
from ssbench.data import load_data
from ssbench.errors import CheckpointError
from ssbench.retrieval.heads import HashHead
from ssbench.specs import DataSpec, TrainSpec
from ssbench.store import open_store
from ssbench.training import load_trained
from ssbench.training.checkpoint import model_from_checkpoint, read_checkpoint

runner = CliRunner(env={"COLUMNS": "200"})
N_QUERIES = 60


def invoke(*args: str):  # noqa: ANN201
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result


def brute_force(q: np.ndarray, d: np.ndarray, rel: np.ndarray) -> dict[str, float]:
    """mAP@1000 / @5000 / all and precision@1000 by the textbook definitions, one query at a time:
    Hamming distance, ties broken by database index, AP@K = mean precision at the relevant ranks in
    the top K (0 when none)."""
    bits = q.shape[1]
    out: dict[str, list[float]] = {"map@1000": [], "map@5000": [], "map@all": [], "precision@1000": []}
    for i in range(len(q)):
        dist = [(int(bits - (q[i] == d[j]).sum()), j) for j in range(len(d))]
        ranked = [rel[i, j] for _, j in sorted(dist)]
        for key, k in (("map@1000", 1000), ("map@5000", 5000), ("map@all", len(d))):
            hits, total = 0, 0.0
            for r, is_rel in enumerate(ranked[:k], 1):
                if is_rel:
                    hits += 1
                    total += hits / r
            out[key].append(total / hits if hits else 0.0)
        out["precision@1000"].append(sum(ranked[: min(1000, len(d))]) / min(1000, len(d)))
    return {k: float(np.mean(v)) for k, v in out.items()}


@torch.no_grad()
def codes_of(model: torch.nn.Module, xs: torch.Tensor) -> np.ndarray:
    return np.where(model(xs).numpy() >= 0, 1, -1)  # sign(0) = +1


def stack(ds) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: ANN001
    items = [ds[i] for i in range(len(ds))]
    return torch.stack([x for x, _ in items]), torch.stack([torch.as_tensor(y) for _, y in items])


@pytest.fixture(scope="module")
def hashing_runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("hashcli")
    db = ["--db", f"sqlite:///{tmp / 'r.db'}"]
    invoke("pretrain", "-d", "digits", "-m", "mlp", "--hidden", "64", "-e", "3", "-b", "64", "-q", *db)
    invoke("finetune", "--from", "1", "--task", "hashing", "--bits", "16", "-d", "digits", "--rule", "usf",
           "-e", "3", "-b", "64", "--lr", "0.05", "-q", *db)
    attack = invoke("attack", "2", "--suite", "hashing", "--attack", "fgsm-hash", "--attack", "pgd-hash", "--mode",
                    "feedback", "--mode", "exact", "--eps", "0,0.1", "--n", str(N_QUERIES), "--steps", "5", "--device",
                    "cpu", "-q", *db)
    store = open_store(db[1])
    target = load_trained(store, 2)
    record = json.loads((store.artifacts / store.get_run(2).summary["retrieval_split"]["path"]).read_text())
    bundle = load_data(target.spec.data)
    pool = [stack(ds) for ds in (bundle.test, bundle.train, bundle.val)]  # pool order: test, train, val
    xs, ys = torch.cat([p[0] for p in pool]), torch.cat([p[1] for p in pool])
    return {"db": db, "store": store, "target": target, "record": record, "xs": xs, "ys": ys.numpy(),
            "printed": attack.output}


def test_finetune_scores_equal_brute_force_on_the_recorded_split(hashing_runs: dict) -> None:
    h = hashing_runs
    run = h["store"].get_run(2)
    entry = run.summary["retrieval_split"]
    assert not Path(entry["path"]).is_absolute()  # recorded relative to the artifact root
    path = h["store"].artifacts / entry["path"]
    assert path.parent == Path(h["store"].checkpoint(2, "best").path).parent  # saved next to the checkpoint
    assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
    split = h["record"]["split"]
    q, d = split["query"], split["database"]
    assert sorted(q + d) == list(range(len(h["ys"])))  # every pool image is a query or in the database
    codes = codes_of(h["target"].model, h["xs"])
    rel = h["ys"][q][:, None] == h["ys"][d][None, :]
    expect = brute_force(codes[q], codes[d], rel)
    for k, v in expect.items():
        assert run.summary[f"test_{k}"] == pytest.approx(v, abs=1e-6), k


def test_attack_clean_and_sweeps_equal_recomputation(hashing_runs: dict) -> None:
    h = hashing_runs
    store = h["store"]
    split = h["record"]["split"]
    q, d = split["query"][:N_QUERIES], split["database"]
    model = h["target"].model
    codes = codes_of(model, h["xs"])
    rel = h["ys"][q][:, None] == h["ys"][d][None, :]
    clean = brute_force(codes[q], codes[d], rel)
    ev = store.frame_evaluations()
    ev = ev[ev.run_id == 3].set_index("metric").value
    for k, v in clean.items():
        assert ev[k] == pytest.approx(v, abs=1e-6), k

    sw = store.frame_sweeps()
    sw = sw[sw.run_id == 3]
    got = {(a, m): sorted(g.epsilon) for (a, m), g in sw.groupby(["attack", "mode"])}
    assert got == {(a, m): [0.0, 0.1] for a in ("fgsm-hash", "pgd-hash") for m in ("feedback", "exact")}
    assert set(sw.n) == {N_QUERIES} and sw.sweep.nunique() == 4  # one stored sweep per attack x mode
    for robust in sw[sw.epsilon == 0].robust:
        assert robust == pytest.approx(clean["map@1000"], abs=1e-6)

    # FGSM-hash in exact mode, by hand on the plain (unconverted) network with the same weights:
    # one step x - eps sign(grad sum_k b_k tanh(0.1 z_k)), clipped to [0, 1]
    plain, _, _ = model_from_checkpoint(read_checkpoint(h["target"].path), with_rule=False)
    plain.eval()
    x = h["xs"][q].clone().requires_grad_(True)
    b = torch.from_numpy(codes[q]).float()
    head = next(m for m in plain.modules() if isinstance(m, HashHead))
    head.scale = 0.1
    (g,) = torch.autograd.grad((plain(x) * b).sum(), x)
    head.scale = 1.0
    adv = (x.detach() - 0.1 * g.sign()).clamp(0, 1)
    robust = brute_force(codes_of(plain, adv), codes[d], rel)["map@1000"]
    point = sw[(sw.attack == "fgsm-hash") & (sw["mode"] == "exact") & (sw.epsilon == 0.1)]
    assert point.robust.item() == pytest.approx(robust, abs=1e-6)
    assert robust < clean["map@1000"] - 0.05  # the attack does something


def test_attack_prints_its_table_and_checks(hashing_runs: dict) -> None:
    """The hashing attack says what it found, like a classification attack: the stored mAP per
    attack x mode x eps in a table, then the sanity count."""
    h = hashing_runs
    printed = h["printed"]
    sw = h["store"].frame_sweeps()
    sw = sw[sw["run_id"] == 3]
    assert "attack run 3: map@1000 under attack" in printed
    for attack, mode, robust in zip(sw["attack"], sw["mode"], sw["robust"]):
        row = next(ln for ln in printed.splitlines() if f" {attack} " in ln and f" {mode} " in ln)
        assert f"{robust:.3f}" in row
    # the same checks as classification: usf's feedback gradient is not the gradient of the target's
    # codes (obfuscation), the exact one is; nothing else fails
    checks = h["store"].frame_sanity()
    checks = checks[checks["run_id"] == 3]
    failed = checks[checks["passed"] == False]  # noqa: E712
    assert list(zip(failed["name"], failed["mode"])) == [("gradient_consistency", "feedback")]
    assert bool(checks[(checks["name"] == "gradient_consistency") & (checks["mode"] == "exact")]["passed"].iloc[0])
    assert {"eps0_equals_clean", "iterative_le_single_step", "exact_le_feedback", "doubled_steps"} <= set(checks["name"])
    assert "sanity checks:" in printed and "1 failed" in printed


def test_attack_reuses_the_recorded_split(hashing_runs: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    import ssbench.retrieval.scoring as suite

    h = hashing_runs
    store = h["store"]
    assert store.get_run(3).summary["retrieval_split"] == {
        "source": "recorded", "path": store.get_run(2).summary["retrieval_split"]["path"],
        "sha256": store.get_run(2).summary["retrieval_split"]["sha256"],
    }

    def no_fresh_split(*_a, **_k):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("the attack drew a new split")

    monkeypatch.setattr(suite, "class_balanced_split", no_fresh_split)
    cheap = ["attack", "2", "--suite", "hashing", "--attack", "fgsm-hash", "--mode", "exact", "--eps", "0",
             "--n", "10", "--device", "cpu", "-q", *h["db"]]
    invoke(*cheap)
    # a split file edited after the run is refused, one line, before any attack work
    path = store.artifacts / store.get_run(2).summary["retrieval_split"]["path"]
    backup = path.with_suffix(".bak")
    shutil.copy(path, backup)
    try:
        record = json.loads(path.read_text())
        record["split"]["query"] = record["split"]["query"][::-1]
        path.write_text(json.dumps(record))
        result = runner.invoke(app, cheap)
        assert result.exit_code == 2
        assert "changed since it was recorded (sha256 mismatch)" in result.output
    finally:
        shutil.copy(backup, path)


def test_recorded_split_must_fit_the_data(hashing_runs: dict) -> None:
    from ssbench.retrieval.protocol import split_from_record

    h = hashing_runs
    same = load_data(h["target"].spec.data)
    assert list(split_from_record(h["record"], same, "run 2").query) == h["record"]["split"]["query"]
    other = load_data(h["target"].spec.data.model_copy(update={"test_limit": 100}))
    with pytest.raises(CheckpointError, match="the data differs from what its retrieval split was drawn on"):
        split_from_record(h["record"], other, "run 2")


def test_multilabel_list_data_through_finetune_and_attack(tmp_path: Path) -> None:
    from test_data import make_list_folder

    truth = make_list_folder(tmp_path / "coco")
    db = ["--db", f"sqlite:///{tmp_path / 'r.db'}"]
    # an 8x8 RGB backbone (digits repeated to 3 channels) fine-tuned on the list data's 8x8 images
    invoke("pretrain", "-d", "digits", "--channels", "3", "-m", "mlp", "--hidden", "32", "-e", "2", "-q", *db)
    invoke("finetune", "--from", "1", "--task", "hashing", "--bits", "8", "-d", "coco", "--data-dir",
           str(tmp_path / "coco"), "--image-size", "8", "--val-fraction", "0.25", "--rule", "frsf", "-e", "2",
           "-b", "8", "-q", *db)
    invoke("attack", "2", "--suite", "hashing", "--attack", "fgsm-hash", "--mode", "exact", "--eps", "0,0.1",
           "--n", "12", "--device", "cpu", "-q", *db)
    store = open_store(db[1])
    target = load_trained(store, 2)

    def images(names: list[str]) -> torch.Tensor:
        return torch.stack([torch.from_numpy(truth["pixels"][n]).permute(2, 0, 1).float() / 255 for n in names])

    qc, dc = codes_of(target.model, images(truth["query"])), codes_of(target.model, images(truth["database"]))
    ql = np.array([truth["labels"][n] for n in truth["query"]])
    dl = np.array([truth["labels"][n] for n in truth["database"]])
    expect = brute_force(qc, dc, (ql @ dl.T) > 0)  # relevant = at least one shared label
    summary = store.get_run(2).summary
    for k, v in expect.items():
        assert summary[f"test_{k}"] == pytest.approx(v, abs=1e-6), k
    ev = store.frame_evaluations()
    assert ev[(ev.run_id == 3) & (ev.metric == "map@all")].value.item() == pytest.approx(expect["map@all"], abs=1e-6)
    # the recorded "split" of list data: the list files' sha256 and the rows in use
    record = json.loads((store.artifacts / summary["retrieval_split"]["path"]).read_text())
    assert record["kind"] == "lists"
    for name, file in (("train", "train.txt"), ("query", "test.txt"), ("database", "database.txt")):
        assert record["files"][name]["sha256"] == hashlib.sha256((tmp_path / "coco" / file).read_bytes()).hexdigest()
    assert record["rows"]["query"] == list(range(12)) and len(record["rows"]["train"]) == 24
    assert store.get_run(3).summary["retrieval_split"]["source"] == "recorded"
    assert TrainSpec.model_validate(store.get_run(2).config).data == DataSpec(
        name="coco", data_dir=tmp_path / "coco", image_size=8, val_fraction=0.25)
