"""Every DAAM method against every baseline, per dataset and protocol (``tables/paired``): the mean paired difference
with its t-interval and the two-sided paired t-test p, Holm-adjusted over the comparisons of one dataset and
protocol. No verdicts: these are not the paper's claims (``daamflow.report.claims``).
"""
from __future__ import annotations

import pandas as pd

from daamflow import catalog
from daamflow.report.runs import accuracy_by_fold
from daamflow.report.stats import ALPHA, holm, num, p_text, t_interval, two_sided_p

PAIRED_COLUMNS = ("dataset", "protocol", "daam", "baseline", "n", "daam_mean", "baseline_mean", "difference", "ci_low",
                  "ci_high", "p_value", "p_holm", "daam_params", "baseline_params")


def paired_comparisons(runs: pd.DataFrame, alpha: float = ALPHA) -> pd.DataFrame:
    """Every DAAM method against every baseline, per dataset and protocol: n, means, mean paired difference, its
    two-sided (1 − α) t-interval, the two-sided paired t-test p, that p Holm-adjusted over the (dataset, protocol)'s
    comparisons, and both parameter counts. No verdicts: these are not the paper's claims."""
    rows = []
    for (dataset, protocol), pr_runs in runs.groupby(["dataset", "protocol"], sort=True):
        wide = accuracy_by_fold(pr_runs)
        params = pr_runs.groupby("method")["params"].first()
        daam = [m for m in catalog.DAAM_FAMILY if m in wide.columns]
        baselines = [m for m in wide.columns if catalog.base(m) not in catalog.DAAM_FAMILY]
        family = []
        for a in daam:
            for b in baselines:
                pairs = wide[[a, b]].dropna()
                if pairs.empty:  # no shared fold/seed: nothing to pair
                    continue
                diff = (pairs[a] - pairs[b]).to_numpy()
                effect, low, high = t_interval(diff, 1 - alpha)
                family.append({
                    "dataset": dataset, "protocol": protocol, "daam": a, "baseline": b, "n": len(pairs),
                    "daam_mean": pairs[a].mean(), "baseline_mean": pairs[b].mean(), "difference": effect,
                    "ci_low": low, "ci_high": high, "p_value": float(two_sided_p(diff)),
                    "daam_params": params[a], "baseline_params": params[b],
                })
        for r, p in zip(family, holm([r["p_value"] for r in family]) if family else []):
            r["p_holm"] = float(p)
        rows += family
    return pd.DataFrame(rows, columns=PAIRED_COLUMNS)


def display_paired(table: pd.DataFrame) -> pd.DataFrame:
    """Readable copy of :func:`paired_comparisons`."""
    shown = table[["dataset", "protocol", "daam", "baseline", "n"]].copy()
    shown["DAAM − baseline [CI]"] = [
        f"{num(d)} [{num(lo)}, {num(hi)}]" for d, lo, hi in zip(table["difference"], table["ci_low"], table["ci_high"])
    ]
    shown["p (paired t)"] = [p_text(p) for p in table["p_value"]]
    shown["p (Holm)"] = [p_text(p) for p in table["p_holm"]]
    shown["params (DAAM / baseline)"] = [f"{int(a):,} / {int(b):,}" for a, b in
                                         zip(table["daam_params"], table["baseline_params"])]
    return shown
