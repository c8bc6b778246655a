"""Where a workflow run's time went: the per-stage table of the jobs' usage files.

Every rule's job writes ``<results>/benchmarks/<stage>/<job>.tsv`` (``daamflow --usage``: wall seconds, CPU seconds of
the job and its children, peak memory; the columns of Snakemake's benchmark files, which this also reads). This sums
them per stage, so anyone can see which stage to make faster:

    python benchmarks/bench_workflow.py results            # the table, slowest stage first
    python benchmarks/bench_workflow.py results --jobs 10  # and the ten slowest jobs

The sum of the jobs' wall times exceeds the run's wall time when jobs ran side by side (``--cores 2``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd


def job_times(results: Path) -> pd.DataFrame:
    """One row per job: stage, job, wall_s, cpu_s, max_rss_mb (the last repetition of a benchmark file)."""
    rows = []
    for tsv in sorted((results / "benchmarks").rglob("*.tsv")):
        bench = pd.read_csv(tsv, sep="\t")
        if bench.empty:
            continue
        last = bench.iloc[-1]
        rows.append({"stage": tsv.parent.relative_to(results / "benchmarks").parts[0], "job": tsv.stem,
                     "wall_s": float(last["s"]), "cpu_s": float(last.get("cpu_time", float("nan"))),
                     "max_rss_mb": float(last.get("max_rss", float("nan")))})
    if not rows:
        raise SystemExit(f"no benchmark files under {results / 'benchmarks'}: is {results} a finished results folder?")
    return pd.DataFrame(rows)


def stage_table(jobs: pd.DataFrame) -> pd.DataFrame:
    """Per stage: jobs, summed wall and CPU seconds, the fastest and slowest job, the largest peak memory."""
    grouped = jobs.groupby("stage")
    table = pd.DataFrame({
        "jobs": grouped.size(),
        "wall_s": grouped["wall_s"].sum(),
        "cpu_s": grouped["cpu_s"].sum(),
        "per_job_s": [f"{lo:.1f}–{hi:.1f}" for lo, hi in zip(grouped["wall_s"].min(), grouped["wall_s"].max())],
        "max_rss_mb": grouped["max_rss_mb"].max(),
    }).sort_values("wall_s", ascending=False)
    total = pd.DataFrame({"jobs": [len(jobs)], "wall_s": [jobs["wall_s"].sum()], "cpu_s": [jobs["cpu_s"].sum()],
                          "per_job_s": [""], "max_rss_mb": [jobs["max_rss_mb"].max()]}, index=["all"])
    table = pd.concat([table, total])
    table["share"] = [f"{100 * w / jobs['wall_s'].sum():.0f} %" for w in table["wall_s"]]
    return table.round({"wall_s": 1, "cpu_s": 1, "max_rss_mb": 0})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, help="a finished results folder (config results_dir)")
    parser.add_argument("--jobs", type=int, default=0, help="also list the N slowest jobs")
    args = parser.parse_args(argv)
    jobs = job_times(args.results)
    print(stage_table(jobs).to_markdown())
    if args.jobs:
        print()
        print(jobs.sort_values("wall_s", ascending=False).head(args.jobs).to_markdown(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
