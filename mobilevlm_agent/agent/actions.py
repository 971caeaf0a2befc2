"""The closed action grammar: the only motions a planner may emit, parsed strictly, mapped to one-period twists."""
from __future__ import annotations

import json
from dataclasses import dataclass

from mobilevlm_agent.agent.types import Twist
from mobilevlm_agent.errors import InputError

ACTIONS = ("forward", "turn_left", "turn_right", "stop")


class ActionParseError(InputError):
    """Model output that is not exactly one action of the grammar."""


@dataclass(frozen=True)
class ActionSpeeds:
    """The twist each action commands for one control period."""

    forward: float = 0.4  # m/s
    turn: float = 0.8  # rad/s


def parse_action(text: str) -> str:
    """`forward`, ` Turn_Left\\n`, or JSON {"action": "stop"} -> the action name; anything else raises.

    Nothing in the text is ever evaluated: it either equals a grammar word or is rejected.
    """
    if not isinstance(text, str):
        raise ActionParseError(f"action must be text, got {type(text).__name__}")
    candidate = text.strip()
    if candidate.startswith("{"):
        try:
            candidate = json.loads(candidate)["action"]
        except (ValueError, KeyError, TypeError) as e:
            raise ActionParseError(f"action JSON must be an object with an 'action' field: {text[:80]!r}") from e
        if not isinstance(candidate, str):
            raise ActionParseError(f"action JSON 'action' must be a string: {text[:80]!r}")
    word = candidate.strip().lower()
    if word not in ACTIONS:
        raise ActionParseError(f"{text[:80]!r} is not an action; the grammar is {', '.join(ACTIONS)}")
    return word


def action_to_twist(action: str, speeds: ActionSpeeds = ActionSpeeds()) -> Twist:
    return {
        "forward": Twist(vx=speeds.forward),
        "turn_left": Twist(wz=speeds.turn),
        "turn_right": Twist(wz=-speeds.turn),
        "stop": Twist(),
    }[parse_action(action)]
