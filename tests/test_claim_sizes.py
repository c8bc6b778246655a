"""The size of the claim tests: with no true effect, how often does a claim come out "holds" (or "does not hold")?

Simulated datasets of paired accuracies with the published fold/run spread of each paper dataset (the median
per-method std, which is also its default margin), rounded to 0.1 points like the published tables, n = 3 and n = 5.
Each "no effect" case sits on the boundary of the null hypothesis the verdict rejects, where a level-α test's error
rate is largest; every rate must stay within α plus Monte-Carlo error (``BOUND``). With a clear true effect the
power is printed (`pytest -s`).
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from daamflow.report import claims as C
from daamflow.report import stats as S
from daamflow.report.published import load_published

N_SIM = 8000
ALPHA = S.ALPHA
# On the null's boundary a level-α test errs exactly α of the time, so each of the ~40 rate checks below exceeds
# α + 3 standard errors by chance with probability 0.13%; 4 standard errors (0.003%) keep the whole file from failing
# on an unlucky seed while still catching the old bootstrap rule (false holds 8-13%).
BOUND = ALPHA + 4 * math.sqrt(ALPHA * (1 - ALPHA) / N_SIM)
PAPER_DATASETS = ("iemocap", "cifar100", "agnews")


@pytest.fixture(scope="module")
def spreads():
    pub = load_published()
    return {d: C.derived_margin(pub, d) for d in PAPER_DATASETS}


def simulate_differences(rng, n: int, sd: float, true_difference: float, n_sim: int = N_SIM) -> np.ndarray:
    """(n_sim, n) paired differences A − B of accuracies printed to 0.1 points, each method with fold/run std ``sd``
    around a common level (A shifted by ``true_difference``)."""
    level = 70 + sd * rng.standard_normal((n_sim, n))  # the fold's difficulty, shared by both methods
    a = level + true_difference + sd * rng.standard_normal((n_sim, n))
    b = level + sd * rng.standard_normal((n_sim, n))
    return np.round(a, 1) - np.round(b, 1)


def rates(diff: np.ndarray, kind: str, margin: float) -> tuple[float, float]:
    """Share of "holds" and of "does not hold" verdicts (one claim: Holm over a family of one is the raw p)."""
    verdicts = S.verdict(*S.claim_p_values(diff, kind, margin), ALPHA)
    return float(np.mean(verdicts == S.HOLDS)), float(np.mean(verdicts == S.FAILS))


# the true difference on the boundary of each verdict's null hypothesis, as a multiple of the margin
NULL_FOR_HOLDS = {"greater": 0.0, "not_worse": -1.0, "equivalent": 1.0}
NULL_FOR_FAILS = {"greater": 1.0, "not_worse": -1.0, "equivalent": 1.0}
CLEAR_EFFECT = {"greater": 3.0, "not_worse": 0.5, "equivalent": 0.0}


@pytest.mark.parametrize("n", [3, 5])
@pytest.mark.parametrize("kind", S.KINDS)
def test_no_true_effect_rarely_holds(kind, n, spreads):
    rng = np.random.default_rng([n, S.KINDS.index(kind)])
    for dataset, sd in spreads.items():
        holds, _ = rates(simulate_differences(rng, n, sd, NULL_FOR_HOLDS[kind] * sd), kind, sd)
        _, fails = rates(simulate_differences(rng, n, sd, NULL_FOR_FAILS[kind] * sd), kind, sd)
        power, _ = rates(simulate_differences(rng, n, sd, CLEAR_EFFECT[kind] * sd), kind, sd)
        print(f"{kind:10s} n={n} {dataset:8s} sd=margin={sd:.3g}: false holds {holds:.4f}, "
              f"false does-not-hold {fails:.4f}, power at Δ={CLEAR_EFFECT[kind]:g}·margin {power:.3f}")
        assert holds <= BOUND, f"{kind} n={n} {dataset}: false holds {holds:.4f} > {BOUND:.4f}"
        assert fails <= BOUND, f"{kind} n={n} {dataset}: false does-not-hold {fails:.4f} > {BOUND:.4f}"


def test_item_level_and_seed_level_together_keep_the_size():
    """A fixed test set of 200 items, 3 seeds, two methods with the same per-item chance of being right: the claim
    needs the seed-level and the item-level test, and still holds falsely at most α of the time."""
    rng = np.random.default_rng(7)
    n_sim, n_items, n_seeds = 2000, 200, 3
    difficulty = rng.uniform(0.3, 1.0, size=(n_sim, 1, n_items))  # P(correct) of each item, the same for A and B
    correct_a = rng.random((n_sim, n_seeds, n_items)) < difficulty
    correct_b = rng.random((n_sim, n_seeds, n_items)) < difficulty
    per_seed = 100 * (correct_a.mean(axis=-1) - correct_b.mean(axis=-1))
    per_item = 100 * (correct_a.astype(float) - correct_b).mean(axis=1)
    seeds_p, _ = S.claim_p_values(per_seed, "greater", 1.0)
    items_p, _ = S.claim_p_values(per_item, "greater", 1.0)
    both = float(np.mean(np.maximum(seeds_p, items_p) <= ALPHA))
    print(f"greater, 3 seeds x 200 items, no effect: false holds seeds-only {np.mean(seeds_p <= ALPHA):.4f}, "
          f"seeds and items {both:.4f}")
    assert both <= ALPHA + 4 * math.sqrt(ALPHA * (1 - ALPHA) / n_sim)


@pytest.mark.parametrize("n", [3, 5])
def test_paired_comparisons_holm_controls_the_familywise_rate(n, spreads):
    """The paired table of one (dataset, protocol): 4 DAAM methods × 10 baselines, 40 two-sided tests sharing
    methods, no true difference anywhere. Holm keeps P(any adjusted p ≤ α) ≤ α; raw p would not."""
    rng = np.random.default_rng(n)
    sd = spreads["iemocap"]
    level = 70 + sd * rng.standard_normal((N_SIM, 1, n))
    acc = np.round(level + sd * rng.standard_normal((N_SIM, 14, n)), 1)
    diff = (acc[:, :4, None, :] - acc[:, None, 4:, :]).reshape(N_SIM, 40, n)
    raw = S.two_sided_p(diff)
    adjusted = S.holm(raw)
    familywise = float(np.mean((adjusted <= ALPHA).any(axis=-1)))
    unadjusted = float(np.mean((raw <= ALPHA).any(axis=-1)))
    shift = np.zeros((1, 40, 1))
    shift[0, 0] = 3 * sd  # one clear true difference among the 40
    power = float(np.mean(S.holm(S.two_sided_p(diff + shift))[:, 0] <= ALPHA))
    print(f"paired table n={n}: any adjusted p ≤ α {familywise:.4f} (raw p: {unadjusted:.3f}); "
          f"power for one Δ=3·sd among 40: {power:.3f}")
    assert familywise <= BOUND
    assert unadjusted > 2 * ALPHA  # the family is large enough for the correction to matter
