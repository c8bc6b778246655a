"""Run the calls of one function where the config says: here, as local subprocesses, or as one SLURM job array.

``run_calls(fn, calls, launcher, out_dir)`` runs ``fn(**kwargs)`` for every ``kwargs`` in ``calls`` and returns the
results in order. ``launcher`` is the validated ``launcher:`` block of the config (daamflow/schema.yaml):

- ``inline``: in this process, one call after the other;
- ``local``: submitit's local executor, one subprocess per call, at most ``array_parallelism`` at a time;
- ``slurm``: submitit's SLURM executor, all calls as one job array (a single call is a plain job).

Jobs are checkpointable: on preemption, or ``signal_delay_s`` before ``timeout_min`` runs out, SLURM sends USR2 and
the same call is requeued, at most ``max_requeues`` times; ``fn`` resumes from its own checkpoint (train.run_fold:
``checkpoint.pt``).

Submission is idempotent: ``<out_dir>/jobs.json`` records each call's job id, submission time, launcher kind and
digests. A rerun (a restarted Snakemake) re-attaches to recorded jobs that are still pending or running with the same
call instead of submitting them again, and cancels recorded live jobs whose call changed. ``job_watch`` follows the
jobs: a job is finished when submitit's result file appears; it has failed when its result holds an error, or when it
left the queue (or its process ended) without a result. A job pending for a reason that means it can never start
(``job_watch.NEVER_REASONS``: e.g. more CPUs than any node has) is reported with its request and reason at once, and
cancelled and failed after ``never_start_grace_s``. Any failure raises LaunchError with each failed call's remote
traceback and log paths: never a silent success.
"""
from __future__ import annotations

import contextlib
import datetime
import functools
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import submitit
from submitit.core import utils as submitit_utils
from submitit.core.core import Job

from daamflow.run.identity import settings_hash
from daamflow.run.job_watch import Outcome, Tracked, Watch, cancel, job_alive, job_of, poll, slurm_states

log = logging.getLogger(__name__)

KINDS = ("inline", "local", "slurm")
JOBS_FILE = "jobs.json"
# A job that left the queue (or whose process ended) gets this long for its result file to appear (shared file
# systems lag) before it counts as failed.
RESULT_GRACE_S = 30.0


class LaunchError(RuntimeError):
    """Jobs failed; the message names every failed call with its traceback (or state) and log paths."""


class NestedSubmissionError(RuntimeError):
    """A SLURM submission from inside a SLURM job, without ``allow_nested``."""


