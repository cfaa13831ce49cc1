"""Artifact files under a movable root: relative paths in the store, sha256 checked on every load,
old absolute rows still found, a copied results folder still loads and attacks (digits, seconds)."""
from __future__ import annotations

import hashlib
import io
import shutil
from pathlib import Path

import pytest
import torch
from rich.console import Console
from sqlalchemy import select, update
from typer.testing import CliRunner

from ssbench.errors import ArtifactError, CheckpointError
from ssbench.specs import AttackSpec, DataSpec, HashSpec, ModelSpec, OptimSpec, RuleSpec, TrainSpec
from ssbench.store import Checkpoint, open_store
from ssbench.store.artifacts import artifact_root, resolve, to_stored, verify
from ssbench.training import load_trained, run_training

DIGITS = DataSpec(name="digits", classes=(0, 1, 2, 3, 4), val_fraction=0.2)
MLP = ModelSpec(name="mlp", hidden=(32,))


def _train(store, seed: int = 0, **kw) -> int:  # noqa: ANN001
    spec = TrainSpec(kind="pretrain", data=DIGITS, model=MLP, optim=OptimSpec(lr=0.05), epochs=2, batch_size=64,
                     seed=seed, device="cpu", **kw)
    return run_training(spec, store, quiet=True)


def _stored_paths(store, run_id: int) -> dict[str, str]:  # noqa: ANN001
    with store.session() as s:
        return {c.tag: c.path for c in s.scalars(select(Checkpoint).where(Checkpoint.run_id == run_id))}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- the path functions --------------------------------------------------------------------------

def test_paths_are_relative_under_the_root_and_absolute_elsewhere(tmp_path: Path) -> None:
    root = tmp_path / "res"
    assert to_stored(root / "checkpoints" / "3" / "best.pt", root) == "checkpoints/3/best.pt"
    assert to_stored(tmp_path / "elsewhere.pt", root) == str(tmp_path / "elsewhere.pt")
    assert resolve("checkpoints/3/best.pt", root) == root / "checkpoints/3/best.pt"


def test_old_absolute_paths_fall_back_to_the_checkpoints_tail(tmp_path: Path) -> None:
    root = tmp_path / "new"
    (root / "checkpoints" / "7").mkdir(parents=True)
    (root / "checkpoints" / "7" / "best.pt").write_bytes(b"w")
    gone = "/somewhere/old/checkpoints/7/best.pt"
    assert resolve(gone, root, run_id=7) == root / "checkpoints/7/best.pt"
    assert resolve(gone, root) == root / "checkpoints/7/best.pt"  # no run id: the path's own tail
    assert resolve("/somewhere/old/other.pt", root) == Path("/somewhere/old/other.pt")  # named as recorded
    here = tmp_path / "kept.pt"
    here.write_bytes(b"x")
    assert resolve(str(here), root, run_id=7) == here  # an absolute path that exists is used as is


def test_verify_names_the_file_and_both_hashes(tmp_path: Path) -> None:
    f = tmp_path / "a.pt"
    f.write_bytes(b"abc")
    assert verify(f, _sha(f), "checkpoint a") == f
    assert verify(f, None, "checkpoint a") == f  # nothing recorded: nothing to compare
    with pytest.raises(ArtifactError) as err:
        verify(f, "0" * 64, f"checkpoint {f}")
    msg = str(err.value)
    assert "\n" not in msg and str(f) in msg and "0" * 64 in msg and _sha(f) in msg
    with pytest.raises(ArtifactError, match="is missing"):
        verify(tmp_path / "nope.pt", "0" * 64, "checkpoint nope")


def test_artifact_root_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SSBENCH_ARTIFACTS", raising=False)
    db = tmp_path / "db" / "r.db"
    assert artifact_root(None, db, tmp_path / "home") == tmp_path / "db"
    assert artifact_root(None, None, tmp_path / "home") == tmp_path / "home"
    monkeypatch.setenv("SSBENCH_ARTIFACTS", str(tmp_path / "env"))
    assert artifact_root(None, db, tmp_path / "home") == tmp_path / "env"
    assert artifact_root(tmp_path / "arg", db, tmp_path / "home") == tmp_path / "arg"
    store = open_store(f"sqlite:///{db}")
    assert store.artifacts == tmp_path / "env" and store.home == store.artifacts
    store = open_store(f"sqlite:///{db}", artifacts=tmp_path / "arg")
    assert store.checkpoint_dir(4) == tmp_path / "arg" / "checkpoints" / "4"


# -- through the store ---------------------------------------------------------------------------

def test_checkpoint_paths_are_stored_relative(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'r.db'}")
    run_id = _train(store)
    assert _stored_paths(store, run_id) == {"best": f"checkpoints/{run_id}/best.pt", "last": f"checkpoints/{run_id}/last.pt"}
    ck = store.checkpoint(run_id, "best")  # what callers see: resolved under the root
    assert Path(ck.path) == tmp_path / "checkpoints" / str(run_id) / "best.pt"
    assert _sha(Path(ck.path)) == ck.sha256
    assert _stored_paths(store, run_id)["best"] == f"checkpoints/{run_id}/best.pt"  # resolving wrote nothing back


