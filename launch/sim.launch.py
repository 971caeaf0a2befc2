"""ros2 launch mobilevlm_agent sim.launch.py [model:=DIR] [dry_run:=false] [scene_seed:=7]

The same graph as sim.launch.yaml: the MuJoCo simulator node (it publishes /clock) with the agent nodes on sim time.
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
    "use_sim_time": ("true", "follow the simulator's /clock"),
    "dry_run": ("true", "start with motion disabled until agent/enable is true"),
    "scene_seed": ("7", "seed of the generated simulator scene"),
    "real_time_factor": ("1.0", "simulated seconds per wall second"),
}


def generate_launch_description():
    profile = os.path.join(SHARE, "config", "fastdds.xml")
    common = {"namespace": Var("namespace"), "output": "screen"}
    sim_time = {"use_sim_time": Var("use_sim_time")}
    model_node = lambda executable: Node(package="mobilevlm_agent", executable=executable, name=executable, respawn=True,  # noqa: E731
                                         parameters=[Var("params_file"), {"model": Var("model"), **sim_time}], **common)
    return LaunchDescription([
        *[DeclareLaunchArgument(name, default_value=default, description=text) for name, (default, text) in ARGS.items()],
        SetEnvironmentVariable("FASTDDS_DEFAULT_PROFILES_FILE", profile),
        SetEnvironmentVariable("FASTRTPS_DEFAULT_PROFILES_FILE", profile),
        SetEnvironmentVariable("MUJOCO_GL", os.environ.get("MUJOCO_GL", "egl")),
        Node(package="mobilevlm_agent", executable="sim_node", name="sim_node", on_exit=Shutdown(),
             parameters=[{"scene_seed": Var("scene_seed"), "real_time_factor": Var("real_time_factor")}], **common),
        model_node("encoder_node"),
        model_node("planner_node"),
        Node(package="mobilevlm_agent", executable="agent_node", name="agent_node", parameters=[Var("params_file"), sim_time], **common),
        Node(package="mobilevlm_agent", executable="safety_node", name="safety_node", on_exit=Shutdown(),
             parameters=[Var("params_file"), {"dry_run": Var("dry_run"), **sim_time}], **common),
    ])
