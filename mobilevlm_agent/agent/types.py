"""Typed contracts shared by the simulator, the agent loop and the ROS adapters (validating, frozen)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mobilevlm_agent.errors import InputError


@dataclass(frozen=True)
class Twist:
    """Planar body-frame velocity: forward vx, left vy (m/s), counter-clockwise wz (rad/s)."""

    vx: float = 0.0
    vy: float = 0.0
    wz: float = 0.0

    def __post_init__(self) -> None:
        if not all(math.isfinite(v) for v in (self.vx, self.vy, self.wz)):
            raise InputError(f"twist has a non-finite component: {self}")

    @property
    def is_zero(self) -> bool:
        return self.vx == 0.0 and self.vy == 0.0 and self.wz == 0.0


@dataclass(frozen=True)
class Odometry:
    x: float
    y: float
    yaw: float
    vx: float = 0.0  # body frame
    vy: float = 0.0
    wz: float = 0.0


@dataclass(frozen=True)
class Observation:
    image: np.ndarray  # RGB uint8 [H, W, 3]
    odom: Odometry
    time: float  # simulated seconds since reset

    def __post_init__(self) -> None:
        if self.image.ndim != 3 or self.image.shape[2] != 3 or self.image.dtype != np.uint8:
            raise InputError(f"observation image must be RGB uint8 [H, W, 3], got {self.image.dtype} {self.image.shape}")
