"""daamflow.run.launch without a cluster: the real submitit local executor, nested-submission refusal, the job record and
re-attachment, failure reporting, and the sbatch options (fake sbatch/squeue/scancel scripts on PATH, the way
submitit's own tests fake SLURM). The real cluster is exercised in tests/test_slurm.py.
"""
from __future__ import annotations

import json
import os
import pickle
import signal
import sys
import threading
import time
from pathlib import Path

import cloudpickle
import pytest
from submitit.core.utils import JobPaths, cloudpickle_dump

from daamflow.run import launch
from daamflow.run.identity import settings_hash
from daamflow.run.job_watch import never_reason

ROOT = Path(__file__).resolve().parents[1]
LOCAL = {"kind": "local", "poll_s": 0.05}

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # job functions below travel by value to subprocesses


def square(x: int, log: str | None = None) -> tuple[int, int]:
    start = time.time()
    time.sleep(0.2)
    if log:
        with open(log, "a") as fh:
            fh.write(f"{start} {time.time()}\n")
    return x * x, os.getpid()


def fail(x: int) -> int:
    if x == 1:
        raise ValueError(f"bad input {x}")
    return x


def die() -> None:
    os._exit(3)  # no result file, no traceback: like a job killed by the OOM killer


def test_inline_runs_in_this_process(tmp_path):
    assert launch.run_calls(square, [dict(x=2), dict(x=3)], None, tmp_path) == [(4, os.getpid()), (9, os.getpid())]
    assert not (tmp_path / launch.JOBS_FILE).exists()


def test_local_executor_runs_each_call_in_a_subprocess_and_records_it(tmp_path):
    out = launch.run_calls(square, [dict(x=i) for i in range(3)], LOCAL, tmp_path / "run")
    assert [r[0] for r in out] == [0, 1, 4]
    assert os.getpid() not in {r[1] for r in out} and len({r[1] for r in out}) == 3
    record = json.loads((tmp_path / "run" / launch.JOBS_FILE).read_text())
    assert sorted(record["jobs"]) == ["0", "1", "2"] and record["history"] == []
    for name, entry in record["jobs"].items():
        assert entry["kind"] == "local" and entry["job_id"].isdigit()
        assert entry["call"] == settings_hash(dict(x=int(name)))
        assert Path(entry["stdout"]).exists() and Path(entry["folder"]) == tmp_path / "run/submitit"


def test_local_array_parallelism_bounds_concurrency(tmp_path):
    log = tmp_path / "spans"
    launch.run_calls(square, [dict(x=i, log=str(log)) for i in range(2)], {**LOCAL, "array_parallelism": 1}, tmp_path)
    (s1, e1), (s2, e2) = sorted(tuple(map(float, line.split())) for line in log.read_text().splitlines())
    assert e1 <= s2, "with array_parallelism 1 the second call must start after the first ended"


def test_failed_call_raises_with_remote_traceback_and_log_path(tmp_path):
    with pytest.raises(launch.LaunchError) as info:
        launch.run_calls(fail, [dict(x=0), dict(x=1)], LOCAL, tmp_path)
    message = str(info.value)
    assert message.startswith("1 of 2 local job(s) failed")
    assert "ValueError: bad input 1" in message and "Traceback" in message
    stderr = json.loads((tmp_path / launch.JOBS_FILE).read_text())["jobs"]["1"]["stderr"]
    assert stderr in message and Path(stderr).exists()


def test_job_that_dies_without_a_result_is_a_failure_not_a_hang(tmp_path, monkeypatch):
    monkeypatch.setattr(launch, "RESULT_GRACE_S", 0.5)
    start = time.monotonic()
    with pytest.raises(launch.LaunchError, match=r"ended \(state ended\) without a result"):
        launch.run_calls(die, [{}], LOCAL, tmp_path)
    assert time.monotonic() - start < 30


