"""Warm start (daamflow.cli.warm): a job forked from the server behaves as the same job in its own interpreter.

A real server (`daamflow warm`) and real `daamflow` commands; the workflow's own use of it (Snakefile onstart,
results identical to the golden digests) is checked in tests/test_workflow.py.
"""
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from daamflow.cli.warm import ENV_VAR, FOLDER_PREFIX, THREAD_VARS

ROOT = Path(__file__).resolve().parents[1]
DAAMFLOW = str(Path(sys.executable).with_name("daamflow"))  # the console command, as the workflow's jobs run it


SERVER_PS1 = "(.venv) $ "


def wait_for(predicate, timeout=180.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def job_env(**extra):
    env = {**os.environ, **{var: "1" for var in THREAD_VARS}, **extra}
    for var in (ENV_VAR, "PYTEST_CURRENT_TEST"):  # pytest changes the latter from test to test
        env.pop(var, None)
    return env


@pytest.fixture(scope="module")
def server():
    folder = Path(tempfile.mkdtemp(prefix="dw-"))  # a socket path has at most 107 bytes: not under pytest's tmp
    sock, log = folder / "socket", folder / "server.log"
    # PS1 as in a shell after `. .venv/bin/activate`, which exports it: the Snakemake process and so the server have it
    proc = subprocess.Popen([DAAMFLOW, "warm", "--socket", str(sock), "--log", str(log), "--parent", str(os.getpid())],
                            env=job_env(PS1=SERVER_PS1), stderr=subprocess.PIPE, text=True)
    wait_for(lambda: sock.exists() or proc.poll() is not None, what="the server's socket")
    assert proc.poll() is None, proc.stderr.read()
    yield sock, log
    proc.terminate()
    assert proc.wait(timeout=30) == 0
    assert not sock.exists()  # the server removes its socket when it stops
    assert log.read_text().rstrip().endswith("jobs")
    shutil.rmtree(folder)


def daamflow(args, cwd, sock=None, env=None, **kwargs):
    env = {**(env or job_env()), **({ENV_VAR: str(sock)} if sock else {})}
    return subprocess.run([DAAMFLOW, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300, **kwargs)


def served(log: Path, command: str) -> list[str]:
    return [line for line in log.read_text().splitlines() if f"job: {command}" in line]


def test_a_warm_job_prints_exits_and_records_as_a_cold_one(server, tmp_path):
    sock, log = server
    shutil.copy(ROOT / "config/config.yaml", tmp_path / "mine.yaml")  # relative to the job's working directory
    args = ["--usage", "usage.tsv", "config", "mine.yaml", "--train", "prosody", "clean", "gqdaam"]
    cold, warm = daamflow(args, tmp_path), daamflow(args, tmp_path, sock)
    assert (cold.returncode, warm.returncode) == (0, 0), warm.stderr
    assert warm.stdout == cold.stdout and '"method": "gqdaam"' in warm.stdout
    assert len(served(log, "--usage usage.tsv config")) == 1, log.read_text()
    usage = (tmp_path / "usage.tsv").read_text().splitlines()
    assert usage[0].split("\t") == ["s", "h:m:s", "max_rss", "cpu_time", "exit"] and usage[1].endswith("\t0")


def test_a_failing_job_exits_with_its_status_and_message(server, tmp_path):
    sock, log = server
    (tmp_path / "bad.yaml").write_text("seed: 0\nbogus_key: 1\n")
    cold, warm = daamflow(["config", "bad.yaml"], tmp_path), daamflow(["config", "bad.yaml"], tmp_path, sock)
    assert cold.returncode == warm.returncode == 2
    assert warm.stderr == cold.stderr and "'bogus_key' was unexpected" in warm.stderr
    assert served(log, "config bad.yaml")


def test_a_job_whose_environment_differs_runs_cold_and_says_why(server, tmp_path):
    sock, log = server
    shutil.copy(ROOT / "config/config.yaml", tmp_path / "c.yaml")
    before = len(served(log, "config c.yaml"))
    proc = daamflow(["config", "c.yaml"], tmp_path, sock, env=job_env(HF_HUB_OFFLINE="0", DAAMFLOW_TEST_EXTRA="x"))
    assert proc.returncode == 0 and proc.stdout.startswith("c.yaml: valid")
    assert "warm start declined (environment differs from the server's in DAAMFLOW_TEST_EXTRA, HF_HUB_OFFLINE)" in proc.stderr
    assert len(served(log, "config c.yaml")) == before  # ran in its own interpreter
    # the per-job variables Snakemake sets (threads, tmpdir) are the job's own, not a reason to run cold
    proc = daamflow(["config", "c.yaml"], tmp_path, sock, env=job_env(OMP_NUM_THREADS="2", TMPDIR=str(tmp_path)))
    assert proc.returncode == 0 and proc.stdout.startswith("c.yaml: valid") and "declined" not in proc.stderr
    assert len(served(log, "config c.yaml")) == before + 1


def test_a_job_run_by_bash_as_snakemake_runs_it_is_served(server, tmp_path):
    """Snakemake runs each job with `bash -c`, which unsets PS1 (bash does in a non-interactive shell): the job's
    environment then lacks the PS1 the server has, and it is still served."""
    sock, log = server
    shutil.copy(ROOT / "config/config.yaml", tmp_path / "b.yaml")
    env = {**job_env(PS1=SERVER_PS1), ENV_VAR: str(sock)}
    proc = subprocess.run(["bash", "-c", f"{DAAMFLOW} config b.yaml"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.startswith("b.yaml: valid") and "declined" not in proc.stderr
    assert len(served(log, "config b.yaml")) == 1


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_a_killed_job_ends_its_forked_child(server, tmp_path, sig):
    """SIGTERM is forwarded to the child; after SIGKILL (nothing to forward) the child sees its job's process gone."""
    sock, log = server
    command = f"--usage {sig.name}.tsv config /dev/stdin"  # blocks reading the job's stdin, which stays open
    proc = subprocess.Popen([DAAMFLOW, *command.split()], cwd=tmp_path, env={**job_env(), ENV_VAR: str(sock)},
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: served(log, command), what="the job to reach the server")
    child = int(served(log, command)[0].split("[")[1].split("]")[0])
    time.sleep(0.5)
    os.kill(child, 0)  # running
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    if sig == signal.SIGTERM:
        assert proc.returncode == 1 and "ended without an exit status" in err

    def gone():
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return True
        return False

    wait_for(gone, timeout=30, what=f"the child {child} to end")


def test_the_server_stops_when_its_parent_is_gone(tmp_path):
    folder = Path(tempfile.mkdtemp(prefix=FOLDER_PREFIX))  # as Server.start makes it, whose stop() never comes here
    sock, log = folder / "socket", tmp_path / "server.log"
    # a parent that exits as soon as the server is up: the server is orphaned and must not outlive it
    script = (f'{DAAMFLOW} warm --socket {sock} --log {log} --parent $$ & '
              f'while [ ! -S {sock} ]; do sleep 0.2; done')
    subprocess.run(["bash", "-c", script], env=job_env(), timeout=300, check=True)
    wait_for(lambda: not folder.exists(), timeout=30, what="the orphaned server to stop and remove its folder")
    assert log.read_text().rstrip().endswith("stopped after 0 jobs")
