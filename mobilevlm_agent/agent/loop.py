"""The agent loop: perception -> reasoning -> planning -> execution (through the safety governor) -> monitoring."""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from mobilevlm_agent.agent.actions import ActionSpeeds, action_to_twist, parse_action
from mobilevlm_agent.agent.planner import Planner
from mobilevlm_agent.agent.safety import SafetyGovernor
from mobilevlm_agent.agent.types import Observation, Twist
from mobilevlm_agent.chat import ChatSession
from mobilevlm_agent.generate import SamplingParams
from mobilevlm_agent.preprocess import frame_key


@dataclass
class Decision:
    action: str
    twist: Twist  # what the governor let through
    reason: str  # the governor's verdict
    latency_ms: float


@dataclass
class EpisodeState:
    instruction: str = ""
    history: list[str] = field(default_factory=list)
    steps: int = 0
    status: str = "idle"  # idle | running | done (planner said stop) | timeout


class Agent:
    """One clean API for simulators and ROS nodes alike: feed observations, ask questions, get safe twists."""

    def __init__(self, planner: Planner, governor: SafetyGovernor, chat: ChatSession | None = None,
                 speeds: ActionSpeeds = ActionSpeeds(), max_steps: int = 120) -> None:
        self.planner, self.governor, self.chat, self.speeds, self.max_steps = planner, governor, chat, speeds, max_steps
        self.episode = EpisodeState()
        self.latest: Observation | None = None
        self._frame_key: str | None = None
        self.frames_seen = 0

    # perception: the latest frame only; visual tokens recomputed only when the frame changes
    def observe(self, obs: Observation) -> None:
        self.latest = obs
        self.frames_seen += 1

    # reasoning
    def answer(self, question: str, params: SamplingParams = SamplingParams(max_new_tokens=64)) -> Iterator[str]:
        """Stream an answer about the current view."""
        if self.chat is None or self.latest is None:
            raise RuntimeError("answering needs a chat model and at least one observation")
        key = frame_key(self.latest.image)
        if key != self._frame_key:
            self.chat.set_image(self.latest.image)
            self._frame_key = key
        else:
            self.chat.reset()
        yield from self.chat.stream(question, params=params)

    # planning
    def start(self, instruction: str) -> None:
        self.episode = EpisodeState(instruction=instruction, status="running")

    def decide(self, now: float, camera_time: float | None) -> Decision:
        """Plan the next action from the latest frame and turn it into a governed twist."""
        t0 = time.perf_counter()
        if self.episode.status != "running" or self.latest is None:
            action = "stop"
        else:
            action = parse_action(self.planner.next_action(self.latest.image, self.episode.instruction, self.episode.history))
            self.episode.history.append(action)
            self.episode.steps += 1
            if action == "stop":
                self.episode.status = "done"
            elif self.episode.steps >= self.max_steps:
                self.episode.status = "timeout"
        twist, reason = self.governor.filter(action_to_twist(action, self.speeds), now=now, action_time=now, camera_time=camera_time)
        return Decision(action, twist, reason, (time.perf_counter() - t0) * 1000)


def run_episode(agent: Agent, env, instruction: str, period: float = 0.5, on_step: Callable[[Observation, Decision], None] | None = None) -> EpisodeState:
    """Closed loop in the simulator: observe, decide, step, until the planner stops or times out."""
    obs = env.observe()
    agent.start(instruction)
    while agent.episode.status == "running":
        agent.observe(obs)
        decision = agent.decide(now=obs.time, camera_time=obs.time)
        obs = env.step(decision.twist, period)
        if on_step is not None:
            on_step(obs, decision)
    env.step(Twist(), period)  # settle: success requires being stopped
    return agent.episode


def reached(env, target, episode: EpisodeState) -> bool:
    """The episode's success: the planner itself said `stop`, and the simulator agrees it is at the target. A robot
    that times out circling in front of its target is at rest there afterwards, but never said it arrived."""
    return episode.status == "done" and env.nav_success(target)
