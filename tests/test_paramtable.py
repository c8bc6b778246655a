"""Tests of daamflow.report.paramtable: the counts the paper's architecture implies, and the CLI."""
from __future__ import annotations

import argparse
import math

import pytest

from daamflow.report import paramtable


@pytest.fixture(scope="module")
def table():
    return paramtable.parameter_table()


def _count(table, mechanism, counted_prefix, n):
    chosen = (table.mechanism == mechanism) & table.counted.str.startswith(counted_prefix) & (table.num_layers == n)
    rows = table[chosen]
    assert len(rows) == 1
    return int(rows.params.iloc[0])


@pytest.mark.parametrize(
    "mechanism,counted,small,large",
    [
        ("DAAMv1", "DAAM module", 16_384, 81_920),
        ("DAAMv2", "DAAM module", 2_048, 10_240),
        ("Mixture of DAAM", "module (", 64, 64),
        ("DAAMv1", "DAAM + 2 convs", 238_104, 451_112),
        ("DAAMv2", "DAAM + 2 convs", 223_768, 379_432),
        ("GQDAAM", "DAAM + Linear", 1_223_192, 3_533_352),
        ("GQA", "Linear", 1_206_808, 3_451_432),
        ("MHA", "MHA(d) + 2", 4_198_400 + 221_720, 104_878_080 + 369_192),
        ("MHA -> BN", "MHA(d) + Batch", 4_198_400 + 48 + 221_720, 104_878_080 + 80 + 369_192),
        ("conv head only", "2 convs", 221_720, 369_192),
    ],
)
def test_counts(table, mechanism, counted, small, large):
    assert _count(table, mechanism, counted, 24) == small
    assert _count(table, mechanism, counted, 40) == large


def test_published_comparison(table):
    gq = table[(table.mechanism == "GQDAAM") & (table.num_layers == 40)].iloc[0]
    assert gq.published == "3.55" and gq.difference_M == pytest.approx(3.533352 - 3.55)
    assert not gq.matches  # the published 3.55M does not follow from the released architecture
    gq_small = table[(table.mechanism == "GQDAAM") & (table.num_layers == 24)].iloc[0]
    assert gq_small.published == "1.21" and not gq_small.matches
    daam = table[(table.mechanism == "DAAMv1") & table.counted.str.startswith("DAAM module")]
    assert daam.matches.all()
    mha = table[table.mechanism == "MHA"].iloc[0]
    assert mha.published == "" and math.isnan(mha.published_M) and mha.matches is None


@pytest.mark.parametrize(
    "fmt,marker", [("markdown", "| mechanism"), ("csv", "mechanism,counted"), ("latex", "\\toprule")]
)
def test_cli_formats(fmt, marker, capsys):
    parser = argparse.ArgumentParser()
    paramtable.add_arguments(parser)
    assert paramtable.main(parser.parse_args(["--format", fmt])) == 0
    out = capsys.readouterr().out
    assert marker in out and ("1,223,192" in out or "1223192" in out)
    with pytest.raises(SystemExit):
        parser.parse_args(["--format", "html"])


def test_shared_range_is_compared_as_a_range(table):
    """Table 1's "0.22-0.45" is one min-max range over DAAMv1 and DAAMv2 (with the 2 convs) and both shapes: its ends
    are 223,768 (DAAMv2, d=1024) and 451,112 (DAAMv1, d=5120). No row of it is a mismatch."""
    shared = table[table.counted == "DAAM + 2 convs"]
    assert len(shared) == 4 and (shared.published == "0.22-0.45").all()
    assert shared.matches.all()  # before: "NO" for DAAMv1 at d=1024 (0.24) and DAAMv2 at d=5120 (0.38)
    assert (shared.published_low_M == 0.22).all() and (shared.published_high_M == 0.45).all()
    # inside the range but 451,112 (0.451M), which the printed 0.45 rounds
    assert list(shared.difference_M) == pytest.approx([0, 0.451112 - 0.45, 0, 0])
    shown = paramtable.render(table)
    assert "0.22-0.45" in shown and "| NO " not in shown.split("GQDAAM")[0]


def test_a_range_whose_ends_differ_is_a_mismatch():
    rows = paramtable.compare_range([223_768, 451_112, 379_432], "0.22-0.40")
    assert [r["matches"] for r in rows] == [False] * 3  # the maximum 0.45 is not the printed 0.40
    assert rows[1]["difference_M"] == pytest.approx(0.451112 - 0.40) and rows[0]["difference_M"] == 0
    with pytest.raises(ValueError, match="expected LOW-HIGH"):
        paramtable.compare_range([1], "0.22")
