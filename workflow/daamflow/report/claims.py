"""The paper's headline claims, checked against our runs: a paired test per claim, Holm-adjusted, and a verdict.

Each accuracy claim compares two methods on the dataset that stands in for (or is) one of the paper's datasets
(``paper_dataset`` in the config), separately under each protocol. Folds/seeds are paired by name (every method of a
dataset sees the same splits); the effect Δ is the mean paired difference A − B in accuracy points, shown with its
t-based (1 − 2α) confidence interval, whose ends are the bounds of the one-sided tests below.

A verdict comes from a test at level α (``claims.alpha`` in the config, default 0.05), never from where an interval
falls. With a margin ``m`` (accuracy points below which a difference does not matter; ``claims.margins``):

- ``greater`` (A beats B): holds if the one-sided paired t-test rejects H0: Δ ≤ 0; does not hold if the
  non-superiority test rejects H0: Δ ≥ m (no advantage that matters); holds wins when both reject (A is better, by
  less than m: the reason says so).
- ``not_worse`` (A ≥ B): holds if the non-inferiority t-test rejects H0: Δ ≤ −m; does not hold if the opposite test
  rejects H0: Δ ≥ −m (A is worse by more than m).
- ``equivalent`` (A ≈ B): holds if both one-sided tests (TOST) reject, i.e. H0: |Δ| ≥ m; does not hold if a
  one-sided test shows Δ > m or Δ < −m.

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
carried as an interval, and a claim whose threshold falls inside it is inconclusive.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

HOLDS, FAILS, UNSURE, SKIPPED = "holds", "does not hold", "inconclusive", "skipped"
KINDS = ("greater", "not_worse", "equivalent")
ALPHA = 0.05
DAAM_METHODS = ("daam_v1", "daam_v2", "mixture", "gqdaam")
MAIN_DAAM = ("daam_v1", "daam_v2", "gqdaam")  # the main-table variants the paper's "best DAAM" is chosen from
LORA_METHODS = ("lora_r4", "lora_r8")  # "best LoRA" in the paper's summary excludes LoRA+
RELEASED_MHA = "mha@released"
# what the published MHA rows measured (the released MHA.py of each dataset); ours `mha` attends over the layer tokens
PUBLISHED_MHA = {
    "iemocap": "the released MHA (layer 23 only, attention across the mini-batch, 1-channel conv head)",
    "cifar100": "the released MHA (attention across the mini-batch)",
    "agnews": "the released MHA (attention across the mini-batch)",
}
PAIRED_COLUMNS = ("dataset", "protocol", "daam", "baseline", "n", "daam_mean", "baseline_mean", "difference", "ci_low",
                  "ci_high", "p_value", "p_holm", "daam_params", "baseline_params")
TESTS = {
    "greater": "one-sided paired t (H0: Δ ≤ 0; against: H0: Δ ≥ m)",
    "not_worse": "non-inferiority paired t (H0: Δ ≤ −m; against: H0: Δ ≥ −m)",
    "equivalent": "TOST paired t (H0: |Δ| ≥ m; against: Δ > m or Δ < −m)",
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


# ---- statistics ---------------------------------------------------------------------------------------------------

def _degenerate(diff: np.ndarray) -> np.ndarray:
    """Rows (last axis = pairs) on which a t-test is undefined: fewer than 2 pairs or (numerically) equal values."""
    if diff.shape[-1] < 2:
        return np.ones(diff.shape[:-1], dtype=bool)
    return np.ptp(diff, axis=-1) <= 1e-9 * np.maximum(1.0, np.abs(diff).max(axis=-1))


def _t_p(diff: np.ndarray, shift: float, alternative: str) -> np.ndarray:
    """One-sample t-test p of mean(diff) against ``shift`` along the last axis; nan where it is undefined."""
    from scipy import stats  # only here: scipy.stats takes most of this module's import time

    bad = _degenerate(diff)
    safe = np.where(bad[..., None], np.arange(diff.shape[-1], dtype=float), diff)  # any spread: masked below
    with np.errstate(all="ignore"):
        p = stats.ttest_1samp(safe, shift, axis=-1, alternative=alternative).pvalue
    return np.where(bad, np.nan, p)


def claim_p_values(diff, kind: str, margin: float) -> tuple[np.ndarray, np.ndarray]:
    """(p for the claim, p against it) of paired differences A − B (last axis = pairs; any leading axes are
    independent data sets): the tests of the module docstring; nan where the t-test is undefined."""
    if kind not in KINDS:
        raise ValueError(f"unknown claim kind {kind!r}; expected one of {KINDS}")
    if not margin > 0:
        raise ValueError(f"margin must be > 0 accuracy points, got {margin}")
    diff = np.asarray(diff, dtype=float)
    if kind == "greater":
        return _t_p(diff, 0.0, "greater"), _t_p(diff, margin, "less")
    if kind == "not_worse":
        return _t_p(diff, -margin, "greater"), _t_p(diff, -margin, "less")
    return (np.fmax(_t_p(diff, -margin, "greater"), _t_p(diff, margin, "less")),
            np.fmin(_t_p(diff, margin, "greater"), _t_p(diff, -margin, "less")))


def two_sided_p(diff) -> np.ndarray:
    """Two-sided paired t-test p of H0: Δ = 0 (last axis = pairs); nan where it is undefined."""
    return _t_p(np.asarray(diff, dtype=float), 0.0, "two-sided")


def t_interval(diff, level: float) -> tuple[float, float, float]:
    """Mean of the differences and its two-sided t-based confidence interval at ``level`` ((nan, nan) when undefined)."""
    from scipy import stats

    diff = np.asarray(diff, dtype=float)
    if len(diff) == 0:
        raise ValueError("t_interval: no pairs")
    mean = float(diff.mean())
    if _degenerate(diff):
        return mean, math.nan, math.nan
    half = stats.t.ppf((1 + level) / 2, len(diff) - 1) * diff.std(ddof=1) / math.sqrt(len(diff))
    return mean, mean - half, mean + half


def holm(p) -> np.ndarray:
    """Holm's step-down adjusted p-values along the last axis; nan entries are no test (they stay nan and do not
    count towards the number of tests)."""
    p = np.asarray(p, dtype=float)
    valid = ~np.isnan(p)
    m = valid.sum(axis=-1, keepdims=True)
    order = np.argsort(np.where(valid, p, np.inf), axis=-1, kind="stable")
    ranked = np.take_along_axis(np.where(valid, p, 1.0), order, axis=-1)
    factor = np.maximum(m - np.arange(p.shape[-1]), 1)
    adjusted = np.minimum(1.0, np.maximum.accumulate(factor * ranked, axis=-1))
    out = np.empty_like(adjusted)
    np.put_along_axis(out, order, adjusted, axis=-1)
    return np.where(valid, out, np.nan)


def verdict(p_for, p_against, alpha: float = ALPHA):
    """``holds`` / ``does not hold`` / ``inconclusive`` from the (adjusted) p-values for and against a claim;
    elementwise on arrays."""
    if not 0 < alpha < 0.5:
        raise ValueError(f"alpha must lie in (0, 0.5), got {alpha}")
    p_for, p_against = np.asarray(p_for, dtype=float), np.asarray(p_against, dtype=float)
    out = np.where(p_for <= alpha, HOLDS, np.where(p_against <= alpha, FAILS, UNSURE))
    return str(out) if out.ndim == 0 else out


def degenerate_reason(diff) -> str:
    """Why the t-test cannot decide on these differences ("" when it can)."""
    diff = np.asarray(diff, dtype=float)
    if len(diff) < 2:
        return f"{len(diff)} pair: a t-test needs at least 2"
    if _degenerate(diff):
        return f"all {len(diff)} differences are {diff[0]:+.3g}: no spread, the t-test is undefined"
    return ""


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

def _accuracy_by_fold(runs: pd.DataFrame) -> pd.DataFrame:
    """fold × method accuracy (percent) of one dataset and protocol."""
    return runs.pivot_table(index="fold", columns="method", values="accuracy_pct", aggfunc="first")


def _base(method: str) -> str:
    return method.split("@", 1)[0]


def lora_candidates(methods) -> list[str]:
    """The runs that may stand for "best LoRA": the fair LoRA r=4/r=8 runs, or their `@released` variants when no
    fair one ran (the two are different experiments; mixing them would let a quirk pick the best)."""
    fair = [m for m in methods if m in LORA_METHODS]
    return fair or [m for m in methods if _base(m) in LORA_METHODS and m.endswith("@released")]


def _resolve(role: str, wide: pd.DataFrame, pub_summary: dict) -> tuple[str | None, str]:
    """Our method for a claim's side, and a note when it differs from the paper's choice."""
    if role not in ("best_daam", "best_lora"):
        return (role, "") if role in wide.columns else (None, f"{role} not in the config's methods")
    family = MAIN_DAAM if role == "best_daam" else LORA_METHODS
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
    entry = pub["accuracy"][paper_dataset]["methods"].get(_base(method))
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
        runs: the run tables (``report.load_runs``: one row per fold, ``accuracy_pct``).
        paper_of: our dataset -> the paper dataset it stands in for (or is).
        published: ``published.load_published()``.
        alpha: level of every test (after Holm).
        margins: accuracy points per our dataset or paper dataset (``claims.margins``); the rest are derived.
        items: per-item correctness (:func:`load_items`) of the ``seeded`` datasets.
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
                wide = _accuracy_by_fold(pr_runs)
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


def paired_comparisons(runs: pd.DataFrame, alpha: float = ALPHA) -> pd.DataFrame:
    """Every DAAM method against every baseline, per dataset and protocol: n, means, mean paired difference, its
    two-sided (1 − α) t-interval, the two-sided paired t-test p, that p Holm-adjusted over the (dataset, protocol)'s
    comparisons, and both parameter counts. No verdicts: these are not the paper's claims."""
    rows = []
    for (dataset, protocol), pr_runs in runs.groupby(["dataset", "protocol"], sort=True):
        wide = _accuracy_by_fold(pr_runs)
        params = pr_runs.groupby("method")["params"].first()
        daam = [m for m in DAAM_METHODS if m in wide.columns]
        baselines = [m for m in wide.columns if _base(m) not in DAAM_METHODS]
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


