"""The paper's headline claims, checked against our runs: a paired test per claim, Holm-adjusted, and a verdict.

Each accuracy claim compares two methods on the dataset that stands in for (or is) one of the paper's datasets
(``paper_dataset`` in the config), separately under each protocol. Folds/seeds are paired by name (every method of a
dataset sees the same splits); the effect Δ is the mean paired difference A − B in accuracy points, shown with its
t-based (1 − 2α) confidence interval, whose ends are the bounds of the one-sided tests of
``daamflow.report.stats``. Its verdict follows the rules there, at level α (``claims.alpha`` in the config, default
0.05) with a margin ``m`` in accuracy points (``claims.margins``, else derived from the published stds).

Each of the two p-values ("for" and "against" the claim) is Holm-adjusted over the accuracy claims of one
(dataset, protocol), and the verdict compares the adjusted p with α, so the chance of a false "holds" (or a false
"does not hold") is at most α per claim family. Fewer than 2 pairs or identical differences leave the t-test
undefined: the verdict is ``inconclusive`` and the ``reason`` column says why. On a dataset with one fixed test set
and seeded runs (evaluation scheme ``seeds``) seed-to-seed spread misses the test-set sampling, so the same test is
also run over the test items (each item's difference of correctness, averaged over the seeds, in points); a claim
then needs both tests (the larger p counts: an intersection-union test, still of level α).

The published per-fold/run values get the same test (paired by position, Holm over the claims of one paper
dataset; there are no published predictions, so no item-level test). Parameter claims compare the registry's counts
at the paper's encoder shapes (``daamflow params``) with the published LoRA counts; the rounding of a printed count is
carried as an interval, and a claim whose threshold falls inside it is inconclusive
(``daamflow.report.parameter_claims``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from daamflow import catalog
from daamflow.atomic import write_json
from daamflow.report.paired import display_paired, paired_comparisons
from daamflow.report.parameter_claims import parameter_claims
from daamflow.report.published import load_published
from daamflow.report.runs import accuracy_by_fold
from daamflow.report.stats import (ALPHA, FAILS, HOLDS, SKIPPED, TESTS, UNSURE, claim_p_values, degenerate_reason, holm,
                                   num, p_text, t_interval, verdict)
from daamflow.report.tables import write_table

RELEASED_MHA = catalog.label("mha", catalog.RELEASED)
# what the published MHA rows measured (the released MHA.py of each dataset); ours `mha` attends over the layer tokens
PUBLISHED_MHA = {
    "iemocap": "the released MHA (layer 23 only, attention across the mini-batch, 1-channel conv head)",
    "cifar100": "the released MHA (attention across the mini-batch)",
    "agnews": "the released MHA (attention across the mini-batch)",
}


@dataclass(frozen=True)
class Claim:
    """One headline claim: method ``a`` against method ``b`` on ``paper_dataset``.

    ``a``/``b`` are method names, or ``"best_daam"`` / ``"best_lora"``: the paper's best of that family (its summary
    table's choice), replaced by our best of the family when the paper's method was not run.
    """

    id: str
    statement: str
    source: str
    paper_dataset: str
    a: str
    b: str
    kind: str


CLAIMS: tuple[Claim, ...] = (
    Claim("daam_beats_mha_speech", "DAAM beats MHA on speech", "B Table 5; P Table 2", "iemocap",
          "best_daam", "mha", "greater"),
    Claim("daam_beats_mha_vision", "DAAM beats MHA on vision", "B Table 5; P Table 2", "cifar100",
          "best_daam", "mha", "greater"),
    Claim("daam_beats_lora_speech", "DAAM beats the best LoRA on speech", "B Table 5", "iemocap",
          "best_daam", "best_lora", "greater"),
    Claim("daam_beats_lora_vision", "DAAM beats the best LoRA on vision", "B Table 5", "cifar100",
          "best_daam", "best_lora", "greater"),
    Claim("gqdaam_matches_lora_text", "GQDAAM matches the best LoRA on text", "B key findings; P Table 2",
          "agnews", "gqdaam", "best_lora", "equivalent"),
    Claim("mixture_ge_daam_speech", "Mixture of DAAM is at least as good as DAAM (speech)", "P Appendix B, Table 4",
          "iemocap", "mixture", "daam_v1", "not_worse"),
    Claim("mixture_ge_daam_vision", "Mixture of DAAM is at least as good as DAAM (vision)", "P Appendix B, Table 5",
          "cifar100", "mixture", "daam_v1", "not_worse"),
    Claim("mixture_ge_daam_text", "Mixture of DAAM is at least as good as DAAM (text)", "P Appendix B, Table 6",
          "agnews", "mixture", "daam_v1", "not_worse"),
    Claim("bn_helps_mha_speech", "BatchNorm after MHA helps (speech)", "P §3.1", "iemocap", "mha_bn", "mha", "greater"),
    Claim("bn_helps_mha_vision", "BatchNorm after MHA helps (vision)", "B key findings; P §3.1", "cifar100",
          "mha_bn", "mha", "greater"),
    Claim("bn_helps_mha_text", "BatchNorm after MHA helps (text)", "P §3.1", "agnews", "mha_bn", "mha", "greater"),
)


def derived_margin(published: dict, paper_dataset: str) -> float:
    """The default margin of a paper dataset: the median of its published per-method fold/run stds (a difference
    smaller than one method's typical rerun spread is within the noise of the paper's own tables)."""
    return float(np.median([m["std"] for m in published["accuracy"][paper_dataset]["methods"].values()]))


def margin_for(dataset: str | None, paper_dataset: str, margins: dict, published: dict) -> tuple[float, str]:
    """(margin, where it comes from): ``claims.margins`` of our dataset, else of its paper dataset, else derived."""
    for key in (dataset, paper_dataset):
        if key is not None and key in margins:
            return float(margins[key]), f"claims.margins.{key}"
    return derived_margin(published, paper_dataset), f"median published std of {paper_dataset}"


# ---- accuracy claims on our runs ------------------------------------------------------------------------------------

def lora_candidates(methods) -> list[str]:
    """The runs that may stand for "best LoRA": the fair LoRA r=4/r=8 runs, or their `@released` variants when no
    fair one ran (the two are different experiments; mixing them would let a quirk pick the best)."""
    fair = [m for m in methods if m in catalog.BEST_LORA]
    released = [m for m in methods if catalog.base(m) in catalog.BEST_LORA and catalog.variant(m) == catalog.RELEASED]
    return fair or released


def _resolve(role: str, wide: pd.DataFrame, pub_summary: dict) -> tuple[str | None, str]:
    """Our method for a claim's side, and a note when it differs from the paper's choice."""
    if role not in ("best_daam", "best_lora"):
        return (role, "") if role in wide.columns else (None, f"{role} not in the config's methods")
    family = catalog.MAIN_DAAM if role == "best_daam" else catalog.BEST_LORA
    paper_choice = pub_summary[f"{role}_method"]
    if paper_choice in wide.columns:
        return paper_choice, ""
    present = [m for m in wide.columns if m in family] if role == "best_daam" else lora_candidates(wide.columns)
    if not present:
        return None, f"none of {', '.join(family)} in the config's methods"
    best = max(present, key=lambda m: wide[m].mean())
    return best, f"{best} = our best of {', '.join(family)} ({paper_choice}, the paper's, not run)"


def _baselines(claim: Claim, wide: pd.DataFrame) -> list[str]:
    """The B sides to compare with: a DAAM-vs-MHA claim on speech/vision is also made against the released MHA
    (the baseline the published row measured) when it ran."""
    extra = (claim.b == "mha" and claim.a != "mha_bn" and claim.paper_dataset in ("iemocap", "cifar100")
             and RELEASED_MHA in wide.columns)
    return [claim.b, RELEASED_MHA] if extra else [claim.b]


def baseline_note(paper_dataset: str, ours: str, published: str) -> str:
    """Which baseline each side measured; says so where the published row is the released MHA and ours is not."""
    if published == "mha" and paper_dataset in PUBLISHED_MHA:
        theirs = PUBLISHED_MHA[paper_dataset]
        if ours == "mha":
            return f"ours: mha (attention over the layer tokens); published: {theirs}: different baselines"
        if ours == RELEASED_MHA:
            return f"ours: {RELEASED_MHA}; published: {theirs}: the same baseline"
    return f"ours: {ours}; published: {published}"


def _published_values(pub: dict, paper_dataset: str, method: str) -> list[float] | None:
    entry = pub["accuracy"][paper_dataset]["methods"].get(catalog.base(method))
    return None if entry is None else [float(v) for v in entry["values"]]


def _pairing_note(paper_dataset: str, a: str, b: str) -> str:
    if paper_dataset == "iemocap" and any(m.startswith("lora") for m in (a, b)):  # LoRA and LoRA+
        return "published LoRA folds follow GroupKFold, not Session1-5: pairing them by position is approximate"
    return ""


def _published_side(role: str, paper_dataset: str, pub: dict) -> str:
    if role in ("best_daam", "best_lora"):
        return pub["summary"]["datasets"][paper_dataset][f"{role}_method"]
    return role


def _test(diff, kind: str, margin: float, alpha: float) -> dict:
    """n, effect, (1 − 2α) t-interval and the two raw p-values of one claim's paired differences."""
    effect, low, high = t_interval(diff, 1 - 2 * alpha)
    p_for, p_against = claim_p_values(diff, kind, margin)
    return {"n": len(diff), "effect": effect, "ci_low": low, "ci_high": high, "p_for": float(p_for),
            "p_against": float(p_against), "reason": degenerate_reason(diff)}


