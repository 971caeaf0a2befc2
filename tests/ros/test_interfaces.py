"""The README's topic/QoS/parameter table equals what the live nodes declare."""
from __future__ import annotations

from mobilevlm_agent.launcher import package_share
from ros_nodes.interfaces import node_tables, readme_section


def test_readme_table_matches_the_nodes(vlm_dir, ros_env, monkeypatch):
    for key in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE", "MUJOCO_GL"):
        monkeypatch.setenv(key, ros_env[key])
    live = node_tables(str(vlm_dir))
    documented = readme_section((package_share() / "README.md").read_text(encoding="utf-8"))
    assert "| safety_node | pub | `/cmd_vel` | `geometry_msgs/TwistStamped` |" in live
    assert documented == live, "README drifted from the nodes: run `python -m ros_nodes.interfaces MODEL_DIR --write README.md`"
