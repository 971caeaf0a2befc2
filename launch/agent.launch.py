"""ros2 launch mobilevlm_agent agent.launch.py camera_source:=/dev/video0 [model:=DIR] [dry_run:=true]

The same graph as agent.launch.yaml: camera -> encoder + planner (one process, one model) <- agent loop;
safety_node is the only publisher of cmd_vel and stops the whole launch if it dies.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, SetEnvironmentVariable, Shutdown
from launch.substitutions import LaunchConfiguration as Var
from launch_ros.actions import Node

SHARE = get_package_share_directory("mobilevlm_agent")
ARGS = {
    "model": ("demo", "checkpoint directory or bundled model name"),
    "params_file": (os.path.join(SHARE, "config", "agent.yaml"), "ros__parameters YAML for every node"),
    "namespace": ("", "namespace of every node and topic"),
    "use_sim_time": ("false", "follow /clock"),
    "dry_run": ("true", "start with motion disabled until agent/enable is true"),
    "camera_source": ("0", "camera device, video file or image folder"),
    "camera_rate_hz": ("10.0", "camera frames per second"),
}


def generate_launch_description():
    profile = os.path.join(SHARE, "config", "fastdds.xml")
    common = {"namespace": Var("namespace"), "output": "screen"}
    sim_time = {"use_sim_time": Var("use_sim_time")}
    return LaunchDescription([
        *[DeclareLaunchArgument(name, default_value=default, description=text) for name, (default, text) in ARGS.items()],
        SetEnvironmentVariable("FASTDDS_DEFAULT_PROFILES_FILE", profile),
        SetEnvironmentVariable("FASTRTPS_DEFAULT_PROFILES_FILE", profile),
        Node(package="mobilevlm_agent", executable="camera_node", name="camera_node", respawn=True,
             parameters=[{"source": Var("camera_source"), "rate_hz": Var("camera_rate_hz"), **sim_time}], **common),
        Node(package="mobilevlm_agent", executable="vlm_composition", respawn=True,
             parameters=[Var("params_file"), {"model": Var("model"), **sim_time}], **common),
        Node(package="mobilevlm_agent", executable="agent_node", name="agent_node", parameters=[Var("params_file"), sim_time], **common),
        Node(package="mobilevlm_agent", executable="safety_node", name="safety_node", on_exit=Shutdown(),
             parameters=[Var("params_file"), {"dry_run": Var("dry_run"), **sim_time}], **common),
    ])
