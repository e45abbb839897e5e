"""Statistics for evaluation results: success rates with intervals, lifts and their significance.

Success rates come from few episodes (tens per cell), so every rate is reported with a 95 %
Wilson score interval, which stays inside [0, 1] and behaves at 0/n and n/n where the normal
approximation collapses. A difference of two rates (a lift, or a before/after delta) gets
Newcombe's hybrid score interval (built from the two Wilson intervals) and a two-sided
two-proportion z-test p-value; it is called significant when its interval excludes 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

Z95 = 1.959963984540054  # two-sided 95 % normal quantile


@dataclass(frozen=True)
class Rate:
    """``successes`` out of ``n`` with a Wilson interval [low, high]."""

    successes: int
    n: int
    low: float
    high: float

    @property
    def p(self) -> float:
        return self.successes / self.n if self.n else float("nan")

    def to_dict(self) -> dict:
        return {"successes": self.successes, "n": self.n, "rate": self.p, "low": self.low, "high": self.high}


@dataclass(frozen=True)
class Delta:
    """Difference ``a - b`` of two rates with Newcombe's interval and a z-test p-value."""

    diff: float
    low: float
    high: float
    p_value: float

    @property
    def significant(self) -> bool:
        """The 95 % interval excludes zero."""
        return self.low > 0 or self.high < 0

    def to_dict(self) -> dict:
        return {"diff": self.diff, "low": self.low, "high": self.high, "p_value": self.p_value,
                "significant": self.significant}


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion; (nan, nan) when ``n == 0``."""
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"need 0 <= successes <= n, got {successes}/{n}")
    if n == 0:
        return float("nan"), float("nan")
    p = successes / n
    z2 = z * z
    denom = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    # at 0/n and n/n the bound is exactly 0 / 1 (avoid -1e-17 from rounding)
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def rate(successes: int, n: int, z: float = Z95) -> Rate:
    low, high = wilson_interval(successes, n, z)
    return Rate(int(successes), int(n), low, high)


def _normal_sf(x: float) -> float:
    return 0.5 * math.erfc(x / math.sqrt(2))


def two_proportion_p_value(s1: int, n1: int, s2: int, n2: int) -> float:
    """Two-sided p-value of the pooled two-proportion z-test (1.0 when undefined)."""
    if n1 == 0 or n2 == 0:
        return float("nan")
    pooled = (s1 + s2) / (n1 + n2)
    var = pooled * (1 - pooled) * (1 / n1 + 1 / n2)
    if var <= 0:
        return 1.0
    z = (s1 / n1 - s2 / n2) / math.sqrt(var)
    return min(1.0, 2 * _normal_sf(abs(z)))


def rate_text(entry: dict | None) -> str:
    """A rate as written in the runs' READMEs: ``successes/n = rate [low, high]`` (``-`` for none)."""
    if not entry or not entry.get("n"):
        return "-"
    return f"{entry['successes']}/{entry['n']} = {entry['rate']:.2f} [{entry['low']:.2f}, {entry['high']:.2f}]"


def difference(a: Rate, b: Rate) -> Delta:
    """``a - b`` with Newcombe's hybrid score interval (method 10, Newcombe 1998)."""
    if a.n == 0 or b.n == 0:
        nan = float("nan")
        return Delta(nan, nan, nan, nan)
    d = a.p - b.p
    low = d - math.sqrt((a.p - a.low) ** 2 + (b.high - b.p) ** 2)
    high = d + math.sqrt((a.high - a.p) ** 2 + (b.p - b.low) ** 2)
    return Delta(d, max(-1.0, low), min(1.0, high), two_proportion_p_value(a.successes, a.n, b.successes, b.n))


def intervals_disjoint_above(a: Rate, b: Rate) -> bool:
    """``a`` is above ``b`` with non-overlapping Wilson intervals (the stricter 'bar' test)."""
    return a.n > 0 and b.n > 0 and a.low > b.high


def steps_summary(steps: list[int]) -> dict:
    """Median / mean / min / max of steps-to-success over the successful episodes."""
    if not steps:
        return {"n": 0, "median": None, "mean": None, "min": None, "max": None}
    s = sorted(steps)
    k = len(s)
    median = s[k // 2] if k % 2 else (s[k // 2 - 1] + s[k // 2]) / 2
    return {"n": k, "median": median, "mean": sum(s) / k, "min": s[0], "max": s[-1]}


def holm_adjust(p_values: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (same order): for judging several lifts at once."""
    order = sorted(range(len(p_values)), key=lambda i: (math.isnan(p_values[i]), p_values[i]))
    m = sum(not math.isnan(p) for p in p_values)  # untestable cells (no episodes) do not count
    out = [float("nan")] * len(p_values)
    running = 0.0
    for rank, i in enumerate(order):
        if math.isnan(p_values[i]):
            continue
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        out[i] = running
    return out


def variant_spread(rates: dict[str, Rate]) -> dict:
    """How much the success rate moves between phrasings of one instruction."""
    ps = [r.p for r in rates.values() if r.n]
    if not ps:
        return {"min": None, "max": None, "range": None}
    return {"min": min(ps), "max": max(ps), "range": max(ps) - min(ps)}


# ---------------------------------------------------------------------------- suite summaries


def summarize(rows: list[dict], suite) -> dict:
    """Rates, intervals, lifts and the instruction matrix of one evaluation.

    ``rows``: results.jsonl lines (``aimc.eval.runner``); ``suite``: the ``Suite`` they come from.
    Episodes that ended in an env error are left out of the rates and counted in ``errors``.
    For each task g: ``instructed`` = success of g when instructed with g (all phrasings),
    ``variants`` per phrasing, ``unconditioned`` = success of g with no instruction, ``lift`` =
    instructed - unconditioned, and in matrix suites ``others`` = success of g when another
    goal was instructed, plus the full matrix ``cells[g][condition]``.
    """
    from aimc.eval.suite import UNCONDITIONED

    ok = [r for r in rows if not r.get("error")]
    tasks_out: dict[str, dict] = {}
    for t in suite.tasks:
        mine = [r for r in ok if r["condition"] == t.id]
        steps = [r["success"][t.id] for r in mine if r["success"].get(t.id) is not None]
        instructed = rate(len(steps), len(mine))
        variants = {}
        for v, ins in enumerate(t.instructions):
            rv = [r for r in mine if r["variant"] == v]
            variants[ins.text] = rate(sum(r["success"].get(t.id) is not None for r in rv), len(rv))
        uncond_cond = UNCONDITIONED if suite.matrix else f"{t.id}@{UNCONDITIONED}"
        ru = [r for r in ok if r["condition"] == uncond_cond]
        entry: dict[str, Any] = {
            "description": t.description,
            "rule": t.success.describe(),
            "max_steps": t.max_steps,
            "tags": list(t.tags),
            "instructed": instructed.to_dict(),
            "variants": {k: {**v.to_dict(), "lang": t.instructions[i].lang} for i, (k, v) in enumerate(variants.items())},
            "spread": variant_spread(variants),
            "steps_to_success": steps_summary(steps),
            "errors": sum(1 for r in rows if r.get("error") and r["condition"] in (t.id, uncond_cond)),
            "unconditioned": None, "lift": None, "lift_disjoint": None, "others": None,
        }
        if suite.unconditioned:
            uncond = rate(sum(r["success"].get(t.id) is not None for r in ru), len(ru))
            entry["unconditioned"] = uncond.to_dict()
            entry["lift"] = difference(instructed, uncond).to_dict()
            entry["lift_disjoint"] = intervals_disjoint_above(instructed, uncond)
        if suite.matrix:
            ro = [r for r in ok if r["condition"] not in (t.id, UNCONDITIONED)]
            entry["others"] = rate(sum(r["success"].get(t.id) is not None for r in ro), len(ro)).to_dict()
        tasks_out[t.id] = entry

    out: dict[str, Any] = {"suite": suite.name, "matrix": suite.matrix, "episodes": len(rows),
                           "errors": sum(1 for r in rows if r.get("error")), "tasks": tasks_out}
    if suite.matrix:
        conds = [t.id for t in suite.tasks] + [UNCONDITIONED]
        cells = {}
        for g in suite.tasks:
            cells[g.id] = {}
            for c in conds:
                rc = [r for r in ok if r["condition"] == c]
                cells[g.id][c] = rate(sum(r["success"].get(g.id) is not None for r in rc), len(rc)).to_dict()
        out["matrix_cells"] = {"conditions": conds, "cells": cells}
    if suite.unconditioned:
        ids = [t for t, e in tasks_out.items() if e["lift"]]
        for t, p in zip(ids, holm_adjust([tasks_out[t]["lift"]["p_value"] for t in ids])):
            tasks_out[t]["lift"]["p_holm"] = p
        lifts = [e["lift"]["diff"] for e in tasks_out.values() if e["lift"] and not math.isnan(e["lift"]["diff"])]
        out["lift_summary"] = {
            "tasks": len(tasks_out),
            "positive_significant": sum(1 for e in tasks_out.values() if e["lift"] and e["lift"]["significant"] and e["lift"]["diff"] > 0),
            "positive_disjoint": sum(1 for e in tasks_out.values() if e["lift_disjoint"]),
            "positive_holm": sum(1 for e in tasks_out.values()
                                 if e["lift"] and e["lift"]["diff"] > 0 and e["lift"].get("p_holm", 1.0) < 0.05),
            "mean_lift": sum(lifts) / len(lifts) if lifts else None,
        }
    return out
