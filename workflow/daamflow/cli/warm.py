"""Warm start: the workflow's jobs fork from one process that has already imported torch, transformers and peft.

A job of the embedded default spends about 2 s (a head: `daamflow train --help` takes 2.2 s of CPU) to 6 s (LoRA,
with transformers and peft: 6.2 s) importing before it computes anything (docs/architecture.md#9-timings). With ``warm_start: true``
the Snakefile starts ``daamflow warm`` when a local run begins; each ``daamflow <stage>`` job then hands its argv,
working directory, environment and standard streams over a Unix socket to that server, which forks a child that runs
the same ``cli.main`` as a cold process would. The job's shell process waits for the child's exit status and exits
with it, forwarding SIGINT/SIGTERM/SIGHUP; the child ends itself if that process disappears.

A job runs cold (in its own interpreter) whenever the server cannot be reached or its environment differs from the
server's in anything but the per-job variables Snakemake sets (thread counts, temporary folder): those are read at
import time by libraries the server has already loaded, so only a job whose environment the server shares may use
its imports. The server ends with the run (onsuccess/onerror), when its parent process is gone, or after an hour
without a job.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import signal
import socket
import struct
import sys
import threading
import time
from pathlib import Path

ENV_VAR = "DAAMFLOW_WARM"  # the server's socket path, set in the Snakemake process for its jobs
# Snakemake sets these for each job (its threads, its tmpdir resource); the child applies them itself.
THREAD_VARS = ("OMP_NUM_THREADS", "GOTO_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")
# ... and the shell that runs each job sets the others, and unsets PS1 and PS2 (bash does in a non-interactive
# shell; a venv's `activate` exports PS1, so a run started after it had every job declined)
PER_JOB_VARS = frozenset(THREAD_VARS + ("TMPDIR", "TMP", "TEMP", "TEMPDIR", ENV_VAR, "SHLVL", "_", "PWD", "OLDPWD",
                                        "PS1", "PS2"))
# What the stages import before they compute; each import is what a cold job pays again.
PRELOAD = ("torch", "numpy", "pandas", "scipy.stats", "sklearn.linear_model", "sklearn.preprocessing",
           "transformers", "peft", "matplotlib",
           "daamflow.run.train", "daamflow.run.finetune", "daamflow.analysis.layers", "daamflow.vqvae.cli",
           "daamflow.report.cli", "daamflow.cli.datacmds")
IDLE_TIMEOUT_S = 3600
FOLDER_PREFIX = "daamflow-warm-"  # the temporary folder ``Server`` makes for the socket


def _job_env(env: dict) -> dict:
    return {k: v for k, v in env.items() if k not in PER_JOB_VARS}


# --- framing: a 4-byte length, then UTF-8 JSON ----------------------------------------------------------------

def _send(conn: socket.socket, obj, fds: list[int] | None = None) -> None:
    data = json.dumps(obj).encode()
    header = struct.pack("!I", len(data))
    if fds:
        socket.send_fds(conn, [header], fds)
        conn.sendall(data)
    else:
        conn.sendall(header + data)


def _recv_exact(conn: socket.socket, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def _recv(conn: socket.socket, nfds: int = 0):
    """One message (None at end of stream), and the file descriptors sent with it."""
    fds: list[int] = []
    if nfds:
        header, fds, _, _ = socket.recv_fds(conn, 4, nfds)
        if len(header) < 4:
            rest = _recv_exact(conn, 4 - len(header))
            header = None if rest is None else header + rest
    else:
        header = _recv_exact(conn, 4)
    if not header:
        return None, fds
    data = _recv_exact(conn, struct.unpack("!I", header)[0])
    return (None if data is None else json.loads(data)), fds


# --- the client: the `daamflow` a job's shell runs -----------------------------------------------------------

def forward(argv: list[str], started: float) -> int | None:
    """Run ``daamflow argv`` in a child of the warm server; its exit status, or None to run here (no server, or it
    declined this job: the reason is printed)."""
    path = os.environ.get(ENV_VAR)
    if not path:
        return None
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(path)
    except OSError:
        conn.close()
        return None
    request = {"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ), "started": started,
               "executable": sys.executable, "path": sys.path[1:]}
    try:
        _send(conn, request, fds=[0, 1, 2])
        reply, _ = _recv(conn)
    except OSError:
        reply = None
    if not reply or "pid" not in reply:
        if reply:
            print(f"daamflow: warm start declined ({reply.get('declined')}); running in a new interpreter",
                  file=sys.stderr)
        conn.close()
        return None
    pid = reply["pid"]
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, _frame: os.kill(pid, signum))
    try:
        status, _ = _recv(conn)
    except OSError:
        status = None
    if status is None:
        print(f"daamflow: the job (pid {pid} of the warm server) ended without an exit status: it was killed",
              file=sys.stderr)
        return 1
    return int(status["exit"])


# --- the server and its children ----------------------------------------------------------------------------

def _log(path: Path | None, message: str) -> None:
    if path is not None:
        with open(path, "a") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} [{os.getpid()}] {message}\n")


def _decline_reason(request: dict, base_env: dict) -> str | None:
    if request["executable"] != sys.executable or request["path"] != sys.path[1:]:
        return f"another interpreter or sys.path ({request['executable']})"
    differ = sorted({k for k, _ in set(_job_env(request["env"]).items()) ^ set(base_env.items())})
    if differ:
        return "environment differs from the server's in " + ", ".join(differ)
    return None


def _apply_threads(env: dict) -> None:
    """The job's thread counts, set through the libraries the server loaded with one thread each."""
    threads = int(env.get("OMP_NUM_THREADS") or 1)
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)


