"""What `runs` and `show` print (JSON that round-trips the database, a compact `show`), `--version`,
shell completion, and a fine-tune's defaults from its backbone (issue 14 item 4)."""
from __future__ import annotations

import json
import re
import shutil
import sqlite3
import subprocess
import sys
from datetime import datetime
from importlib.metadata import version
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ssbench.cli import app
from ssbench.errors import SpecError
from ssbench.specs import DataSpec
from ssbench.store import open_store
from ssbench.store.export import RUN_KEYS
from ssbench.training.backbone import Backbone, resolve_inputs, resolve_model

runner = CliRunner(env={"COLUMNS": "200"})
TAG = "t\x1b[2J\x7fé"  # control characters and non-ASCII: escaped in the JSON, back intact when parsed
SEED = 3


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """run 1: pretrain on digits 0-4 (seed 3); run 2: its fgsm attack; run 3: a fine-tune given only --from."""
    tmp = tmp_path_factory.mktemp("out")
    path = tmp / "o.db"
    db = ["--db", f"sqlite:///{path}"]
    for argv in (["pretrain", "-d", "digits", "--classes", "0-4", "-m", "mlp", "--hidden", "16", "-e", "1", "-b", "64",
                  "--seed", str(SEED), "--tag", TAG, "--device", "cpu", "-q"],
                 ["attack", "1", "--attack", "fgsm", "--eps", "0,0.1", "--n", "20", "--device", "cpu"],
                 ["finetune", "--from", "1", "--rule", "fa", "-e", "1", "-b", "64", "--device", "cpu"]):
        r = runner.invoke(app, [*argv, *db])
        assert r.exit_code == 0, r.output
    return {"db": db, "path": path, "finetune_output": r.output}


def _rows(path: Path, sql: str, *args: object) -> list[sqlite3.Row]:
    # the database read without SQLAlchemy: an independent account of what is stored
    con = sqlite3.connect(path)
    con.row_factory = sqlite3.Row
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


def _stored(value: object) -> object:
    return value.isoformat() if isinstance(value, datetime) else value


def test_runs_json_round_trips_every_column(world: dict) -> None:
    r = runner.invoke(app, ["runs", "--json", *world["db"]])
    assert r.exit_code == 0, r.output
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]", r.stdout)  # no raw control character
    listed = json.loads(r.stdout)
    runs = open_store(world["db"][1]).list_runs()
    assert [x["id"] for x in listed] == [run.id for run in runs] == [1, 2, 3]
    for got, run in zip(listed, runs):
        assert set(got) == {*RUN_KEYS, "liveness", "labels"}
        for key in RUN_KEYS:
            assert got[key] == _stored(getattr(run, key)), key  # floats exactly: == on the stored doubles
        assert got["liveness"] is None  # finished
    assert listed[0]["tags"] == [TAG]
    assert isinstance(listed[0]["seconds"], float) and listed[0]["seconds"] == runs[0].seconds
    assert set(RUN_KEYS) == {row["name"] for row in _rows(world["path"], "PRAGMA table_info(runs)")}
    # the attack run is labelled as the run it attacked: class subset and widths included
    assert listed[1]["labels"] == listed[0]["labels"] == {"rule": "bp", "model": "mlp[16]", "dataset": "digits[0-4]"}
    assert json.loads(runner.invoke(app, ["runs", "--json", "--kind", "finetune", *world["db"]]).stdout)[0]["id"] == 3
    assert json.loads(runner.invoke(app, ["runs", "--json", "--kind", "analysis", *world["db"]]).stdout) == []


def test_runs_table_labels_attacks_by_their_target(world: dict) -> None:
    out = runner.invoke(app, ["runs", *world["db"]]).output
    attack = next(line for line in out.splitlines() if re.match(r"\s*2\s+attack", line))
    assert "mlp[16]" in attack and "digits[0-4]" in attack


