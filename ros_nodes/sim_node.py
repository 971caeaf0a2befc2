"""sim_node: the MuJoCo simulator as a ROS node (the Gazebo stand-in): cmd_vel in; camera, odom, /clock, ground truth out.

It is the clock source, so its own timers run on the steady wall clock and it must not use sim time itself.
"""
from __future__ import annotations

import math
import sys

from geometry_msgs.msg import Twist as TwistMsg
from geometry_msgs.msg import TwistStamped
from nav_msgs.msg import Odometry as OdometryMsg
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from rclpy.time import Time
from rosgraph_msgs.msg import Clock as ClockMsg
from sensor_msgs.msg import Image
from std_msgs.msg import Header, String

from mobilevlm_agent.agent.types import Twist
from mobilevlm_agent.errors import InputError
from mobilevlm_agent.sim.scene import SceneSpec
from mobilevlm_agent.sim.world import SimConfig, SimEnv
from ros_nodes.messages import json_message, odometry_message, rgb_to_image, twist_from_message
from ros_nodes.node_tools import RELIABLE_QOS, SENSOR_QOS, InputCounters, Param, declare_parameters, run

PARAMS = (
    Param("scene_seed", 7, "seed of the generated scene (ignored when scene_file is set)"),
    Param("scene_file", "", "a scene YAML (SceneSpec) instead of a generated scene"),
    Param("width", 320, "camera width, pixels"),
    Param("height", 240, "camera height, pixels"),
    Param("camera_height", SimConfig.camera_height, "camera above the floor, metres (the demo model was trained at the default)"),
    Param("camera_pitch", SimConfig.camera_pitch, "camera tilt down, radians (the demo model was trained at the default)"),
    Param("camera_rate_hz", 10.0, "camera frames per simulated second"),
    Param("physics_rate_hz", 20.0, "control ticks per second: each advances the simulation by 1/physics_rate_hz"),
    Param("real_time_factor", 1.0, "simulated seconds per wall second (lower it on a slow machine)"),
    Param("stamped", True, "cmd_vel is geometry_msgs/TwistStamped (false: Twist)"),
    Param("cmd_timeout_s", 0.5, "the base stops when cmd_vel is older than this (as a diff-drive controller does)"),
    Param("frame_id", "camera_optical_frame", "camera header.frame_id"),
    Param("odom_frame_id", "odom", "odometry header.frame_id"),
    Param("base_frame_id", "base_link", "odometry child_frame_id"),
)


class SimNode(Node):
    def __init__(self, **kwargs) -> None:
        super().__init__("sim_node", **kwargs)
        self.p = declare_parameters(self, PARAMS)
        if self.get_parameter("use_sim_time").value:
            raise InputError("sim_node publishes /clock: run it with use_sim_time:=false")
        self.env = SimEnv(SimConfig(width=self.p.width, height=self.p.height, camera_height=self.p.camera_height, camera_pitch=self.p.camera_pitch))
        scene = SceneSpec.load(self.p.scene_file) if self.p.scene_file else None
        self.env.reset(seed=self.p.scene_seed, scene=scene)
        self.counters = InputCounters(self)
        self.command, self.command_time = Twist(), -1e9
        self.dt = 1.0 / self.p.physics_rate_hz
        self.next_frame_time = 0.0
        self.image_pub = self.create_publisher(Image, "camera/image_raw", SENSOR_QOS)
        self.odom_pub = self.create_publisher(OdometryMsg, "odom", RELIABLE_QOS)
        self.clock_pub = self.create_publisher(ClockMsg, "/clock", RELIABLE_QOS)
        self.truth_pub = self.create_publisher(String, "sim/ground_truth", RELIABLE_QOS)
        self.create_subscription(TwistStamped if self.p.stamped else TwistMsg, "cmd_vel", self.on_cmd_vel, RELIABLE_QOS)
        wall = Clock(clock_type=ClockType.STEADY_TIME)
        self.create_timer(self.dt / self.p.real_time_factor, self.tick, clock=wall)
        self.create_timer(0.5 / self.p.real_time_factor, self.publish_ground_truth, clock=wall)
        labels = ", ".join(o.label for o in self.env.scene.objects)
        self.get_logger().info(f"scene seed {self.p.scene_seed}: {labels}; target (obj0) is the {self.env.scene.objects[0].label}")

    def sim_time(self) -> Time:
        return Time(nanoseconds=int(round(self.env.data.time * 1e9)))

    def on_cmd_vel(self, msg) -> None:
        try:
            self.command = twist_from_message(msg)
        except InputError as e:
            self.counters.reject("bad_cmd_vel", e)
            return
        self.command_time = self.env.data.time

    def tick(self) -> None:
        stale = self.env.data.time - self.command_time > self.p.cmd_timeout_s
        self.env.advance(Twist() if stale else self.command, self.dt)
        now = self.sim_time().to_msg()
        self.clock_pub.publish(ClockMsg(clock=now))
        self.odom_pub.publish(odometry_message(self.env.odometry(), Header(stamp=now, frame_id=self.p.odom_frame_id), self.p.base_frame_id))
        if self.env.data.time + 1e-9 >= self.next_frame_time:
            self.next_frame_time += 1.0 / self.p.camera_rate_hz
            self.image_pub.publish(rgb_to_image(self.env.render(), Header(stamp=now, frame_id=self.p.frame_id)))

    def publish_ground_truth(self) -> None:
        env = self.env
        visible = {o.name for o in env.visible_objects()}
        o = env.odometry()
        objects = [{"label": obj.label, "distance": round(env.distance_to(obj), 3), "bearing_deg": round(math.degrees(env.bearing_to(obj)), 1),
                    "visible": obj.name in visible, "success": env.nav_success(obj)} for obj in env.scene.objects]
        self.truth_pub.publish(json_message({"time": round(env.data.time, 3), "pose": [round(o.x, 3), round(o.y, 3), round(o.yaw, 3)],
                                             "collisions": env.collisions, "target": env.scene.objects[0].label, "objects": objects,
                                             "rejected": self.counters.snapshot()}))

    def close(self) -> None:
        self.env.close()


def main(args: list[str] | None = None) -> None:
    run(lambda: [SimNode()], args if args is not None else sys.argv)


if __name__ == "__main__":
    main()
