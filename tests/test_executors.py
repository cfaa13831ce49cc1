"""Executors on real components: a local Ray cluster started by the test, SQLite and a real
PostgreSQL server; several drivers on one store; a worker SIGKILLed mid-job."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from ssbench.store import open_store
from ssbench.store.models import Claim

pytest.importorskip("ray", reason="the Ray executor needs ray (pip install 'ssbench[scale]'; make test installs it)")

SSBENCH = [str(Path(sys.executable).with_name("ssbench"))]  # the venv's console script

# pretrain, 3 fine-tunes, 3 attacks: 7 jobs of a few seconds each, deterministic
TINY = """
name: tiny-grid
seeds: [0]
data: {name: digits, classes: [0, 1, 2, 3, 4], val_fraction: 0.2, train_limit: 300}
models: [{name: mlp, hidden: [32]}]
pretrain: {epochs: 2, batch_size: 64, deterministic: true, optim: {lr: 0.05}}
finetune:
  data: {name: digits, classes: [5, 6, 7, 8, 9], val_fraction: 0.2, train_limit: 300}
  rules: [bp, fa, usf]
  epochs: 1
  batch_size: 64
  deterministic: true
attack: {suite: whitebox, attacks: [fgsm], modes: [feedback, exact], eps: [0.0, 0.1], n_examples: 60}
"""


def _cli(*args: str, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*SSBENCH, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "COLUMNS": "200", **(env or {})})


def _finished(url: str) -> dict[tuple[str, str], list]:
    """(kind, config_hash) -> the finished runs' (test metric or sweep) numbers."""
    store = open_store(url)
    out: dict[tuple[str, str], list] = {}
    sweeps = store.frame_sweeps()
    for r in store.list_runs(status="finished"):
        if r.kind == "attack":
            pts = sweeps[sweeps.run_id == r.id].sort_values(["attack", "mode", "epsilon"])
            value = [round(v, 10) for v in pts.robust]
        else:
            value = [round(v, 10) for k, v in sorted((r.summary or {}).items()) if k.startswith("test_")]
        out.setdefault((r.kind, r.config_hash), []).append(value)
    store.close()
    return out


def _ray_daemons() -> set[int]:
    """pids of Ray's raylet and GCS processes on this machine."""
    ps = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    return {int(line.split(None, 1)[0]) for line in ps.splitlines() if "raylet" in line or "gcs_server" in line}


@pytest.fixture
def no_ray_left():  # noqa: ANN201
    """Fails the test if a Ray daemon started during it outlives it (another cluster may run here)."""
    before = _ray_daemons()
    yield
    deadline = time.monotonic() + 15  # ray.shutdown() signals them; give them a moment to exit
    while (left := _ray_daemons() - before) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, f"Ray daemons {sorted(left)} outlived the command"


@pytest.fixture(scope="module")
def local_result(tmp_path_factory) -> dict:
    """The reference: the tiny grid on the local executor."""
    d = tmp_path_factory.mktemp("local")
    (d / "r.yaml").write_text(TINY)
    url = f"sqlite:///{d / 'results.db'}"
    res = _cli("run", str(d / "r.yaml"), "--db", url, "-q", "--no-report")
    assert res.returncode == 0, res.stderr[-3000:]
    return _finished(url)


def test_local_grid_finishes_every_job_once(local_result: dict) -> None:
    assert sorted(k for k, _ in local_result) == ["attack"] * 3 + ["finetune"] * 3 + ["pretrain"]
    assert all(len(v) == 1 for v in local_result.values())


def test_ray_executor_same_jobs_and_numbers_as_local(local_result: dict, store_url: str, tmp_path: Path,
                                                    no_ray_left: None) -> None:
    (tmp_path / "r.yaml").write_text(TINY)
    res = _cli("run", str(tmp_path / "r.yaml"), "--executor", "ray", "--db", store_url,
               "--artifacts", str(tmp_path / "art"), "--no-report")
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stderr.count(" started ") == 7 and res.stderr.count(" finished ") == 7, res.stderr[-3000:]
    ray_result = _finished(store_url)
    # job identity does not depend on the order Ray numbered the runs in; deterministic numbers agree
    assert ray_result == local_result
    # a second driver afterwards runs nothing
    again = _cli("run", str(tmp_path / "r.yaml"), "--executor", "ray", "--db", store_url,
                 "--artifacts", str(tmp_path / "art"), "--no-report")
    assert again.returncode == 0 and "0 jobs ran, 7 already finished" in again.stderr, again.stderr[-2000:]


