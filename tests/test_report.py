import json
import math

import matplotlib.image
import matplotlib.pyplot
import numpy as np
import pandas as pd
import pytest

from daamflow.report.runs import load_runs
from daamflow.run.runs_table import RUNS_COLUMNS
from daamflow.report.summary import summary
from daamflow.report import figures
from daamflow.report.dataset import dataset_report
from daamflow.report.tables import fold_table, protocol_table


def _runs(tmp_path):
    rows = []
    acc = {"daam_v1": [0.6, 0.7, 0.8], "mha": [0.5, 0.5, 0.8]}
    for protocol, shift in [("paper", 0.0), ("clean", -0.1)]:
        for method, values in acc.items():
            for i, a in enumerate(values):
                rows.append(dict(dataset="toy", encoder="enc", protocol=protocol, method=method, fold=f"fold{i + 1}",
                                 seed=i, accuracy=a + shift, macro_f1=a, best_epoch=1, epochs_run=2,
                                 params=1000 if method == "mha" else 200, params_without_classifier=100,
                                 wall_time_s=1.0, settings_hash="x", identity="z", features_sha256="y"))
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
    image = matplotlib.image.imread(tmp_path / "figures/toy_accuracy.png")
    assert image.shape == (4 * figures.DPI, 6 * figures.DPI, 4)  # 6 × 4 inches (two methods), RGBA
    assert image[..., :3].std() > 0.05  # something is drawn, not a blank canvas
    md = (tmp_path / "tables/toy_paper.md").read_text()
    assert "70.0 ± 8.16" in md
    metrics = summary(runs, tmp_path / "tables/summary.md", tmp_path / "tables/summary.json")
    assert json.loads((tmp_path / "tables/summary.json").read_text()) == metrics
    assert metrics["toy"]["clean"]["daam_v1"]["mean"] == pytest.approx(60.0)
    assert "not** the paper's numbers" in (tmp_path / "tables/summary.md").read_text()


def test_accuracy_plot_draws_each_protocol_and_method(tmp_path):
    fig = figures.accuracy_plot(load_runs(_runs(tmp_path)), "toy (enc)")
    try:
        ax = fig.axes[0]
        assert ax.get_title() == "toy (enc)" and ax.get_ylabel() == "accuracy (%)"
        assert [t.get_text() for t in ax.get_xticklabels()] == ["mha", "daam_v1"]  # the report's order
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["clean", "paper"]
        # bars: per protocol (clean, then paper) the mean of each method; dots: every fold
        assert [b.get_height() for b in ax.patches] == pytest.approx([50.0, 60.0, 60.0, 70.0])
        dots = np.concatenate([c.get_offsets()[:, 1] for c in ax.collections])
        assert sorted(dots) == pytest.approx(sorted([40, 40, 70, 50, 60, 70, 50, 50, 80, 60, 70, 80]))
    finally:
        matplotlib.pyplot.close(fig)


def test_missing_run_table_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        load_runs([tmp_path / "nope.csv"])


def _runs_csv(rows: list[dict], path) -> None:
    """A runs.csv of these rows, every other column of the schema 0."""
    pd.DataFrame([dict.fromkeys(RUNS_COLUMNS, 0) | row for row in rows], columns=RUNS_COLUMNS).to_csv(path, index=False)


def test_run_table_columns_are_checked(tmp_path):
    path = tmp_path / "runs.csv"
    _runs_csv([dict(dataset="toy", method="mha", fold="fold1", accuracy=0.5)], path)
    assert load_runs([path])["accuracy_pct"].tolist() == [50.0]
    pd.read_csv(path).drop(columns="identity").assign(extra=1).to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"runs.csv.*missing columns \['identity'\], unexpected columns \['extra'\]"):
        load_runs([path])


# ---- the paper's tables beside ours ----------------------------------------------------------------------------

from daamflow.report import curves  # noqa: E402
from daamflow.report import paper as R  # noqa: E402
from daamflow.report.published import load_published  # noqa: E402


