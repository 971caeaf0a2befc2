"""safety_node: the only publisher of cmd_vel. Grammar actions -> twists through the SafetyGovernor.

Zero velocity unless motion is enabled (dry_run is the default), on e-stop (published at once), and when the
action or camera stream goes stale: actions by their arrival, camera frames by their header stamps (so frames that
arrive late count as old; unstamped frames by arrival). Speed and acceleration are limited.
"""
from __future__ import annotations

import sys

from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import Twist as TwistMsg
from geometry_msgs.msg import TwistStamped
from rclpy.node import Node
from sensor_msgs.msg import Image
from std_msgs.msg import Bool, Header, String

from mobilevlm_agent.agent.actions import ActionSpeeds, action_to_twist, parse_action
from mobilevlm_agent.agent.safety import SafetyGovernor, SafetyLimits
from mobilevlm_agent.agent.types import Twist
from mobilevlm_agent.errors import InputError
from ros_nodes.messages import json_message, stamp_seconds, twist_message
from ros_nodes.node_tools import LATCHED_QOS, RELIABLE_QOS, SENSOR_QOS, InputCounters, Param, declare_parameters, diagnostics, run

PARAMS = (
    Param("dry_run", True, "start with motion disabled (zero cmd_vel) until agent/enable receives true"),
    Param("stamped", True, "publish geometry_msgs/TwistStamped (Jazzy default); false publishes Twist (Humble-era robots)"),
    Param("rate_hz", 20.0, "cmd_vel publication rate"),
    Param("frame_id", "base_link", "header.frame_id of TwistStamped"),
    Param("max_linear", 0.5, "speed limit per axis, m/s"),
    Param("max_angular", 1.0, "yaw-rate limit, rad/s"),
    Param("max_linear_accel", 1.0, "acceleration limit, m/s^2"),
    Param("max_angular_accel", 3.0, "yaw acceleration limit, rad/s^2"),
    Param("action_timeout_s", 1.0, "no new action for this long -> zero"),
    Param("camera_timeout_s", 0.5, "no camera frame stamped within this long -> zero"),
    Param("watch_camera", True, "apply the camera watchdog (subscribes to camera/image_raw)"),
    Param("forward_speed", 0.4, "speed commanded by the forward action, m/s"),
    Param("turn_speed", 0.8, "yaw rate commanded by turn_left/turn_right, rad/s"),
)


class SafetyNode(Node):
    def __init__(self, **kwargs) -> None:
        super().__init__("safety_node", **kwargs)
        self.p = declare_parameters(self, PARAMS)
        limits = SafetyLimits(self.p.max_linear, self.p.max_angular, self.p.max_linear_accel, self.p.max_angular_accel,
                              self.p.action_timeout_s, self.p.camera_timeout_s)
        self.governor = SafetyGovernor(limits=limits, dry_run=self.p.dry_run)
        self.speeds = ActionSpeeds(self.p.forward_speed, self.p.turn_speed)
        self.counters = InputCounters(self)
        self.wanted, self.action_time, self.camera_time = Twist(), -1e9, None
        self.reason = "dry_run" if self.p.dry_run else "stale_action"
        self.cmd_pub = self.create_publisher(TwistStamped if self.p.stamped else TwistMsg, "cmd_vel", RELIABLE_QOS)
        self.status_pub = self.create_publisher(String, "agent/safety_status", LATCHED_QOS)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", RELIABLE_QOS)
        self.create_subscription(String, "agent/action", self.on_action, RELIABLE_QOS)
        self.create_subscription(Bool, "agent/enable", self.on_enable, RELIABLE_QOS)
        self.create_subscription(Bool, "agent/estop", self.on_estop, RELIABLE_QOS)
        if self.p.watch_camera:
            self.create_subscription(Image, "camera/image_raw", self.on_camera, SENSOR_QOS)
        self.create_timer(1.0 / self.p.rate_hz, self.publish_command)
        self.create_timer(1.0, self.publish_status)
        self.get_logger().info(f"cmd_vel ({'TwistStamped' if self.p.stamped else 'Twist'}), motion {'disabled (dry_run)' if self.p.dry_run else 'ENABLED'}")

    def now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def on_action(self, msg: String) -> None:
        try:
            self.wanted = action_to_twist(parse_action(msg.data), self.speeds)
        except InputError as e:
            self.counters.reject("bad_action", e)
            return
        self.action_time = self.now()

    def on_camera(self, msg: Image) -> None:
        now, stamp = self.now(), stamp_seconds(msg.header.stamp)
        if stamp == 0.0:  # an unstamped driver: arrival is all there is
            self.camera_time = now
            return
        # A frame is as old as its stamp: frames held up in the transport (our tests saw ~1 s stalls as a peer
        # died) must not restart the watchdog when they arrive.
        self.camera_time = max(self.camera_time or stamp, min(now, stamp))
        if now - stamp > self.p.camera_timeout_s:
            self.counters.reject("late_frame", f"a camera frame arrived {now - stamp:.2f} s after its stamp "
                                               "(a transport delay, or the camera's clock is behind this node's)")

    def on_enable(self, msg: Bool) -> None:
        self.governor.enable(bool(msg.data))
        self.get_logger().warn(f"motion {'ENABLED' if msg.data else 'disabled'} by agent/enable")
        self.publish_status()

    def on_estop(self, msg: Bool) -> None:
        self.governor.estop(bool(msg.data))
        self.get_logger().error("E-STOP engaged") if msg.data else self.get_logger().warn("e-stop released")
        self.publish_command()  # zero goes out now, not at the next tick
        self.publish_status()

    def publish_command(self) -> None:
        stamp = self.get_clock().now()  # one reading for the governor and the header, so limits hold per stamp
        now = stamp.nanoseconds * 1e-9
        camera_time = self.camera_time if self.p.watch_camera else now
        twist, reason = self.governor.filter(self.wanted, now=now, action_time=self.action_time, camera_time=camera_time)
        if reason != self.reason and reason not in ("ok", "clipped"):
            self.get_logger().info(f"zero velocity: {reason}")
        self.reason = reason
        self.cmd_pub.publish(twist_message(twist, self.p.stamped, Header(stamp=stamp.to_msg(), frame_id=self.p.frame_id)))

    def publish_status(self) -> None:
        state = {"reason": self.reason, "dry_run": self.governor.dry_run, "estop": self.governor.estopped}
        verdicts, rejected = dict(self.governor.counts), self.counters.snapshot()
        self.status_pub.publish(json_message({**state, "verdicts": verdicts, "rejected": rejected}))
        self.diag_pub.publish(diagnostics(self, self.reason, {**state, **{f"verdict_{k}": v for k, v in verdicts.items()}, **rejected}))


def main(args: list[str] | None = None) -> None:
    run(lambda: [SafetyNode()], args if args is not None else sys.argv)


if __name__ == "__main__":
    main()
