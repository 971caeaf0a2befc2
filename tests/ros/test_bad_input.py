"""Malformed messages are logged and counted by reason; the node keeps serving the next good message."""
from __future__ import annotations

import json

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from sensor_msgs.msg import Image
from std_msgs.msg import Header, String

from ros_nodes.messages import rgb_to_image
from ros_nodes.node_tools import LATEST_QOS, RELIABLE_QOS, SENSOR_QOS, STREAM_QOS


def test_encoder_survives_malformed_images(spawn, probe, vlm_dir):
    encoder = spawn("encoder_node", {"model": str(vlm_dir), "diagnostics_period_s": 0.2})
    tokens = probe.collect(Image, "agent/visual_tokens", LATEST_QOS)
    diags = probe.collect(DiagnosticArray, "/diagnostics", RELIABLE_QOS)
    camera = probe.publisher(Image, "camera/image_raw", SENSOR_QOS)
    probe.spin_until(lambda: camera.get_subscription_count() > 0 and diags, 60, "the encoder")
    good = rgb_to_image(np.full((48, 64, 3), 128, np.uint8), Header(frame_id="cam"))
    bad = [
        Image(height=48, width=64, encoding="yuv422_weird", step=64 * 3, data=bytes(48 * 64 * 3)),  # unknown encoding
        Image(height=48, width=64, encoding="rgb8", step=100, data=bytes(48 * 100)),  # step smaller than a row
        Image(height=48, width=64, encoding="rgb8", step=64 * 3, data=bytes(1000)),  # truncated
        Image(height=0, width=0, encoding="rgb8", step=0, data=b""),  # empty
    ]
    for msg in bad:
        camera.publish(msg)
        probe.spin_for(0.15)
    camera.publish(good)
    probe.spin_until(lambda: tokens and tokens[-1][1].header.frame_id == "cam", 20, "tokens for the good frame after the bad ones")
    probe.spin_until(lambda: int(probe.diagnostic_values(diags, "encoder_node").get("bad_image", 0)) == len(bad), 10, "bad_image counted 4 times")
    assert encoder.alive()
    log = encoder.output()
    assert "bad_image #1: unsupported image encoding 'yuv422_weird'" in log  # later ones are counted; the log is throttled to 1/s


def test_planner_survives_oversized_and_invalid_queries(spawn, probe, vlm_dir):
    planner = spawn("planner_node", {"model": str(vlm_dir), "max_new_tokens": 4, "diagnostics_period_s": 0.2})
    chunks = probe.collect(String, "agent/answer_stream", STREAM_QOS)
    diags = probe.collect(DiagnosticArray, "/diagnostics", RELIABLE_QOS)
    query = probe.publisher(String, "agent/query", RELIABLE_QOS)
    raw_query = probe.node.create_publisher(String, "agent/query", RELIABLE_QOS)
    probe.spin_until(lambda: query.get_subscription_count() > 0 and diags, 60, "the planner")
    query.publish(String(data="x" * 1_000_000))  # a 1 MB query
    # invalid UTF-8: rclpy itself would turn it into U+FFFD, so send the serialized bytes directly
    raw_query.publish(b"\x00\x01\x00\x00\x06\x00\x00\x00hi\xff\xfe!\x00")
    request = probe.publisher(String, "agent/plan_request", RELIABLE_QOS)
    request.publish(String(data="{not json"))
    request.publish(String(data=json.dumps({"instruction": ["rm -rf"]})))
    request.publish(String(data=json.dumps({"instruction": "go to the red cube", "previous": "jump"})))
    query.publish(String(data="What do you see?"))
    probe.spin_until(lambda: any(json.loads(m.data)["done"] for _, m in chunks), 60, "an answer to the good query")
    probe.spin_until(lambda: int(probe.diagnostic_values(diags, "planner_node").get("bad_query", 0)) >= 2, 10, "both bad queries counted")
    c = probe.diagnostic_values(diags, "planner_node")
    assert int(c["bad_query"]) == 2 and int(c["bad_plan_request"]) == 3 and int(c["answers"]) == 1
    assert planner.alive()
    log = planner.output()
    assert "bad_query #1:" in log and ("limit" in log or "not valid UTF-8" in log)  # whichever arrived first; then throttled