def _toy(methods: dict[str, list[float]], protocol: str = "paper", dataset: str = "toy") -> pd.DataFrame:
    rows = [dict(dataset=dataset, encoder="enc", protocol=protocol, method=m, fold=f"fold{i + 1}", accuracy=a / 100,
                 accuracy_pct=a, params=300, params_without_classifier=200)
            for m, values in methods.items() for i, a in enumerate(values)]
    return pd.DataFrame(rows)


def test_paper_table_cells_rows_and_params():
    pub = load_published()
    table = R.paper_table(_toy({"daam_v1": [70.0, 60.0, 65.0], "mha": [50.0, 55.0, 60.0], "gqa": [1.0, 2.0, 3.0]}),
                          "iemocap", pub).set_index("method")
    # the paper's rows in its order (LoRA+ first), unrun ones kept, then ours it lacks
    assert list(table.index) == ["loraplus_r4", "loraplus_r8", "lora_r4", "lora_r8", "mha", "mha_bn", "daam_v2",
                                 "gqdaam", "daam_v1", "mixture", "gqa"]
    assert [c for c in table.columns if c.startswith("F") and c.endswith("_ours")] == [f"F{i}_ours" for i in range(1, 6)]
    row = table.loc["daam_v1"]
    assert (row["F1_ours"], row["F1_published"]) == (70.0, 67.2)
    assert row["F1_delta"] == pytest.approx(70.0 - 67.2)
    assert math.isnan(row["F4_ours"]) and row["F4_published"] == 67.9  # we ran 3 folds, the paper 5
    assert row["mean_published"] == 67.4 and row["mean_delta"] == pytest.approx(65.0 - 67.4)
    assert row["std_ours"] == pytest.approx(np.std([70, 60, 65]))
    assert row["params"] == 300 and row["published_params"] == "0.22–0.45M"
    assert math.isnan(table.loc["lora_r4", "mean_ours"]) and table.loc["lora_r4", "mean_published"] == 53.0
    assert math.isnan(table.loc["gqa", "mean_published"]) and table.loc["gqa", "mean_ours"] == 2.0
    assert table.loc["mixture", "published_params"] == "64"
    shown = R.display_paper_table(table.reset_index()).set_index("method")
    assert shown.loc["daam_v1", "F1"] == "70.0 (67.2; +2.8)"
    assert shown.loc["daam_v1", "μ ± σ"] == "65.0 ± 4.08 (67.4 ± 1.49; -2.4)"
    assert shown.loc["lora_r4", "F1"] == "– (49.9)" and shown.loc["gqa", "F1"] == "1.0"


def test_paper_table_mean_and_std_deltas():
    table = R.paper_table(_toy({"daam_v1": [67.0, 69.0], "gqa": [55.0, 56.0]}), "cifar100",
                          load_published()).set_index("method")
    row = table.loc["daam_v1"]
    assert (row["mean_ours"], row["mean_published"]) == (68.0, 80.3)
    assert row["mean_delta"] == pytest.approx(68.0 - 80.3) and row["std_delta"] == pytest.approx(1.0 - 0.32)
    assert table.loc["gqa", ["mean_published", "std_published", "mean_delta"]].isna().all()
    assert table.loc["gqa", "mean_ours"] == 55.5


def test_paper_table_unit_follows_the_paper():
    table = R.paper_table(_toy({"mha": [90.0, 91.0, 92.0, 93.0, 94.0]}), "agnews")
    assert [c for c in table.columns if c.endswith("_ours")][:5] == ["R1_ours", "R2_ours", "R3_ours", "R4_ours",
                                                                      "R5_ours"]
    mha = table.set_index("method").loc["mha"]
    assert mha["R3_published"] == 94.8 and math.isnan(mha["R4_published"])  # AG News: 3 runs


