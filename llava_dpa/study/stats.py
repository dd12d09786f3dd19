"""Statistics over seeds: every figure a mean with its spread, every arm's difference from the baseline a mean
with a 95% interval paired by seed (Student's t with n - 1 degrees of freedom, scipy.stats.t). A difference
whose interval covers zero is reported as "no difference", never as a win or a loss."""
from __future__ import annotations

import math

LEVEL = 0.95


def summary(values: list[float]) -> dict:
    """Mean, sample standard deviation (n - 1) and n; the spread is None for one value."""
    values = [float(v) for v in values if v is not None]
    n = len(values)
    if n == 0:
        return {"mean": None, "sd": None, "n": 0}
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return {"mean": mean, "sd": sd, "n": n}


def require_scipy() -> None:
    try:
        import scipy.stats  # noqa: F401
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError("the study's intervals need scipy (Student t): pip install scipy", name="scipy") from exc


def t_quantile(df: int, level: float = LEVEL) -> float:
    """The two-sided `level` quantile of Student's t with `df` degrees of freedom."""
    from scipy.stats import t  # lazy: only the study's report computes intervals

    return float(t.ppf(0.5 + level / 2, df))


def paired(arm: list[float], baseline: list[float], higher_is_better: bool | None) -> dict:
    """The arm minus the baseline, seed by seed: mean, sd, the 95% t interval and the verdict: "better" or
    "worse" when the interval excludes zero (by the metric's direction; "higher"/"lower" for a metric without
    one), "no difference" when it covers zero, "one seed: no interval" below two pairs."""
    if len(arm) != len(baseline):
        raise ValueError(f"paired differences need one value per seed from both ({len(arm)} vs {len(baseline)})")
    diffs = [a - b for a, b in zip(arm, baseline) if a is not None and b is not None]
    s = summary(diffs)
    out = {**s, "differences": diffs, "low": None, "high": None, "level": LEVEL}
    if s["n"] < 2:
        out["verdict"] = "one seed: no interval"
        return out
    half = t_quantile(s["n"] - 1) * s["sd"] / math.sqrt(s["n"])
    out.update(low=s["mean"] - half, high=s["mean"] + half)
    if out["low"] <= 0 <= out["high"]:
        out["verdict"] = "no difference"
    elif higher_is_better is None:
        out["verdict"] = "higher" if s["mean"] > 0 else "lower"
    else:
        out["verdict"] = "better" if (s["mean"] > 0) == higher_is_better else "worse"
    return out
