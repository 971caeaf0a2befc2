"""The oracle as a Planner (the dummy adapter): reads ground truth from the simulator it is attached to."""
from __future__ import annotations

import numpy as np

from mobilevlm_agent.sim.oracle import oracle_action
from mobilevlm_agent.sim.scene import ObjectSpec
from mobilevlm_agent.sim.world import SimEnv


class OraclePlanner:
    def __init__(self, env: SimEnv, target: ObjectSpec, camera_only: bool = False) -> None:
        self.env, self.target, self.camera_only = env, target, camera_only

    def next_action(self, image: np.ndarray, instruction: str, history: list[str]) -> str:
        return oracle_action(self.env, self.target, camera_only=self.camera_only)