def test_show_json_round_trips_the_stored_rows(world: dict) -> None:
    path = world["path"]
    attack = json.loads(runner.invoke(app, ["show", "2", "--json", *world["db"]]).stdout)
    stored = _rows(path, "SELECT sweep, attack, params, mode, epsilon, n, robust, metric, seconds, correct "
                         "FROM sweep_points WHERE run_id = 2 ORDER BY id")
    assert len(attack["sweeps"]) == len(stored) == 4  # fgsm x (feedback, exact) x 2 eps
    for got, row in zip(attack["sweeps"], stored):
        assert got == {**dict(row), "params": json.loads(row["params"])}
        assert len(got["correct"]) == got["n"] == 20
    summary = _rows(path, "SELECT summary, config FROM runs WHERE id = 2")[0]
    assert attack["summary"] == json.loads(summary["summary"]) and attack["config"] == json.loads(summary["config"])
    assert len(attack["summary"]["indices"]) == 20
    checks = _rows(path, "SELECT name, passed, value, detail, attack, mode FROM sanity_checks WHERE run_id = 2 ORDER BY id")
    assert attack["sanity_checks"] == [{**dict(c), "passed": None if c["passed"] is None else bool(c["passed"])}
                                       for c in checks] and checks
    assert attack["labels"]["dataset"] == "digits[0-4]" and attack["checkpoints"] == [] and attack["children"] == []

    pre = json.loads(runner.invoke(app, ["show", "1", "--json", *world["db"]]).stdout)
    metrics = _rows(path, "SELECT epoch, split, name, value, seconds FROM metrics WHERE run_id = 1 ORDER BY id")
    assert pre["metrics"] == [dict(m) for m in metrics] and metrics
    evals = _rows(path, "SELECT metric, value, split, params FROM evaluations WHERE run_id = 1 ORDER BY id")
    assert pre["evaluations"] == [{**dict(e), "params": json.loads(e["params"])} for e in evals] and evals
    ckpts = open_store(world["db"][1]).checkpoints(1)
    assert [(c["tag"], c["sha256"], c["path"], c["epoch"], c["metric"]) for c in pre["checkpoints"]] == [
        (c.tag, c.sha256, c.path, c.epoch, c.metric) for c in ckpts]
    assert all(Path(c["path"]).is_file() for c in pre["checkpoints"])  # resolved against the artifact root
    assert pre["children"] == [2, 3] and pre["tags"] == [TAG]


def test_show_is_compact_unless_full(world: dict) -> None:
    summary = json.loads(_rows(world["path"], "SELECT summary FROM runs WHERE id = 2")[0]["summary"])
    idx = summary["indices"]
    floats = [v for v in (summary["clean_accuracy"], *summary["worst_case"].values()) if isinstance(v, float)]
    short = runner.invoke(app, ["show", "2", *world["db"]])
    assert short.exit_code == 0, short.output
    line = next(ln for ln in short.output.splitlines() if ln.strip().startswith("indices"))
    assert line.split(None, 1)[1] == f"[{', '.join(map(str, idx[:5]))}, …] ({len(idx)} items)"
    assert f"clean_accuracy  {summary['clean_accuracy']:.4g}" in short.output
    assert not re.search(r"\d\.\d{6,}", short.output)  # no float printed with more than 5 decimals
    assert "config" not in [ln.strip() for ln in short.output.splitlines()] and '"n_examples"' not in short.output
    full = runner.invoke(app, ["show", "2", "--full", *world["db"]])
    assert full.exit_code == 0, full.output
    assert all(repr(v) in full.output for v in floats)  # the stored values, unrounded
    lines = [ln.strip().rstrip(",") for ln in full.output.splitlines()]
    assert [int(ln) for ln in lines if ln.isdigit()][:len(idx)] == idx  # every index
    assert '"n_examples": 20' in full.output  # the configuration
    assert len(full.output.splitlines()) > len(short.output.splitlines()) + len(idx)
    assert '"n_examples": 20' in runner.invoke(app, ["show", "2", "--config", *world["db"]]).output


def test_compact_rounds_floats_and_cuts_long_lists() -> None:
    from ssbench.listing import compact

    assert compact({"acc": 0.949999988079071, "idx": list(range(40)), "tag": "x"}) == \
        '{"acc": 0.95, "idx": [0, 1, 2, 3, 4, …] (40 items), "tag": "x"}'
    assert compact(list(range(8))) == "[0, 1, 2, 3, 4, 5, 6, 7]" and compact("best") == "best"
    assert compact([1 / 3, None, True]) == "[0.3333, null, true]"


