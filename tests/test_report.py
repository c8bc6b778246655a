import json

import numpy as np
import pandas as pd
import pytest

from daamflow.report import dataset_report, fold_table, load_runs, protocol_table, summary


def _runs(tmp_path):
    rows = []
    acc = {"daam_v1": [0.6, 0.7, 0.8], "mha": [0.5, 0.5, 0.8]}
    for protocol, shift in [("paper", 0.0), ("clean", -0.1)]:
        for method, values in acc.items():
            for i, a in enumerate(values):
                rows.append(dict(dataset="toy", encoder="enc", protocol=protocol, method=method, fold=f"fold{i + 1}",
                                 seed=i, accuracy=a + shift, macro_f1=a, best_epoch=1, epochs_run=2,
                                 params=1000 if method == "mha" else 200, params_without_classifier=100,
                                 wall_time_s=1.0, settings_hash="x", features_sha256="y"))
    frame = pd.DataFrame(rows)
    paths = []
    for (protocol, method), part in frame.groupby(["protocol", "method"]):
        p = tmp_path / f"{protocol}_{method}.csv"
        part.to_csv(p, index=False)
        paths.append(p)
    return paths


def test_fold_table_uses_percent_and_population_std(tmp_path):
    runs = load_runs(_runs(tmp_path))
    table = fold_table(runs[runs.protocol == "paper"]).set_index("method")
    assert list(table.columns[:3]) == ["fold1", "fold2", "fold3"]
    assert table.loc["daam_v1", "mean"] == pytest.approx(70.0)
    assert table.loc["daam_v1", "std"] == pytest.approx(np.std([60, 70, 80], ddof=0))
    assert table.loc["mha", "params"] == 1000
    assert list(table.index) == ["mha", "daam_v1"]  # the report's method order, baselines first


def test_protocol_table_side_by_side(tmp_path):
    table = protocol_table(load_runs(_runs(tmp_path))).set_index("method")
    assert table.loc["daam_v1", "paper_mean"] == pytest.approx(70.0)
    assert table.loc["daam_v1", "clean_mean"] == pytest.approx(60.0)
    assert table.loc["mha", "clean_n"] == 3


def test_report_files_and_summary(tmp_path):
    runs = load_runs(_runs(tmp_path))
    written = dataset_report(runs, tmp_path / "tables", tmp_path / "figures")
    names = {p.name for p in written}
    for stem in ["toy_paper", "toy_clean", "toy_protocols"]:
        assert {f"{stem}.csv", f"{stem}.md", f"{stem}.tex"} <= names
    assert (tmp_path / "figures/toy_accuracy.png").stat().st_size > 1000
    md = (tmp_path / "tables/toy_paper.md").read_text()
    assert "70.0 ± 8.16" in md
    metrics = summary(runs, tmp_path / "tables/summary.md", tmp_path / "tables/summary.json")
    assert json.loads((tmp_path / "tables/summary.json").read_text()) == metrics
    assert metrics["toy"]["clean"]["daam_v1"]["mean"] == pytest.approx(60.0)
    assert "not** the paper's numbers" in (tmp_path / "tables/summary.md").read_text()


def test_missing_run_table_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        load_runs([tmp_path / "nope.csv"])
