"""Privileged policies on the closed action grammar: the oracle (ground truth, the upper bound) and random."""
from __future__ import annotations

import math
import random

from mobilevlm_agent.sim.scene import ObjectSpec
from mobilevlm_agent.sim.world import ROBOT_RADIUS, SimEnv

FACING = math.radians(12)  # turn until the target is this close to straight ahead
ARRIVE = 0.45  # metres to the target's surface: close enough to stop (success needs <= 0.6)
CORRIDOR = ROBOT_RADIUS + 0.12
SEARCH = "turn_left"  # the camera-only oracle's move while the target is out of view


def oracle_action(env: SimEnv, target: ObjectSpec, camera_only: bool = False) -> str:
    """Face the target (or a detour point beside a blocking object), drive, stop when close.

    `camera_only` makes the labels an imitation learner can follow: while the target is out of view it searches
    (always the same way) instead of turning towards a bearing that the camera image does not show.
    """
    if camera_only and target not in env.visible_objects():
        return SEARCH
    if env.distance_to(target) <= ARRIVE:
        return "stop" if abs(env.bearing_to(target)) <= math.radians(25) else _turn(env.bearing_to(target))
    bearing = env.bearing_to(_detour(env, target) or target)
    if abs(bearing) > FACING:
        return _turn(bearing)
    return "forward"


def _turn(bearing: float) -> str:
    return "turn_left" if bearing > 0 else "turn_right"


def _detour(env: SimEnv, target: ObjectSpec) -> ObjectSpec | None:
    """A point beside the nearest object blocking the straight line to the target, if any."""
    assert env.scene is not None
    o = env.odometry()
    tx, ty = target.x - o.x, target.y - o.y
    length = math.hypot(tx, ty)
    blocking = []
    for obj in env.scene.objects:
        if obj is target:
            continue
        ox, oy = obj.x - o.x, obj.y - o.y
        along = (ox * tx + oy * ty) / length
        across = abs(ox * ty - oy * tx) / length
        if 0 < along < length and across < CORRIDOR + obj.size:
            blocking.append((along, obj, (ox * ty - oy * tx) / length))
    if not blocking:
        return None
    _, obj, side = min(blocking, key=lambda b: b[0])
    # step sideways, away from the side the obstacle is on
    nx, ny = -ty / length, tx / length  # left normal
    push = (CORRIDOR + obj.size + 0.25) * (-1 if side < 0 else 1)
    return ObjectSpec("detour", "ball", "white", 0.0, obj.x - nx * push, obj.y - ny * push)


def random_action(rng: random.Random) -> str:
    return rng.choice(("forward", "forward", "turn_left", "turn_right", "stop"))
