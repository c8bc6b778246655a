"""Paired statistics of the report: t-tests on paired differences, TOST, Holm's adjustment, t-intervals and the
verdict rules of a claim (used by the claims table, the paired comparisons and the quirk table).

A verdict comes from a test at level α, never from where an interval falls. With a margin ``m`` (accuracy points
below which a difference does not matter):

- ``greater`` (A beats B): holds if the one-sided paired t-test rejects H0: Δ ≤ 0; does not hold if the
  non-superiority test rejects H0: Δ ≥ m (no advantage that matters); holds wins when both reject (A is better, by
  less than m).
- ``not_worse`` (A ≥ B): holds if the non-inferiority t-test rejects H0: Δ ≤ −m; does not hold if the opposite test
  rejects H0: Δ ≥ −m (A is worse by more than m).
- ``equivalent`` (A ≈ B): holds if both one-sided tests (TOST) reject, i.e. H0: |Δ| ≥ m; does not hold if a
  one-sided test shows Δ > m or Δ < −m.

Fewer than 2 pairs or identical differences leave the t-test undefined: its p is nan, the verdict ``inconclusive``.
"""
from __future__ import annotations

import math

import numpy as np

HOLDS, FAILS, UNSURE, SKIPPED = "holds", "does not hold", "inconclusive", "skipped"
KINDS = ("greater", "not_worse", "equivalent")
ALPHA = 0.05
TESTS = {
    "greater": "one-sided paired t (H0: Δ ≤ 0; against: H0: Δ ≥ m)",
    "not_worse": "non-inferiority paired t (H0: Δ ≤ −m; against: H0: Δ ≥ −m)",
    "equivalent": "TOST paired t (H0: |Δ| ≥ m; against: Δ > m or Δ < −m)",
}


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


# ---- how the tables print them ----------------------------------------------------------------------------------

def num(v, fmt: str = "+.1f") -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


def p_text(v) -> str:
    return num(v, ".2g") or "–"
