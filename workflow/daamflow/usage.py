"""What one command cost: wall seconds, CPU seconds and peak memory, written when it ends (``daamflow --usage FILE``).

The workflow's rules record every job this way instead of with Snakemake's ``benchmark:``, whose sampler reads each
job's ``/proc/<pid>/smaps_rollup`` every half second from inside the Snakemake process: about half of Snakemake's
own CPU time, taken from the two cores the jobs run on (docs/architecture.md#9-timings). ``getrusage`` costs nothing
and counts every CPU second of the process and its waited-for children, however short they lived.

The file is a one-row TSV with the columns of Snakemake's benchmark files that ``benchmarks/bench_workflow.py`` reads
(``s``, ``h:m:s``, ``max_rss`` in MB, ``cpu_time`` in s), plus ``exit`` (the command's exit status).
"""
from __future__ import annotations

import contextlib
import resource
import time
from collections.abc import Iterator
from pathlib import Path

COLUMNS = ("s", "h:m:s", "max_rss", "cpu_time", "exit")


def measure(start: float, status: int) -> dict:
    """The usage of this process and its waited-for children since ``start`` (``time.perf_counter``)."""
    wall = time.perf_counter() - start
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
    peak_kib = max(own.ru_maxrss, children.ru_maxrss)  # Linux reports KiB
    return {"s": round(wall, 4), "h:m:s": time.strftime("%H:%M:%S", time.gmtime(wall)),
            "max_rss": round(peak_kib / 1024, 2), "cpu_time": round(cpu, 2), "exit": status}


def write(path: Path, record: dict) -> None:
    from daamflow.atomic import atomic_write  # here: it imports pandas, which `daamflow --help` does not need

    text = "\t".join(COLUMNS) + "\n" + "\t".join(str(record[c]) for c in COLUMNS) + "\n"
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: tmp.write_text(text))


@contextlib.contextmanager
def recorded(path: Path | None, start: float | None = None) -> Iterator[list[int]]:
    """Run the body, then write its usage to ``path`` (nothing when None), also when it fails; the wall time counts
    from ``start`` (``time.perf_counter``; default: now). The body puts its exit status in the yielded list; an
    exception counts as status 1."""
    start, status = time.perf_counter() if start is None else start, [1]
    try:
        yield status
    finally:
        if path is not None:
            write(path, measure(start, status[0]))
