"""ros2 launch mobilevlm_agent gazebo.launch.py world_dir:=gz/ [model:=DIR] [dry_run:=true]

Gazebo (gz-sim) instead of the embedded simulator. First export the world and bridge config from a scene:
    mobilevlm-agent sim export-gazebo --seed 7 --out gz/        # gz/world.sdf, gz/bridge.yaml
Needs ros_gz_sim and ros_gz_bridge (not on PyPI: install them with your ROS 2 distribution).
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription, SetEnvironmentVariable, Shutdown
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration as Var
from launch.substitutions import PathJoinSubstitution
from launch_ros.actions import Node

SHARE = get_package_share_directory("mobilevlm_agent")
ARGS = {
    "world_dir": ("gz", "directory written by `mobilevlm-agent sim export-gazebo`"),
    "model": ("demo", "checkpoint directory or bundled model name"),
    "params_file": (os.path.join(SHARE, "config", "agent.yaml"), "ros__parameters YAML for every node"),
    "namespace": ("", "namespace of every node and topic"),
    "use_sim_time": ("true", "follow Gazebo's /clock"),
    "dry_run": ("true", "start with motion disabled until agent/enable is true"),
    "gz_args": ("-r -s", "gz sim flags (-s: headless server)"),
}


def generate_launch_description():
    profile = os.path.join(SHARE, "config", "fastdds.xml")
    common = {"namespace": Var("namespace"), "output": "screen"}
    sim_time = {"use_sim_time": Var("use_sim_time")}
    gz_sim = os.path.join(get_package_share_directory("ros_gz_sim"), "launch", "gz_sim.launch.py")
    return LaunchDescription([
        *[DeclareLaunchArgument(name, default_value=default, description=text) for name, (default, text) in ARGS.items()],
        SetEnvironmentVariable("FASTDDS_DEFAULT_PROFILES_FILE", profile),
        SetEnvironmentVariable("FASTRTPS_DEFAULT_PROFILES_FILE", profile),
        IncludeLaunchDescription(PythonLaunchDescriptionSource(gz_sim),
                                 launch_arguments={"gz_args": [Var("gz_args"), " ", PathJoinSubstitution([Var("world_dir"), "world.sdf"])]}.items()),
        Node(package="ros_gz_bridge", executable="parameter_bridge", name="gz_bridge", on_exit=Shutdown(),
             parameters=[{"config_file": PathJoinSubstitution([Var("world_dir"), "bridge.yaml"]), **sim_time}], **common),
        Node(package="mobilevlm_agent", executable="vlm_composition", respawn=True,
             parameters=[Var("params_file"), {"model": Var("model"), **sim_time}], **common),
        Node(package="mobilevlm_agent", executable="agent_node", name="agent_node", parameters=[Var("params_file"), sim_time], **common),
        Node(package="mobilevlm_agent", executable="safety_node", name="safety_node", on_exit=Shutdown(),
             parameters=[Var("params_file"), {"dry_run": Var("dry_run"), **sim_time}], **common),
    ])