def item_differences(items: pd.DataFrame, a: str, b: str, folds) -> np.ndarray:
    """Per test item, A's correctness minus B's (points), averaged over the given seeds (runs on one fixed test set)."""
    sel = items[items["method"].isin([a, b]) & items["fold"].isin(list(folds))]
    wide = sel.pivot_table(index=["fold", "id"], columns="method", values="correct", aggfunc="first")
    if a not in wide.columns or b not in wide.columns:
        missing = [m for m in (a, b) if m not in wide.columns]
        raise ValueError(f"item-level test: no predictions of {missing} for runs {sorted(folds)}")
    return 100 * (wide[a] - wide[b]).dropna().groupby(level="id").mean().to_numpy()


def _decide(rows: list[dict], prefix: str, alpha: float) -> None:
    """Holm over the rows (one claim family) of the p-values under ``prefix``, then each row's verdict and reason."""
    for side in ("p_for", "p_against"):
        for r, p in zip(rows, holm([r[f"{prefix}{side}"] for r in rows]) if rows else []):
            r[f"{prefix}{side}_holm"] = float(p)
    for r in rows:
        p_for, p_against = r[f"{prefix}p_for_holm"], r[f"{prefix}p_against_holm"]
        v = verdict(p_for, p_against, alpha)
        reason = r.get(f"{prefix}reason") or ""
        if v == UNSURE and not reason:
            reason = f"neither test reaches α={alpha:g} after Holm: p for {p_for:.2g}, against {p_against:.2g}"
        elif v == HOLDS and r["kind"] == "greater" and p_against <= alpha:
            reason = f"A is better than B, but by less than the margin {r['margin']:g}"
        r[f"{prefix}verdict"], r[f"{prefix}reason"] = v, reason