def load_items(run_tables: list[Path], datasets) -> pd.DataFrame:
    """Per-item correctness of every run of the given datasets: the ``predictions.csv`` beside each ``runs.csv``
    (``<run dir>/<fold>/predictions.csv``). Columns dataset, protocol, method, fold, id, correct (0/1)."""
    frames = []
    for table in map(Path, run_tables):
        runs = pd.read_csv(table)
        for r in runs[runs["dataset"].isin(list(datasets))].itertuples():
            path = table.parent / r.fold / "predictions.csv"
            if not path.exists():
                raise FileNotFoundError(f"{path}: predictions of {r.dataset} / {r.protocol} / {r.method} / {r.fold} "
                                        "missing (the item-level test of a `seeds` dataset reads them)")
            pred = pd.read_csv(path)
            missing = {"id", "label", "pred"} - set(pred.columns)
            if missing:
                raise ValueError(f"{path}: columns {sorted(missing)} missing")
            frames.append(pd.DataFrame({"dataset": r.dataset, "protocol": r.protocol, "method": r.method,
                                        "fold": r.fold, "id": pred["id"],
                                        "correct": (pred["label"] == pred["pred"]).astype(float)}))
    columns = ["dataset", "protocol", "method", "fold", "id", "correct"]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


# ---- parameter claims ---------------------------------------------------------------------------------------------

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
            raise ValueError(f"text_claims.items.{claim_id}: no check for it in daamflow.report.claims; known: {sorted(checks)}")
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


