"""`daamflow --usage FILE`: every job records its own wall time, CPU time and peak memory (rules pass it)."""
import subprocess
import sys
from pathlib import Path

import pandas as pd

from daamflow.usage import COLUMNS

PROGRAM = "import numpy as np; a = np.ones(64 * 2**20 // 8); s = 0.0\nfor _ in range(30): s += float(a.sum())"


def _daamflow(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).with_name("daamflow")), *args], capture_output=True, text=True, timeout=120)


def test_usage_file_counts_the_command_and_its_children(tmp_path):
    """A command that spends CPU in a child process and allocates 64 MiB there: the file has the CPU of both and a
    peak memory of at least 64 MiB, in Snakemake's benchmark columns that bench_workflow reads."""
    script = tmp_path / "burn.py"
    script.write_text(f"import subprocess, sys\nsubprocess.run([sys.executable, '-c', {PROGRAM!r}], check=True)\n")
    usage = tmp_path / "benchmarks" / "stage" / "job.tsv"
    proc = subprocess.run([sys.executable, "-c", (
        "import runpy, sys; from daamflow.usage import recorded\n"
        f"with recorded(sys.argv[1]) as status:\n    runpy.run_path({str(script)!r}); status[0] = 0"), str(usage)],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    row = pd.read_csv(usage, sep="\t").iloc[0]
    assert tuple(pd.read_csv(usage, sep="\t").columns) == COLUMNS
    assert row["exit"] == 0 and row["s"] > 0 and row["max_rss"] >= 64
    assert row["cpu_time"] >= 0.5 * row["s"]  # the child's CPU is counted (the parent only waits)


def test_usage_written_with_the_exit_status_of_a_failing_command(tmp_path):
    usage = tmp_path / "u.tsv"
    proc = _daamflow("--usage", str(usage), "config", str(tmp_path / "missing.yaml"))
    assert proc.returncode != 0
    row = pd.read_csv(usage, sep="\t").iloc[0]
    assert row["exit"] == proc.returncode and row["cpu_time"] > 0


def test_without_usage_nothing_is_written(tmp_path):
    proc = subprocess.run([str(Path(sys.executable).with_name("daamflow")), "params"], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert list(tmp_path.iterdir()) == []
