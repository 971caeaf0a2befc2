"""`demo` runs the loop end to end and writes its video, trajectory and summary."""
from __future__ import annotations

import json

import cv2

from mobilevlm_agent.cli import main


def test_demo_writes_video_trajectory_and_summary(tmp_path, official_checkpoint, capsys):
    assert main(["demo", "--model", str(official_checkpoint), "--planner", "oracle", "--seed", "3", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["success"] and summary["actions"][-1] == "stop" and summary["answer"] is not None
    assert "step" in out and "A:" in out.replace("Q:", "")
    video = cv2.VideoCapture(str(tmp_path / "demo.mp4"))
    frames = int(video.get(cv2.CAP_PROP_FRAME_COUNT))
    assert frames == summary["steps"]
    assert cv2.imread(str(tmp_path / "trajectory.png")) is not None
