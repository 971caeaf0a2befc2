"""The model nodes' own parameters act on the process: `threads` sets torch's intra-op threads."""
from __future__ import annotations

import rclpy
import torch
from rclpy.parameter import Parameter

from ros_nodes.encoder_node import EncoderNode


def test_threads_parameter_sets_torch_intra_op_threads(vlm_dir, ros_env, monkeypatch):
    for key in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE"):
        monkeypatch.setenv(key, ros_env[key])
    before = torch.get_num_threads()
    wanted = 1 if before != 1 else 2
    rclpy.init(args=[])
    try:
        node = EncoderNode(parameter_overrides=[Parameter("model", value=str(vlm_dir)), Parameter("threads", value=wanted)]).start()
        assert node.model is not None and node.active
        assert torch.get_num_threads() == wanted
        node.destroy_node()
        bad = EncoderNode(parameter_overrides=[Parameter("model", value=str(vlm_dir)), Parameter("threads", value=-1)]).start()
        assert bad.model is None and not bad.active  # configure failed, its error logged; the node is still up
        bad.destroy_node()
    finally:
        rclpy.try_shutdown()
        torch.set_num_threads(before)
