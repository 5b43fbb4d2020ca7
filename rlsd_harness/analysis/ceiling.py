"""The convergence ceiling of a run: a saturating accuracy-vs-compute curve fitted to its budget-point evaluations.

ScaleRL (Khatri et al., "The Art of Scaling Reinforcement Learning Compute for LLMs", arXiv 2510.13786) fits

    R(C) = R0 + (A - R0) / (1 + (C_mid / C) ** B)

to a run's validation accuracy R at compute C: R0 the accuracy at C = 0, A the asymptote (the ceiling), C_mid the
compute at which half of the gain A - R0 is reached and B the efficiency exponent. Here C is the budget fraction
(0 = the base policy, 1 = the whole budget); A does not depend on C's unit.

What the data allow. A study evaluates each run at 0 and a few budget points (the committed studies: 0, 0.5 and
1). R0 is measured, not fitted: the curve equals R0 at C = 0. That leaves two points for three parameters, so A,
C_mid and B cannot all be fitted. B is fixed at 1 (``EXPONENT``: a hyperbolic, Michaelis-Menten saturation, the
same shape for every method) and A and C_mid are fitted by least squares (scipy.optimize.least_squares, A in
[0, 1], C_mid in [0, ``MAX_MIDPOINT`` x the last point]). With two points beyond the base the fit passes through
both exactly, so a run's A has no residual of its own; its uncertainty is the spread over seeds. With more budget
points it is a least-squares fit.

A run's ceiling is *identified* when the fitted midpoint lies within the evaluated budget (C_mid <= the last
budget point, so at least half of the fitted gain has been observed and A extrapolates the observed gain by at most
a factor 2) and A < 1. A run whose accuracy still rises as fast from the middle to the last point as from the
base to the middle shows no bend: its A is an extrapolation the data do not bound (it runs to the A = 1 bound or
the midpoint far past the budget), so it is reported but not identified. A run whose accuracy is flat or falls
after the first point has reached (or left) its plateau: C_mid -> 0 and A is the mean of its budget points.

The claim row (claims.claim_rows) compares RLSD's and GRPO's ceilings paired by seed with a t-interval over
seeds, and gives a verdict only when every compared run is identified; ``EXPONENT_SENSITIVITY`` repeats the
difference under other fixed exponents.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import optimize

EXPONENT = 1.0  # ScaleRL's B, fixed: two budget points beyond the base determine only A and C_mid
EXPONENT_SENSITIVITY = (0.5, 2.0)  # the claim row also states the difference under these exponents
MAX_MIDPOINT = 1000.0  # C_mid's upper bound, in multiples of the last budget point (no bend seen)


@dataclass(frozen=True)
class Ceiling:
    base: float  # R0: the accuracy at budget 0 (measured)
    asymptote: float  # A
    midpoint: float  # C_mid, in budget fractions
    exponent: float  # B (fixed)
    points: int  # budget points beyond 0 used in the fit
    identified: bool
    reason: str  # why not identified ("" when it is)


def saturating(c: np.ndarray, base: float, asymptote: float, midpoint: float, exponent: float = EXPONENT) -> np.ndarray:
    """ScaleRL's curve R(C) = R0 + (A - R0) / (1 + (C_mid / C)^B); R(0) = R0."""
    c = np.asarray(c, dtype=float)
    with np.errstate(divide="ignore"):
        ratio = np.where(c > 0, (midpoint / np.where(c > 0, c, 1.0)) ** exponent, np.inf)
    return base + (asymptote - base) / (1.0 + ratio)


def fit_ceiling(budgets: Sequence[float], accuracy: Sequence[float], exponent: float = EXPONENT) -> Ceiling:
    """Fit A and C_mid of one run (module docstring) to its accuracies at `budgets` (fractions, 0 included)."""
    c, r = np.asarray(budgets, dtype=float), np.asarray(accuracy, dtype=float)
    if c.shape != r.shape or c.ndim != 1:
        raise ValueError(f"budgets and accuracy must be 1-D of one length; got shapes {c.shape} and {r.shape}")
    if not (np.isfinite(c).all() and np.isfinite(r).all()) or (c < 0).any() or ((r < 0) | (r > 1)).any():
        raise ValueError(f"budgets must be finite and >= 0 and accuracies fractions in [0, 1]; got {c.tolist()}, "
                         f"{r.tolist()}")
    if exponent <= 0:
        raise ValueError(f"exponent must be > 0; got {exponent}")
    if not (c == 0).any():
        raise ValueError(f"the fit needs the base policy's accuracy at budget 0; got budgets {c.tolist()}")
    base = float(r[c == 0].mean())
    pos = c > 0
    cp, rp = c[pos], r[pos]
    if len(np.unique(cp)) < 2:
        raise ValueError(f"the fit needs at least 2 budget points beyond 0 (A and C_mid are fitted); got {cp.tolist()}")
    last = float(cp.max())

    def residuals(theta: np.ndarray) -> np.ndarray:
        return saturating(cp, base, theta[0], theta[1], exponent) - rp

    top = MAX_MIDPOINT * last
    start = np.array([float(np.clip(rp[cp == last].mean(), 1e-6, 1 - 1e-6)), float(np.median(cp))])
    fit = optimize.least_squares(residuals, start, bounds=([0.0, 0.0], [1.0, top]), x_scale=[0.1, last],
                                 xtol=1e-12, ftol=1e-12, gtol=1e-12)
    a, mid = float(fit.x[0]), float(fit.x[1])
    reasons = []
    if mid > last:
        reasons.append(f"no bend within the budget: C_mid {mid:.3g} > the last budget point {last:g}")
    if a >= 1.0 - 1e-6:
        reasons.append("A runs to the 100 % bound")
    return Ceiling(base, a, mid, float(exponent), int(pos.sum()), not reasons, "; ".join(reasons))


def run_ceilings(records: pd.DataFrame, exponent: float = EXPONENT) -> pd.DataFrame:
    """One row per (method, seed) with budget points: ceiling_base, ceiling (A), ceiling_midpoint,
    ceiling_identified, ceiling_reason; from per-item records (method, seed, budget, score) averaged per budget
    point, or per-run accuracies (one record per budget point). Runs without a budget-0 point or with fewer than
    two points beyond it get NaN and the reason."""
    missing = {"method", "seed", "budget", "score"} - set(records.columns)
    if missing:
        raise ValueError(f"records lack columns {sorted(missing)}; need method, seed, budget, score")
    cols = ["method", "seed", "ceiling_base", "ceiling", "ceiling_midpoint", "ceiling_identified", "ceiling_reason"]
    rows = []
    for (method, seed), run in records.groupby(["method", "seed"]):
        acc = run.dropna(subset=["score"]).groupby("budget")["score"].mean()  # a missing score is no point
        budgets = acc.index.to_numpy(dtype=float)
        if not (budgets == 0).any() or (budgets > 0).sum() < 2:
            rows.append([method, seed, float("nan"), float("nan"), float("nan"), False,
                         f"needs budget 0 and >= 2 points beyond it; has {sorted(budgets.tolist())}"])
            continue
        f = fit_ceiling(budgets, acc.to_numpy(dtype=float), exponent)
        rows.append([method, seed, f.base, f.asymptote, f.midpoint, f.identified, f.reason])
    return pd.DataFrame(rows, columns=cols)