class Resumable(submitit.helpers.Checkpointable):
    """``fn(**kwargs)`` as a checkpointable job: on preemption/time-out submitit requeues the same call.

    ``fn`` keeps its own checkpoint (run_fold resumes at the next epoch), so nothing but the call is carried over.
    Requeues are counted here so that ``max_requeues`` bounds preemptions as well as time-outs.
    """

    def __init__(self, fn: Callable[..., Any], max_requeues: int) -> None:
        self.fn, self.max_requeues, self.requeues = fn, max_requeues, 0

    def __call__(self, **kwargs: Any) -> Any:
        if not logging.getLogger().handlers:  # a fresh job process: let the library's messages reach the job log
            logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        requeues = self.requeues
        try:
            return self.fn(**kwargs)
        except Exception as err:
            # submitit's signal handler requeues the job and exits by raising SystemExit wherever the call is; if
            # unwinding from there fails anew (torch closing a checkpoint cut short: "unexpected pos"), submitit
            # would store that error as the call's result although the call goes on in the requeued job
            exiting = _system_exit(err)
            if exiting is None or self.requeues == requeues:
                raise
            log.warning("requeued while the call was cleaning up (%s: %s); exiting for the requeued job",
                        type(err).__name__, err)
            raise exiting from None

    def checkpoint(self, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        if self.requeues >= self.max_requeues:
            # raised inside submitit's signal handler: the job ends with this error as its result
            raise RuntimeError(f"interrupted again after {self.requeues} requeue(s); launcher.max_requeues is "
                               f"{self.max_requeues}: not requeued (raise max_requeues or timeout_min)")
        self.requeues += 1
        log.warning("preempted or timed out: requeueing (%d of at most %d)", self.requeues, self.max_requeues)
        return submitit.helpers.DelayedSubmission(self, **kwargs)


def _system_exit(err: BaseException) -> SystemExit | None:
    """The SystemExit during whose handling ``err`` was raised, if any."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, SystemExit):
            return err
        seen.add(id(err))
        err = err.__context__
    return None


@functools.lru_cache(maxsize=1)
def _schema_defaults() -> dict:
    from daamflow.config import schema

    properties = schema()["properties"]["launcher"]["properties"]
    return {key: spec["default"] for key, spec in properties.items()}


def defaults() -> dict:
    """The launcher block's defaults, as the config schema states them."""
    return json.loads(json.dumps(_schema_defaults()))  # a deep copy: callers may change lists in place


def resolve(launcher: dict | None) -> dict:
    """The launcher block with defaults filled in; raises ValueError naming a bad kind or an impossible timing."""
    merged = {**defaults(), **(launcher or {})}
    if merged["kind"] not in KINDS:
        raise ValueError(f"launcher.kind: {merged['kind']!r} is not one of {', '.join(KINDS)}")
    if merged["kind"] != "inline" and merged["signal_delay_s"] >= merged["timeout_min"] * 60:
        raise ValueError(
            f"launcher.signal_delay_s ({merged['signal_delay_s']}) must be less than launcher.timeout_min x 60 "
            f"({merged['timeout_min'] * 60}): the time-out signal would come before the job could do any work"
        )
    return merged


def request_summary(launcher: dict) -> str:
    """The resources one job asks for, as sbatch options (for messages about jobs that cannot start)."""
    params = slurm_parameters(launcher, "")
    shown = [f"cpus_per_task={params['cpus_per_task']}", f"mem={params['mem']}", f"time={params['time']}min"]
    shown += [f"{key}={params[key]}" for key in ("gres", "gpus_per_task", "partition", "account", "qos", "constraint")
              if key in params]
    shown += [f"{key}={value}" for key, value in params.get("additional_parameters", {}).items()]
    return ", ".join(shown)


def check_nesting(launcher: dict) -> None:
    """Refuse a SLURM submission from inside a SLURM job unless ``allow_nested``."""
    job_id = os.environ.get("SLURM_JOB_ID")
    if launcher["kind"] == "slurm" and job_id and not launcher["allow_nested"]:
        raise NestedSubmissionError(
            f"refusing to submit SLURM jobs from inside SLURM job {job_id}: a nested submission inherits this "
            "allocation's environment (SLURM_*), which breaks GPU and memory requests. Run Snakemake on the login "
            "node, use launcher.kind 'local' or 'inline' to work inside this allocation, or set "
            "launcher.allow_nested: true (submissions then get a cleaned environment)."
        )


def slurm_parameters(launcher: dict, name: str) -> dict:
    """submitit SlurmExecutor parameters (sbatch options) from the launcher block."""
    params: dict[str, Any] = {
        "job_name": name,
        "time": int(launcher["timeout_min"]),
        "cpus_per_task": int(launcher["cpus_per_task"]),
        "mem": f"{int(round(float(launcher['mem_gb']) * 1024))}M",
        "array_parallelism": int(launcher["array_parallelism"]),
        "signal_delay_s": int(launcher["signal_delay_s"]),
        "setup": list(launcher["setup"]),
    }
    for key in ("partition", "account", "qos", "constraint"):
        if launcher[key]:
            params[key] = launcher[key]
    gpus = int(launcher["gpus_per_task"])
    if gpus:
        if launcher["gpu_request"] == "gres":
            params["gres"] = f"gpu:{gpus}"
        elif launcher["gpu_request"] == "gpus":
            params["gpus_per_task"] = gpus
        else:
            raise ValueError(f"launcher.gpu_request: {launcher['gpu_request']!r} is not 'gres' or 'gpus'")
    if launcher["extra"]:
        params["additional_parameters"] = dict(launcher["extra"])
    return params


def log_folder(launcher: dict, out_dir: Path) -> Path:
    return Path(launcher["log_dir"] or Path(out_dir) / "submitit").absolute()


def make_executor(launcher: dict, name: str, folder: Path) -> submitit.Executor:
    """A submitit executor for ``launcher['kind']`` ('local' or 'slurm') writing its files under ``folder``."""
    if launcher["kind"] == "local":
        executor = submitit.LocalExecutor(folder, max_num_timeout=launcher["max_requeues"])
        executor.update_parameters(
            timeout_min=launcher["timeout_min"], signal_delay_s=launcher["signal_delay_s"],
            gpus_per_node=launcher["gpus_per_task"], setup=list(launcher["setup"]),
        )
        return executor
    missing = [b for b in ("sbatch", "srun", "squeue", "scontrol") if shutil.which(b) is None]
    if missing:
        raise RuntimeError(
            f"launcher.kind is 'slurm' but {', '.join(missing)} is not on PATH: run Snakemake on a SLURM login node, "
            "or set launcher.kind to 'local' or 'inline'"
        )
    executor = submitit.SlurmExecutor(folder, max_num_timeout=launcher["max_requeues"])
    executor.update_parameters(**slurm_parameters(launcher, name))
    return executor


def read_jobs(out_dir: Path) -> dict:
    """The job record of ``out_dir`` ({} when there is none or it is unreadable)."""
    path = Path(out_dir) / JOBS_FILE
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        log.warning("%s is unreadable (%s); submitting afresh", path, err)
        return {}
    return record if isinstance(record, dict) else {}


def plan(
    names: Sequence[str], digests: Sequence[str], kind: str, record: dict, states: dict[str, str] | None
) -> tuple[dict[str, dict], list[dict]]:
    """Decide, from the job record, which calls re-attach to a live job and which recorded jobs are stale.

    Returns (name -> record entry to re-attach to, entries of live jobs whose call changed: to cancel). A recorded
    job is re-attached only if it has the same launcher kind and call digest and is still pending or running.
    """
    attach, stale = {}, []
    recorded = record.get("jobs", {})
    for name, call in zip(names, digests):
        entry = recorded.get(name)
        if not entry or entry.get("kind") != kind:
            continue
        alive = job_alive(kind, entry["job_id"], states)
        if alive is None and kind == "slurm":
            raise RuntimeError(f"cannot tell whether job {entry['job_id']} ({name}) still runs: squeue failed; retry")
        if not alive:
            continue
        if entry.get("call") == call:
            attach[name] = entry
        else:
            stale.append(entry)
    return attach, stale


def _entry(kind: str, kwargs: dict, job: Job, folder: Path) -> dict:
    return {
        "job_id": job.job_id,
        "kind": kind,
        "submitted": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "call": settings_hash(kwargs),
        "settings_hash": settings_hash(kwargs["settings"]) if "settings" in kwargs else None,
        "folder": str(folder),
        "stdout": str(job.paths.stdout),
        "stderr": str(job.paths.stderr),
    }


def _record(out_dir: Path, record: dict, new: dict[str, dict]) -> None:
    from daamflow.atomic import write_json  # here, not at the top: job processes unpickle this module and need no pandas

    jobs = record.setdefault("jobs", {})
    history = record.setdefault("history", [])
    for name, entry in new.items():
        if name in jobs:
            history.append({"name": name, **jobs[name]})
        jobs[name] = entry
    write_json(Path(out_dir) / JOBS_FILE, record)


def _submit(executor: submitit.Executor, fn: Callable, kind: str, batch: list[dict]) -> list[Job]:
    if kind == "slurm" and len(batch) > 1:
        with executor.batch():
            jobs = [executor.submit(fn, **kwargs) for kwargs in batch]
        return jobs
    return [executor.submit(fn, **kwargs) for kwargs in batch]


def run_calls(
    fn: Callable[..., Any],
    calls: list[dict],
    launcher: dict | None,
    out_dir: Path,
    names: Sequence[str] | None = None,
    job_name: str | None = None,
) -> list[Any]:
    """Run ``fn(**kwargs)`` for every ``kwargs`` in ``calls`` with the configured launcher; return the results.

    ``fn`` must be a top-level (picklable) function; a call that can be interrupted must resume from its own
    checkpoint. ``names`` label the calls in ``jobs.json`` and messages (default: each call's ``fold``, else its
    index). ``job_name`` is the SLURM job name (default: ``daamflow:`` and the last four parts of ``out_dir``).
    Raises LaunchError naming every failed call (traceback, log paths) after all calls have ended.
    """
    launcher = resolve(launcher)
    kind = launcher["kind"]
    if kind == "inline":
        return [fn(**kwargs) for kwargs in calls]
    if not calls:
        return []
    check_nesting(launcher)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = [str(n) for n in names] if names is not None else [str(kw.get("fold", i)) for i, kw in enumerate(calls)]
    if len(set(names)) != len(names):
        raise ValueError(f"run_calls: call names must be unique, got {names}")
    folder = log_folder(launcher, out_dir)
    job_name = job_name or "daamflow:" + "/".join(out_dir.absolute().parts[1:][-4:])
    digests = [settings_hash(kw) for kw in calls]

    record = read_jobs(out_dir)
    states = slurm_states() if kind == "slurm" and record.get("jobs") else None
    attach, stale = plan(names, digests, kind, record, states)
    for entry in stale:
        log.warning("cancelling job %s: it runs a call whose settings changed", entry["job_id"])
        cancel(kind, entry["job_id"])
    tracked = [Tracked(n, i, job_of(kind, attach[n]["folder"], attach[n]["job_id"])) for i, n in enumerate(names) if n in attach]
    if tracked:
        log.info("re-attached to queued/running job(s) %s", ", ".join(f"{t.name}={t.job.job_id}" for t in tracked))
    todo = [i for i, n in enumerate(names) if n not in attach]

    executor = make_executor(launcher, job_name, folder) if todo else None
    wrapped = Resumable(fn, launcher["max_requeues"])
    limit = len(todo) if kind == "slurm" else launcher["array_parallelism"]  # SLURM throttles arrays itself
    outcome = Outcome()
    watch = Watch(RESULT_GRACE_S, request_summary(launcher) if kind == "slurm" else "", launcher["never_start_grace_s"])
    shown = ""
    while todo or tracked:
        free = limit - len(tracked)
        if todo and free > 0:
            batch, todo = todo[:free], todo[free:]
            # a permitted nested submission must not pass this allocation's SLURM_* variables on
            try:
                with submitit.helpers.clean_env() if launcher["allow_nested"] else contextlib.nullcontext():
                    jobs = _submit(executor, wrapped, kind, [calls[i] for i in batch])
            except (submitit_utils.FailedJobError, submitit_utils.FailedSubmissionError, OSError) as err:
                request = f" with request {watch.request}" if kind == "slurm" else ""
                raise LaunchError(f"submitting {', '.join(names[i] for i in batch)}{request} failed: {err}") from err
            _record(out_dir, record, {names[i]: _entry(kind, calls[i], j, folder) for i, j in zip(batch, jobs)})
            tracked += [Tracked(names[i], i, j) for i, j in zip(batch, jobs)]
            log.info("submitted %s (%s); logs in %s. If this process stops, the jobs go on and a rerun re-attaches "
                     "to them (cancel them with scancel/kill of the ids in %s)", ", ".join(
                         f"{names[i]}={j.job_id}" for i, j in zip(batch, jobs)), kind, folder, out_dir / JOBS_FILE)
        tracked = poll(tracked, kind, outcome, watch)
        status = ", ".join(f"{t.name} {t.state}" for t in tracked)
        if status and status != shown:  # the train log shows how the jobs move through the queue
            log.info("waiting: %s", status)
            shown = status
        if tracked:
            time.sleep(launcher["poll_s"])
    if outcome.failures:
        raise LaunchError(
            f"{len(outcome.failures)} of {len(calls)} {kind} job(s) failed (job record: {out_dir / JOBS_FILE}):\n\n"
            + "\n\n".join(outcome.failures)
        )
    return [outcome.results[i] for i in range(len(calls))]