def accuracy_claims(runs: pd.DataFrame, paper_of: dict[str, str], published: dict, alpha: float = ALPHA,
                    margins: dict | None = None, items: pd.DataFrame | None = None,
                    seeded: frozenset[str] | set[str] = frozenset()) -> pd.DataFrame:
    """One row per (claim, dataset standing in for the claim's paper dataset, protocol, baseline); a ``skipped`` row
    with the reason where no dataset or method allows the comparison.

    Args:
        runs: the run tables (``daamflow.report.runs.load_runs``: one row per fold, ``accuracy_pct``).
        paper_of: our dataset -> the paper dataset it stands in for (or is).
        published: ``published.load_published()``.
        alpha: level of every test (after Holm).
        margins: accuracy points per our dataset or paper dataset (``claims.margins``); the rest are derived.
        items: per-item correctness (``daamflow.report.runs.load_items``) of the ``seeded`` datasets.
        seeded: datasets with one fixed test set and seeded runs: their claims also need the item-level test.
    """
    margins = margins or {}
    pub_rows = {}
    for claim in CLAIMS:
        pa, pb = (_published_side(r, claim.paper_dataset, published) for r in (claim.a, claim.b))
        va, vb = (_published_values(published, claim.paper_dataset, m) for m in (pa, pb))
        margin, _ = margin_for(None, claim.paper_dataset, margins, published)
        test = _test(np.subtract(va, vb), claim.kind, margin, alpha) if va and vb else {
            "n": 0, "effect": math.nan, "ci_low": math.nan, "ci_high": math.nan, "p_for": math.nan,
            "p_against": math.nan, "reason": f"no published values of {pa if not va else pb}"}
        pub_rows[claim.id] = {"claim": claim.id, "kind": claim.kind, "paper_dataset": claim.paper_dataset,
                              "margin": margin, "published_margin": margin, "published_compared": f"{pa} − {pb}",
                              "published_note": _pairing_note(claim.paper_dataset, pa, pb),
                              **{f"published_{k}": v for k, v in test.items()}}
    for paper_dataset in {c.paper_dataset for c in CLAIMS}:
        _decide([r for r in pub_rows.values() if r["paper_dataset"] == paper_dataset], "published_", alpha)

    rows, families = [], {}
    for claim in CLAIMS:
        pub = {k: v for k, v in pub_rows[claim.id].items() if k.startswith("published_")}
        base = {"claim": claim.id, "statement": claim.statement, "source": claim.source, "kind": claim.kind,
                "paper_dataset": claim.paper_dataset, **pub}
        datasets = [d for d, p in paper_of.items() if p == claim.paper_dataset and d in set(runs["dataset"])]
        if not datasets:
            rows.append({**base, "verdict": SKIPPED,
                         "note": f"no dataset of the config has `paper_dataset: {claim.paper_dataset}`"})
            continue
        for dataset in datasets:
            margin, source = margin_for(dataset, claim.paper_dataset, margins, published)
            for protocol, pr_runs in runs[runs["dataset"] == dataset].groupby("protocol", sort=True):
                wide = accuracy_by_fold(pr_runs)
                for b in _baselines(claim, wide):
                    row = {**base, "dataset": dataset, "protocol": protocol, "margin": margin, "margin_source": source,
                           "alpha": alpha, **_compare(claim, b, dataset, protocol, pr_runs, wide, published, margin, alpha,
                                                      items if dataset in seeded else None, dataset in seeded)}
                    rows.append(row)
                    if row.get("verdict") != SKIPPED:
                        families.setdefault((dataset, protocol), []).append(row)
    for family in families.values():
        _decide(family, "", alpha)
    return pd.DataFrame(rows)


