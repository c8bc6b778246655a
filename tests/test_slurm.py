"""The slurm launcher against a real single-node SLURM cluster (tests/slurm/start.sh), through the real workflow.

Skipped, with the reason, where SLURM is absent or we are not root; DAAMFLOW_REQUIRE_SLURM=1 (CI) makes that a
failure. Every SLURM-talking step has a wall-clock timeout. Counting submissions uses the cluster's job completion log
(one record per job end or requeue; there is no slurmdbd, see tests/slurm/slurm.conf.in).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cloudpickle
import pandas as pd
import pytest
import yaml

from slurm.cluster import slurm_cluster  # noqa: F401  (the session fixture)

ROOT = Path(__file__).resolve().parents[1]
MICRO = ROOT / "tests/slurm/micro.yaml"
RUN = "runs/wordnet/minilm/paper/{method}"
COMPARED = ["fold", "seed", "accuracy", "macro_f1", "best_epoch", "epochs_run", "params", "settings_hash"]

pytestmark = pytest.mark.slow  # a few minutes on 2 cores
cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the small job functions below travel by value


def snakemake_cmd(results: Path, *args: str, overlay: dict | None = None) -> list[str]:
    """Snakemake on the test config; ``overlay`` is merged over it (a typed YAML file: --config gives strings)."""
    configfiles = [str(MICRO)]
    if overlay:
        path = results.parent / f"overlay-{abs(hash(json.dumps(overlay, sort_keys=True)))}.yaml"
        path.write_text(yaml.safe_dump(overlay))
        configfiles.append(str(path))
    # targets first: --configfile and --config take every word after them
    return [sys.executable, "-m", "snakemake", *args, "--cores", "2", "--configfile", *configfiles,
            "--config", f"results_dir={results}"]


def env() -> dict:
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "HF_HUB_OFFLINE": "1"}


def snakemake(results: Path, *args: str, timeout: float = 180, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(snakemake_cmd(results, *args, **kw), cwd=ROOT, env=env(), capture_output=True, text=True,
                          timeout=timeout)


def wait_for(predicate, timeout: float, what: str, step: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def job_name(method: str) -> str:
    return f"daamflow:wordnet/minilm/paper/{method}"


def metrics(run: Path, fold: str) -> dict:
    m = json.loads((run / fold / "metrics.json").read_text())
    return {k: m[k] for k in ("accuracy", "macro_f1", "confusion", "best_epoch", "select_accuracy", "epochs_run")}


@pytest.fixture(scope="module")
def results(slurm_cluster, tmp_path_factory):
    """A results folder whose feature store is built (inline); each test trains other methods in it."""
    results = tmp_path_factory.mktemp("slurm-wf") / "results"
    store = results / "features/wordnet/minilm/features.npy"
    proc = snakemake(results, str(store), overlay={"launcher": {"kind": "inline"}})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return results


def train_in_background(store, settings, out, launcher) -> tuple[threading.Thread, list]:
    """fold1 trained through ``launcher`` in a thread; its exception, if any, lands in the returned list (re-raised
    by the test thread's ``assert not errors``)."""
    from daamflow.run.train import train_all

    errors: list = []

    def train():
        try:
            train_all(store, settings, out, only=["fold1"], launcher=launcher)
        except BaseException as err:  # noqa: BLE001
            errors.append(err)

    worker = threading.Thread(target=train, daemon=True)
    worker.start()
    return worker, errors

def test_workflow_on_slurm_matches_inline(slurm_cluster, results, tmp_path):
    from daamflow.run.train import train_all

    methods = ["mha", "weighted_sum"]
    proc = snakemake(results, *(str(results / RUN.format(method=m) / "runs.csv") for m in methods))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    for method in methods:
        run = results / RUN.format(method=method)
        record = json.loads((run / "jobs.json").read_text())
        ids = {fold: entry["job_id"] for fold, entry in record["jobs"].items()}
        assert set(ids) == {"fold1", "fold2"} and record["history"] == []
        assert {e["kind"] for e in record["jobs"].values()} == {"slurm"}
        digest = json.loads((run / "fold1/metrics.json").read_text())["settings_hash"]
        assert {e["settings_hash"] for e in record["jobs"].values()} == {digest}
        # one job array over the folds, each task run once and completed
        array = {i.split("_")[0] for i in ids.values()}
        assert len(array) == 1, ids
        for job_id in ids.values():  # the result file comes a moment before the job's end is logged
            slurm_cluster.wait_state(job_id, {"COMPLETED"}, timeout=30)
        done = sorted((r["ArrayJobId"], r["ArrayTaskId"], r["JobState"]) for r in slurm_cluster.completions(job_name(method)))
        assert done == [(*array, "0", "COMPLETED"), (*array, "1", "COMPLETED")]
        # the inline launcher on the same store and settings gives the same numbers
        settings = json.loads((run / "settings.json").read_text())
        inline = train_all(results / "features/wordnet/minilm", settings, tmp_path / method)
        on_slurm = pd.read_csv(run / "runs.csv")
        pd.testing.assert_frame_equal(on_slurm[COMPARED], inline[COMPARED], check_dtype=False)
        for fold in ids:
            assert metrics(run, fold) == metrics(tmp_path / method, fold)


def test_requeued_training_resumes_with_identical_metrics(slurm_cluster, results, tmp_path):
    from daamflow.config import load_config, train_settings
    from daamflow.run.train import train_all

    config = load_config(MICRO)
    settings = train_settings(config, "wordnet", "mha", "paper")
    settings["hyper"]["epochs"] = 80  # ~4 s of epochs: the signal lands mid-run
    store = results / "features/wordnet/minilm"
    out, launcher = tmp_path / "slurm", {**config["launcher"], "gpus_per_task": 0, "log_dir": str(tmp_path / "logs")}

    worker, errors = train_in_background(store, settings, out, launcher)
    wait_for(lambda: (out / "fold1/checkpoint.pt").exists(), 90, "the first epoch's checkpoint")
    job_id = json.loads((out / "jobs.json").read_text())["jobs"]["fold1"]["job_id"]
    assert slurm_cluster.states()[job_id][0] == "RUNNING"
    slurm_cluster.run("scancel", "--signal=USR2", job_id)  # what SLURM sends on preemption or before the time limit
    worker.join(timeout=150)
    assert not worker.is_alive(), "training on SLURM did not finish within 150 s after the requeue"
    assert not errors, errors

    # requeued once (a PENDING record at the requeue), then completed; never resubmitted under another id
    slurm_cluster.wait_state(job_id, {"COMPLETED"}, timeout=30)  # the result file comes a moment before the end
    states = [r["JobState"] for r in slurm_cluster.completions() if r["JobId"] == job_id]
    assert states == ["PENDING", "COMPLETED"], states
    log_text = Path(json.loads((out / "jobs.json").read_text())["jobs"]["fold1"]["stderr"]).read_text()
    assert "Requeued job" in log_text and "fold1: resuming at epoch" in log_text
    resumed_at = int(log_text.split("fold1: resuming at epoch ")[1].split()[0])
    assert 1 < resumed_at <= 80

    train_all(store, settings, tmp_path / "inline", only=["fold1"])
    assert metrics(out, "fold1") == metrics(tmp_path / "inline", "fold1")
    pd.testing.assert_frame_equal(pd.read_csv(out / "fold1/history.csv"),
                                  pd.read_csv(tmp_path / "inline/fold1/history.csv"))


def test_time_limit_requeues_and_resumes_with_identical_metrics(slurm_cluster, results, tmp_path):
    """A fold that needs more than its time limit: SLURM's USR2 ``signal_delay_s`` before the limit (not a manual
    scancel) checkpoints and requeues the job, which resumes at its next epoch and ends as an uninterrupted run."""
    from daamflow.config import load_config, train_settings
    from daamflow.run.train import train_all

    config = load_config(MICRO)
    settings = train_settings(config, "wordnet", "mha", "paper")
    store = results / "features/wordnet/minilm"
    # ~75 s of epochs at this machine's speed alone: with a 2-minute limit and a 60 s delay SLURM signals 30-60 s into
    # each run (its time-limit check runs every 30 s and signals up to that much early), so the first run is cut
    # short: at least one time-out requeue, and each run makes progress. Running beside the uninterrupted run below
    # only slows the job down.
    settings["hyper"]["epochs"] = 80
    start = time.monotonic()
    train_all(store, settings, tmp_path / "calibrate", only=["fold1"])
    settings["hyper"]["epochs"] = max(160, round(75 * 80 / (time.monotonic() - start)))
    launcher = {**config["launcher"], "gpus_per_task": 0, "timeout_min": 2, "signal_delay_s": 60, "max_requeues": 4,
                "log_dir": str(tmp_path / "logs")}
    out = tmp_path / "slurm"

    worker, errors = train_in_background(store, settings, out, launcher)
    train_all(store, settings, tmp_path / "inline", only=["fold1"])  # the uninterrupted run, meanwhile
    worker.join(timeout=240)
    assert not worker.is_alive(), "training on SLURM did not finish within 4 min"
    assert not errors, errors

    job_id = json.loads((out / "jobs.json").read_text())["jobs"]["fold1"]["job_id"]
    slurm_cluster.wait_state(job_id, {"COMPLETED"}, timeout=30)  # the result file comes a moment before the end
    states = [r["JobState"] for r in slurm_cluster.completions() if r["JobId"] == job_id]
    assert len(states) >= 2 and states[-1] == "COMPLETED" and set(states[:-1]) == {"PENDING"}, states  # requeued
    log_text = Path(json.loads((out / "jobs.json").read_text())["jobs"]["fold1"]["stderr"]).read_text()
    assert "Caught signal SIGUSR2" in log_text and "this job is timed-out" in log_text, log_text[-3000:]
    assert log_text.count("Requeued job") == len(states) - 1 and "fold1: resuming at epoch" in log_text
    assert metrics(out, "fold1") == metrics(tmp_path / "inline", "fold1")
    pd.testing.assert_frame_equal(pd.read_csv(out / "fold1/history.csv"),
                                  pd.read_csv(tmp_path / "inline/fold1/history.csv"))


def test_job_larger_than_the_node_fails_the_rule_within_the_grace_time(slurm_cluster, results):
    run = results / RUN.format(method="daam_v2")
    overlay = {"launcher": {"cpus_per_task": 1024, "never_start_grace_s": 5}}  # the test node has nproc CPUs
    start = time.monotonic()
    proc = snakemake(results, str(run / "runs.csv"), overlay=overlay, timeout=120)
    elapsed = time.monotonic() - start
    assert proc.returncode != 0 and not (run / "runs.csv").exists()
    log_text = (results / "logs/train/wordnet_minilm_paper_daam_v2.log").read_text()
    request = "cpus_per_task=1024, mem=1024M, time=10min, gres=gpu:1"
    # at once: the reason and the request, with the time left; then the failure
    assert "can never start: SLURM keeps it PENDING (PartitionConfig)" in log_text and "fails in 5 s" in log_text
    assert "LaunchError: 2 of 2 slurm job(s) failed" in log_text and log_text.count(request) >= 4, log_text
    output = proc.stdout + proc.stderr  # Snakemake shows the failed rule's log (show-failed-logs in profiles/default)
    assert "Error in rule train" in output and "PENDING (PartitionConfig)" in output and request in output
    assert elapsed < 60, f"the rule failed after {elapsed:.0f} s (grace 5 s)"
    # cancelled, not left in the queue (squeue then lists the never-started array under its bare id)
    array = {e["job_id"].split("_")[0] for e in json.loads((run / "jobs.json").read_text())["jobs"].values()}
    assert len(array) == 1
    wait_for(lambda: {s for i, (s, n) in slurm_cluster.states().items() if i.split("_")[0] in array} == {"CANCELLED"},
             30, "the cancelled jobs")


@pytest.mark.parametrize("request_, refusal", [
    ({"mem_gb": 1024}, "Memory specification can not be satisfied"),
    ({"constraint": "h100"}, "Invalid feature specification"),  # a feature no node has
])
def test_request_sbatch_refuses_fails_at_once_naming_it(slurm_cluster, tmp_path, request_, refusal):
    from daamflow.run import launch

    launcher = {"kind": "slurm", "cpus_per_task": 1, "mem_gb": 0.5, "timeout_min": 5, "log_dir": str(tmp_path),
                **request_}
    with pytest.raises(launch.LaunchError, match="submitting 0 with request cpus_per_task=1") as info:
        launch.run_calls(count_steps, [dict(path=str(tmp_path / "never"), steps=1, dt=0)], launcher, tmp_path / "a")
    assert refusal in str(info.value) and launch.request_summary(launch.resolve(launcher)) in str(info.value)


def test_killed_snakemake_reattaches_without_duplicate_submissions(slurm_cluster, results, tmp_path):
    method, run = "linear", results / RUN.format(method="linear")
    target = str(run / "runs.csv")
    # submitted on hold, so that the jobs are certainly still queued when Snakemake dies
    overlay = {"launcher": {"extra": {"hold": True}}}
    first = subprocess.Popen(snakemake_cmd(results, target, overlay=overlay), cwd=ROOT, env=env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        record = wait_for(lambda: (run / "jobs.json").exists() and json.loads((run / "jobs.json").read_text()), 90,
                          "the submission (jobs.json)")
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # Snakemake and its `daamflow train` child, mid-run
        first.wait(timeout=30)
    ids = {fold: e["job_id"] for fold, e in record["jobs"].items()}
    assert set(ids) == {"fold1", "fold2"}
    assert all(slurm_cluster.states()[i][0] == "PENDING" for i in ids.values())

    # fold1 may now run (and may finish before the restart); fold2 stays queued until the rerun has re-attached
    slurm_cluster.run("scontrol", "release", ids["fold1"])
    unlock = snakemake(results, target, "--unlock", overlay=overlay, timeout=120)
    assert unlock.returncode == 0, unlock.stderr[-3000:]
    second = subprocess.Popen(snakemake_cmd(results, target, overlay=overlay), cwd=ROOT, env=env(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        train_log = results / "logs/train/wordnet_minilm_paper_linear.log"
        wait_for(lambda: train_log.exists() and "re-attached" in train_log.read_text(), 90, "the re-attachment")
        assert f"fold2={ids['fold2']}" in train_log.read_text()
        slurm_cluster.run("scontrol", "release", ids["fold2"])
        output, _ = second.communicate(timeout=120)
    finally:
        if second.poll() is None:
            os.killpg(second.pid, signal.SIGKILL)
    assert second.returncode == 0, output[-4000:]
    assert "submitted" not in train_log.read_text()  # the rerun submitted nothing

    record = json.loads((run / "jobs.json").read_text())
    assert {f: e["job_id"] for f, e in record["jobs"].items()} == ids and record["history"] == []
    array = ids["fold1"].split("_")[0]
    for job_id in ids.values():  # the result file comes a moment before the job's end is logged
        slurm_cluster.wait_state(job_id, {"COMPLETED"}, timeout=30)
    ends = [(r["ArrayJobId"], r["ArrayTaskId"], r["JobState"]) for r in slurm_cluster.completions(job_name(method))]
    assert sorted(ends) == [(array, "0", "COMPLETED"), (array, "1", "COMPLETED")]  # 2 tasks, 1 submission
    assert len(pd.read_csv(run / "runs.csv")) == 2


def test_failing_job_fails_the_rule_with_its_traceback(slurm_cluster, results, tmp_path):
    run = results / RUN.format(method="identity")
    overlay = {"method_options": {"identity": {"no_such_option": 1}}}  # accepted by the config, refused by the model
    proc = snakemake(results, str(run / "runs.csv"), overlay=overlay)
    assert proc.returncode != 0
    assert "Error in rule train" in proc.stdout + proc.stderr
    assert not (run / "runs.csv").exists()
    log_text = (results / "logs/train/wordnet_minilm_paper_identity.log").read_text()
    assert "LaunchError: 2 of 2 slurm job(s) failed" in log_text
    assert "unknown option(s) ['no_such_option']" in log_text and "Traceback" in log_text
    stderr_paths = [e["stderr"] for e in json.loads((run / "jobs.json").read_text())["jobs"].values()]
    assert all(p in log_text and Path(p).exists() for p in stderr_paths)


def count_steps(path: str, steps: int, dt: float) -> int:
    """A job that counts to ``steps`` in ``path``, resuming from the count found there; returns where it started."""
    p = Path(path)
    start = int(p.read_text()) if p.exists() else 0
    for i in range(start, steps):
        time.sleep(dt)
        p.write_text(str(i + 1))
    return start


def test_requeue_limit_and_early_death_are_failures(slurm_cluster, tmp_path, monkeypatch):
    from daamflow.run import launch

    base = {"kind": "slurm", "poll_s": 0.2, "cpus_per_task": 1, "mem_gb": 0.5, "timeout_min": 5}
    counter = tmp_path / "count"
    launcher = {**base, "max_requeues": 0, "log_dir": str(tmp_path / "logs")}
    errors = []

    def run():
        try:
            launch.run_calls(count_steps, [dict(path=str(counter), steps=200, dt=0.05)], launcher, tmp_path / "a")
        except launch.LaunchError as err:
            errors.append(err)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    wait_for(counter.exists, 60, "the job to start counting")
    job_id = json.loads((tmp_path / "a/jobs.json").read_text())["jobs"]["0"]["job_id"]
    slurm_cluster.run("scancel", "--signal=USR2", job_id)
    worker.join(timeout=60)
    assert not worker.is_alive() and errors, "an interrupted job beyond max_requeues must fail"
    assert "launcher.max_requeues is 0" in str(errors[0])

    # a job that dies before Python runs (a failing setup line) leaves no result: reported, not waited for
    monkeypatch.setattr(launch, "RESULT_GRACE_S", 1.0)
    launcher = {**base, "setup": ["echo setting up >&2", "exit 3"], "log_dir": str(tmp_path / "logs")}
    start = time.monotonic()
    with pytest.raises(launch.LaunchError, match=r"ended \(state FAILED\) without a result") as info:
        launch.run_calls(count_steps, [dict(path=str(tmp_path / "never"), steps=1, dt=0)], launcher, tmp_path / "b")
    assert time.monotonic() - start < 60
    assert "setting up" in str(info.value) and "_log.err" in str(info.value)
