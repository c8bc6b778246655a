"""daamflow.report.claims and .stats: paired statistics, verdicts, the paper's claims against runs, and the parameter claims."""
import copy
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from daamflow import catalog
from daamflow.report import claims as C
from daamflow.report import paired
from daamflow.report import stats as S
from daamflow.report.parameter_claims import parameter_claims
from daamflow.report.runs import load_items
from daamflow.run.runs_table import RUNS_COLUMNS
from daamflow.report.published import load_published


@pytest.fixture(scope="module")
def pub():
    return load_published()


def _runs(accuracies: dict[tuple[str, str], list[float]], dataset: str = "toy") -> pd.DataFrame:
    """Rows as report.load_runs gives them: (protocol, method) -> per-fold accuracy (%)."""
    rows = []
    for (protocol, method), values in accuracies.items():
        for i, acc in enumerate(values):
            rows.append(dict(dataset=dataset, encoder="enc", protocol=protocol, method=method, fold=f"fold{i + 1}",
                             accuracy_pct=acc, params=100 if method.startswith("daam") else 1000))
    return pd.DataFrame(rows)


# ---- statistics -----------------------------------------------------------------------------------------------

def test_holm_matches_the_step_down_definition():
    # sorted 0.01, 0.03, 0.04 with m = 3: 3·0.01, max(0.03, 2·0.03), max(0.06, 1·0.04); nan is no test
    assert S.holm([0.04, 0.01, np.nan, 0.03]) == pytest.approx([0.06, 0.03, np.nan, 0.06], nan_ok=True)
    assert S.holm([0.2, 0.9]) == pytest.approx([0.4, 0.9])
    assert S.holm([0.5]) == pytest.approx([0.5])
    assert S.holm([[0.01, 0.02], [0.3, 0.7]]) == pytest.approx(np.array([[0.02, 0.02], [0.6, 0.7]]))  # per row


def test_claim_p_values_are_scipy_paired_t_tests():
    from scipy import stats

    a, b = np.array([70.0, 72, 69, 75, 71]), np.array([60.0, 65, 66, 64, 63])
    p_for, p_against = S.claim_p_values(a - b, "greater", margin=2.0)
    assert p_for == pytest.approx(stats.ttest_rel(a, b, alternative="greater").pvalue)
    assert p_against == pytest.approx(stats.ttest_1samp(a - b, 2.0, alternative="less").pvalue)
    d = np.array([0.1, -0.2, 0.05, 0.0])
    tost, _ = S.claim_p_values(d, "equivalent", margin=0.5)
    assert tost == pytest.approx(max(stats.ttest_1samp(d, -0.5, alternative="greater").pvalue,
                                     stats.ttest_1samp(d, 0.5, alternative="less").pvalue))


def test_old_bootstrap_counterexamples_are_no_longer_holds():
    # three positive differences: the percentile bootstrap said "holds" (a sign test at p = 0.125)
    p_for, _ = S.claim_p_values([0.2, 3.0, 0.4], "greater", margin=1.0)
    assert p_for > 0.05 and S.verdict(p_for, 1.0) == S.UNSURE
    # [0.9, -0.9, 0.5] inside ±1: "equivalent holds" before; TOST p = 0.13
    p_for, p_against = S.claim_p_values([0.9, -0.9, 0.5], "equivalent", margin=1.0)
    assert p_for == pytest.approx(0.133, abs=1e-3) and S.verdict(p_for, p_against) == S.UNSURE


def test_degenerate_differences_have_no_p_and_say_why():
    for diff in ([1.0], [1.0, 1.0, 1.0], [70.1 - 70.0, 60.1 - 60.0]):
        p_for, p_against = S.claim_p_values(diff, "greater", margin=1.0)
        assert np.isnan(p_for) and np.isnan(p_against)
        assert S.verdict(p_for, p_against) == S.UNSURE
    assert "at least 2" in S.degenerate_reason([1.0]) and "no spread" in S.degenerate_reason([2.0, 2.0])
    assert S.degenerate_reason([1.0, 2.0]) == ""