def test_version_is_the_distribution_version_and_loads_no_torch() -> None:
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and r.output == f"ssbench {version('ssbench')}\n"
    code = ("import sys\nfrom ssbench.cli import main\nsys.argv = ['ssbench', '--version']\n"
            "try:\n    main()\nexcept SystemExit as e:\n    print(e.code, 'torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.splitlines() == [f"ssbench {version('ssbench')}", "0 False"], proc.stderr


def _complete(words: str, env: dict | None = None) -> list[str]:
    cword = len(words.split()) - (0 if words.endswith(" ") else 1)
    r = runner.invoke(app, [], prog_name="ssbench", env={
        "_SSBENCH_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(cword), **(env or {})})
    assert r.exit_code == 0, r.output
    return r.output.split()


def test_completion_protocol_completes_commands_options_and_choices() -> None:
    assert _complete("ssbench fi") == ["finetune"]
    assert _complete("ssbench show --js") == ["--json"]
    assert _complete("ssbench runs --kind ") == ["pretrain", "finetune", "train", "attack", "analysis"]


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_installed_bash_completion_completes_in_bash(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("ssbench")  # the console script: its name is the program name
    if not exe.is_file():
        pytest.skip("ssbench is not installed as a console script in this environment")
    # typer's switch for naming the shell instead of detecting the one this test happens to run under
    env = {"HOME": str(tmp_path), "PATH": f"{exe.parent}:/usr/bin:/bin", "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"}
    shown = subprocess.run([str(exe), "--show-completion", "bash"], env=env, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and "_SSBENCH_COMPLETE=complete_bash" in shown.stdout, shown.stderr
    done = subprocess.run([str(exe), "--install-completion", "bash"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    script = tmp_path / ".bash_completions" / "ssbench.sh"
    assert script.read_text().strip() == shown.stdout.strip() and str(script) in (tmp_path / ".bashrc").read_text()
    probe = (f"source {script}; COMP_WORDS=(ssbench pre); COMP_CWORD=1; _ssbench_completion ssbench; "
             'printf "%s\\n" "${COMPREPLY[@]}"')
    proc = subprocess.run(["bash", "-c", probe], env=env, capture_output=True, text=True, timeout=60)
    assert proc.stdout.split() == ["pretrain"], proc.stderr


# ---------------------------------------------------------------- finetune --from: the backbone's defaults


def test_finetune_takes_data_seed_and_model_from_its_backbone(world: dict) -> None:
    store = open_store(world["db"][1])
    backbone, fine = store.get_run(1), store.get_run(3)
    assert fine.parent_id == 1 and fine.seed == SEED == backbone.seed
    assert fine.config["data"]["name"] == "digits" and fine.config["data"]["classes"] is None  # all ten
    assert fine.config["model"]["hidden"] == [16] and fine.config["seed"] == SEED
    assert world["finetune_output"].strip().endswith("taken from run 1: --dataset digits --seed 3")


def test_finetune_refuses_an_input_size_its_backbone_cannot_take(world: dict) -> None:
    r = runner.invoke(app, ["finetune", "--from", "1", "--rule", "fa", "-d", "fashion-mnist", "--image-size", "28",
                            *world["db"]])
    assert r.exit_code == 2
    assert r.output.strip() == ("error: --image-size 28: run 1 takes 1x8px images; leave --image-size unset "
                                "(a fine-tune takes its backbone's input, resizing another data set to it)")


BACKBONE = Backbone(source="run 7", model={"name": "mlp", "hidden": [32, 32]},
                    data=DataSpec(name="digits", classes=(0, 1, 2, 3, 4)), in_channels=1, image_size=8, seed=4)
UNSET = dict(dataset=None, image_size=None, channels=None, seed=None)


def test_resolve_inputs_fills_only_what_is_unset() -> None:
    same = resolve_inputs(BACKBONE, **UNSET)
    assert (same.dataset, same.image_size, same.channels, same.seed) == ("digits", None, None, 4)
    assert same.taken == {"--dataset": "digits", "--seed": "4"}
    assert same.note == "taken from run 7: --dataset digits --seed 4"
    # the backbone's own setting on its data set; on another data set, resized to the backbone's input
    resized = Backbone(**{**BACKBONE.__dict__, "data": DataSpec(name="digits", image_size=12), "image_size": 12})
    assert resolve_inputs(resized, **UNSET).image_size == 12
    other = resolve_inputs(BACKBONE, **{**UNSET, "dataset": "fashion-mnist"})
    assert (other.image_size, other.channels, other.seed) == (8, None, 4)
    assert other.note == "taken from run 7: --image-size 8 --seed 4"
    rgb = Backbone(**{**BACKBONE.__dict__, "data": DataSpec(name="digits", channels=3), "in_channels": 3})
    assert resolve_inputs(rgb, **UNSET).channels == 3 and resolve_inputs(rgb, **{**UNSET, "dataset": "mnist"}).channels is None
    # given values win
    given = resolve_inputs(BACKBONE, dataset="digits", image_size=8, channels=1, seed=0)
    assert (given.image_size, given.channels, given.seed, given.taken, given.note) == (8, 1, 0, {}, "")
    # no backbone (pretrain, train, finetune --weights): the specs' defaults
    none = resolve_inputs(None, **UNSET)
    assert (none.dataset, none.image_size, none.channels, none.seed, none.note) == ("fashion-mnist", None, None, 0, "")
    with pytest.raises(SpecError, match=r"^--channels 3: run 7 takes 1x8px images; give --channels 1 or leave it unset$"):
        resolve_inputs(BACKBONE, **{**UNSET, "channels": 3})
    assert resolve_model(BACKBONE, None, None).hidden == (32, 32)
    assert resolve_model(BACKBONE, None, (64,)).hidden == (64,)
    assert resolve_model(BACKBONE, "lenet", None).name == "lenet" and resolve_model(None, None, None).name == "lenet"


def test_json_round_trips_awkward_values_on_each_backend(store_url: str) -> None:
    """Doubles that print long, a tiny one, a NaN (stored NULL), nested JSON: on SQLite and PostgreSQL."""
    from ssbench.specs import TrainSpec
    from ssbench.store import AlignmentRow, SanityCheck, SweepPoint

    store = open_store(store_url)
    awkward = [0.1 + 0.2, 1 / 3, 1e-300, 0.949999988079071]
    spec = TrainSpec(seed=2, data=DataSpec(name="digits", classes=(1, 2, 3)))
    with store.run("pretrain", config=spec, seed=2, rule="bp", model="lenet", dataset="digits") as rec:
        rec.log_epoch(1, "val", {"accuracy": awkward[0], "loss": float("nan")}, seconds=awkward[1])
        rec.log_alignment(1, [AlignmentRow("fc1", awkward[2], awkward[3])])
        rec.log_evaluation("accuracy", awkward[3], params={"eps": awkward[:2]})
        rec.set_summary(worst_case={"0.1": awkward[1]}, deep=[{"x": awkward[2]}])
        parent = rec.run_id
    with store.run("attack", config=TrainSpec(), parent_id=parent) as rec:
        rec.add_sweep([SweepPoint("pgd", "exact", 8 / 255, 3, awkward[1], correct="101", params={"norm": "linf"})])
        rec.add_sanity([SanityCheck("eps0_equals_clean", None, awkward[0], "n/a")])
    shown = runner.invoke(app, ["show", str(parent), "--json", "--db", store_url])
    assert shown.exit_code == 0, shown.output
    got = json.loads(shown.stdout)
    assert [(m["name"], m["value"], m["seconds"]) for m in got["metrics"]] == [
        ("accuracy", awkward[0], awkward[1]), ("loss", None, awkward[1])]
    assert (got["alignment"][0]["angle_deg"], got["alignment"][0]["norm_ratio"]) == (awkward[2], awkward[3])
    assert got["evaluations"] == [{"metric": "accuracy", "value": awkward[3], "split": "test", "params": {"eps": awkward[:2]}}]
    assert got["summary"] == {"worst_case": {"0.1": awkward[1]}, "deep": [{"x": awkward[2]}]}
    run = store.get_run(parent)
    assert {k: got[k] for k in RUN_KEYS} == {k: _stored(getattr(run, k)) for k in RUN_KEYS}
    assert datetime.fromisoformat(got["started_at"]) == run.started_at and got["children"] == [parent + 1]
    attack = json.loads(runner.invoke(app, ["show", str(parent + 1), "--json", "--db", store_url]).stdout)
    stored = store.frame_sweeps()
    assert attack["sweeps"][0]["robust"] == awkward[1] and attack["sweeps"][0]["correct"] == "101"
    assert attack["sweeps"][0]["epsilon"] == float(stored["epsilon"].iloc[0])  # as stored (the store may round ε)
    assert attack["sanity_checks"] == [{"name": "eps0_equals_clean", "passed": None, "value": awkward[0],
                                        "detail": "n/a", "attack": None, "mode": None}]
    listed = json.loads(runner.invoke(app, ["runs", "--json", "--db", store_url]).stdout)
    assert [r["id"] for r in listed] == [parent, parent + 1] and listed[1]["labels"]["dataset"] == "digits[1-3]"
    store.close()
