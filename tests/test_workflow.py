"""The real Snakemake workflow, end to end, on the micro config (tests/configs/micro.yaml)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
MICRO = ROOT / "tests/configs/micro.yaml"


def snakemake(*args, timeout=900, cwd=ROOT, env=None):
    """Snakemake as the user runs it, in ``cwd``, with ``env`` added to the environment."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "snakemake", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def micro_run(tmp_path_factory):
    results = tmp_path_factory.mktemp("micro") / "results"
    proc = snakemake("--cores", "2", "--configfile", str(MICRO), "--config", f"results_dir={results}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return results, yaml.safe_load(MICRO.read_text())


@pytest.mark.slow
def test_tables_match_the_run_contracts(micro_run):
    results, config = micro_run
    for dataset, ds in config["datasets"].items():
        for protocol in config["protocols"]:
            table = pd.read_csv(results / f"tables/{dataset}_{protocol}.csv").set_index("method")
            assert set(table.index) == set(config["methods"])
            for method in config["methods"]:
                run_dir = results / f"runs/{dataset}/{ds['encoder']}/{protocol}/{method}"
                folds = sorted(p.name for p in run_dir.iterdir() if p.is_dir())
                assert len(folds) == ds["evaluation"].get("folds", ds["evaluation"].get("runs"))
                for fold in folds:
                    metrics = json.loads((run_dir / fold / "metrics.json").read_text())
                    assert table.loc[method, fold] == pytest.approx(100 * metrics["accuracy"])
                    assert metrics["selection"] == ("test" if protocol == "paper" else "dev")
                accs = [table.loc[method, f] for f in folds]
                assert table.loc[method, "mean"] == pytest.approx(sum(accs) / len(accs))
            assert (results / f"tables/{dataset}_{protocol}.md").read_text().count("±") >= len(config["methods"])
            assert (results / f"tables/{dataset}_{protocol}.tex").read_text().startswith("\\begin{table}")
        assert (results / f"figures/{dataset}_accuracy.png").stat().st_size > 1000
    summary = (results / "tables/summary.md").read_text()
    assert all(f"## {d}" in summary for d in config["datasets"])
    metrics = json.loads((results / "tables/summary.json").read_text())
    assert set(metrics) == set(config["datasets"])


@pytest.mark.slow
def test_results_match_the_golden_digests(micro_run):
    """Refactorings change no behaviour: tables, runs.csv, metrics.json and summary.json (timings, versions and the
    results path aside) equal the recorded digests (tests/golden.py says how they were recorded)."""
    import golden

    results, _ = micro_run
    differences = golden.compare(results)
    assert not differences, "results differ from tests/golden/micro.json:\n" + "\n".join(differences[:40])


@pytest.mark.slow
def test_jobs_fork_from_the_warm_server(micro_run):
    """``warm_start`` (default true): the run's jobs forked from the server its onstart started, so the digests above
    are those of warm-started jobs; none was declined, and the server stopped with the run."""
    results, _ = micro_run
    log = (results / "logs/warm/server.log").read_text().splitlines()
    jobs = [line for line in log if " job: " in line]
    stages = {line.split(" job: ")[1].split()[2] for line in jobs if line.split(" job: ")[1].startswith("--usage")}
    assert {"train", "report"} <= stages, log  # the first jobs may start before the server is ready
    assert not [line for line in log if "declined" in line]
    assert log[-1].endswith(f"stopped after {len(jobs)} jobs")


@pytest.mark.slow
def test_feature_stores_and_density_maps(micro_run):
    from daamflow.data.features import load_store

    results, config = micro_run
    for dataset, ds in config["datasets"].items():
        store = load_store(results / f"features/{dataset}/{ds['encoder']}")
        assert store.num_layers == (6 if ds["encoder"] == "minilm" else 2)  # hidden_states[1:]
        density = next((results / f"runs/{dataset}/{ds['encoder']}/clean/daam_v1").glob("*/density.npy"))
        import numpy as np

        assert np.load(density).shape == (store.num_layers, store.feature_dim)


@pytest.mark.slow
def test_rerun_is_a_no_op(micro_run):
    results, _ = micro_run
    proc = snakemake("-n", "--configfile", str(MICRO), "--config", f"results_dir={results}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_default_config_dry_run_lists_the_whole_grid(tmp_path):
    proc = snakemake("-n", "--quiet", "rules", "--config", f"results_dir={tmp_path}", timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    counts = {}
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            counts[parts[0]] = int(parts[1])
    config = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    n_ds = len(config["datasets"])
    from daamflow.catalog import HEAD_METHODS

    heads = [m for m in config["methods"] if m in HEAD_METHODS]
    assert {"lora_r4", "lora_r8", "loraplus_r4", "loraplus_r8"} <= set(config["methods"])  # issue 8: in the default
    assert counts["train"] == n_ds * len(heads) * len(config["protocols"])
    assert counts.get("finetune", 0) == n_ds * (len(config["methods"]) - len(heads)) * len(config["protocols"])
    assert counts["embed"] == n_ds and counts["prepare"] == n_ds and counts["report_dataset"] == n_ds


def test_bad_config_fails_before_any_job(tmp_path):
    bad = yaml.safe_load(MICRO.read_text())
    bad["datasets"]["wordnet"]["evaluation"]["folds"] = 1
    bad["methods"].append("transformer")
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    proc = snakemake("-n", "--configfile", str(path), "--config", f"results_dir={tmp_path / 'r'}", timeout=120)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "datasets.wordnet.evaluation.folds" in out and "methods.3" in out
    assert not (tmp_path / "r").exists()


def test_lint_passes():
    proc = snakemake("--lint", timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
