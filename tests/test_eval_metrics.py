"""Wilson intervals, Newcombe differences and suite parsing against published values."""

from __future__ import annotations

import pytest

from aimc.eval.metrics import difference, intervals_disjoint_above, rate, steps_summary, wilson_interval
from aimc.eval.suite import SuiteError, builtin_suites, load_suite, parse_rule, parse_suite


def test_wilson_known_values():
    # Newcombe (1998), Table I: 81/263 -> 0.2553, 0.3662; 0/10 -> 0, 0.2775; 1/29 -> 0.0061, 0.1718
    assert wilson_interval(81, 263) == pytest.approx((0.2553, 0.3662), abs=1e-4)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(1, 29) == pytest.approx((0.0061, 0.1718), abs=1e-4)
    assert wilson_interval(10, 10)[1] == 1.0
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_newcombe_difference():
    # Newcombe (1998b), example (a): 56/70 - 48/80 -> 0.2000 (0.0524, 0.3339)
    d = difference(rate(56, 70), rate(48, 80))
    assert (d.diff, d.low, d.high) == pytest.approx((0.2, 0.0524, 0.3339), abs=1e-4)
    assert d.significant and d.p_value < 0.01
    same = difference(rate(5, 10), rate(5, 10))
    assert not same.significant and same.p_value == pytest.approx(1.0)
    assert intervals_disjoint_above(rate(30, 30), rate(0, 30))
    assert not intervals_disjoint_above(rate(6, 10), rate(4, 10))


def test_steps_summary():
    assert steps_summary([5, 1, 3, 10]) == {"n": 4, "median": 4.0, "mean": 4.75, "min": 1, "max": 10}
    assert steps_summary([])["median"] is None


def test_rules_and_errors():
    r = parse_rule({"inventory": {"oak_log|birch_log": 2}}, "x")
    assert r.holds({"inventory.oak_log": 1}, {"inventory.oak_log": 2, "inventory.birch_log": 1}, 0)
    assert not r.holds({"inventory.oak_log": 1}, {"inventory.oak_log": 2}, 0)
    sky = parse_rule({"stat": {"pitch": {"max": -60}}}, "x")
    assert sky.holds({}, {"stat.pitch": -70}, 0) and not sky.holds({}, {"stat.pitch": 0}, 0)
    both = parse_rule({"all": [{"travel": 5}, {"achievement": "wake_up"}]}, "x")
    assert both.holds({"achievement.wake_up": 0}, {"achievement.wake_up": 1}, 6)
    assert not both.holds({"achievement.wake_up": 0}, {"achievement.wake_up": 1}, 4)
    for bad in ({"inventory": {"wood": 0}}, {"teleport": 3}, {"stat": {"pitch": {"below": 2}}}, "wood"):
        with pytest.raises(SuiteError):
            parse_rule(bad, "my.yaml: task 'x'")
    with pytest.raises(SuiteError, match="my.yaml: task 'a'.*success"):
        parse_suite({"env": {"name": "crafter"}, "tasks": [{"id": "a", "instructions": ["x"]}]}, "my.yaml")
    with pytest.raises(SuiteError, match="unknown key 'episode'"):
        parse_suite({"env": {"name": "crafter"}, "episode": 3, "tasks": []}, "my.yaml")


def test_shipped_suites_parse():
    names = builtin_suites()
    assert {"crafter-core", "steve1-early-game"} <= set(names)
    core = load_suite("crafter-core")
    assert core.matrix and len(core.tasks) >= 8
    assert any(i.lang == "zh" for t in core.tasks for i in t.instructions)
    mc = load_suite("steve1-early-game")
    tags = {tag for t in mc.tasks for tag in t.tags}
    assert {"steve1", "harvest", "combat", "techtree"} <= tags


def test_holm_adjust():
    from aimc.eval.metrics import holm_adjust

    # Holm (1979) style example: p = 0.01, 0.04, 0.03, 0.005 -> 0.03, 0.06, 0.06, 0.02
    assert holm_adjust([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm_adjust([0.5, float("nan")])[0] == pytest.approx(0.5)
