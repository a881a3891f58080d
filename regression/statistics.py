"""Inference for the least-squares solution: standard errors, t and p values, intervals."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .metrics import LeastSquares


@dataclass(frozen=True)
class Coefficient:
    name: str
    estimate: float
    std_err: float | None
    t: float | None
    p: float | None
    ci_low: float | None
    ci_high: float | None


@dataclass(frozen=True)
class Statistics:
    """The classical OLS summary. Undefined values (no residual degrees of freedom, a
    rank-deficient design, a perfect fit) are None."""

    coefficients: list[Coefficient]
    r2: float | None
    adj_r2: float | None
    residual_std_err: float | None
    df_resid: int
    f_stat: float | None
    f_pvalue: float | None
    confidence: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "coefficients": [vars(c) for c in self.coefficients],
            "r2": self.r2,
            "adj_r2": self.adj_r2,
            "residual_std_err": self.residual_std_err,
            "df_resid": self.df_resid,
            "f_stat": self.f_stat,
            "f_pvalue": self.f_pvalue,
            "confidence": self.confidence,
        }


def ols_statistics(
    ls: LeastSquares, feature_names: tuple[str, ...], tss: float, confidence: float = 0.95
) -> Statistics:
    """Statistics of ``ls`` (intercept first). ``tss`` is the total sum of squares of y."""
    from scipy import special  # imported here: only runs that report statistics pay for it

    n, d = ls.samples, ls.weight.shape[0]
    df_resid = n - d - 1
    names = ("intercept", *feature_names)
    estimates = [ls.bias, *map(float, ls.weight)]
    std_errs: list[float | None] = [None] * (d + 1)
    sigma2 = ls.rss / df_resid if df_resid > 0 else None
    if sigma2 is not None and ls.rank == d:
        r_inv = np.linalg.solve(ls.r, np.eye(d)) if d else np.zeros((0, 0))
        cov_w = sigma2 * (r_inv @ r_inv.T)  # sigma^2 (Xc'Xc)^-1
        var_b = sigma2 / n + float(ls.x_mean @ cov_w @ ls.x_mean)
        std_errs = [math.sqrt(var_b), *map(math.sqrt, np.diag(cov_w))]
    quantile = float(special.stdtrit(df_resid, 0.5 + confidence / 2)) if df_resid > 0 else None
    coefficients = []
    for name, estimate, se in zip(names, estimates, std_errs, strict=True):
        t = estimate / se if se else None
        p = float(2 * special.stdtr(df_resid, -abs(t))) if t is not None else None
        half = quantile * se if se is not None and quantile is not None else None
        coefficients.append(
            Coefficient(
                name=name,
                estimate=estimate,
                std_err=se,
                t=t,
                p=p,
                ci_low=estimate - half if half is not None else None,
                ci_high=estimate + half if half is not None else None,
            )
        )
    r2 = 1.0 - ls.rss / tss if tss > 0 else None
    adj_r2 = 1.0 - (1.0 - r2) * (n - 1) / df_resid if r2 is not None and df_resid > 0 else None
    f_stat = f_pvalue = None
    if d > 0 and sigma2 and sigma2 > 0 and tss > 0:
        f_stat = ((tss - ls.rss) / d) / sigma2
        f_pvalue = float(special.fdtrc(d, df_resid, f_stat))
    return Statistics(
        coefficients=coefficients,
        r2=r2,
        adj_r2=adj_r2,
        residual_std_err=math.sqrt(sigma2) if sigma2 is not None else None,
        df_resid=df_resid,
        f_stat=f_stat,
        f_pvalue=f_pvalue,
        confidence=confidence,
    )