@pytest.mark.parametrize(
    "kind, diff, expected",
    [
        ("greater", [5.0, 6.0, 7.0, 6.5], S.HOLDS),
        ("greater", [-0.2, 0.1, 0.0, -0.1, 0.05], S.FAILS),  # no advantage of the margin 1.0
        ("greater", [-4.0, 5.0, 2.0], S.UNSURE),
        ("greater", [0.4, 0.5, 0.45, 0.55], S.HOLDS),  # better, by less than the margin: holds wins
        ("not_worse", [-0.1, 0.2, 0.0, 0.1], S.HOLDS),
        ("not_worse", [-3.0, -2.5, -3.5, -2.8], S.FAILS),  # worse by more than the margin
        ("not_worse", [-3.0, 2.0, 0.5], S.UNSURE),
        ("equivalent", [0.1, -0.1, 0.05, 0.0, -0.05], S.HOLDS),
        ("equivalent", [2.0, 2.5, 3.0, 2.2], S.FAILS),
        ("equivalent", [-0.5, 1.5, 0.4], S.UNSURE),
    ],
)
def test_verdict_of_each_kind(kind, diff, expected):
    assert S.verdict(*S.claim_p_values(diff, kind, margin=1.0)) == expected


def test_verdict_is_elementwise_and_rejects_bad_arguments():
    assert list(S.verdict([0.01, 0.5, 0.5, np.nan], [0.9, 0.01, 0.5, np.nan])) == [S.HOLDS, S.FAILS, S.UNSURE, S.UNSURE]
    with pytest.raises(ValueError, match="unknown claim kind 'beats'"):
        S.claim_p_values([1.0, 2.0], "beats", 1.0)
    with pytest.raises(ValueError, match="margin"):
        S.claim_p_values([1.0, 2.0], "greater", 0.0)
    with pytest.raises(ValueError, match="alpha"):
        S.verdict(0.1, 0.1, alpha=0.7)


def test_t_interval():
    from scipy import stats

    d = np.array([10.0, 7, 3, 11, 8])
    mean, lo, hi = S.t_interval(d, 0.9)
    assert (lo, hi) == pytest.approx(stats.t.interval(0.9, 4, loc=d.mean(), scale=stats.sem(d)))
    assert mean == pytest.approx(7.8)
    mean, lo, hi = S.t_interval([3.0], 0.9)
    assert mean == 3.0 and math.isnan(lo) and math.isnan(hi)


def test_margins_from_config_or_derived(pub):
    assert C.margin_for("toy", "agnews", {"toy": 0.3, "agnews": 0.2}, pub) == (0.3, "claims.margins.toy")
    assert C.margin_for("toy", "agnews", {"agnews": 0.2}, pub) == (0.2, "claims.margins.agnews")
    margin, source = C.margin_for("toy", "agnews", {}, pub)
    assert margin == pytest.approx(0.125) and "median published std" in source


def test_config_margins_follow_their_justification(pub):
    """The margins in config/config.yaml and config/paper.yaml are the medians their justification names."""
    from daamflow.config import load_config

    root = Path(__file__).resolve().parents[1]
    for name in ("config/config.yaml", "config/paper.yaml"):
        margins = load_config(root / name)["claims"]["margins"]
        for paper_dataset in ("iemocap", "cifar100", "agnews"):
            assert margins[paper_dataset]["points"] == pytest.approx(C.derived_margin(pub, paper_dataset)), name
            assert "median" in margins[paper_dataset]["justification"]


# ---- accuracy claims --------------------------------------------------------------------------------------------

def test_accuracy_claims_per_protocol(pub):
    runs = _runs({
        ("paper", "daam_v1"): [70, 72, 69, 75, 71], ("paper", "mha"): [60, 65, 66, 64, 63],
        ("clean", "daam_v1"): [60, 61, 62, 63, 64], ("clean", "mha"): [60.2, 61.1, 61.9, 63.1, 63.8],
    })
    table = C.accuracy_claims(runs, {"toy": "iemocap"}, pub)
    rows = table[table["claim"] == "daam_beats_mha_speech"].set_index("protocol")
    assert set(rows.index) == {"paper", "clean"}
    assert rows.loc["paper", "verdict"] == S.HOLDS
    assert rows.loc["paper", "ours_effect"] == pytest.approx(np.mean([10, 7, 3, 11, 8]))
    assert rows.loc["paper", "compared"] == "daam_v1 − mha" and rows.loc["paper", "n"] == 5
    assert rows.loc["clean", "verdict"] == S.FAILS  # ±0.2 points: no advantage that matters
    # the paper's own per-fold numbers: DAAMv1 − MHA on IEMOCAP = +5.1
    assert rows.loc["paper", "published_effect"] == pytest.approx(5.1, abs=0.05)
    assert rows.loc["paper", "published_verdict"] == S.HOLDS
    assert rows.loc["paper", "params_a"] == 100 and rows.loc["paper", "params_b"] == 1000