# ---- the claims table --------------------------------------------------------------------------------------------

def claims_table(runs: pd.DataFrame, paper_of: dict[str, str], published: dict, params: pd.DataFrame,
                 alpha: float = ALPHA, margins: dict | None = None, items: pd.DataFrame | None = None,
                 seeded: frozenset[str] | set[str] = frozenset()) -> pd.DataFrame:
    """Accuracy claims (per dataset, protocol and baseline) followed by the parameter claims."""
    return pd.concat([accuracy_claims(runs, paper_of, published, alpha, margins, items, seeded),
                      parameter_claims(params, published)], ignore_index=True)


def _num(v, fmt: str = "+.1f") -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


def _p(v) -> str:
    return _num(v, ".2g") or "–"


def display_claims(table: pd.DataFrame) -> pd.DataFrame:
    """Readable copy: claim, where, what is compared and against which baseline, the published test, ours (effect,
    (1 − 2α) t-interval, n, raw and Holm-adjusted p), the test, the margin, the verdict and why."""
    out = []
    for r in table.to_dict("records"):
        if r["kind"] == "parameters":
            published, ours, where, test, margin = r["published_text"], r["ours_text"], "paper's shapes", "", ""
        else:
            published = (f"{_num(r['published_effect'])} [{_num(r['published_ci_low'])}, "
                         f"{_num(r['published_ci_high'])}], n={int(r['published_n'])}, "
                         f"p={_p(r['published_p_for'])} (Holm {_p(r['published_p_for_holm'])})"
                         f" → {r['published_verdict']}")
            ours = "" if r["verdict"] == SKIPPED else (
                f"{_num(r['ours_effect'])} [{_num(r['ci_low'])}, {_num(r['ci_high'])}], n={int(r['n'])}, "
                f"p={_p(r['p_for'])} (Holm {_p(r['p_for_holm'])})")
            where = r["paper_dataset"] if r["verdict"] == SKIPPED and pd.isna(r.get("dataset")) else (
                f"{r.get('dataset')} ({r.get('protocol')})")
            test = r.get("test") if isinstance(r.get("test"), str) else TESTS[r["kind"]]
            margin = _num(r.get("margin"), ".3g")
        out.append({"claim": r["statement"], "source": r["source"], "data (protocol)": where,
                    "compared": r.get("compared") if isinstance(r.get("compared"), str) else r["published_compared"],
                    "baseline": r.get("baseline") if isinstance(r.get("baseline"), str) else "",
                    "published [CI]": published, "ours [CI]": ours, "test": test, "margin": margin,
                    "verdict": r["verdict"],
                    "reason / note": "; ".join(n for n in (r.get("reason"), r.get("note"), r.get("published_note"))
                                               if isinstance(n, str) and n)})
    return pd.DataFrame(out)