def _compare(claim: Claim, b_role: str, dataset: str, protocol: str, runs: pd.DataFrame, wide: pd.DataFrame,
             published: dict, margin: float, alpha: float, items: pd.DataFrame | None, seeded: bool) -> dict:
    pub_summary = published["summary"]["datasets"][claim.paper_dataset]
    (a, note_a), (b, note_b) = _resolve(claim.a, wide, pub_summary), _resolve(b_role, wide, pub_summary)
    notes = [n for n in (note_a, note_b) if n]
    if a is None or b is None:
        return {"verdict": SKIPPED, "note": "; ".join(notes)}
    pairs = wide[[a, b]].dropna()
    if pairs.empty:
        return {"verdict": SKIPPED, "note": "; ".join([*notes, f"{a} and {b} share no fold/seed"])}
    seeds = _test((pairs[a] - pairs[b]).to_numpy(), claim.kind, margin, alpha)
    test, p_for, p_against, reason = TESTS[claim.kind], seeds["p_for"], seeds["p_against"], seeds["reason"]
    item = {}
    if seeded:
        if items is None or dataset not in set(items["dataset"]):
            raise ValueError(f"{dataset}: evaluation scheme `seeds` needs the item-level test, but no predictions of "
                             f"{dataset} were given")
        on = items[(items["dataset"] == dataset) & (items["protocol"] == protocol)]
        per_item = item_differences(on, a, b, pairs.index)
        got = _test(per_item, claim.kind, margin, alpha)
        item = {"items_n": got["n"], "items_effect": got["effect"], "items_p_for": got["p_for"],
                "items_p_against": got["p_against"]}
        test += f"; and the same over {got['n']} test items (both must reject)"
        p_for, p_against = np.maximum(p_for, got["p_for"]), np.maximum(p_against, got["p_against"])
        reason = reason or (f"items: {got['reason']}" if got["reason"] else "")
    params = runs.groupby("method")["params"].first()
    return {
        "compared": f"{a} − {b}", "baseline": baseline_note(claim.paper_dataset, b, _published_side(
            claim.b, claim.paper_dataset, published)),
        "n": seeds["n"], "ours_a": pairs[a].mean(), "ours_b": pairs[b].mean(), "ours_effect": seeds["effect"],
        "ci_low": seeds["ci_low"], "ci_high": seeds["ci_high"], "ci_level": 1 - 2 * alpha, "test": test,
        "seeds_p_for": seeds["p_for"], "seeds_p_against": seeds["p_against"], **item,
        "p_for": float(p_for), "p_against": float(p_against), "reason": reason,
        "params_a": params.get(a), "params_b": params.get(b), "note": "; ".join(notes),
    }