def test_skipped_claims_say_why(pub):
    runs = _runs({("paper", "daam_v1"): [70, 72], ("paper", "mha"): [60, 65]})
    table = C.accuracy_claims(runs, {"toy": "iemocap"}, pub).set_index(["claim"])
    assert table.loc["daam_beats_lora_speech", "verdict"] == S.SKIPPED
    assert "none of lora_r4, lora_r8" in table.loc["daam_beats_lora_speech", "note"]
    assert "mixture not in the config's methods" in table.loc["mixture_ge_daam_speech", "note"]
    vision = table.loc["daam_beats_mha_vision"]
    assert vision["verdict"] == S.SKIPPED and "paper_dataset: cifar100" in vision["note"]
    # skipped rows still show what the paper's numbers say
    assert vision["published_verdict"] == S.HOLDS and vision["published_effect"] == pytest.approx(18.9, abs=0.05)


def test_best_daam_falls_back_to_ours_with_a_note(pub):
    runs = _runs({("paper", "daam_v1"): [70, 72, 71], ("paper", "gqdaam"): [75, 76, 77], ("paper", "mha"): [60, 61, 62]})
    row = C.accuracy_claims(runs, {"toy": "cifar100"}, pub).set_index("claim").loc["daam_beats_mha_vision"]
    assert row["compared"] == "gqdaam − mha"  # the paper's daam_v2 was not run: our best DAAM variant stands in
    assert "daam_v2, the paper's, not run" in row["note"]


def test_published_verdicts_of_the_paper(pub):
    runs = _runs({("paper", "mha"): [1.0, 2.0]})
    table = C.accuracy_claims(runs, {}, pub).set_index("claim")
    assert table.loc["bn_helps_mha_vision", "published_verdict"] == S.HOLDS  # +4.4
    # AG News has 3 runs: +0.0 (BN) and −0.1 (GQDAAM − LoRA) decide nothing at the margin 0.125 points
    for claim in ("bn_helps_mha_text", "gqdaam_matches_lora_text"):
        assert table.loc[claim, "published_verdict"] == S.UNSURE
        assert "neither test reaches α=0.05 after Holm" in table.loc[claim, "published_reason"]
    assert table.loc["gqdaam_matches_lora_text", "published_n"] == 3
    # Holm over the published IEMOCAP claims: the adjusted p is never below the raw one
    speech = table[table["paper_dataset"] == "iemocap"]
    assert (speech["published_p_for_holm"] >= speech["published_p_for"]).all()
    assert speech["published_p_for_holm"].max() > speech["published_p_for"].max() or len(speech) == 1
    assert "GroupKFold" in table.loc["daam_beats_lora_speech", "published_note"]
    assert (table["verdict"] == S.SKIPPED).all()


def test_paired_comparisons_cover_every_daam_baseline_pair():
    runs = _runs({
        ("paper", "daam_v1"): [70, 72], ("paper", "mixture"): [71, 70], ("paper", "mha"): [60, 65],
        ("paper", "linear"): [50, 52],
    })
    table = paired.paired_comparisons(runs)
    assert {(r.daam, r.baseline) for r in table.itertuples()} == {
        ("daam_v1", "mha"), ("daam_v1", "linear"), ("mixture", "mha"), ("mixture", "linear")}
    row = table.set_index(["daam", "baseline"]).loc[("daam_v1", "linear")]
    assert row["difference"] == pytest.approx(20.0) and row["n"] == 2
    assert row["daam_params"] == 100 and row["baseline_params"] == 1000
    assert paired.display_paired(table)["DAAM − baseline [CI]"].str.startswith("+").all()


def test_paired_comparisons_report_holm_adjusted_p():
    runs = _runs({
        ("paper", "daam_v1"): [70, 72, 69, 75], ("paper", "mha"): [60, 65, 66, 64], ("paper", "linear"): [69, 73, 70, 74],
        ("clean", "daam_v1"): [70, 72, 69, 75], ("clean", "mha"): [60, 65, 66, 64],
    })
    table = paired.paired_comparisons(runs).set_index(["protocol", "baseline"])
    from scipy import stats

    raw = [stats.ttest_rel([70, 72, 69, 75], b).pvalue for b in ([60, 65, 66, 64], [69, 73, 70, 74])]
    assert table.loc[("paper", "mha"), "p_value"] == pytest.approx(raw[0])
    assert table.loc[("paper", "mha"), "p_holm"] == pytest.approx(2 * raw[0])  # the smaller of two tests
    assert table.loc[("paper", "linear"), "p_holm"] == pytest.approx(max(raw[1], 2 * raw[0]))
    assert table.loc[("clean", "mha"), "p_holm"] == pytest.approx(raw[0])  # its own family: one test
    assert "verdict" not in table.columns