def test_paper_report_labels_stand_ins(tmp_path):
    runs = pd.concat([_toy({"daam_v1": [70.0, 60.0]}), _toy({"daam_v1": [71.0, 61.0]}, protocol="clean")])
    written = R.paper_report(runs, "cifar100", tmp_path, stand_in=True)
    assert {p.name for p in written} == {f"toy_{p}_vs_paper.{e}" for p in ("paper", "clean") for e in ("csv", "md", "tex")}
    md = (tmp_path / "toy_clean_vs_paper.md").read_text()
    assert "STAND-IN" in md and "CIFAR-100" in md and "protocol 'clean'" in md and "71.0 (79.9; -8.9)" in md
    R.paper_report(runs, "cifar100", tmp_path / "real", stand_in=False)
    assert "STAND-IN" not in (tmp_path / "real/toy_paper_vs_paper.md").read_text()


def test_paper_summary_table():
    runs = _toy({"daam_v1": [70.0, 72.0], "daam_v2": [80.0, 82.0], "mha": [60.0, 62.0], "lora_r4": [50.0, 50.0],
                 "mixture": [99.0, 99.0]})
    table = R.paper_summary_table(runs, {"toy": "cifar100"}).iloc[0]
    assert table["best_daam_method"] == "daam_v2"  # the main-table variants only: the Mixture is not one
    assert table["best_lora_method"] == "lora_r4"
    assert (table["mha_ours"], table["mha_published"]) == (61.0, 61.7)
    assert table["delta_vs_mha_ours"] == pytest.approx(20.0) and table["delta_vs_mha_published"] == 18.9
    assert table["delta_vs_lora_delta"] == pytest.approx(31.0 - 40.3)
    shown = R.display_paper_summary(R.paper_summary_table(runs, {"toy": "cifar100"}))
    assert shown.loc[0, "DAAM − MHA"] == "20.0 (18.9; +1.1)"
    # a quirky variant never stands for the fair LoRA when one ran; alone, it does
    quirky = {"daam_v1": [70.0], "lora_r4": [50.0], "lora_r8@released": [55.0], "loraplus_r4": [58.0]}
    assert R.paper_summary_table(_toy(quirky), {"toy": "iemocap"}).iloc[0]["best_lora_method"] == "lora_r4"
    del quirky["lora_r4"]
    assert R.paper_summary_table(_toy(quirky), {"toy": "iemocap"}).iloc[0]["best_lora_method"] == "lora_r8@released"
    no_lora = R.paper_summary_table(_toy({"daam_v1": [70.0], "mha": [60.0]}), {"toy": "iemocap"}).iloc[0]
    assert math.isnan(no_lora["best_lora_ours"]) and no_lora["best_lora_method"] == ""


def _run_dir(root, dataset, protocol, method, histories):
    run_dir = root / dataset / protocol / method
    rows = []
    for i, accs in enumerate(histories):
        fold = f"fold{i + 1}"
        (run_dir / fold).mkdir(parents=True)
        pd.DataFrame({"epoch": range(1, len(accs) + 1), "train_loss": [1.0] * len(accs), "select_accuracy": accs,
                      "lr": 0.1}).to_csv(run_dir / fold / "history.csv", index=False)
        rows.append(dict(dataset=dataset, protocol=protocol, method=method, fold=fold))
    _runs_csv(rows, run_dir / "runs.csv")
    return run_dir / "runs.csv"


