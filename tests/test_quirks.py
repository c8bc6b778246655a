"""The quirk-effect table on a small synthetic runs table, through the CLI, and its place in the default DAG."""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from daamflow.report import quirks
from daamflow.run.runs_table import RUNS_COLUMNS
from daamflow.report import cli as report

ROOT = Path(__file__).resolve().parents[1]


def _runs(rng) -> pd.DataFrame:
    rows = []
    base = {"mha": 0.60, "mha@released": 0.50, "lora_r4": 0.80, "daam_v1": 0.70}
    for dataset in ("speech", "text"):
        for protocol, bump in (("clean", 0.0), ("paper", 0.03)):
            for method, acc in base.items():
                folds = 4 if method == "mha@released" and protocol == "clean" else 5  # one fold missing
                for k in range(1, folds + 1):
                    rows.append({"dataset": dataset, "encoder": "e", "protocol": protocol, "method": method,
                                 "fold": f"fold{k}", "accuracy": acc + bump + 0.01 * rng.normal()})
    return pd.DataFrame(rows)


def test_quirk_rows_pair_folds_and_match_scipy():
    runs = _runs(np.random.default_rng(0))
    table = quirks.quirk_table(runs)
    speech = table[table["dataset"] == "speech"]
    # test-split selection for every method run under both protocols; released MHA per protocol; no LoRA row
    # (lora_r4@released was not run)
    selection = speech[speech["quirk"].str.startswith("test-split selection")]
    assert sorted(selection["method"]) == sorted(["mha", "mha@released", "lora_r4", "daam_v1"])
    released = speech[speech["quirk"] == "released MHA (mha@released)"].set_index("protocol")
    assert sorted(released.index) == ["clean", "paper"]
    assert not table["quirk"].str.contains("LoRA").any()
    assert released.loc["clean", "n"] == 4 and released.loc["paper", "n"] == 5  # paired on the shared folds only

    wide = runs[(runs["dataset"] == "speech") & (runs["protocol"] == "clean")].pivot(
        index="fold", columns="method", values="accuracy").dropna() * 100
    row = released.loc["clean"]
    assert row["effect"] == pytest.approx((wide["mha@released"] - wide["mha"]).mean())
    assert row["effect"] < -5 and row["ci_low"] < row["effect"] < row["ci_high"] < 0
    assert row["p_value"] == pytest.approx(stats.ttest_rel(wide["mha@released"], wide["mha"]).pvalue)
    assert row["off"] == "clean/mha" and row["on"] == "clean/mha@released"

    d1 = selection.set_index("method").loc["daam_v1"]
    assert d1["protocol"] == "clean → paper" and d1["effect"] == pytest.approx(3, abs=2)
    # Holm over each dataset's rows: never below the raw p, and the smallest raw p times the number of rows
    assert (speech["p_holm"] >= speech["p_value"] - 1e-12).all()
    assert speech["p_holm"].min() == pytest.approx(min(1, speech["p_value"].min() * len(speech)))


def test_lora_pair_appears_when_both_runs_exist_and_bad_tables_fail():
    runs = _runs(np.random.default_rng(1))
    extra = runs[runs["method"] == "lora_r4"].assign(method="lora_r4@released", accuracy=0.3)
    table = quirks.quirk_table(pd.concat([runs, extra]))
    lora = table[table["quirk"] == "released LoRA (lora_r4@released)"]
    assert len(lora) == 4 and (lora["effect"] < -40).all()  # 2 datasets x 2 protocols
    same = pd.concat([runs, runs[runs["method"] == "lora_r4"].assign(method="lora_r4@released")])
    tied = quirks.quirk_table(same).set_index(["dataset", "off", "on"]).loc[
        ("speech", "paper/lora_r4", "paper/lora_r4@released")]
    assert tied["effect"] == 0 and np.isnan(tied["p_value"]) and "no spread" in tied["note"]
    with pytest.raises(ValueError, match=r"lack the columns \['fold'\]"):
        quirks.quirk_table(runs.drop(columns="fold"))


def test_all_epoch_if_rows_follow_the_configured_source():
    runs = _runs(np.random.default_rng(3))
    high = runs[runs["method"] == "daam_v1"].assign(method="daam_v1@high")
    name = "IF from all-epoch maps (importance.if_source: all_epochs)"
    for other, (off, on) in (("daam_v1@high_if_all_epochs", ("daam_v1@high", "daam_v1@high_if_all_epochs")),
                             ("daam_v1@high_if_selected", ("daam_v1@high_if_selected", "daam_v1@high"))):
        table = quirks.quirk_table(pd.concat([runs, high, high.assign(method=other, accuracy=high["accuracy"] - 0.1)]))
        rows = table[table["quirk"] == name]
        assert len(rows) == 4 and set(rows["off"].str.split("/").str[1]) == {off}
        assert set(rows["on"].str.split("/").str[1]) == {on}


def test_cli_writes_the_three_tables(tmp_path):
    runs = _runs(np.random.default_rng(2))
    paths = []
    for (dataset, protocol, method), frame in runs.groupby(["dataset", "protocol", "method"]):
        path = tmp_path / dataset / protocol / method / "runs.csv"
        path.parent.mkdir(parents=True)
        frame.reindex(columns=RUNS_COLUMNS, fill_value=0).to_csv(path, index=False)  # a runs.csv: every column
        paths.append(str(path))
    parser = argparse.ArgumentParser()
    report.add_arguments(parser)
    report.main(parser.parse_args(["quirks", "--runs", *paths, "--out-table", str(tmp_path / "tables/quirks")]))
    csv = pd.read_csv(tmp_path / "tables/quirks.csv")
    assert len(csv) == len(quirks.quirk_table(runs)) and set(quirks.COLUMNS) == set(csv.columns)
    md = (tmp_path / "tables/quirks.md").read_text()
    assert "released MHA" in md and "p (Holm)" in md and "95% CI" in md
    assert "\\begin{table}" in (tmp_path / "tables/quirks.tex").read_text()


def test_default_run_builds_the_quirk_table(tmp_path):
    """Dry run of the embedded default: tables/quirks.* is built, from runs with mha@released and lora_r4@released."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    out = subprocess.run([sys.executable, "-m", "snakemake", "-n", "-p", "--config", f"results_dir={tmp_path}/r",
                          "--", f"{tmp_path}/r/tables/quirks.md"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert re.search(r"daamflow --usage \S+ report quirks", out.stdout) and "--other-source all_epochs" in out.stdout
    for method in ("mha@released", "lora_r4@released", "mha", "daam_v1@high", "daam_v1@high_if_all_epochs"):
        assert f"/paper/{method}/runs.csv" in out.stdout and f"/clean/{method}/runs.csv" in out.stdout
