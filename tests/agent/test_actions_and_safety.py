"""The closed action grammar and the safety governor."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mobilevlm_agent.agent.actions import ACTIONS, ActionParseError, action_to_twist, parse_action
from mobilevlm_agent.agent.safety import SafetyGovernor, SafetyLimits
from mobilevlm_agent.agent.types import Twist


@pytest.mark.parametrize("text,expected", [("forward", "forward"), ("  Turn_Left\n", "turn_left"), ('{"action": "stop"}', "stop")])
def test_grammar_accepts_its_words(text, expected):
    assert parse_action(text) == expected


@pytest.mark.parametrize("text", ["", "go", "forward; rm -rf /", "__import__('os').system('ls')", "forward forward", '{"action": 1}', '{"act": "stop"}', "{not json"])
def test_grammar_rejects_everything_else(text):
    with pytest.raises(ActionParseError):
        parse_action(text)


@given(st.text(max_size=30))
def test_grammar_never_returns_outside_the_vocabulary(text):
    try:
        assert parse_action(text) in ACTIONS
    except ActionParseError:
        pass


def test_actions_map_to_one_period_twists():
    assert action_to_twist("forward").vx > 0 and action_to_twist("turn_left").wz > 0 > action_to_twist("turn_right").wz
    assert action_to_twist("stop").is_zero


def test_dry_run_is_the_default_and_blocks_motion():
    gov = SafetyGovernor()
    out, reason = gov.filter(Twist(0.3, 0, 0), now=1.0, action_time=1.0, camera_time=1.0)
    assert out.is_zero and reason == "dry_run"


def test_enabled_motion_is_limited_in_speed_and_acceleration():
    gov = SafetyGovernor(SafetyLimits(max_linear=0.5, max_linear_accel=1.0), dry_run=False)
    gov.filter(Twist(), now=0.0, action_time=0.0, camera_time=0.0)
    out, reason = gov.filter(Twist(2.0, 0, 0), now=0.1, action_time=0.1, camera_time=0.1)
    assert reason == "clipped" and out.vx == pytest.approx(0.1)
    for i in range(2, 20):
        out, _ = gov.filter(Twist(2.0, 0, 0), now=i / 10, action_time=i / 10, camera_time=i / 10)
    assert out.vx == pytest.approx(0.5)


@pytest.mark.parametrize("case,kwargs", [
    ("estop", dict(action_time=1.0, camera_time=1.0)),
    ("stale_action", dict(action_time=-5.0, camera_time=1.0)),
    ("stale_camera", dict(action_time=1.0, camera_time=0.0)),
    ("stale_camera", dict(action_time=1.0, camera_time=None)),
])
def test_stops_are_immediate(case, kwargs):
    gov = SafetyGovernor(dry_run=False)
    gov.filter(Twist(0.5, 0, 0), now=0.9, action_time=0.9, camera_time=0.9)
    if case == "estop":
        gov.estop(True)
    out, reason = gov.filter(Twist(0.5, 0, 0), now=1.0, **kwargs)
    assert out.is_zero and reason == case
    assert gov.counts[case] == 1
