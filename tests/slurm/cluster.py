"""The single-node test cluster (start.sh/stop.sh in this folder) as a session-scoped pytest fixture.

Tests that need it skip, with the reason, where SLURM is absent (binaries missing, not root); with
DAAMFLOW_REQUIRE_SLURM=1 (CI) they fail instead. Every call to a SLURM command carries a timeout.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "squeue", "scontrol", "scancel", "sinfo")


def unavailable_reason() -> str | None:
    """Why the test cluster cannot start here, or None."""
    missing = [b for b in BINARIES if shutil.which(b) is None]
    if missing:
        return f"SLURM is not installed (no {', '.join(missing)}); run scripts/setup-slurm.sh"
    if os.geteuid() != 0:
        return "the test cluster needs root (slurmd runs jobs as their user; mknod for the fake GPU)"
    return None


def skip_or_fail(reason: str) -> None:
    if os.environ.get("DAAMFLOW_REQUIRE_SLURM") == "1":
        pytest.fail(f"DAAMFLOW_REQUIRE_SLURM=1 but {reason}")
    pytest.skip(reason)


@dataclass
class Cluster:
    root: Path  # scratch folder holding the config, state, logs and the job completion log

    def run(self, *cmd: str, timeout: float = 30) -> str:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True).stdout

    def completions(self, name: str | None = None) -> list[dict]:
        """Records of the job completion log (one per job end or requeue), optionally of one job name."""
        path = self.root / "jobcomp.log"
        records = []
        for line in path.read_text().splitlines() if path.exists() else []:
            record = dict(field.split("=", 1) for field in line.split() if "=" in field)
            if name is None or record.get("Name") == name:
                records.append(record)
        return records

    def states(self) -> dict[str, tuple[str, str]]:
        """job id -> (state, name) of every job the controller still knows (finished ones for MinJobAge)."""
        out = self.run("squeue", "--noheader", "--array", "--states=all", "--format=%i|%T|%j")
        return {i: (s, n) for i, s, n in (line.split("|", 2) for line in out.splitlines() if line)}

    def wait_state(self, job_id: str, wanted: set[str], timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.states().get(job_id, ("GONE", ""))[0]
            if state in wanted:
                return state
            time.sleep(0.2)
        raise AssertionError(f"job {job_id} did not reach {wanted} within {timeout} s (last state {state})")


@pytest.fixture(scope="session")
def slurm_cluster():
    """Start the cluster once per session (SLURM_CONF set for this process and its children); stop it at the end."""
    reason = unavailable_reason()
    if reason:
        skip_or_fail(reason)
    # not under pytest's tmp (mode 700): munged runs as user munge and must reach its socket folder
    root = Path(tempfile.mkdtemp(prefix="daamflow-slurm-"))
    root.chmod(0o755)
    proc = subprocess.run(["bash", str(HERE / "start.sh"), str(root)], capture_output=True, text=True, timeout=90)
    if proc.returncode != 0:
        subprocess.run(["bash", str(HERE / "stop.sh"), str(root)], timeout=60)
        pytest.fail(f"tests/slurm/start.sh failed:\n{proc.stdout}\n{proc.stderr}")
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(root / "slurm.conf")
    try:
        yield Cluster(root)
    finally:  # stop.sh cancels what is left (even after a failed test) before stopping the daemons
        subprocess.run(["bash", str(HERE / "stop.sh"), str(root)], timeout=90)
        shutil.rmtree(root, ignore_errors=True)
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous
