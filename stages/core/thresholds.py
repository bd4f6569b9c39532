"""Bounds on a metric, with one meaning for the gate (value vs a reference) and the regression check (new vs a
baseline): `max` / `min` bound the value; `max_increase` / `max_decrease` bound value - reference; the `_pct`
forms bound that change relative to |reference|. A change from a reference of 0 is unbounded in percent; a value
that is NaN or infinite breaks every bound."""

from __future__ import annotations

import math
from dataclasses import dataclass

ABS_TOL, REL_TOL = 1e-12, 1e-9  # float noise that never counts as a breach


@dataclass(frozen=True)
class Verdict:
    ok: bool
    threshold: str  # the bounds, with the change where a reference is involved
    note: str = ""


def bounds_of(rule) -> dict[str, float]:
    """The bounds a rule object (gate or regression rule) sets, by name."""
    names = ("max", "min", "max_increase", "max_decrease", "max_increase_pct", "max_decrease_pct")
    return {n: getattr(rule, n) for n in names if getattr(rule, n, None) is not None}


def describe(bounds: dict[str, float], against: str = "ref") -> str:
    text = {
        "max": "<= {:g}",
        "min": ">= {:g}",
        "max_increase": "+{:g} vs " + against,
        "max_decrease": "-{:g} vs " + against,
        "max_increase_pct": "+{:g}% vs " + against,
        "max_decrease_pct": "-{:g}% vs " + against,
    }
    return ", ".join(text[k].format(v) for k, v in bounds.items())


def relative(bounds: dict[str, float]) -> bool:
    return any(k.startswith(("max_increase", "max_decrease")) for k in bounds)


def percent(reference: float, change: float) -> float:
    if reference:
        return change / abs(reference) * 100
    return 0.0 if change == 0 else math.copysign(math.inf, change)


def within(amount: float, limit: float) -> bool:
    """amount <= limit, allowing float noise; False for NaN."""
    return amount <= limit or math.isclose(amount, limit, rel_tol=REL_TOL, abs_tol=ABS_TOL)


def finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def check(
    bounds: dict[str, float], value: float | None, reference: float | None = None, against: str = "ref"
) -> Verdict:
    """Every bound must hold. A missing or non-finite value fails; a relative bound without a finite reference
    fails (naming why)."""
    described = describe(bounds, against)
    if value is None:
        return Verdict(False, described, "metric missing")
    if not finite(value):
        return Verdict(False, described, f"value is {value}: not a finite number")
    parts, failed = [], []
    for name, limit in bounds.items():
        if name in ("max", "min"):
            ok = within(value, limit) if name == "max" else within(-value, -limit)
            parts.append(describe({name: limit}, against))
            failed += [] if ok else [parts[-1]]
            continue
        if reference is None or not finite(reference):
            return Verdict(
                False,
                described,
                f"{against} value {'missing' if reference is None else reference}: a change cannot be computed",
            )
        change = value - reference
        sign = 1 if name.startswith("max_increase") else -1
        amount = sign * (percent(reference, change) if name.endswith("_pct") else change)
        shown = f"{percent(reference, change):+.2f}%" if name.endswith("_pct") else f"{change:+.4g}"
        parts.append(f"{describe({name: limit}, against)} (is {shown})")
        if not within(amount, limit):
            failed.append(parts[-1])
    note = ""
    if failed and reference == 0 and any(k.endswith("_pct") for k in bounds):
        note = f"{against} is 0: any change is unbounded in percent (use an absolute bound)"
    return Verdict(not failed, ", ".join(parts), note or ("; ".join(f"breaks {f}" for f in failed) if failed else ""))