def test_two_drivers_at_once_run_each_job_exactly_once(store_url: str, tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_text(TINY)
    args = [*SSBENCH, "run", str(tmp_path / "r.yaml"), "--db", store_url, "--artifacts", str(tmp_path / "art"),
            "-q", "--no-report"]
    env = {**os.environ, "COLUMNS": "200", "OMP_NUM_THREADS": "1"}
    drivers = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
               for _ in range(2)]
    outs = [d.communicate(timeout=600) for d in drivers]
    assert all(d.returncode == 0 for d in drivers), [o[1][-2000:] for o in outs]
    store = open_store(store_url)
    runs = store.list_runs()
    assert len(runs) == 7 and all(r.status == "finished" for r in runs)
    assert len({(r.kind, r.config_hash) for r in runs}) == 7
    # the work was shared or waited for, never repeated: 7 runs between the two drivers
    ran = sum(int(o[1].split(" jobs ran")[0].rsplit(" ", 1)[-1]) for o in outs)
    assert ran == 7, [o[1][-1500:] for o in outs]
    store.close()


def test_sigkilled_worker_is_retried_and_the_killed_attempt_marked_failed(tmp_path: Path, no_ray_left: None) -> None:
    url = f"sqlite:///{tmp_path / 'results.db'}"
    # one long pretrain (many epochs) to kill mid-way; the rest as usual
    (tmp_path / "r.yaml").write_text(TINY.replace("pretrain: {epochs: 2", "pretrain: {epochs: 300"))
    driver = subprocess.Popen([*SSBENCH, "run", str(tmp_path / "r.yaml"), "--executor", "ray", "--db", url, "--no-report"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "COLUMNS": "200"})
    store = open_store(url)
    victim = None
    deadline = time.monotonic() + 180
    while victim is None and time.monotonic() < deadline and driver.poll() is None:
        with store.session() as s:
            row = s.scalars(select(Claim).where(Claim.kind == "pretrain", Claim.status == "running")).first()
        # kill once epoch 2 is logged: epoch 1's resume state is then on disk (it is written after
        # epoch 1's rows), so the retry has something to resume from
        metrics = store.frame_metrics(kind="pretrain")
        if row is not None and len(metrics) and metrics.epoch.max() >= 2:
            victim = row.pid
        time.sleep(0.05)
    assert victim is not None, "the pretrain job never started"
    os.kill(victim, signal.SIGKILL)
    out, err = driver.communicate(timeout=600)
    assert driver.returncode == 0, err[-3000:]
    runs = store.list_runs(kind="pretrain")
    assert [r.status for r in runs] == ["failed", "finished"], [(r.id, r.status, r.error) for r in runs]
    assert runs[0].error.startswith("WorkerLost:") and str(victim) in runs[0].error
    with store.session() as s:
        claim = s.scalars(select(Claim).where(Claim.kind == "pretrain")).one()
    assert claim.attempts == 2 and claim.status == "finished" and claim.run_id == runs[1].id
    finished = store.list_runs(status="finished")
    assert len(finished) == 7 and len({(r.kind, r.config_hash) for r in finished}) == 7
    assert "(attempt 2)" in err
    # the retry continued the killed attempt's training rather than starting over
    assert runs[1].summary["resumed_from"]["run"] == runs[0].id and runs[1].summary["resumed_from"]["epoch"] >= 1
    store.close()


def test_unknown_executor_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_text(TINY)
    res = _cli("run", str(tmp_path / "r.yaml"), "--executor", "slurm")
    assert res.returncode == 2 and res.stderr.strip().count("\n") == 0
    assert "unknown executor 'slurm'; choose from: local, ray" in res.stderr


def test_dry_run_prints_the_plan_with_states(tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_text(TINY)
    url = f"sqlite:///{tmp_path / 'results.db'}"
    res = _cli("run", str(tmp_path / "r.yaml"), "--db", url, "--dry-run", env={"COLUMNS": "250"})
    assert res.returncode == 0, res.stderr
    rows = [line for line in res.stdout.splitlines() if line.startswith("│")]
    assert len(rows) == 7
    assert "pretrain" in rows[0] and "to run" in rows[0]
    assert all("waits for #1" in r for r in rows[1:4]), rows
    assert "fa" in rows[2] and "mlp" in rows[2]
    assert "waits for #3" in rows[5]
    store = open_store(url)
    assert not store.list_runs()  # nothing ran
    # a live worker (this process) holds the pretrain: the plan says so
    from ssbench.recipes import load_recipe, plan
    from ssbench.store import claims

    pre = plan(load_recipe(tmp_path / "r.yaml")).jobs[0]
    assert isinstance(claims.acquire(store, "pretrain", store.job_hash(pre.spec), label=pre.label), claims.Lease)
    res = _cli("run", str(tmp_path / "r.yaml"), "--db", url, "--dry-run", env={"COLUMNS": "250"})
    first = next(line for line in res.stdout.splitlines() if line.startswith("│"))
    assert f"claimed by live worker {os.uname().nodename}:{os.getpid()}" in first, first


def test_ray_asks_one_gpu_per_cuda_job() -> None:
    from ssbench.executors.ray_executor import wants_gpu

    assert wants_gpu("cuda", 0) and wants_gpu("cuda:1", 0) and wants_gpu("auto", 1)
    assert not wants_gpu("cpu", 1) and not wants_gpu("auto", 0)
