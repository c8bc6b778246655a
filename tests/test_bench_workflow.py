"""benchmarks/bench_workflow.py: the per-stage table of a run's Snakemake benchmark files."""
import importlib.util
from pathlib import Path

import pytest

SPEC = importlib.util.spec_from_file_location("bench_workflow", Path(__file__).resolve().parents[1] / "benchmarks/bench_workflow.py")
bench = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(bench)

HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def _write(results: Path, stage: str, job: str, wall: float, cpu: float, rss: float) -> None:
    path = results / "benchmarks" / stage / f"{job}.tsv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEADER + f"{wall}\t0:00:01\t{rss}\t1\t1\t1\t0\t0\t50\t{cpu}\n")


def test_stage_table_sums_per_stage_slowest_first(tmp_path):
    _write(tmp_path, "train", "a", 10.0, 4.0, 300)
    _write(tmp_path, "train", "b", 30.0, 20.0, 500)
    _write(tmp_path, "embed", "c", 5.0, 5.0, 800)
    table = bench.stage_table(bench.job_times(tmp_path))
    assert list(table.index) == ["train", "embed", "all"]
    assert table.loc["train", "jobs"] == 2 and table.loc["train", "wall_s"] == 40.0 and table.loc["train", "cpu_s"] == 24.0
    assert table.loc["train", "per_job_s"] == "10.0–30.0" and table.loc["all", "max_rss_mb"] == 800
    assert table.loc["train", "share"] == "89 %" and table.loc["all", "wall_s"] == 45.0


def test_no_benchmarks_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="no benchmark files"):
        bench.job_times(tmp_path)
