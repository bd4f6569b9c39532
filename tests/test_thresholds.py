"""One meaning for every bound, shared by the gate and the regression check."""

import math

import pytest

from stages.core.thresholds import check, percent

pytestmark = pytest.mark.fast  # the edit-loop tier (make test-fast): no real weights, no dvc repro, no export


@pytest.mark.parametrize(
    "bounds, value, ref, ok",
    [
        ({"max": 10}, 10.0, None, True),
        ({"max": 10}, 10.0000000001, None, True),  # float noise is not a breach
        ({"max": 10}, 10.01, None, False),
        ({"min": 0.5}, 0.5, None, True),
        ({"min": 0.5}, 0.49, None, False),
        ({"max_increase_pct": 2}, 51.0, 50.0, True),
        ({"max_increase_pct": 2}, 51.01, 50.0, False),
        ({"max_decrease_pct": 10}, 45.0, 50.0, True),
        ({"max_decrease_pct": 10}, 44.9, 50.0, False),
        ({"max_increase": 0.02}, 0.12, 0.10, True),
        ({"max_increase": 0.02}, 0.121, 0.10, False),
        ({"max_decrease": 1}, 24.0, 25.0, True),
        ({"max_decrease": 1}, 23.9, 25.0, False),
        ({"max_increase_pct": 5}, 0.0, 0.0, True),  # no change from 0 is 0 %
        ({"max_increase_pct": 5}, 0.1, 0.0, False),  # any change from 0 is unbounded in %
        ({"max_increase_pct": 5, "max": 100}, 52.0, 50.0, True),
        ({"max_increase_pct": 5, "max": 51}, 52.0, 50.0, False),
    ],
)
def test_bounds(bounds, value, ref, ok):
    assert check(bounds, value, ref).ok is ok


@pytest.mark.parametrize("value", [None, float("nan"), float("inf"), "nan", "inf"])
def test_missing_and_non_finite_values_fail(value):
    verdict = check({"max": 10}, value)
    assert not verdict.ok and verdict.note in ("metric missing", f"value is {value}: not a finite number")


def test_relative_bound_without_a_reference_fails_naming_it():
    verdict = check({"max_increase_pct": 1}, 5.0, None, "source")
    assert not verdict.ok and verdict.note == "source value missing: a change cannot be computed"
    assert not check({"max_increase_pct": 1}, 5.0, float("nan"), "fp16").ok


def test_percent_from_zero():
    assert percent(0.0, 0.0) == 0.0 and percent(0.0, 1.0) == math.inf and percent(-2.0, 1.0) == 50.0


def test_regress_and_gate_read_the_same_arithmetic():
    from stages import regress
    from stages.core.schema import RegressionRule

    rule = RegressionRule(metric="perplexity", max_increase_pct=1)
    assert regress.breaches([rule], 50.0, 50.5) == []
    assert regress.breaches([rule], 50.0, 50.6) == ["breaks +1% vs baseline (is +1.20%)"]
    assert check({"max_increase_pct": 1}, 50.6, 50.0, "baseline").note == "breaks +1% vs baseline (is +1.20%)"