def test_a_copied_results_folder_loads_and_attacks(tmp_path: Path) -> None:
    from ssbench.attacks.job import run_attack

    old = tmp_path / "old"
    store = open_store(f"sqlite:///{old / 'r.db'}")
    run_id = _train(store)
    expect = load_trained(store, run_id).model.state_dict()
    store.close()
    new = tmp_path / "moved"
    shutil.copytree(old, new)
    shutil.rmtree(old)  # nothing may still point at the old folder
    moved = open_store(f"sqlite:///{new / 'r.db'}", artifacts=new)
    trained = load_trained(moved, run_id)
    assert trained.path == new / "checkpoints" / str(run_id) / "best.pt" and trained.artifacts == new
    got = trained.model.state_dict()
    assert all(torch.equal(expect[k], got[k]) for k in expect)
    spec = AttackSpec(target=str(run_id), attacks=("fgsm",), modes=("exact",), eps=(0.0, 0.1), n_examples=20,
                      device="cpu")
    attack_id = run_attack(spec, moved, console=Console(file=io.StringIO()), quiet=True)
    assert moved.get_run(attack_id).status == "finished"
    assert len(moved.frame_sweeps().query("run_id == @attack_id")) == 2


def test_a_swapped_checkpoint_is_refused_with_both_hashes(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'r.db'}")
    a, b = _train(store, seed=0), _train(store, seed=1)
    path_a, path_b = Path(store.checkpoint(a).path), Path(store.checkpoint(b).path)
    stored, swapped = store.checkpoint(a).sha256, _sha(path_b)
    shutil.copy(path_b, path_a)
    with pytest.raises(ArtifactError) as err:
        load_trained(store, a)
    msg = str(err.value)
    assert stored in msg and swapped in msg and str(path_a) in msg and f"run {a}" in msg
    # a fine-tune from it is refused too, before any training
    spec = TrainSpec(kind="finetune", source=str(a), data=DIGITS, model=MLP, rule=RuleSpec(name="fa"), epochs=1,
                     device="cpu")
    with pytest.raises(CheckpointError, match=stored):
        run_training(spec, store, quiet=True)
    assert load_trained(store, b).path == path_b  # the untouched run still loads


def test_old_absolute_rows_keep_working(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'r.db'}")
    run_id = _train(store)
    real = tmp_path / "checkpoints" / str(run_id) / "best.pt"
    with store.session() as s, s.begin():  # as rows were written before paths were relative
        s.execute(update(Checkpoint).where(Checkpoint.run_id == run_id, Checkpoint.tag == "best").values(path=str(real)))
    assert load_trained(store, run_id).path == real
    with store.session() as s, s.begin():  # ... by a store that lived in another folder
        s.execute(update(Checkpoint).where(Checkpoint.run_id == run_id, Checkpoint.tag == "best")
                  .values(path=f"/gone/results/checkpoints/{run_id}/best.pt"))
    assert load_trained(store, run_id).path == real


def test_the_retrieval_split_is_relative_and_moves_with_the_folder(tmp_path: Path) -> None:
    from ssbench.data import load_data
    from ssbench.retrieval.scoring import recorded_split

    old = tmp_path / "old"
    store = open_store(f"sqlite:///{old / 'r.db'}")
    spec = TrainSpec(kind="train", task="hashing", hashing=HashSpec(bits=8), data=DIGITS, model=MLP, epochs=1,
                     batch_size=64, device="cpu")
    run_id = run_training(spec, store, quiet=True)
    entry = store.get_run(run_id).summary["retrieval_split"]
    assert entry["path"] == f"checkpoints/{run_id}/retrieval_split.json"
    store.close()
    shutil.copytree(old, tmp_path / "new")
    shutil.rmtree(old)
    moved = open_store(f"sqlite:///{tmp_path / 'new' / 'r.db'}")
    target = load_trained(moved, run_id)
    bundle = load_data(spec.data)
    split, used = recorded_split(target, bundle)
    assert split is not None and used == {"source": "recorded", "path": entry["path"], "sha256": entry["sha256"]}
    (tmp_path / "new" / entry["path"]).write_text("{}")
    with pytest.raises(ArtifactError, match=entry["sha256"]):
        recorded_split(target, bundle)


def test_every_command_with_db_takes_artifacts() -> None:
    import typer.main

    from ssbench.cli import app

    def commands(cmd, prefix=""):  # noqa: ANN001, ANN202
        for name, sub in getattr(cmd, "commands", {}).items():
            yield from commands(sub, f"{prefix} {name}")
        if not getattr(cmd, "commands", None):
            yield prefix.strip(), cmd

    checked = 0
    for name, cmd in commands(typer.main.get_command(app)):
        opts = {o for p in cmd.params for o in getattr(p, "opts", [])}
        if "--db" in opts:
            checked += 1
            assert "--artifacts" in opts, name
            artifacts = next(p for p in cmd.params if "--artifacts" in getattr(p, "opts", []))
            assert artifacts.envvar == "SSBENCH_ARTIFACTS", name
    assert checked >= 7


def test_cli_artifacts_option_reaches_the_store(tmp_path: Path) -> None:
    runner = CliRunner()
    db = f"sqlite:///{tmp_path / 'db' / 'r.db'}"
    result = runner.invoke(__import__("ssbench.cli", fromlist=["app"]).app,
                           ["pretrain", "-d", "digits", "-m", "mlp", "--hidden", "16", "-e", "1", "-q", "--device", "cpu",
                            "--db", db, "--artifacts", str(tmp_path / "files")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "files" / "checkpoints" / "1" / "best.pt").is_file()
    assert not (tmp_path / "db" / "checkpoints").exists()
    assert load_trained(open_store(db, artifacts=tmp_path / "files"), 1).path.is_file()