def test_paired_comparisons_without_pairs_is_an_empty_table():
    table = paired.paired_comparisons(_runs({("paper", "mha"): [60, 65]}))
    assert table.empty and "difference" in table.columns
    assert paired.display_paired(table).empty


# ---- parameter claims -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def params():
    from daamflow.report.paramtable import parameter_table

    return parameter_table()


def test_parameter_claims(pub, params):
    table = parameter_claims(params, pub).set_index("claim")
    assert list(table.index) == list(pub["text_claims"]["items"])
    # 0.39M (printed to 0.01M) / 16,384 = 23.5..24.1: the rounding straddles the claimed 24
    assert table.loc["lora_24x_daam", "verdict"] == S.UNSURE
    assert table.loc["lora_24x_daam", "ci_low"] == pytest.approx(385_000 / 16_384)
    assert table.loc["lora_2x_dat", "verdict"] == S.FAILS  # 0.39M / 238,104 = 1.64
    assert table.loc["daam_44pct_fewer_than_lora", "verdict"] == S.FAILS  # 1 - 223,768 / 0.39M = 42.6%
    assert table.loc["daam_overhead_on_gqa", "verdict"] == S.FAILS  # a percent, not 0.08%
    assert table.loc["daam_overhead_on_gqa_blog", "verdict"] == S.HOLDS
    assert table.loc["gqdaam_80pct_fewer_than_lora_text", "ours_effect"] < 0  # GQDAAM is larger than LoRA r=4
    assert (table["protocol"] == "both").all()


def test_parameter_claim_without_a_check_is_an_error(pub, params):
    bad = copy.deepcopy(pub)
    bad["text_claims"]["items"]["lora_10x_everything"] = {"value": 10, "unit": "times", "relation": "at_least",
                                                          "source": "x", "quote": "y"}
    with pytest.raises(ValueError, match="text_claims.items.lora_10x_everything"):
        parameter_claims(params, bad)


def test_claims_table_display_and_metrics(pub, params):
    runs = _runs({("paper", "daam_v1"): [70, 72, 69], ("paper", "mha"): [60, 65, 66]})
    table = C.claims_table(runs, {"toy": "iemocap"}, pub, params)
    shown = C.display_claims(table)
    assert len(shown) == len(table)
    row = shown[(shown["claim"] == "DAAM beats MHA on speech")].iloc[0]
    assert row["data (protocol)"] == "toy (paper)" and row["verdict"] == S.HOLDS
    assert row["ours [CI]"].startswith("+6.7 [") and "n=3" in row["ours [CI]"] and "Holm" in row["ours [CI]"]
    assert "→ holds" in row["published [CI]"] and row["test"].startswith("one-sided paired t")
    assert "different baselines" in row["baseline"]
    metrics = C.claims_metrics(table)
    got = metrics["daam_beats_mha_speech"]["toy_paper"]
    assert got["effect"] == pytest.approx(6.6667, abs=1e-4) and got["holds"] == 1 and got["n"] == 3
    assert got["p_holm"] >= got["p"] > 0 and got["margin"] == pytest.approx(2.485)
    assert metrics["lora_24x_daam"]["params"]["holds"] == -1
    assert "daam_beats_mha_vision" not in metrics  # skipped claims are not metrics


def test_parse_pairs():
    assert catalog.parse_pairs(["wordnet=agnews", "fashion=cifar100"]) == {"wordnet": "agnews", "fashion": "cifar100"}
    assert catalog.parse_pairs(None) == {}
    with pytest.raises(ValueError, match="expected DATASET=PAPER_DATASET, got 'wordnet'"):
        catalog.parse_pairs(["wordnet"])


def test_methods_without_shared_folds_are_skipped(pub):
    runs = _runs({("paper", "daam_v1"): [70, 72], ("paper", "mha"): [60, 65]})
    runs.loc[runs["method"] == "mha", "fold"] = ["run7", "run8"]
    row = C.accuracy_claims(runs, {"toy": "iemocap"}, pub).set_index("claim").loc["daam_beats_mha_speech"]
    assert row["verdict"] == S.SKIPPED and "share no fold/seed" in row["note"]
    assert paired.paired_comparisons(runs).empty


# ---- which baseline; the item-level test; Holm over a claim family ---------------------------------------------

