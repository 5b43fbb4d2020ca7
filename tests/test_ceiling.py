"""The convergence ceiling (ScaleRL's saturating curve, B fixed): planted asymptotes recovered, runs without a bend
not identified, and the claims row "rlsd's convergence ceiling is higher than grpo's" under the margin rules."""

import numpy as np
import pandas as pd
import pytest
from scipy import optimize

from rlsd_harness.analysis import ceiling, claims

BUDGETS = [0.0, 0.5, 1.0]


def _curve(base: float, a: float, mid: float, budgets=BUDGETS, b: float = 1.0) -> list[float]:
    return ceiling.saturating(np.array(budgets), base, a, mid, b).tolist()


def test_three_points_determine_a_and_midpoint_exactly():
    fit = ceiling.fit_ceiling(BUDGETS, _curve(0.40, 0.70, 0.30))
    assert (fit.base, fit.asymptote, fit.midpoint) == (pytest.approx(0.40), pytest.approx(0.70, abs=1e-7),
                                                        pytest.approx(0.30, abs=1e-6))
    assert fit.identified and fit.reason == "" and fit.points == 2
    # The closed form with B = 1: gains g(0.5), g(1) give C_mid = (r - 1) / (2 - r), r = g(1) / g(0.5).
    g1, g2 = 0.60 - 0.40, 0.66 - 0.40
    r = g2 / g1
    mid = (r - 1) / (2 - r)
    fit = ceiling.fit_ceiling(BUDGETS, [0.40, 0.60, 0.66])
    assert fit.midpoint == pytest.approx(mid, abs=1e-6) and fit.asymptote == pytest.approx(0.40 + g2 * (1 + mid), abs=1e-6)


def test_more_points_are_a_least_squares_fit_like_scipy_curve_fit():
    rng = np.random.default_rng(0)
    budgets = [0.0, 0.125, 0.25, 0.5, 0.75, 1.0]
    acc = np.clip(np.array(_curve(0.35, 0.68, 0.2, budgets)) + rng.normal(0, 0.01, len(budgets)), 0, 1)
    acc[0] = 0.35
    fit = ceiling.fit_ceiling(budgets, acc, exponent=2.0)
    (a, mid), _ = optimize.curve_fit(lambda c, a, m: ceiling.saturating(c, 0.35, a, m, 2.0), budgets[1:], acc[1:],
                                     p0=[0.6, 0.3])
    assert (fit.asymptote, fit.midpoint) == (pytest.approx(a, abs=1e-5), pytest.approx(mid, abs=1e-5))


def test_a_run_without_a_bend_or_with_a_plateau():
    linear = ceiling.fit_ceiling(BUDGETS, [0.40, 0.50, 0.60])  # as fast from the middle as from the base
    assert not linear.identified and "no bend" in linear.reason
    flat = ceiling.fit_ceiling(BUDGETS, [0.40, 0.62, 0.60])  # reached its plateau by the first point
    assert flat.identified and flat.midpoint == pytest.approx(0, abs=1e-6)
    assert flat.asymptote == pytest.approx(0.61, abs=1e-6)


@pytest.mark.parametrize("budgets, acc, message", [
    ([0.5, 1.0], [0.5, 0.6], "budget 0"),
    ([0.0, 1.0], [0.4, 0.6], "at least 2 budget points"),
    ([0.0, 0.5, 1.0], [0.4, 1.2, 0.6], "fractions in"),
])
def test_bad_input_names_the_value(budgets, acc, message):
    with pytest.raises(ValueError, match=message):
        ceiling.fit_ceiling(budgets, acc)


def _quantities(rng: np.random.Generator, rlsd_a: float, grpo_a: float, seeds: int = 8, sd: float = 0.005,
                grpo_mid: float = 0.3) -> pd.DataFrame:
    """claims.run_quantities of grpo/rlsd runs whose per-run test accuracies lie on curves with the given A."""
    lines, records = [], []
    for seed in range(seeds):
        for method, a, mid in (("grpo", grpo_a, grpo_mid), ("rlsd", rlsd_a, 0.3)):
            lines.append({"method": method, "seed": seed, "status": "finished", "step": 1.0})
            for budget, acc in zip(BUDGETS, _curve(0.40, a + rng.normal(0, sd), mid)):
                records.append({"method": method, "seed": seed, "budget": budget, "item": "(whole set)", "score": acc})
    return claims.run_quantities(pd.DataFrame(lines), pd.DataFrame(records))


CLAIM = "rlsd's convergence ceiling is higher than grpo's"


def test_claim_row_verdicts_follow_the_margin_rules():
    rng = np.random.default_rng(1)
    higher = claims.claim_rows(_quantities(rng, 0.72, 0.68)).set_index("claim").loc[CLAIM]
    assert higher["verdict"] == "held" and higher["mean"] == pytest.approx(4.0, abs=1.0)
    assert higher["ci_low"] > 0 and higher["n"] == 8 and "8 of 8 seeds" in higher["quantity"]
    same = claims.claim_rows(_quantities(rng, 0.70, 0.70)).set_index("claim").loc[CLAIM]
    assert same["verdict"] == "did not hold" and same["ci_high"] < 1.0
    noisy = claims.claim_rows(_quantities(rng, 0.71, 0.70, seeds=3, sd=0.03)).set_index("claim").loc[CLAIM]
    assert noisy["verdict"] == "cannot tell"


def test_an_unidentified_ceiling_makes_the_claim_cannot_tell():
    # grpo's midpoint lies beyond the budget: its A is an extrapolation, so no verdict even with a large gap
    q = _quantities(np.random.default_rng(2), 0.72, 0.60, grpo_mid=2.0)
    row = claims.claim_rows(q).set_index("claim").loc[CLAIM]
    assert not q[q.method == "grpo"]["ceiling_identified"].any()
    assert row["verdict"] == "cannot tell" and "0 of 8 seeds" in row["quantity"]
