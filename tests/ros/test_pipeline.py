"""camera_node (a generated video) -> encoder_node -> planner_node over real rclpy (the composition process)."""
from __future__ import annotations

import json

import cv2
import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from std_msgs.msg import String
from sensor_msgs.msg import Image

from mobilevlm_agent.agent.actions import ACTIONS
from ros_nodes.messages import image_to_tokens
from ros_nodes.node_tools import LATEST_QOS, RELIABLE_QOS, STREAM_QOS


def write_video(path, frames: int = 30, size=(160, 120)) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, size)
    assert writer.isOpened()
    for i in range(frames):
        frame = np.full((size[1], size[0], 3), 90, np.uint8)
        cv2.rectangle(frame, (10 + 3 * i, 30), (50 + 3 * i, 70), (0, 0, 220), -1)
        writer.write(frame)
    writer.release()


def test_video_to_streamed_answer(spawn, probe, vlm_dir, tmp_path):
    video = tmp_path / "clip.avi"
    write_video(video)
    spawn("camera_node", {"source": str(video), "rate_hz": 10.0, "width": 160, "height": 120})
    # encoder + planner, one shared model, quantised while loading
    planner = spawn("vlm_composition", {"model": str(vlm_dir), "max_new_tokens": 12, "quant": "int4", "group_size": 32, "vision_quant": "int8",
                                        "diagnostics_period_s": 0.2})
    diags = probe.collect(DiagnosticArray, "/diagnostics", RELIABLE_QOS)
    tokens = probe.collect(Image, "agent/visual_tokens", LATEST_QOS)
    chunks = probe.collect(String, "agent/answer_stream", STREAM_QOS)
    answers = probe.collect(String, "agent/answer", RELIABLE_QOS)
    query = probe.publisher(String, "agent/query", RELIABLE_QOS)

    probe.spin_until(lambda: len(tokens) >= 3, 60, "visual tokens from the encoder")
    header_frame = tokens[-1][1].header.frame_id
    t = image_to_tokens(tokens[-1][1])
    assert t.shape[0] == 16 and np.isfinite(t).all() and header_frame == "camera_optical_frame"  # tiny-vlm-v2: 16 tokens

    probe.spin_until(lambda: query.get_subscription_count() > 0, 30, "the planner's query subscription")
    # while idle, the planner runs each new frame's visual tokens through the KV cache (prefill_image)
    probe.spin_until(lambda: int(probe.diagnostic_values(diags, "planner_node").get("image_prefills", 0)) >= 2, 30, "image prefills while idle")
    probe.spin_until(lambda: probe.matched("agent/answer_stream", "agent/answer"), 30, "the planner's answer publishers")
    sent = __import__("time").monotonic()
    query.publish(String(data="What is in the image?"))
    probe.spin_until(lambda: any(json.loads(m.data)["done"] for _, m in chunks), 60, "the end of the streamed answer")
    probe.spin_until(lambda: answers, 10, "the full answer")

    parsed = [json.loads(m.data) for _, m in chunks]
    assert parsed[0]["seq"] == 0 and parsed[0]["delta"] == "" and not parsed[0]["done"]  # the start marker
    assert [c["seq"] for c in parsed] == list(range(len(parsed)))
    assert len({c["id"] for c in parsed}) == 1
    end = parsed[-1]
    assert end["done"] and end["finish_reason"] in ("eos", "length", "stop")
    streamed = "".join(c["delta"] for c in parsed).strip()
    assert streamed == end["text"] == answers[0][1].data
    first_token = next(ts for ts, m in chunks if json.loads(m.data)["seq"] == 1) if len(parsed) > 2 else chunks[-1][0]
    print(f"query -> first streamed token: {(first_token - sent) * 1000:.0f} ms (node-side TTFT {end['ttft_ms']:.0f} ms)")
    # the frame the query was answered on was already in the cache, unless a newer one had just arrived
    print(f"answer prefilled {end['prefill_tokens']} positions (16 visual tokens + the question when cold)")

    # a plan request after a left turn -> one grammar action, with the stop check's and the turn hold's verdicts
    # and every action's score
    actions = probe.collect(String, "agent/action", RELIABLE_QOS)
    request = probe.publisher(String, "agent/plan_request", RELIABLE_QOS)
    probe.spin_until(lambda: request.get_subscription_count() > 0 and probe.matched("agent/action"), 30, "the planner's plan topics")
    request.publish(String(data=json.dumps({"id": 7, "instruction": "go to the red cube", "previous": "turn_left"})))
    probe.spin_until(lambda: actions, 30, "the action for the plan request")
    action = json.loads(actions[0][1].data)
    assert action["id"] == 7 and action["action"] in ACTIONS and isinstance(action["stop_vetoed"], bool)
    likeliest = max(action["scores"], key=action["scores"].get)
    assert action["turn_held"] == (likeliest == "turn_right")  # a right turn straight after a left one is held
    assert set(action["scores"]) == set(ACTIONS) and (action["action"] == likeliest) != (action["stop_vetoed"] or action["turn_held"])
    assert planner.alive()
    assert planner.output().count("loaded ") == 1 and "[planner_node]: sharing" in planner.output()  # one model for both nodes
    assert "weights decoder int4, vision int8" in planner.output()