def test_released_mha_is_a_second_row_and_the_baseline_says_which(pub):
    runs = _runs({("paper", "daam_v1"): [70, 72, 69, 75, 71], ("paper", "mha"): [60, 65, 66, 64, 63],
                  ("paper", "mha@released"): [61, 62, 60, 61, 60], ("paper", "mha_bn"): [61, 66, 66, 65, 63]})
    table = C.accuracy_claims(runs, {"toy": "iemocap"}, pub)
    mha = table[table["claim"] == "daam_beats_mha_speech"].set_index("compared")
    assert list(mha.index) == ["daam_v1 − mha", "daam_v1 − mha@released"]
    assert "different baselines" in mha.loc["daam_v1 − mha", "baseline"]
    assert "layer 23 only" in mha.loc["daam_v1 − mha", "baseline"]
    assert "the same baseline" in mha.loc["daam_v1 − mha@released", "baseline"]
    bn = table[table["claim"] == "bn_helps_mha_speech"]
    assert list(bn["compared"]) == ["mha_bn − mha"]  # BN-vs-MHA stays against our MHA only
    # both MHA rows are tests of the same (dataset, protocol) family: Holm counts them
    family = table[table["verdict"] != S.SKIPPED]
    assert len(family) == 3
    smallest = family["p_for"].min()
    assert family.loc[family["p_for"] == smallest, "p_for_holm"].iloc[0] == pytest.approx(3 * smallest)


def test_degenerate_runs_are_inconclusive_with_the_reason(pub):
    runs = _runs({("paper", "daam_v1"): [70, 72, 69], ("paper", "mha"): [69, 71, 68]})  # +1 every fold
    row = C.accuracy_claims(runs, {"toy": "iemocap"}, pub).set_index("claim").loc["daam_beats_mha_speech"]
    assert row["verdict"] == S.UNSURE and "no spread" in row["reason"]


def _write_run(root: Path, method: str, preds: dict[str, list[int]], labels: list[int], dataset="toy",
               protocol="paper") -> Path:
    """A run directory as `daamflow train` leaves it: runs.csv and <fold>/predictions.csv."""
    run_dir = root / protocol / method
    rows = []
    for fold, pred in preds.items():
        (run_dir / fold).mkdir(parents=True)
        pd.DataFrame({"id": [f"item{i}" for i in range(len(labels))], "label": labels, "pred": pred}).to_csv(
            run_dir / fold / "predictions.csv", index=False)
        rows.append(dict.fromkeys(RUNS_COLUMNS, 0) | dict(
            dataset=dataset, encoder="enc", protocol=protocol, method=method, fold=fold,
            accuracy=float(np.mean(np.equal(pred, labels))), params=10))
    pd.DataFrame(rows, columns=RUNS_COLUMNS).to_csv(run_dir / "runs.csv", index=False)
    return run_dir / "runs.csv"


def test_item_level_test_needs_the_test_items_too(pub, tmp_path):
    """Seeds agree (+2 points every run, small spread) but on 100 test items a 2-item edge is noise: the seed-level
    test alone would say holds; with the item-level test the claim is inconclusive."""
    labels = [0] * 100
    right = lambda k: [0] * k + [1] * (100 - k)  # noqa: E731 - the first k items correct
    tables = [_write_run(tmp_path, "daam_v1", {"run1": right(62), "run2": right(63), "run3": right(62)}, labels),
              _write_run(tmp_path, "mha", {"run1": right(60), "run2": right(60), "run3": right(61)}, labels)]
    from daamflow.report.runs import load_runs

    runs = load_runs(tables)
    items = load_items(tables, {"toy"})
    assert len(items) == 600 and set(items["correct"]) == {0.0, 1.0}
    seeds_only = C.accuracy_claims(runs, {"toy": "cifar100"}, pub).set_index("claim").loc["daam_beats_mha_vision"]
    assert seeds_only["verdict"] == S.HOLDS and seeds_only["p_for"] < 0.05
    both = C.accuracy_claims(runs, {"toy": "cifar100"}, pub, items=items, seeded={"toy"})
    row = both.set_index("claim").loc["daam_beats_mha_vision"]
    assert row["verdict"] == S.UNSURE and row["items_n"] == 100
    assert row["items_p_for"] > 0.05 and row["p_for"] == pytest.approx(max(row["seeds_p_for"], row["items_p_for"]))
    assert "test items" in row["test"]
    with pytest.raises(ValueError, match="toy: evaluation scheme `seeds` needs the item-level test"):
        C.accuracy_claims(runs, {"toy": "cifar100"}, pub, items=items.iloc[:0], seeded={"toy"})


def test_load_items_names_a_missing_predictions_file(tmp_path):
    table = _write_run(tmp_path, "mha", {"run1": [0, 1]}, [0, 0])
    (table.parent / "run1" / "predictions.csv").unlink()
    with pytest.raises(FileNotFoundError, match="predictions of toy / paper / mha / run1 missing"):
        load_items([table], {"toy"})
    assert load_items([table], {"other"}).empty