def test_training_through_the_local_executor_equals_inline(tmp_path):
    """train_all's launcher path with the real run_fold, in submitit subprocesses, gives the inline numbers."""
    import numpy as np
    import pandas as pd

    from daamflow.data.features import write_store
    from daamflow.run.train import train_all

    rng = np.random.default_rng(0)
    labels = np.arange(40) % 2
    x = rng.normal(size=(40, 3, 8)).astype(np.float32) + labels[:, None, None]
    index = pd.DataFrame({"id": [f"s{i}" for i in range(40)], "label": labels, "label_name": labels.astype(str),
                          "group": [f"g{i}" for i in range(40)], "split": "train"})
    store = write_store(tmp_path / "store", x, index, {"encoder": "synthetic"})
    settings = {
        "dataset": "toy", "encoder": "synthetic", "method": "weighted_sum", "protocol": "clean", "seed": 1,
        "evaluation": {"scheme": "kfold", "folds": 2},
        "hyper": {"epochs": 2, "batch_size": 8, "lr": 1e-2, "weight_decay": 0.01, "loss": "cross_entropy",
                  "focal_alpha": 0.25, "focal_gamma": 2.5, "scheduler_factor": 0.1, "scheduler_patience": 2,
                  "grad_clip": None, "dev_fraction": 0.2, "amp": "auto"},
        "model_options": {"conv_channels": 4},
    }
    local = train_all(store, settings, tmp_path / "local", only=["fold2"], launcher=LOCAL)  # one job: CPU is scarce
    inline = train_all(store, settings, tmp_path / "inline", only=["fold2"])
    columns = ["fold", "accuracy", "macro_f1", "best_epoch", "settings_hash"]
    pd.testing.assert_frame_equal(local[columns], inline[columns])
    record = json.loads((tmp_path / "local" / launch.JOBS_FILE).read_text())
    assert sorted(record["jobs"]) == ["fold2"]
    assert {e["settings_hash"] for e in record["jobs"].values()} == set(inline["settings_hash"])


