"""config/published.yaml against docs/paper-notes.md (#31-table-1-as-published, #8-published-results), and the daamflow.report.published helpers."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import yaml

from daamflow.report import published as P

# Run counts of the paper's protocols (docs/paper-notes.md#65-run-counts-and-fold-order), stated here independently of the YAML.
N_RUNS = {"iemocap": 5, "cifar100": 5, "agnews": 3}
# The statistics that rounding of the listed values cannot explain (docs/paper-notes.md#88-standard-deviation-convention, checked by hand).
EXPECTED_MISMATCHES = {
    ("accuracy.iemocap.mixture", "mean"),
    ("accuracy.iemocap.mha", "std"),
    ("accuracy.iemocap.mha_bn", "std"),
    ("accuracy.iemocap.daam_v2", "std"),
    ("accuracy.iemocap.mixture", "std"),
    ("accuracy.cifar100.mha", "std"),
    ("accuracy.cifar100.mha_bn", "std"),
}


@pytest.fixture(scope="module")
def pub() -> dict:
    return P.load_published()


# --- spot checks against docs/paper-notes.md#8-published-results -------------------------------------------------------------------------

def test_iemocap_daam_v1(pub):
    acc = P.published_accuracy("iemocap", "daam_v1", pub)
    assert acc["values"] == [67.2, 64.6, 68.1, 67.9, 69.0]
    assert (acc["mean"], acc["std"]) == (67.4, 1.49)
    assert "P Table 2" in acc["source"]


@pytest.mark.parametrize(
    "dataset, method, mean, std",
    [
        ("cifar100", "daam_v2", 80.6, 0.36),
        ("agnews", "lora_r4", 95.0, 0.30),
        ("iemocap", "mixture", 67.9, 1.35),
        ("cifar100", "mixture", 80.3, 0.3),
        ("agnews", "mixture", 94.6, 0.05),
        ("iemocap", "mha_bn", 63.4, 2.50),
        ("agnews", "loraplus_r4", 84.0, 12.8),
        ("cifar100", "gqdaam", 80.1, 0.24),
    ],
)
def test_spot_values(pub, dataset, method, mean, std):
    acc = P.published_accuracy(dataset, method, pub)
    assert (acc["mean"], acc["std"]) == (mean, std)


def test_mixture_rows_cite_the_appendix_tables(pub):
    sources = [P.published_accuracy(ds, "mixture", pub)["source"] for ds in ("iemocap", "cifar100", "agnews")]
    assert [s.split(" /")[0] for s in sources] == ["P Table 4", "P Table 5", "P Table 6"]


def test_no_published_number_gives_none(pub):
    for method in ("gqa", "identity", "weighted_sum", "linear"):
        assert P.published_accuracy("iemocap", method, pub) is None


def test_parameter_ranges(pub):
    v1 = P.published_parameters("daam_v1", "v4", pub)
    assert (v1["total"], v1["daam"], v1["unit"]) == ([0.22, 0.45], [0.016, 0.082], "millions")
    assert P.published_parameters("daam_v2", "v4", pub)["daam"] == [0.002, 0.010]
    assert P.published_parameters("gqdaam", "v4", pub)["total"] == [1.21, 3.55]
    assert P.published_parameters("gqa", "v4", pub)["total"] == [1.19, 3.47]
    assert P.published_parameters("lora_r8", "v4", pub)["total"] == [0.39, 3.28]
    assert P.published_parameters("loraplus_r4", "v4", pub)["total"] == [0.39, 3.28]
    mix = P.published_parameters("mixture", "mixture", pub)
    assert (mix["total"], mix["unit"], mix["n_gaussians"]) == (64, "parameters", 4)
    assert P.published_parameters("gqdaam", "older", pub)["total"] == [1.00, 3.16]
    assert P.published_parameters("gqa", "older", pub)["total"] == [0.984, 3.08]
    assert P.published_parameters("identity", "v4", pub) is None


def test_if_ablation(pub):
    d = pub["if_ablation"]["datasets"]
    assert d["iemocap"]["high"]["layers"] == [9] and d["iemocap"]["high"]["mean"] == 64.0
    assert d["iemocap"]["low"]["layers"] == [23] and d["iemocap"]["low"]["mean"] == 62.3
    assert d["iemocap"]["high"]["values"] == [65.9, 60.1, 64.4, 62.7, 67.0]
    assert (d["agnews"]["high"]["layers"], d["agnews"]["low"]["layers"]) == ([19, 20, 21], [37, 38, 39])
    assert (d["cifar100"]["high"]["mean"], d["cifar100"]["low"]["mean"]) == (72.6, 64.7)
    for ds, block in d.items():
        assert math.isclose(block["high"]["mean"] - block["low"]["mean"], block["difference"], abs_tol=1e-9), ds


def test_learned_ranges(pub):
    d = pub["learned_ranges"]["datasets"]
    assert (d["iemocap"]["delta"], d["iemocap"]["xi"]) == ([-0.06, 0.10], [1.88, 2.06])
    assert (d["agnews"]["delta"], d["agnews"]["xi"]) == ([-0.05, 0.07], [1.94, 2.02])
    assert (d["cifar100"]["delta"], d["cifar100"]["xi"]) == ([-0.02, 0.02], [1.98, 2.03])


def test_summary_agrees_with_the_accuracy_tables(pub):
    for ds, row in pub["summary"]["datasets"].items():
        means = {m: e["mean"] for m, e in pub["accuracy"][ds]["methods"].items()}
        assert row["mha"] == means["mha"]
        best_lora = max(("lora_r4", "lora_r8"), key=means.get)
        best_daam = max(("daam_v1", "daam_v2", "gqdaam"), key=means.get)  # the main-table DAAM variants
        assert (row["best_lora_method"], row["best_lora"]) == (best_lora, means[best_lora])
        assert (row["best_daam_method"], row["best_daam"]) == (best_daam, means[best_daam])
        assert round(row["best_daam"] - row["mha"], 1) == row["delta_vs_mha"]
        assert round(row["best_daam"] - row["best_lora"], 1) == row["delta_vs_lora"]


# --- internal consistency of the transcription --------------------------------------------------------------

def test_every_list_has_the_protocol_length(pub):
    for ds, n in N_RUNS.items():
        block = pub["accuracy"][ds]
        assert block["n"] == n
        for method, rec in block["methods"].items():
            assert len(rec["values"]) == n, (ds, method)
            assert len(rec.get("code_values", rec["values"])) == n, (ds, method)
    assert len(pub["if_ablation"]["datasets"]["iemocap"]["low"]["values"]) == 5


def test_recomputed_means_within_015(pub):
    for ds, block in pub["accuracy"].items():
        for method, rec in block["methods"].items():
            assert abs(np.mean(rec["values"]) - rec["mean"]) <= 0.15, (ds, method)


def test_mismatches_are_exactly_the_documented_ones(pub):
    check = P.consistency(pub)
    flagged = {(r.entry, r.stat) for r in check.itertuples() if not r.consistent}
    documented = {(m["entry"], m["stat"]) for m in pub["meta"]["mismatches"]}
    assert flagged == documented == EXPECTED_MISMATCHES
    # the recomputed numbers written into the YAML match the check
    by_key = check.set_index(["entry", "stat"])["recomputed"]
    for m in pub["meta"]["mismatches"]:
        assert abs(by_key[(m["entry"], m["stat"])] - m["recomputed"]) < 0.001, m


def test_consistency_recomputes_population_std(pub):
    check = P.consistency(pub).set_index(["entry", "stat"])
    values = [62.7, 59.9, 62.9, 64.8, 66.6]  # IEMOCAP MHA→BN: the paper's 2.50 is the sample std
    assert check.loc[("accuracy.iemocap.mha_bn", "std"), "recomputed"] == pytest.approx(np.std(values))
    assert np.std(values, ddof=1) == pytest.approx(2.50, abs=0.01)
    assert check.loc[("accuracy.iemocap.daam_v1", "std"), "consistent"]
    assert check.loc[("if_ablation.iemocap.high", "mean"), "consistent"]


def test_code_values_round_to_the_table(pub):
    for ds, block in pub["accuracy"].items():
        for method, rec in block["methods"].items():
            for code, table in zip(rec.get("code_values", []), rec["values"]):
                assert abs(code - table) <= 0.05 + 1e-9, (ds, method, code, table)


# --- helpers --------------------------------------------------------------------------------------------------

def test_published_table_shape_and_order(pub):
    t = P.published_table("iemocap", pub)
    assert list(t.columns) == ["F1", "F2", "F3", "F4", "F5", "mean", "std"]
    assert list(t.index) == [
        "loraplus_r4", "loraplus_r8", "lora_r4", "lora_r8", "mha", "mha_bn", "daam_v2", "gqdaam", "daam_v1", "mixture"
    ]
    assert t.loc["daam_v1", "F4"] == 67.9
    a = P.published_table("agnews", pub)
    assert list(a.columns) == ["R1", "R2", "R3", "mean", "std"]
    assert list(a.index)[:3] == ["loraplus_r4", "loraplus_r8", "daam_v2"] and a.index[-2] == "lora_r4"
    assert list(P.published_table("cifar100", pub).columns)[:5] == ["R1", "R2", "R3", "R4", "R5"]


@pytest.mark.parametrize(
    "call",
    [
        lambda pub: P.published_table("imagenet", pub),
        lambda pub: P.published_accuracy("imagenet", "daam_v1", pub),
    ],
)
def test_unknown_dataset_is_a_clear_error(pub, call):
    with pytest.raises(P.UnknownNameError, match=r"unknown dataset 'imagenet'.*iemocap, cifar100, agnews"):
        call(pub)


def test_unknown_method_is_a_clear_error(pub):
    with pytest.raises(P.UnknownNameError, match="unknown method 'daamv1'"):
        P.published_accuracy("iemocap", "daamv1", pub)


# --- loading and validation -----------------------------------------------------------------------------------

def test_env_var_overrides_default(tmp_path, monkeypatch, pub):
    alt = copy.deepcopy(pub)
    alt["accuracy"]["iemocap"]["methods"]["daam_v1"]["mean"] = 12.3
    path = tmp_path / "alt.yaml"
    path.write_text(yaml.safe_dump(alt, sort_keys=False), encoding="utf-8")
    monkeypatch.setenv(P.ENV_VAR, str(path))
    assert P.default_path() == path
    assert P.published_accuracy("iemocap", "daam_v1")["mean"] == 12.3
    monkeypatch.setenv(P.ENV_VAR, str(tmp_path / "missing.yaml"))
    with pytest.raises(FileNotFoundError, match=P.ENV_VAR):
        P.load_published()


def _mutate_rename(d):
    methods = d["accuracy"]["iemocap"]["methods"]
    methods["daamv1"] = methods.pop("daam_v1")


def _mutate_short(d):
    d["accuracy"]["agnews"]["methods"]["mha"]["values"].pop()


def _mutate_typo(d):
    d["accuracy"]["cifar100"]["methods"]["mha"]["meam"] = d["accuracy"]["cifar100"]["methods"]["mha"].pop("mean")


def _mutate_mismatch(d):
    d["meta"]["mismatches"][0]["entry"] = "accuracy.iemocap.gqa"


def _mutate_range(d):
    d["parameters"]["v4"]["rows"][0]["total"] = [3.55, 1.21]


def _mutate_section(d):
    d["extra"] = {}


def _mutate_nan(d):
    d["accuracy"]["iemocap"]["methods"]["mha"]["std"] = float("nan")


@pytest.mark.parametrize(
    "mutate, where",
    [
        (_mutate_rename, "accuracy.iemocap.methods: 'daamv1' is not one of ['linear'"),
        (_mutate_short, "accuracy.agnews.methods.mha.values: expected 3 values, got 2"),
        (_mutate_typo, "accuracy.cifar100.methods.mha: 'mean' is a required property"),
        (_mutate_mismatch, "meta.mismatches[0].entry: 'accuracy.iemocap.gqa' names no record"),
        (_mutate_range, "parameters.v4.rows[0].total: range [3.55, 1.21] has min > max"),
        (_mutate_section, "top level: Additional properties are not allowed ('extra' was unexpected)"),
        (_mutate_nan, "accuracy.iemocap.methods.mha.std: expected a finite number, got nan"),
    ],
)
def test_validation_names_the_bad_key(tmp_path, pub, mutate, where):
    bad = copy.deepcopy(pub)
    mutate(bad)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad, sort_keys=False), encoding="utf-8")
    with pytest.raises(P.PublishedError) as err:
        P.load_published(path)
    assert where in str(err.value)


# --- coverage of the paper's tables and text claims ------------------------------------------------------------

def test_every_table_of_the_paper_is_transcribed(pub):
    """P Table 2 (9 rows per dataset) + Tables 4-6 (Mixture), B Table 5, P Table 1 (6 rows), Table 3, the older
    parameter table (5 rows), the learned ranges and the IF ablations."""
    table2 = {"loraplus_r4", "loraplus_r8", "lora_r4", "lora_r8", "mha", "mha_bn", "daam_v2", "gqdaam", "daam_v1"}
    for ds in ("iemocap", "cifar100", "agnews"):
        assert set(pub["accuracy"][ds]["methods"]) == table2 | {"mixture"}, ds
    assert set(pub["summary"]["datasets"]) == {"iemocap", "cifar100", "agnews"}
    assert [len(pub["parameters"][t]["rows"]) for t in ("v4", "mixture", "older")] == [6, 1, 5]
    assert set(pub["learned_ranges"]["datasets"]) == set(pub["if_ablation"]["datasets"]) == set(N_RUNS)


def test_text_claims(pub):
    items = pub["text_claims"]["items"]
    assert items["lora_24x_daam"]["value"] == 24 and items["lora_2x_dat"]["value"] == 2
    assert items["daam_44pct_fewer_than_lora"]["value"] == 44
    assert items["daam_overhead_on_gqa"]["value"] == [0.016, 0.08]
    assert items["daam_overhead_on_gqa_blog"]["value"] == 2.66
    assert items["gqdaam_80pct_fewer_than_lora_text"]["value"] == 80
    assert {i["relation"] for i in items.values()} == {"at_least", "at_most"}


def test_text_claim_validation(tmp_path, pub):
    bad = copy.deepcopy(pub)
    bad["text_claims"]["items"]["lora_24x_daam"]["relation"] = "about"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad, sort_keys=False), encoding="utf-8")
    with pytest.raises(P.PublishedError, match=r"text_claims.items.lora_24x_daam.relation: 'about' is not one of"):
        P.load_published(path)