# ---- the claims table --------------------------------------------------------------------------------------------

def claims_table(runs: pd.DataFrame, paper_of: dict[str, str], published: dict, params: pd.DataFrame,
                 alpha: float = ALPHA, margins: dict | None = None, items: pd.DataFrame | None = None,
                 seeded: frozenset[str] | set[str] = frozenset()) -> pd.DataFrame:
    """Accuracy claims (per dataset, protocol and baseline) followed by the parameter claims."""
    return pd.concat([accuracy_claims(runs, paper_of, published, alpha, margins, items, seeded),
                      parameter_claims(params, published)], ignore_index=True)


def display_claims(table: pd.DataFrame) -> pd.DataFrame:
    """Readable copy: claim, where, what is compared and against which baseline, the published test, ours (effect,
    (1 − 2α) t-interval, n, raw and Holm-adjusted p), the test, the margin, the verdict and why."""
    out = []
    for r in table.to_dict("records"):
        if r["kind"] == "parameters":
            published, ours, where, test, margin = r["published_text"], r["ours_text"], "paper's shapes", "", ""
        else:
            published = (f"{num(r['published_effect'])} [{num(r['published_ci_low'])}, "
                         f"{num(r['published_ci_high'])}], n={int(r['published_n'])}, "
                         f"p={p_text(r['published_p_for'])} (Holm {p_text(r['published_p_for_holm'])})"
                         f" → {r['published_verdict']}")
            ours = "" if r["verdict"] == SKIPPED else (
                f"{num(r['ours_effect'])} [{num(r['ci_low'])}, {num(r['ci_high'])}], n={int(r['n'])}, "
                f"p={p_text(r['p_for'])} (Holm {p_text(r['p_for_holm'])})")
            where = r["paper_dataset"] if r["verdict"] == SKIPPED and pd.isna(r.get("dataset")) else (
                f"{r.get('dataset')} ({r.get('protocol')})")
            test = r.get("test") if isinstance(r.get("test"), str) else TESTS[r["kind"]]
            margin = num(r.get("margin"), ".3g")
        out.append({"claim": r["statement"], "source": r["source"], "data (protocol)": where,
                    "compared": r.get("compared") if isinstance(r.get("compared"), str) else r["published_compared"],
                    "baseline": r.get("baseline") if isinstance(r.get("baseline"), str) else "",
                    "published [CI]": published, "ours [CI]": ours, "test": test, "margin": margin,
                    "verdict": r["verdict"],
                    "reason / note": "; ".join(n for n in (r.get("reason"), r.get("note"), r.get("published_note"))
                                               if isinstance(n, str) and n)})
    return pd.DataFrame(out)