def _child(conn: socket.socket, base_env: dict, added_env: dict, log: Path | None) -> None:
    """Runs one job in the forked child; never returns. ``base_env`` is the server's environment before its imports
    (a job's must match it), ``added_env`` what those imports set (as they would in a cold job)."""
    import tempfile
    import traceback

    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    request, fds = _recv(conn, nfds=3)
    reason = None if request is None else _decline_reason(request, base_env)
    if request is None or len(fds) != 3 or reason:
        _log(log, f"declined: {reason or 'incomplete request'}")
        if request is not None:
            _send(conn, {"declined": reason or "incomplete request"})
        os._exit(0)
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(added_env)
    os.environ.update(request["env"])
    tempfile.tempdir = None  # recomputed from the job's TMPDIR
    _apply_threads(request["env"])
    sys.argv = ["daamflow", *request["argv"]]
    _log(log, "job: " + " ".join(request["argv"][:4]))
    _send(conn, {"pid": os.getpid()})

    def watch() -> None:  # the job's shell process is gone (killed): end the job too
        try:
            while conn.recv(1):
                pass
        except OSError:
            pass
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, daemon=True).start()
    import logging

    from daamflow import cli

    for handler in list(logging.root.handlers):  # the job configures its own logging, as a cold start does
        logging.root.removeHandler(handler)
    try:
        status = cli.main(request["argv"], started=request["started"])
    except SystemExit as exc:  # argparse errors and --help
        status = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except KeyboardInterrupt:
        status = 130
    except BaseException:  # noqa: BLE001 - a cold start prints the traceback and exits 1, and so do we
        traceback.print_exc()
        status = 1
    cli.finish()
    try:
        _send(conn, {"exit": status})
    finally:
        os._exit(status)


def serve(sock_path: Path, log: Path | None, parent: int | None, idle_timeout: float = IDLE_TIMEOUT_S) -> int:
    """Preload, listen on ``sock_path`` and fork a child per job until told to stop, the parent process ``parent``
    is gone or no job came for ``idle_timeout`` seconds."""
    t0, before = time.perf_counter(), dict(os.environ)
    for name in PRELOAD:
        importlib.import_module(name)
    base_env = _job_env(before)
    added_env = {k: v for k, v in os.environ.items() if k not in before}
    sock_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = sock_path.with_name(sock_path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(tmp))
    server.listen(64)
    os.replace(tmp, sock_path)  # clients connect only once the imports are done
    _log(log, f"ready in {time.perf_counter() - t0:.1f} s ({len(PRELOAD)} modules), socket {sock_path}")
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel; the client gets the status
    server.settimeout(1.0)
    last, jobs = time.monotonic(), 0
    try:
        while not stop:
            try:
                conn, _ = server.accept()
            except (socket.timeout, InterruptedError):
                if (parent is not None and os.getppid() != parent) or time.monotonic() - last > idle_timeout:
                    break
                continue
            last, jobs = time.monotonic(), jobs + 1
            sys.stdout.flush()
            sys.stderr.flush()
            if os.fork() == 0:
                server.close()
                _child(conn, base_env, added_env, log)
            conn.close()
    finally:
        server.close()
        sock_path.unlink(missing_ok=True)
        if sock_path.parent.name.startswith(FOLDER_PREFIX):  # ours; also when no Server.stop comes (its run died)
            with contextlib.suppress(OSError):
                sock_path.parent.rmdir()
        _log(log, f"stopped after {jobs} jobs")
    return 0


# --- the Snakefile's side -----------------------------------------------------------------------------------

class Server:
    """The server of one Snakemake run: ``start`` in ``onstart``, ``stop`` in ``onsuccess``/``onerror``."""

    def __init__(self) -> None:
        self.process = None

    def start(self, enabled: bool, local: bool, threads: int, log: str | Path) -> None:
        """Start the server and point this process's jobs at it (they inherit the environment variable)."""
        import shutil
        import subprocess
        import tempfile

        # the `daamflow` the jobs run (same interpreter and sys.path, or the server declines them)
        daamflow = shutil.which("daamflow")
        if not enabled or not local or self.process is not None or daamflow is None:
            return
        folder = Path(tempfile.mkdtemp(prefix=FOLDER_PREFIX))  # short: a socket path has at most 107 bytes
        sock = folder / "socket"
        env = dict(os.environ)
        env.update({var: str(threads) for var in THREAD_VARS})
        env.pop(ENV_VAR, None)
        log = Path(log)
        log.parent.mkdir(parents=True, exist_ok=True)
        command = [daamflow, "warm", "--socket", str(sock), "--log", str(log), "--parent", str(os.getpid())]
        with open(log, "a") as stderr:
            self.process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                            stderr=stderr, start_new_session=True)
        os.environ[ENV_VAR] = str(sock)

    def stop(self) -> None:
        import shutil

        if self.process is None:
            return
        sock = Path(os.environ.pop(ENV_VAR))
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except Exception:  # noqa: BLE001 - a server that does not stop is killed; the run's outcome stands
            self.process.kill()
        shutil.rmtree(sock.parent, ignore_errors=True)
        self.process = None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Serve the workflow's jobs from one process that has already imported torch, transformers "
                          "and peft (the Snakefile starts it when `warm_start: true`; docs/architecture.md#9-timings).")
    parser.add_argument("--socket", type=Path, required=True, help="Unix socket to listen on")
    parser.add_argument("--log", type=Path, default=None, help="append one line per job to this file")
    parser.add_argument("--parent", type=int, default=None, help="stop when this process (Snakemake) is gone")
    parser.add_argument("--idle-timeout", type=float, default=IDLE_TIMEOUT_S, help="stop after this many idle seconds")


def main(args: argparse.Namespace) -> int:
    return serve(args.socket, args.log, args.parent, args.idle_timeout)
