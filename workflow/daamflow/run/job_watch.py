"""Watching submitted jobs until each ends: where a job stands (SLURM's queue with its pending reason, or a local
job's process), the pending reasons that mean it never starts, cancelling, and one polling round that collects
results and failures (docs/architecture.md#6-launchers).

State comes from ``squeue`` and the result files, never from ``sacct``, so clusters without accounting work and a
job that dies before Python starts is reported instead of waited for forever.
"""
from __future__ import annotations

import contextlib
import getpass
import logging
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import submitit
from submitit.core.core import Job

log = logging.getLogger(__name__)

# SLURM states after which a job never runs again; any other state listed by squeue is pending/running/requeueing.
TERMINAL_STATES = frozenset(
    {"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
     "REVOKED", "TIMEOUT"}
)
# Pending reasons after which a job never starts unless an administrator changes the cluster or the request changes
# (as opposed to e.g. Resources, Priority, Dependency, or the per-user/group limits, which clear as other jobs end).
NEVER_REASONS = {
    "PartitionConfig": "the request (CPUs, memory, GPUs or time) is more than the partition's nodes or limits allow",
    "PartitionNodeLimit": "the request needs more nodes than the partition allows",
    "PartitionTimeLimit": "timeout_min is longer than the partition's MaxTime",
    "BadConstraints": "no node of the partition has the requested features (constraint) and resources together",
    "InvalidAccount": "the account is not valid for this user or partition",
    "InvalidQOS": "the QOS is not valid for this user, account or partition",
    "DependencyNeverSatisfied": "a job it depends on failed",
}
# QOS/association limits on a single job or node (QOSMaxCpuPerJobLimit, AssocMaxGRESPerJob, QOSMinCpuNotSatisfied,
# ...): the request itself is over the limit, so waiting does not help; per-user/group limits (QOSMaxJobsPerUserLimit,
# AssocGrpCpuLimit) do clear.
NEVER_LIMIT = re.compile(r"^(QOS|Assoc)(Max\w*Per(Job|Node)\w*|Min\w+)$")


@dataclass
class Tracked:
    """One call and the job that runs it."""

    name: str
    index: int
    job: Job
    missing_since: float | None = None  # first poll that saw the job neither queued/alive nor with a result
    never_since: float | None = None  # first poll that saw it pending for a reason that means it never starts
    state: str = "SUBMITTED"


@dataclass
class Outcome:
    results: dict[int, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)


@dataclass
class Watch:
    """How long to wait for what: the result grace, and the request and grace of jobs that can never start."""

    result_grace_s: float
    request: str = ""
    never_grace_s: float = 60.0


def never_reason(reason: str) -> str | None:
    """Why a job pending with SLURM's ``reason`` can never start, or None when waiting may help."""
    if reason in NEVER_REASONS:
        return NEVER_REASONS[reason]
    if NEVER_LIMIT.match(reason):
        return "the request is outside a per-job or per-node limit (maximum or minimum) of the QOS or association"
    return None


def slurm_queue() -> dict[str, tuple[str, str]] | None:
    """job id ('123' or '123_4') -> (state, pending reason) for this user's jobs known to the controller; None if
    squeue fails."""
    cmd = ["squeue", "--noheader", "--array", "--states=all", f"--user={getpass.getuser()}", "--format=%i|%T|%r"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True).stdout
    except (subprocess.SubprocessError, OSError) as err:
        log.warning("squeue failed (%s); job states unknown this round", err)
        return None
    queue = {}
    for line in out.splitlines():
        job_id, _, rest = line.strip().partition("|")
        state, _, reason = rest.partition("|")
        if job_id:
            # "ReqNodeNotAvail, UnavailableNodes:n1" -> "ReqNodeNotAvail"
            queue[job_id] = (state.split()[0] if state.strip() else "UNKNOWN", reason.split(",")[0].strip())
    return queue


def slurm_states() -> dict[str, str] | None:
    """job id -> state (see slurm_queue)."""
    queue = slurm_queue()
    return None if queue is None else {job_id: state for job_id, (state, _) in queue.items()}