def claims_metrics(table: pd.DataFrame) -> dict:
    """Numbers for DVC ``metrics``: per claim and (dataset, protocol[, baseline]) the effect, n, raw and adjusted p,
    the margin and 1/0/-1 for holds/fails/unsure."""
    code = {HOLDS: 1, FAILS: 0, UNSURE: -1}

    def number(v):
        return None if v is None or pd.isna(v) else round(float(v), 6)

    metrics: dict = {}
    for r in table.to_dict("records"):
        if r["verdict"] == SKIPPED:
            continue
        if r["kind"] == "parameters":
            metrics.setdefault(r["claim"], {})["params"] = {"effect": number(r["ours_effect"]),
                                                            "holds": code[r["verdict"]]}
            continue
        key = f"{r['dataset']}_{r['protocol']}" + ("" if not r["compared"].endswith(RELEASED_MHA) else "_released_mha")
        metrics.setdefault(r["claim"], {})[key] = {
            "effect": number(r["ours_effect"]), "n": int(r["n"]), "ci_low": number(r["ci_low"]),
            "ci_high": number(r["ci_high"]), "p": number(r["p_for"]), "p_holm": number(r["p_for_holm"]),
            "margin": number(r["margin"]), "test": r["test"], "verdict": r["verdict"], "reason": r["reason"],
            "holds": code[r["verdict"]]}
    return metrics


def claims_report(runs: pd.DataFrame, paper_of: dict[str, str], params_csv: Path, tables_dir: Path,
                  alpha: float = ALPHA, margins: dict | None = None, items: pd.DataFrame | None = None,
                  seeded: frozenset[str] | set[str] = frozenset(), published: dict | None = None) -> list[Path]:
    """``claims`` (each headline claim → published → ours per protocol → test → verdict), ``paired`` (every DAAM
    method against every baseline, Holm-adjusted p) and ``claims.json`` (the claims' numbers, DVC ``metrics``)."""
    pub = load_published() if published is None else published
    table = claims_table(runs, paper_of, pub, pd.read_csv(params_csv), alpha, margins, items, seeded)
    stand = ("; accuracy claims are evaluated on the stand-in datasets named in each row" if paper_of else "")
    items_note = (f"; on {', '.join(sorted(seeded))} (one fixed test set) the same test also runs over the test "
                  "items and both must reject" if seeded else "")
    written = write_table(
        table, Path(tables_dir) / "claims",
        f"The paper's headline claims against our runs: mean paired difference over folds/seeds with its "
        f"{100 * (1 - 2 * alpha):g}% t-interval, the claim's paired t-test (raw p and Holm-adjusted over the claims of "
        f"one dataset and protocol), verdict at α={alpha:g}, margin in accuracy points{items_note}{stand}. "
        "Parameter claims: the registry's counts at the paper's shapes, the bracket is the rounding interval of "
        "Table 1's LoRA count",
        shown=display_claims(table),
    )
    paired = paired_comparisons(runs, alpha)
    written += write_table(
        paired, Path(tables_dir) / "paired",
        f"Every DAAM method against every baseline: mean paired difference in accuracy points over folds/seeds, "
        f"{100 * (1 - alpha):g}% t-interval, two-sided paired t-test p, raw and Holm-adjusted over the comparisons "
        "of one dataset and protocol (no verdicts), parameter counts",
        shown=display_paired(paired),
    )
    write_json(Path(tables_dir) / "claims.json", claims_metrics(table))
    return [*written, Path(tables_dir) / "claims.json"]