def display_paired(table: pd.DataFrame) -> pd.DataFrame:
    """Readable copy of :func:`paired_comparisons`."""
    shown = table[["dataset", "protocol", "daam", "baseline", "n"]].copy()
    shown["DAAM − baseline [CI]"] = [
        f"{_num(d)} [{_num(lo)}, {_num(hi)}]" for d, lo, hi in zip(table["difference"], table["ci_low"], table["ci_high"])
    ]
    shown["p (paired t)"] = [_p(p) for p in table["p_value"]]
    shown["p (Holm)"] = [_p(p) for p in table["p_holm"]]
    shown["params (DAAM / baseline)"] = [f"{int(a):,} / {int(b):,}" for a, b in
                                         zip(table["daam_params"], table["baseline_params"])]
    return shown


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


def parse_pairs(items: list[str] | None, what: str = "--paper-datasets") -> dict[str, str]:
    """``["wordnet=agnews", ...]`` -> ``{"wordnet": "agnews"}``; a clear error naming a malformed item."""
    out = {}
    for item in items or []:
        if not re.fullmatch(r"[^=\s]+=[^=\s]+", item):
            raise ValueError(f"{what}: expected DATASET=PAPER_DATASET, got {item!r}")
        key, value = item.split("=", 1)
        out[key] = value
    return out
