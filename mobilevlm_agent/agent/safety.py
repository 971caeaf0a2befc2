"""The safety governor: every velocity passes here. Pure logic: times come in as numbers, never from a clock."""
from __future__ import annotations

from dataclasses import dataclass, field

from mobilevlm_agent.agent.types import Twist


@dataclass(frozen=True)
class SafetyLimits:
    max_linear: float = 0.5  # m/s, per axis
    max_angular: float = 1.0  # rad/s
    max_linear_accel: float = 1.0  # m/s^2
    max_angular_accel: float = 3.0  # rad/s^2
    action_timeout: float = 1.0  # s without a new action -> stop
    camera_timeout: float = 0.5  # s without a new camera frame -> stop


@dataclass
class SafetyGovernor:
    """Limits speed and acceleration; zero on e-stop, dry run (the default), stale action or stale camera.

    `filter` returns the twist to send and a reason string: "ok", "clipped", "dry_run", "estop", "stale_action",
    "stale_camera". Stops are immediate (no acceleration limit on the way to zero).
    """

    limits: SafetyLimits = field(default_factory=SafetyLimits)
    dry_run: bool = True
    estopped: bool = False
    last: Twist = field(default_factory=Twist)
    last_time: float | None = None
    counts: dict[str, int] = field(default_factory=dict)

    def enable(self, on: bool) -> None:
        self.dry_run = not on

    def estop(self, on: bool) -> None:
        self.estopped = on

    def filter(self, wanted: Twist, now: float, action_time: float, camera_time: float | None) -> tuple[Twist, str]:
        lim = self.limits
        if self.estopped:
            reason = "estop"
        elif self.dry_run:
            reason = "dry_run"
        elif now - action_time > lim.action_timeout:
            reason = "stale_action"
        elif camera_time is None or now - camera_time > lim.camera_timeout:
            reason = "stale_camera"
        else:
            reason = ""
        if reason:
            out = Twist()
        else:
            clip = lambda v, m: max(-m, min(m, v))  # noqa: E731
            capped = Twist(clip(wanted.vx, lim.max_linear), clip(wanted.vy, lim.max_linear), clip(wanted.wz, lim.max_angular))
            dt = 0.0 if self.last_time is None else max(0.0, now - self.last_time)
            out = Twist(
                self.last.vx + clip(capped.vx - self.last.vx, lim.max_linear_accel * dt),
                self.last.vy + clip(capped.vy - self.last.vy, lim.max_linear_accel * dt),
                self.last.wz + clip(capped.wz - self.last.wz, lim.max_angular_accel * dt),
            )
            reason = "ok" if out == wanted else "clipped"
        self.last, self.last_time = out, now
        self.counts[reason] = self.counts.get(reason, 0) + 1
        return out, reason
