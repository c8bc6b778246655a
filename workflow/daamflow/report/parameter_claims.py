"""The paper's parameter-count claims (``text_claims`` of config/published.yaml) against the registry's counts at the
paper's encoder shapes (``daamflow params``). The rounding of a printed count is carried as an interval, and a claim
whose threshold falls inside it is inconclusive. Protocol-independent; rows of the claims table.
"""
from __future__ import annotations

import pandas as pd

from daamflow.report.stats import FAILS, HOLDS, UNSURE


def _printed_interval(value: float) -> tuple[float, float]:
    """The interval a printed number stands for (half a unit of its last digit either side)."""
    text = repr(float(value))
    decimals = len(text.split(".")[1]) if "." in text and "e" not in text else 0
    half = 0.5 * 10 ** (-decimals)
    return value - half, value + half


def _interval_verdict(low: float, high: float, threshold: float, at_least: bool) -> str:
    ok_low, ok_high = (low >= threshold, high >= threshold) if at_least else (low <= threshold, high <= threshold)
    return HOLDS if ok_low and ok_high else FAILS if not (ok_low or ok_high) else UNSURE


def parameter_claims(params: pd.DataFrame, published: dict) -> pd.DataFrame:
    """The text's parameter-count claims (``text_claims`` of the published numbers), from the registry's counts at
    the paper's encoder shapes (``params``: ``daamflow.report.paramtable.parameter_table()``) and Table 1's LoRA r=4 counts
    (0.39M for WavLM-Large, 3.28M for Llama2-13B). A claim must hold at every shape; the least favourable one is
    judged. Protocol-independent."""
    lora = next(r for r in published["parameters"]["v4"]["rows"] if "lora_r4" in r["methods"])["total"]
    shapes = list(dict.fromkeys(params["encoder"]))
    if len(shapes) != len(lora):
        raise ValueError(f"parameter table has {len(shapes)} encoder shapes, Table 1's LoRA row {len(lora)} values")

    def count(mechanism: str, counted_prefix: str, encoder: str) -> int:
        sel = params[(params["mechanism"] == mechanism) & params["counted"].str.startswith(counted_prefix)
                     & (params["encoder"] == encoder)]
        if len(sel) != 1:
            raise ValueError(f"parameter table: expected one row for {mechanism} / {counted_prefix}… / {encoder}")
        return int(sel["params"].iloc[0])

    shape = {}
    for encoder, lora_m in zip(shapes, lora):
        shape[encoder] = dict(
            lora=tuple(1e6 * v for v in _printed_interval(lora_m)),
            daam=count("DAAMv1", "DAAM module", encoder),
            dat_v1=count("DAAMv1", "DAAM + 2 convs", encoder),
            dat=min(count("DAAMv1", "DAAM + 2 convs", encoder), count("DAAMv2", "DAAM + 2 convs", encoder)),
            gqa=count("GQA", "Linear", encoder), gqdaam=count("GQDAAM", "DAAM +", encoder),
        )

    def with_lora(f, encoders=shapes):
        """(encoder, low, high) of f(shape counts, LoRA count) over the LoRA count's rounding interval."""
        return [(e, *sorted(f(shape[e], lo) for lo in shape[e]["lora"])) for e in encoders]

    def exact(f):
        return [(e, f(shape[e]), f(shape[e])) for e in shapes]

    checks = {  # claim id -> (statement, what is compared, (encoder, low, high) per shape, note)
        "lora_24x_daam": ("LoRA (r=4) has at least 24× DAAM's parameters", "LoRA r=4 ÷ DAAMv1 module",
                          with_lora(lambda s, l: l / s["daam"]),
                          "Table 1's LoRA counts are rounded to 0.01M; the unrounded WavLM-Large count (394,244 with "
                          "its classifier) gives 24.06×"),
        "lora_2x_dat": ("LoRA (r=4) has at least 2× the parameters of DAT (DAAM + 2 convs)", "LoRA r=4 ÷ (DAAMv1 + convs)",
                        with_lora(lambda s, l: l / s["dat_v1"]),
                        "Table 1's smallest LoRA count is WavLM-Large's; BEiT-Large's (with its 100-class head) is 2.08×"),
        "daam_44pct_fewer_than_lora": ("DAAM has at least 44% fewer total parameters than LoRA",
                                       "1 − (DAAM + convs) ÷ LoRA r=4", with_lora(lambda s, l: 100 * (1 - s["dat"] / l)),
                                       "the smaller of DAAMv1/DAAMv2 with the two convs (Table 1's 0.22M)"),
        "daam_overhead_on_gqa": ("DAAM adds 0.016–0.08% parameters to GQA", "DAAMv1 module ÷ GQA head (with convs)",
                                 exact(lambda s: 100 * s["daam"] / s["gqa"]),
                                 "a unit slip: the ratio is 1.4–2.4 percent (1.66–2.66% without the convs)"),
        "daam_overhead_on_gqa_blog": ("DAAM adds at most 2.66% parameters to GQA (blog's correction)",
                                      "DAAMv1 module ÷ GQA head (with convs)", exact(lambda s: 100 * s["daam"] / s["gqa"]),
                                      "the blog divides by Linear(d,512) + GQA without the convs: 1.66–2.66%"),
        "gqdaam_80pct_fewer_than_lora_text": ("GQDAAM matches LoRA on text with 80% fewer parameters",
                                              "1 − GQDAAM ÷ LoRA r=4 (Llama2-13B)",
                                              with_lora(lambda s, l: 100 * (1 - s["gqdaam"] / l), shapes[-1:]),
                                              "GQDAAM without the classifier (3,533,352) against Table 1's 3.28M"),
    }
    rows = []
    for claim_id, rec in published["text_claims"]["items"].items():
        if claim_id not in checks:
            raise ValueError(f"text_claims.items.{claim_id}: no check for it in daamflow.report.parameter_claims; known: {sorted(checks)}")
        statement, compared, values, note = checks[claim_id]
        at_least = rec["relation"] == "at_least"
        bound = (min if at_least else max)(rec["value"]) if isinstance(rec["value"], list) else rec["value"]
        worst = min if at_least else max  # the claim must hold for every shape: judge the least favourable one
        low, high = worst(v[1] for v in values), worst(v[2] for v in values)
        unit = {"times": "×", "percent": "%"}[rec["unit"]]
        ours = "; ".join(f"{e}: {lo:.3g}" + ("" if f"{lo:.3g}" == f"{hi:.3g}" else f"–{hi:.3g}") + unit
                         for e, lo, hi in values)
        rows.append({
            "claim": claim_id, "statement": statement, "source": rec["source"], "kind": "parameters",
            "paper_dataset": "all", "protocol": "both", "compared": compared, "published_effect": float(bound),
            "published_text": f"{'≥' if at_least else '≤'} {bound:g}{unit} (\"{rec['quote']}\")",
            "ours_effect": low, "ci_low": low, "ci_high": high, "ours_text": ours,
            "verdict": _interval_verdict(low, high, float(bound), at_least), "note": note,
        })
    return pd.DataFrame(rows)