def _local_alive(pid: str, process: subprocess.Popen | None = None) -> bool:
    if process is not None:  # submitted by this process: poll() also reaps it
        return process.poll() is None
    try:  # re-attached: only the pid is known; make sure it still is submitit's controller, not a reused pid
        return b"submitit.local._local" in Path(f"/proc/{int(pid)}/cmdline").read_bytes()
    except (OSError, ValueError):
        return False


def job_alive(kind: str, job_id: str, states: dict[str, str] | None,
              process: subprocess.Popen | None = None) -> bool | None:
    """True: pending/running; False: gone or ended; None: unknown this round (squeue failed)."""
    if kind == "local":
        return _local_alive(job_id, process)
    if states is None:
        return None
    state = states.get(job_id)
    return state is not None and state not in TERMINAL_STATES


def job_of(kind: str, folder: Path | str, job_id: str) -> Job:
    cls = submitit.LocalJob if kind == "local" else submitit.SlurmJob
    return cls(folder=folder, job_id=job_id)


def cancel(kind: str, job_id: str) -> None:
    if kind == "local":
        with contextlib.suppress(ProcessLookupError):  # it may have ended meanwhile
            os.kill(int(job_id), signal.SIGTERM)  # the controller forwards it to its task
    else:
        subprocess.run(["scancel", job_id], check=False, timeout=60)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


def _never_started(t: Tracked, reason: str, watch: Watch) -> str | None:
    """Report a job pending for a reason that means it never starts; the failure message once its grace is over."""
    why = never_reason(reason)
    if why is None:
        t.never_since = None
        return None
    message = (f"{t.name} (job {t.job.job_id}) can never start: SLURM keeps it PENDING ({reason}): {why}. "
               f"Request: {watch.request}. Change the launcher block (or ask the cluster's administrators)")
    if t.never_since is None:
        t.never_since = time.monotonic()
        log.error("%s; it is cancelled and fails in %.0f s (launcher.never_start_grace_s) unless it starts", message,
                  watch.never_grace_s)
        return None
    if time.monotonic() - t.never_since < watch.never_grace_s:
        return None
    cancel("slurm", t.job.job_id)
    return f"{message}; cancelled after launcher.never_start_grace_s = {watch.never_grace_s:g} s"


def poll(tracked: list[Tracked], kind: str, outcome: Outcome, watch: Watch) -> list[Tracked]:
    """One round: collect finished jobs into ``outcome``; return those still running."""
    queue = slurm_queue() if kind == "slurm" else None
    states = None if queue is None else {job_id: state for job_id, (state, _) in queue.items()}
    still = []
    for t in tracked:
        job = t.job
        if job.paths.result_pickle.exists():
            error = job.exception()  # reads the result file; a FailedJobError carries the remote traceback
            if error is None:
                outcome.results[t.index] = job.result()
                log.info("%s (job %s): finished", t.name, job.job_id)
            else:
                outcome.failures.append(f"{t.name} (job {job.job_id}): {error}")
            continue
        alive = job_alive(kind, job.job_id, states, getattr(job, "_process", None))
        if kind == "slurm":
            state, reason = ("unknown", "") if queue is None else queue.get(job.job_id, ("gone", ""))
            t.state = f"{state} ({reason})" if state == "PENDING" and reason not in ("", "None") else state
            failure = _never_started(t, reason if state == "PENDING" else "", watch)
            if failure:
                outcome.failures.append(failure)
                continue
        else:
            t.state = "running" if alive else "ended"
        if alive or alive is None:
            t.missing_since = None
        elif t.missing_since is None:
            t.missing_since = time.monotonic()
        elif time.monotonic() - t.missing_since > watch.result_grace_s:
            outcome.failures.append(
                f"{t.name} (job {job.job_id}) ended (state {t.state}) without a result, e.g. killed, out of memory, "
                f"or a failing setup line.\n  stderr: {job.paths.stderr}\n  stdout: {job.paths.stdout}\n"
                f"--- last lines of stderr ---\n{_tail(job.paths.stderr)}"
            )
            continue
        still.append(t)
    return still
