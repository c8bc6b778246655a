"""daamflow.claims: paired statistics, verdicts, the paper's claims against runs, and the parameter claims."""
import copy
import math

import numpy as np
import pandas as pd
import pytest

from daamflow import claims as C
from daamflow.published import load_published


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

def test_paired_bootstrap_is_seeded_and_brackets_the_mean():
    a, b = [70.0, 72.0, 69.0, 75.0, 71.0], [60.0, 65.0, 66.0, 64.0, 63.0]
    mean, lo, hi = C.paired_bootstrap(a, b, seed=3)
    assert mean == pytest.approx(np.mean(np.subtract(a, b)))
    assert lo < mean < hi and lo >= min(np.subtract(a, b)) and hi <= max(np.subtract(a, b))
    assert C.paired_bootstrap(a, b, seed=3) == (mean, lo, hi)
    assert C.paired_bootstrap(a, b, seed=4) != (mean, lo, hi)  # the seed matters


def test_paired_bootstrap_pairs_by_position():
    # the same values unpaired would give a wide interval; paired, every difference is exactly +1
    a, b = [50.0, 60.0, 70.0, 80.0], [49.0, 59.0, 69.0, 79.0]
    assert C.paired_bootstrap(a, b) == (pytest.approx(1.0), pytest.approx(1.0), pytest.approx(1.0))