def test_write_curves(tmp_path):
    runs = _run_dir(tmp_path / "runs", "toy", "paper", "daam_v1", [[0.5, 0.7], [0.3, 0.5, 0.6]])
    per_layer = tmp_path / "importance/toy/paper/per_layer.csv"
    per_layer.parent.mkdir(parents=True)
    pd.DataFrame({"layer": [1, 2], "if_mean": [0.2, 0.6], "share_mean": [0.25, 0.75]}).to_csv(per_layer, index=False)
    probe = tmp_path / "probes/toy/paper/probe.csv"
    probe.parent.mkdir(parents=True)
    pd.DataFrame({"layer": [1, 1, 2, 2], "fold": ["fold1", "fold2"] * 2, "accuracy": [0.5, 0.7, 0.8, 0.8]}).to_csv(
        probe, index=False)
    written = curves.write_curves([runs], [per_layer], [probe], tmp_path / "curves")
    assert {p.relative_to(tmp_path / "curves").as_posix() for p in written} == {
        "history/toy_paper_daam_v1.csv", "layers/toy_paper.csv"}
    history = pd.read_csv(tmp_path / "curves/history/toy_paper_daam_v1.csv")
    assert list(history["select_accuracy_pct"]) == pytest.approx([40.0, 60.0, 60.0])  # epoch 3: one fold only
    assert list(history["folds"]) == [2, 2, 1]
    layers = pd.read_csv(tmp_path / "curves/layers/toy_paper.csv")
    assert list(layers["if_share_pct"]) == [25.0, 75.0] and list(layers["probe_accuracy_pct"]) == [60.0, 80.0]
    assert curves.layer_curve(per_layer, None)["probe_accuracy_pct"].isna().all()


def test_summary_with_paper_datasets_and_claims(tmp_path):
    runs = load_runs(_runs(tmp_path))
    claims_md = tmp_path / "claims.md"
    claims_md.write_text("**claims**\n\n| a |\n|---|\n| holds |\n")
    metrics = summary(runs, tmp_path / "summary.md", tmp_path / "summary.json", stand_in=False,
                      paper_of={"toy": "iemocap"}, stand_ins=["toy"], embed=[("The paper's claims", claims_md)])
    md = (tmp_path / "summary.md").read_text()
    assert "Stand-ins: `toy` for IEMOCAP" in md and "not** the paper's numbers" not in md
    assert "[paper](toy_paper_vs_paper.md)" in md and "stands in for the paper's IEMOCAP" in md
    assert "## The paper's claims" in md and "| holds |" in md
    assert metrics["toy"]["paper"]["mha"]["n"] == 3


def test_report_cli_summary_embed(tmp_path):
    from daamflow.cli import main

    paths = [str(p) for p in _runs(tmp_path)]
    claims_md = tmp_path / "c.md"
    claims_md.write_text("table")
    rc = main(["report", "summary", "--runs", *paths, "--out-md", str(tmp_path / "s.md"), "--out-json",
               str(tmp_path / "s.json"), "--paper-datasets", "toy=agnews", "--embed", f"Claims={claims_md}"])
    assert rc == 0 and "## Claims" in (tmp_path / "s.md").read_text()
    with pytest.raises(ValueError, match="TITLE=FILE.md"):
        main(["report", "summary", "--runs", *paths, "--out-md", str(tmp_path / "s.md"), "--out-json",
              str(tmp_path / "s.json"), "--embed", "nofile"])


def _seeded_runs(root, correct: dict[str, list[int]], n_items: int = 50) -> list[str]:
    """Run directories as `daamflow train` leaves them for a `seeds` dataset: runs.csv and <run>/predictions.csv
    (method -> items right per seeded run; the first k items are right)."""
    paths = []
    for method, per_run in correct.items():
        run_dir = root / "paper" / method
        rows = []
        for r, k in enumerate(per_run, start=1):
            (run_dir / f"run{r}").mkdir(parents=True)
            pred = [0] * k + [1] * (n_items - k)
            pd.DataFrame({"id": range(n_items), "label": 0, "pred": pred}).to_csv(
                run_dir / f"run{r}" / "predictions.csv", index=False)
            rows.append(dict(dataset="toy", encoder="enc", protocol="paper", method=method, fold=f"run{r}", seed=r,
                             accuracy=k / n_items, params=10))
        _runs_csv(rows, run_dir / "runs.csv")
        paths.append(str(run_dir / "runs.csv"))
    return paths


