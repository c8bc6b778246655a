"""The quirk-effect table (``tables/quirks.*``): each released-code quirk that has a switch, the metric with it off and
on, per dataset, paired over folds/seeds.

``QUIRKS`` is the list of comparisons (data, not code): a quirk names the run with the switch off and the run with it
on as (protocol, method) pairs, where ``{protocol}`` / ``{method}`` stand for every protocol / method present. A
comparison appears when both runs are in the run tables given, so a switch that was not run is left out, never
guessed. Each row pairs the two runs fold by fold (the same fold/seed has the same test part under both) and reports
n, the means, the mean paired difference on − off with its two-sided t-interval, and the two-sided paired t-test p
(``daamflow.report.stats``: scipy.stats), Holm-adjusted over the rows of one dataset. No
verdicts: these measure the switches, they are not the paper's claims.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from daamflow import catalog
from daamflow.report import stats


@dataclass(frozen=True)
class Quirk:
    name: str       # the switch, as the reader finds it in the config
    released: str   # what the released code does
    off: tuple[str, str]  # (protocol, method) of the run without the quirk
    on: tuple[str, str]   # (protocol, method) of the run with it


QUIRKS: tuple[Quirk, ...] = (
    Quirk("test-split selection (protocol paper vs clean)",
          "the test part chooses the epoch and drives the LR schedule", ("clean", "{method}"), ("paper", "{method}")),
    Quirk("released MHA (mha@released)", "layer 23 only, attention across the mini-batch, 1-channel conv head",
          ("{protocol}", "mha"), ("{protocol}", catalog.label("mha", catalog.RELEASED))),
    Quirk("MHA across the mini-batch (mha@across_batch)", "our MHA with only the released across-batch attention",
          ("{protocol}", "mha"), ("{protocol}", catalog.label("mha", catalog.ACROSS_BATCH))),
    # the ablation on the high-IF layers with each IF source; the configured source's run is <method>@high
    *(Quirk("IF from all-epoch maps (importance.if_source: all_epochs)",
            "the attention maps accumulate over every epoch: IF of the all-epoch average",
            ("{protocol}", off), ("{protocol}", on))
      for off, on in (("{method}@high", "{method}@high_if_all_epochs"),
                      ("{method}@high_if_selected", "{method}@high"))),
    *(Quirk(f"released LoRA ({m}@released)", "the released LoRA scripts' bugs and hyper-parameters (finetune.quirks)",
            ("{protocol}", m), ("{protocol}", catalog.label(m, catalog.RELEASED)))
      for m in catalog.LORA_METHODS),
)

COLUMNS = ("dataset", "quirk", "released", "method", "protocol", "off", "on", "n", "off_mean", "on_mean",
           "effect", "ci_low", "ci_high", "p_value", "p_holm", "note")


def _expand(quirk: Quirk, protocols: list[str], methods: list[str]) -> list[tuple[tuple[str, str], tuple[str, str]]]:
    """Every concrete (off, on) pair of a quirk over the protocols and methods present."""
    pairs = []
    for protocol in protocols:
        for method in methods:
            off = tuple(s.format(protocol=protocol, method=method) for s in quirk.off)
            on = tuple(s.format(protocol=protocol, method=method) for s in quirk.on)
            if (off, on) not in pairs:
                pairs.append((off, on))
    return pairs


def quirk_table(runs: pd.DataFrame, quirks: tuple[Quirk, ...] = QUIRKS, metric: str = "accuracy",
                alpha: float = stats.ALPHA) -> pd.DataFrame:
    """One row per dataset × quirk × concrete pair of runs present (metric in points: accuracy × 100)."""
    missing = {"dataset", "protocol", "method", "fold", metric} - set(runs.columns)
    if missing:
        raise ValueError(f"the run tables lack the columns {sorted(missing)}")
    rows = []
    for dataset, ds_runs in runs.groupby("dataset", sort=True):
        scores = {key: frame.set_index("fold")[metric] * 100
                  for key, frame in ds_runs.groupby(["protocol", "method"], sort=False)}
        protocols = sorted(ds_runs["protocol"].unique())
        methods = list(dict.fromkeys(ds_runs["method"]))
        family = []
        for quirk in quirks:
            for off, on in _expand(quirk, protocols, methods):
                if off not in scores or on not in scores:
                    continue
                pairs = pd.concat({"off": scores[off], "on": scores[on]}, axis=1, join="inner")
                if pairs.empty:  # no shared fold/seed: nothing to pair
                    continue
                diff = (pairs["on"] - pairs["off"]).to_numpy()
                effect, low, high = stats.t_interval(diff, 1 - alpha)
                family.append({
                    "dataset": dataset, "quirk": quirk.name, "released": quirk.released,
                    "method": off[1] if off[1] == on[1] else f"{off[1]} → {on[1]}",
                    "protocol": off[0] if off[0] == on[0] else f"{off[0]} → {on[0]}",
                    "off": "/".join(off), "on": "/".join(on), "n": len(pairs),
                    "off_mean": pairs["off"].mean(), "on_mean": pairs["on"].mean(), "effect": effect,
                    "ci_low": low, "ci_high": high, "p_value": float(stats.two_sided_p(diff)),
                    "note": stats.degenerate_reason(diff),
                })
        adjusted = stats.holm([r["p_value"] for r in family]) if family else []
        for row, p in zip(family, adjusted):
            row["p_holm"] = float(p)
        rows += family
    return pd.DataFrame(rows, columns=list(COLUMNS))


def display_quirks(table: pd.DataFrame, alpha: float = stats.ALPHA) -> pd.DataFrame:
    """Readable copy: off and on means, the effect with its interval, raw and Holm-adjusted p."""
    shown = table[["dataset", "quirk", "method", "protocol", "n"]].copy()
    shown["off"] = [f"{v:.1f}" for v in table["off_mean"]]
    shown["on"] = [f"{v:.1f}" for v in table["on_mean"]]
    level = f"{100 * (1 - alpha):g}%"
    shown[f"on − off [{level} CI]"] = [
        f"{stats.num(e)} [{stats.num(lo)}, {stats.num(hi)}]" if np.isfinite(lo) else f"{stats.num(e)} [n/a]"
        for e, lo, hi in zip(table["effect"], table["ci_low"], table["ci_high"])
    ]
    shown["p (paired t)"] = [stats.p_text(p) for p in table["p_value"]]
    shown["p (Holm)"] = [stats.p_text(p) for p in table["p_holm"]]
    shown["note"] = table["note"].fillna("")
    return shown


def caption(metric: str = "accuracy", alpha: float = stats.ALPHA) -> str:
    return (f"Effect of each released-code quirk: {metric} (%) with the switch off vs on, paired over folds/seeds; "
            f"on − off with its two-sided {100 * (1 - alpha):g}% t-interval, two-sided paired t-test p, "
            "Holm-adjusted over the rows of each dataset")