def test_paired_bootstrap_edge_cases():
    mean, lo, hi = C.paired_bootstrap([3.0], [1.0])
    assert mean == 2.0 and math.isnan(lo) and math.isnan(hi)
    with pytest.raises(ValueError, match="equal length"):
        C.paired_bootstrap([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="no pairs"):
        C.paired_bootstrap([], [])


def test_paired_p_value():
    assert math.isnan(C.paired_p_value([1.0, 2.0], [0.0, 1.0]))  # constant differences: t undefined
    assert C.paired_p_value([70, 72, 69, 75, 71], [60, 65, 66, 64, 63]) < 0.01
    assert C.paired_p_value([70, 60, 65], [65, 66, 64]) > 0.5


@pytest.mark.parametrize(
    "kind, low, high, expected",
    [
        ("greater", 0.2, 3.0, C.HOLDS),
        ("greater", -0.5, 0.8, C.FAILS),  # no advantage of at least the margin (1.0) is compatible
        ("greater", -2.0, 4.0, C.UNSURE),
        ("greater", -3.0, -1.0, C.FAILS),
        ("not_worse", -0.8, 0.5, C.HOLDS),
        ("not_worse", -3.0, -0.2, C.FAILS),
        ("not_worse", -3.0, 2.0, C.UNSURE),
        ("equivalent", -0.4, 0.4, C.HOLDS),
        ("equivalent", 1.5, 3.0, C.FAILS),
        ("equivalent", -0.5, 1.5, C.UNSURE),
        ("greater", float("nan"), float("nan"), C.UNSURE),
    ],
)
def test_verdict(kind, low, high, expected):
    assert C.verdict(kind, low, high, margin=1.0) == expected


def test_verdict_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unknown claim kind 'beats'"):
        C.verdict("beats", 0, 1, 1)
    with pytest.raises(ValueError, match="margin"):
        C.verdict("greater", 0, 1, -1)


# ---- accuracy claims --------------------------------------------------------------------------------------------

def test_accuracy_claims_per_protocol(pub):
    runs = _runs({
        ("paper", "daam_v1"): [70, 72, 69, 75, 71], ("paper", "mha"): [60, 65, 66, 64, 63],
        ("clean", "daam_v1"): [60, 61, 62, 63, 64], ("clean", "mha"): [60.2, 61.1, 61.9, 63.1, 63.8],
    })
    table = C.accuracy_claims(runs, {"toy": "iemocap"}, pub)
    rows = table[table["claim"] == "daam_beats_mha_speech"].set_index("protocol")
    assert set(rows.index) == {"paper", "clean"}
    assert rows.loc["paper", "verdict"] == C.HOLDS
    assert rows.loc["paper", "ours_effect"] == pytest.approx(np.mean([10, 7, 3, 11, 8]))
    assert rows.loc["paper", "compared"] == "daam_v1 − mha" and rows.loc["paper", "n"] == 5
    assert rows.loc["clean", "verdict"] == C.FAILS  # ±0.2 points: no advantage that matters
    # the paper's own per-fold numbers: DAAMv1 − MHA on IEMOCAP = +5.1
    assert rows.loc["paper", "published_effect"] == pytest.approx(5.1, abs=0.05)
    assert rows.loc["paper", "published_verdict"] == C.HOLDS
    assert rows.loc["paper", "params_a"] == 100 and rows.loc["paper", "params_b"] == 1000


def test_skipped_claims_say_why(pub):
    runs = _runs({("paper", "daam_v1"): [70, 72], ("paper", "mha"): [60, 65]})
    table = C.accuracy_claims(runs, {"toy": "iemocap"}, pub).set_index(["claim"])
    assert table.loc["daam_beats_lora_speech", "verdict"] == C.SKIPPED
    assert "none of lora_r4, lora_r8" in table.loc["daam_beats_lora_speech", "note"]
    assert "mixture not in the config's methods" in table.loc["mixture_ge_daam_speech", "note"]
    vision = table.loc["daam_beats_mha_vision"]
    assert vision["verdict"] == C.SKIPPED and "paper_dataset: cifar100" in vision["note"]
    # skipped rows still show what the paper's numbers say
    assert vision["published_verdict"] == C.HOLDS and vision["published_effect"] == pytest.approx(18.9, abs=0.05)


def test_best_daam_falls_back_to_ours_with_a_note(pub):
    runs = _runs({("paper", "daam_v1"): [70, 72, 71], ("paper", "gqdaam"): [75, 76, 77], ("paper", "mha"): [60, 61, 62]})
    row = C.accuracy_claims(runs, {"toy": "cifar100"}, pub).set_index("claim").loc["daam_beats_mha_vision"]
    assert row["compared"] == "gqdaam − mha"  # the paper's daam_v2 was not run: our best DAAM variant stands in
    assert "daam_v2, the paper's, not run" in row["note"]


def test_published_verdicts_of_the_paper(pub):
    runs = _runs({("paper", "mha"): [1.0, 2.0]})
    table = C.accuracy_claims(runs, {}, pub).set_index("claim")
    assert table.loc["bn_helps_mha_vision", "published_verdict"] == C.HOLDS  # +4.4
    assert table.loc["bn_helps_mha_text", "published_verdict"] == C.FAILS  # +0.0 on AG News
    assert table.loc["gqdaam_matches_lora_text", "published_verdict"] == C.HOLDS  # 94.9 vs 95.0
    assert "GroupKFold" in table.loc["daam_beats_lora_speech", "published_note"]
    assert (table["verdict"] == C.SKIPPED).all()


def test_paired_comparisons_cover_every_daam_baseline_pair():
    runs = _runs({
        ("paper", "daam_v1"): [70, 72], ("paper", "mixture"): [71, 70], ("paper", "mha"): [60, 65],
        ("paper", "linear"): [50, 52],
    })
    table = C.paired_comparisons(runs)
    assert {(r.daam, r.baseline) for r in table.itertuples()} == {
        ("daam_v1", "mha"), ("daam_v1", "linear"), ("mixture", "mha"), ("mixture", "linear")}
    row = table.set_index(["daam", "baseline"]).loc[("daam_v1", "linear")]
    assert row["difference"] == pytest.approx(20.0) and row["n"] == 2
    assert row["daam_params"] == 100 and row["baseline_params"] == 1000
    assert C.display_paired(table)["DAAM − baseline [95% CI]"].str.startswith("+").all()


def test_paired_comparisons_without_pairs_is_an_empty_table():
    table = C.paired_comparisons(_runs({("paper", "mha"): [60, 65]}))
    assert table.empty and "difference" in table.columns
    assert C.display_paired(table).empty


# ---- parameter claims -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def params():
    from daamflow.paramtable import parameter_table

    return parameter_table()


def test_parameter_claims(pub, params):
    table = C.parameter_claims(params, pub).set_index("claim")
    assert list(table.index) == list(pub["text_claims"]["items"])
    # 0.39M (printed to 0.01M) / 16,384 = 23.5..24.1: the rounding straddles the claimed 24
    assert table.loc["lora_24x_daam", "verdict"] == C.UNSURE
    assert table.loc["lora_24x_daam", "ci_low"] == pytest.approx(385_000 / 16_384)
    assert table.loc["lora_2x_dat", "verdict"] == C.FAILS  # 0.39M / 238,104 = 1.64
    assert table.loc["daam_44pct_fewer_than_lora", "verdict"] == C.FAILS  # 1 - 223,768 / 0.39M = 42.6%
    assert table.loc["daam_overhead_on_gqa", "verdict"] == C.FAILS  # a percent, not 0.08%
    assert table.loc["daam_overhead_on_gqa_blog", "verdict"] == C.HOLDS
    assert table.loc["gqdaam_80pct_fewer_than_lora_text", "ours_effect"] < 0  # GQDAAM is larger than LoRA r=4
    assert (table["protocol"] == "both").all()


def test_parameter_claim_without_a_check_is_an_error(pub, params):
    bad = copy.deepcopy(pub)
    bad["text_claims"]["items"]["lora_10x_everything"] = {"value": 10, "unit": "times", "relation": "at_least",
                                                          "source": "x", "quote": "y"}
    with pytest.raises(ValueError, match="text_claims.items.lora_10x_everything"):
        C.parameter_claims(params, bad)


def test_claims_table_display_and_metrics(pub, params):
    runs = _runs({("paper", "daam_v1"): [70, 72, 69], ("paper", "mha"): [60, 65, 66]})
    table = C.claims_table(runs, {"toy": "iemocap"}, pub, params)
    shown = C.display_claims(table)
    assert len(shown) == len(table)
    row = shown[(shown["claim"] == "DAAM beats MHA on speech")].iloc[0]
    assert row["data (protocol)"] == "toy (paper)" and row["verdict"] == C.HOLDS
    assert row["ours [95% CI]"].startswith("+6.7 [") and "n=3" in row["ours [95% CI]"]
    assert "→ holds" in row["published"]
    metrics = C.claims_metrics(table)
    assert metrics["daam_beats_mha_speech"]["toy_paper"] == {"effect": pytest.approx(6.6667, abs=1e-4), "holds": 1}
    assert metrics["lora_24x_daam"]["params"]["holds"] == -1
    assert "daam_beats_mha_vision" not in metrics  # skipped claims are not metrics


def test_parse_pairs():
    assert C.parse_pairs(["wordnet=agnews", "fashion=cifar100"]) == {"wordnet": "agnews", "fashion": "cifar100"}
    assert C.parse_pairs(None) == {}
    with pytest.raises(ValueError, match="expected DATASET=PAPER_DATASET, got 'wordnet'"):
        C.parse_pairs(["wordnet"])


def test_methods_without_shared_folds_are_skipped(pub):
    runs = _runs({("paper", "daam_v1"): [70, 72], ("paper", "mha"): [60, 65]})
    runs.loc[runs["method"] == "mha", "fold"] = ["run7", "run8"]
    row = C.accuracy_claims(runs, {"toy": "iemocap"}, pub).set_index("claim").loc["daam_beats_mha_speech"]
    assert row["verdict"] == C.SKIPPED and "share no fold/seed" in row["note"]
    assert C.paired_comparisons(runs).empty