def test_report_cli_claims_tests_with_items_margins_and_holm(tmp_path):
    from daamflow.cli import main

    runs = _seeded_runs(tmp_path, {"daam_v2": [40, 41, 42], "mha": [30, 30, 31], "mha_bn": [35, 36, 36]})
    assert main(["report", "parameters", "--tables", str(tmp_path / "t")]) == 0
    args = ["report", "claims", "--runs", *runs, "--paper-datasets", "toy=cifar100", "--parameters",
            str(tmp_path / "t/parameters.csv"), "--tables", str(tmp_path / "t"), "--alpha", "0.05"]
    assert main([*args, "--margins", "cifar100=1.5", "--seeded", "toy"]) == 0
    table = pd.read_csv(tmp_path / "t/claims.csv")
    row = table[(table["claim"] == "daam_beats_mha_vision")].iloc[0]
    assert row["n"] == 3 and row["margin"] == 1.5 and row["margin_source"] == "claims.margins.cifar100"
    assert row["items_n"] == 50 and "test items" in row["test"] and row["verdict"] == "holds"
    assert row["p_for_holm"] >= row["p_for"] and row["ci_low"] < row["ours_effect"] < row["ci_high"]
    assert "different baselines" in row["baseline"]
    md = (tmp_path / "t/claims.md").read_text()
    assert "Holm" in md and "one-sided paired t" in md and "α=0.05" in md
    metrics = json.loads((tmp_path / "t/claims.json").read_text())
    assert metrics["daam_beats_mha_vision"]["toy_paper"]["verdict"] == "holds"
    paired = pd.read_csv(tmp_path / "t/paired.csv")
    assert {"p_value", "p_holm"} <= set(paired.columns) and "verdict" not in paired.columns
    with pytest.raises(ValueError, match="--margins: cifar100='wide' is not a number"):
        main([*args, "--margins", "cifar100=wide"])
    (tmp_path / "paper/mha/run2/predictions.csv").unlink()
    with pytest.raises(FileNotFoundError, match="predictions of toy / paper / mha / run2 missing"):
        main([*args, "--seeded", "toy"])


# ---- published columns of the analysis tables ----------------------------------------------------------------------

def test_learned_ranges_with_published():
    from daamflow.analysis.layers import with_published_ranges

    table = pd.DataFrame({"dataset": ["toy", "other"], "protocol": "paper", "method": "daam_v1",
                          "delta_min": [-0.01, 0.0], "delta_max": [0.2, 0.1], "xi_min": [1.9, 2.0], "xi_max": [2.1, 2.0]})
    out = with_published_ranges(table, {"toy": "iemocap"}).set_index("dataset")
    assert (out.loc["toy", "published_delta_min"], out.loc["toy", "published_xi_max"]) == (-0.06, 2.06)
    assert out.loc["toy", "diff_delta_max"] == pytest.approx(0.2 - 0.10)
    assert out.loc["other", "paper_dataset"] == "" and math.isnan(out.loc["other", "published_xi_min"])


def test_ablation_with_published():
    from daamflow.analysis.layers import with_published_ablation

    table = pd.DataFrame({"protocol": "paper", "method": "daam_v1", "selection": ["high", "low", "random", "all"],
                          "layers": ["2", "1", "2", "all"], "mean": [60.0, 55.0, 58.0, 62.0], "std": 1.0})
    out = with_published_ablation(table, "iemocap").set_index("selection")
    assert (out.loc["high", "published_layers"], out.loc["high", "published_mean"]) == ("9", 64.0)
    assert out.loc["low", "published_std"] == 1.89 and out.loc["low", "difference"] == pytest.approx(55.0 - 62.3)
    assert (out.loc["all", "published_mean"], out.loc["all", "published_std"]) == (67.4, 1.49)
    assert math.isnan(out.loc["random", "published_mean"])
    agnews = with_published_ablation(table, "agnews").set_index("selection")
    assert agnews.loc["high", "published_layers"] == "19,20,21" and math.isnan(agnews.loc["high", "published_std"])