def test_rerun_reattaches_to_a_local_job_whose_parent_was_killed(tmp_path):
    """The submitting process dies (SIGKILL); its local job lives on and a rerun collects it instead of resubmitting."""
    import subprocess

    script = (
        "import time\n"
        "from daamflow.run import launch\n"
        "def slow(flag):\n"
        "    time.sleep(2)\n"
        "    return 'from the first job'\n"
        f"launch.run_calls(slow, [dict(flag=1)], {LOCAL!r}, {str(tmp_path)!r})\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / launch.JOBS_FILE).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        parent.kill()
        parent.wait(timeout=30)
    record = json.loads((tmp_path / launch.JOBS_FILE).read_text())
    assert launch.run_calls(square, [dict(flag=1)], LOCAL, tmp_path) == ["from the first job"]
    assert json.loads((tmp_path / launch.JOBS_FILE).read_text()) == record  # nothing submitted again


def test_resumable_requeues_the_same_call_at_most_max_requeues_times():
    job = launch.Resumable(fail, max_requeues=2)
    assert job(x=3) == 3
    delayed = job.checkpoint(x=3)
    assert delayed.function is job and delayed.kwargs == {"x": 3} and job.requeues == 1
    shipped = pickle.loads(cloudpickle.dumps(delayed))  # what the requeued job starts from
    assert shipped.function.requeues == 1
    job.checkpoint(x=3)
    with pytest.raises(RuntimeError, match="launcher.max_requeues is 2"):
        job.checkpoint(x=3)


def test_a_call_digest_hashes_paths_as_their_text():
    """A call's arguments hold paths; its digest is the settings hash of the same call with the paths as strings."""
    settings = {"method": "mha", "hyper": {"lr": 1e-4, "grad_clip": None}, "seed": 0}
    call = {"settings": settings, "out_dir": Path("/runs/x"), "fold": "fold1"}
    assert settings_hash(call) == settings_hash({**call, "out_dir": "/runs/x"}) != settings_hash({**call, "fold": "f2"})


def test_nested_submission_is_refused_unless_allowed(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4711")
    with pytest.raises(launch.NestedSubmissionError, match="inside SLURM job 4711.*allow_nested"):
        launch.run_calls(square, [dict(x=1)], {"kind": "slurm"}, tmp_path)
    launch.check_nesting(launch.resolve({"kind": "slurm", "allow_nested": True}))
    launch.check_nesting(launch.resolve({"kind": "local"}))  # working inside one's own allocation is fine


def test_unknown_kind_is_named():
    with pytest.raises(ValueError, match="launcher.kind: 'pbs' is not one of inline, local, slurm"):
        launch.resolve({"kind": "pbs"})


# ---------------------------------------------------------------- fake SLURM commands on PATH


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """sbatch/srun/squeue/scontrol/scancel scripts that log their calls under ``tmp_path/fake``.

    sbatch saves the batch script and its environment and answers with job id 4242 (or fails when
    ``fake/no-sbatch`` exists); squeue prints ``fake/squeue.txt`` ("<id>|<state>[|<reason>]" lines).
    """
    fake = tmp_path / "fake"
    bin_dir = fake / "bin"
    bin_dir.mkdir(parents=True)
    scripts = {
        "sbatch": f'[ -e {fake}/no-sbatch ] && {{ echo "sbatch must not run" >&2; exit 1; }}\n'
                  f'n=$(ls {fake} | grep -c "^script") ; cp "$1" {fake}/script$n.sh ; env > {fake}/env$n\n'
                  'echo "Submitted batch job 4242"',
        "squeue": f'cat {fake}/squeue.txt 2>/dev/null; true',
        "scancel": f'echo "$@" >> {fake}/scancel.log',
        "scontrol": "true",
        "srun": "true",
    }
    for name, body in scripts.items():
        path = bin_dir / name
        path.write_text(f"#!/bin/sh\necho {name} \"$@\" >> {fake}/calls.log\n{body}\n")
        path.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.setattr(launch, "RESULT_GRACE_S", 0.0)
    return fake


@pytest.mark.parametrize("gpu_request, gpu_line", [("gres", "#SBATCH --gres=gpu:2"), ("gpus", "#SBATCH --gpus-per-task=2")])
def test_sbatch_options_come_from_the_launcher(fake_slurm, tmp_path, gpu_request, gpu_line):
    (fake_slurm / "squeue.txt").write_text("4242_0|COMPLETED\n4242_1|COMPLETED\n4242_2|COMPLETED\n")
    launcher = {
        "kind": "slurm", "partition": "gpu", "account": "proj42", "qos": "high", "constraint": "a100",
        "gpus_per_task": 2, "gpu_request": gpu_request, "cpus_per_task": 4, "mem_gb": 6.5, "timeout_min": 90,
        "array_parallelism": 2, "setup": ["module load cuda/12.1"], "extra": {"mail-type": "END"}, "poll_s": 0.01,
        "log_dir": str(tmp_path / "logs"),
    }
    with pytest.raises(launch.LaunchError, match=r"3 of 3 slurm job\(s\) failed"):  # fake jobs never write results
        launch.run_calls(square, [dict(x=i) for i in range(3)], launcher, tmp_path / "run", job_name="daamflow:t")
    script = (fake_slurm / "script0.sh").read_text()
    lines = set(script.splitlines())
    assert not (fake_slurm / "script1.sh").exists(), "the calls must go out as one job array"
    for line in (gpu_line, "#SBATCH --partition=gpu", "#SBATCH --account=proj42", "#SBATCH --qos=high",
                 "#SBATCH --constraint=a100", "#SBATCH --cpus-per-task=4", "#SBATCH --mem=6656M", "#SBATCH --time=90",
                 "#SBATCH --array=0-2%2", "#SBATCH --job-name=daamflow:t", "#SBATCH --mail-type=END",
                 "#SBATCH --signal=USR2@90", "module load cuda/12.1"):
        assert line in lines, f"{line!r} missing from the batch script:\n{script}"
    assert not any("--gres" in ln for ln in lines) if gpu_request == "gpus" else not any("--gpus" in ln for ln in lines)
    assert f"--output={tmp_path}/logs/%A_%a_0_log.out" in script
    record = json.loads((tmp_path / "run" / launch.JOBS_FILE).read_text())
    assert [record["jobs"][str(i)]["job_id"] for i in range(3)] == ["4242_0", "4242_1", "4242_2"]


def test_allowed_nested_submission_gets_a_clean_environment(fake_slurm, tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4711")
    monkeypatch.setenv("SLURM_MEM_PER_NODE", "1000")
    with pytest.raises(launch.LaunchError):
        launch.run_calls(square, [dict(x=1)], {"kind": "slurm", "allow_nested": True, "poll_s": 0.01}, tmp_path)
    assert "SLURM_" not in (fake_slurm / "env0").read_text()
    assert os.environ["SLURM_JOB_ID"] == "4711"  # restored afterwards


def _record_for(tmp_path: Path, calls: list[dict], ids: list[str], folder: Path, kind: str = "slurm") -> dict:
    jobs = {str(i): {"job_id": j, "kind": kind, "call": settings_hash(c), "folder": str(folder)}
            for i, (c, j) in enumerate(zip(calls, ids))}
    record = {"jobs": jobs, "history": []}
    (tmp_path / launch.JOBS_FILE).write_text(json.dumps(record))
    return record


def _finish(folder: Path, job_id: str, value) -> None:
    """Write the result file submitit's job process writes at its end."""
    folder.mkdir(parents=True, exist_ok=True)
    cloudpickle_dump(("success", value), JobPaths(folder, job_id=job_id, task_id=0).result_pickle)


def test_rerun_reattaches_to_queued_jobs_instead_of_submitting(fake_slurm, tmp_path):
    calls, folder = [dict(x=1), dict(x=2)], tmp_path / "logs"
    record = _record_for(tmp_path, calls, ["77_0", "77_1"], folder)
    (fake_slurm / "squeue.txt").write_text("77_0|RUNNING\n77_1|PENDING\n")
    (fake_slurm / "no-sbatch").touch()
    _finish(folder, "77_0", "one")
    later = threading.Timer(0.5, _finish, (folder, "77_1", "two"))  # the pending one finishes while we wait
    later.start()
    try:
        out = launch.run_calls(square, calls, {"kind": "slurm", "poll_s": 0.05, "log_dir": str(folder)}, tmp_path)
    finally:
        later.cancel()
    assert out == ["one", "two"]
    assert "sbatch" not in (fake_slurm / "calls.log").read_text()
    assert json.loads((tmp_path / launch.JOBS_FILE).read_text()) == record


def test_plan_reattaches_only_live_jobs_of_the_same_call():
    record = {"jobs": {
        "same": {"job_id": "1_0", "kind": "slurm", "call": "a"},
        "changed": {"job_id": "1_1", "kind": "slurm", "call": "old"},
        "ended": {"job_id": "1_2", "kind": "slurm", "call": "c"},
        "gone": {"job_id": "1_3", "kind": "slurm", "call": "d"},
        "local": {"job_id": "999999999", "kind": "local", "call": "e"},
    }}
    states = {"1_0": "RUNNING", "1_1": "PENDING", "1_2": "COMPLETED"}
    names = ["same", "changed", "ended", "gone", "local", "new"]
    attach, stale = launch.plan(names, ["a", "b", "c", "d", "e", "f"], "slurm", record, states)
    assert set(attach) == {"same"} and [e["job_id"] for e in stale] == ["1_1"]
    with pytest.raises(RuntimeError, match="squeue failed"):
        launch.plan(["same"], ["a"], "slurm", record, None)


def test_stale_live_job_is_cancelled_and_its_call_resubmitted(fake_slurm, tmp_path):
    calls, folder = [dict(x=1)], tmp_path / "logs"
    _record_for(tmp_path, [dict(x=0)], ["50"], folder)  # same name "0", other call: settings changed since
    (fake_slurm / "squeue.txt").write_text("50|RUNNING\n4242|COMPLETED\n")
    with pytest.raises(launch.LaunchError):  # the fake job never writes a result
        launch.run_calls(square, calls, {"kind": "slurm", "poll_s": 0.01, "log_dir": str(folder)}, tmp_path)
    assert (fake_slurm / "scancel.log").read_text().split() == ["50"]
    record = json.loads((tmp_path / launch.JOBS_FILE).read_text())
    assert record["jobs"]["0"]["job_id"] == "4242" and [h["job_id"] for h in record["history"]] == ["50"]


def test_slurm_profile_sets_a_valid_slurm_launcher():
    """profiles/slurm goes through Snakemake's profile and --config parsing, then the config schema."""
    import yaml
    from snakemake.cli import parse_config
    from snakemake.profiles import ProfileConfigFileParser

    from daamflow.config import validate_config

    with (ROOT / "profiles/slurm/config.yaml").open() as fh:
        profile = ProfileConfigFileParser().parse(fh)
    config = yaml.safe_load((ROOT / "tests/configs/micro.yaml").read_text())
    overrides = parse_config(profile["config"])
    config["launcher"] = {**config.get("launcher", {}), **overrides["launcher"]}
    launcher = validate_config(config)["launcher"]
    assert launcher["kind"] == "slurm" and launcher["gpus_per_task"] == 1
    assert launcher["signal_delay_s"] == 90 and launcher["never_start_grace_s"] == 60
    assert launch.resolve(launcher) == launcher  # complete, and the time-out signal fits in timeout_min


def test_launcher_defaults_are_the_schemas():
    import yaml

    from daamflow.config import schema, validate_config

    spec = schema()["properties"]["launcher"]["properties"]
    assert launch.defaults() == {key: value["default"] for key, value in spec.items()}
    # the block a validated config carries and the launcher's own defaults agree key for key
    config = {**yaml.safe_load((ROOT / "tests/configs/micro.yaml").read_text()), "launcher": {"kind": "slurm"}}
    validated = validate_config(config)["launcher"]
    assert launch.resolve({"kind": "slurm"}) == validated
    launch.defaults()["setup"].append("changed")  # callers get a copy
    assert launch.defaults()["setup"] == []


def test_time_out_signal_comes_signal_delay_s_before_the_limit(fake_slurm, tmp_path):
    launcher = {"kind": "slurm", "timeout_min": 2, "signal_delay_s": 45, "poll_s": 0.01, "log_dir": str(tmp_path)}
    with pytest.raises(launch.LaunchError):  # the fake job never writes a result
        launch.run_calls(square, [dict(x=1)], launcher, tmp_path / "run")
    lines = (fake_slurm / "script0.sh").read_text().splitlines()
    assert "#SBATCH --signal=USR2@45" in lines and "#SBATCH --time=2" in lines
    for kind in ("slurm", "local"):
        with pytest.raises(ValueError, match=r"launcher.signal_delay_s \(120\) must be less than launcher.timeout_min "
                                             r"x 60 \(120\)"):
            launch.resolve({"kind": kind, "timeout_min": 2, "signal_delay_s": 120})
    launch.resolve({"kind": "inline", "timeout_min": 1})  # nothing is signalled in this process


@pytest.mark.parametrize("reason, never", [
    ("PartitionConfig", True), ("BadConstraints", True), ("PartitionTimeLimit", True), ("InvalidAccount", True),
    ("QOSMaxCpuPerJobLimit", True), ("AssocMaxGRESPerJob", True), ("QOSMaxMemoryPerNode", True),
    ("QOSMinCpuNotSatisfied", True), ("DependencyNeverSatisfied", True),
    ("Resources", False), ("Priority", False), ("None", False), ("", False), ("Dependency", False),
    ("QOSMaxJobsPerUserLimit", False), ("AssocGrpCpuLimit", False), ("QOSGrpGRES", False), ("JobHeldUser", False),
])
def test_never_reasons_are_the_ones_waiting_cannot_clear(reason, never):
    assert (never_reason(reason) is not None) == never


def test_job_that_can_never_start_is_reported_cancelled_and_failed(fake_slurm, tmp_path, caplog):
    (fake_slurm / "squeue.txt").write_text("4242|PENDING|PartitionConfig\n")
    launcher = {"kind": "slurm", "cpus_per_task": 64, "mem_gb": 1, "partition": "debug", "poll_s": 0.05,
                "never_start_grace_s": 1.0, "log_dir": str(tmp_path / "logs")}
    start = time.monotonic()
    with caplog.at_level("INFO", logger="daamflow.run.launch"), pytest.raises(launch.LaunchError) as info:
        launch.run_calls(square, [dict(x=1)], launcher, tmp_path / "run", names=["fold1"])
    elapsed = time.monotonic() - start
    assert 1.0 <= elapsed < 10
    message = str(info.value)
    for part in ("fold1 (job 4242) can never start", "PENDING (PartitionConfig)", "never_start_grace_s = 1 s",
                 "cpus_per_task=64, mem=1024M, time=60min, partition=debug"):
        assert part in message, message
    assert (fake_slurm / "scancel.log").read_text().split() == ["4242"]
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "can never start" in errors[0] and "cpus_per_task=64" in errors[0]  # once, at once
    assert any("waiting: fold1 PENDING (PartitionConfig)" in r.getMessage() for r in caplog.records)


def test_job_pending_for_resources_is_waited_for(fake_slurm, tmp_path):
    (fake_slurm / "squeue.txt").write_text("4242|PENDING|Resources\n")
    folder = tmp_path / "logs"
    later = threading.Timer(0.5, _finish, (folder, "4242", "done"))  # it starts and finishes after a while
    later.start()
    try:
        out = launch.run_calls(square, [dict(x=1)], {"kind": "slurm", "poll_s": 0.05, "never_start_grace_s": 0,
                                                     "log_dir": str(folder)}, tmp_path / "run")
    finally:
        later.cancel()
    assert out == ["done"]
    assert not (fake_slurm / "scancel.log").exists()


def test_refused_submission_names_the_request(fake_slurm, tmp_path):
    (fake_slurm / "no-sbatch").touch()
    launcher = {"kind": "slurm", "mem_gb": 1000, "poll_s": 0.01, "log_dir": str(tmp_path)}
    with pytest.raises(launch.LaunchError, match=r"submitting 0 with request cpus_per_task=1, mem=1024000M.* failed:"
                                                 r"[\s\S]*sbatch must not run"):
        launch.run_calls(square, [dict(x=1)], launcher, tmp_path / "run")


class FailsWhenLeftByAnError:
    """A writer that fails when an exception cuts it short, as torch's zip writer ("unexpected pos") does."""

    def __enter__(self):
        return self

    def __exit__(self, kind, *_):
        if kind is not None:
            raise RuntimeError("unexpected pos 1845248 vs 1845200")


def interrupted_while_saving(marker: str) -> str:
    marker_path = Path(marker)
    if marker_path.exists():
        return "resumed"
    marker_path.write_text("first run")
    with FailsWhenLeftByAnError():
        os.kill(os.getpid(), signal.SIGUSR2)  # the time-out/preemption signal lands while a checkpoint is written
        time.sleep(60)
    return "never interrupted"


def test_interruption_while_saving_requeues_instead_of_failing(tmp_path):
    """submitit's handler requeues and exits with SystemExit mid-save; the writer's own error must not end the job."""
    out = launch.run_calls(interrupted_while_saving, [dict(marker=str(tmp_path / "marker"))], LOCAL, tmp_path / "run")
    assert out == ["resumed"]
    stderr = Path(json.loads((tmp_path / "run" / launch.JOBS_FILE).read_text())["jobs"]["0"]["stderr"]).read_text()
    assert "requeued while the call was cleaning up (RuntimeError: unexpected pos" in stderr
