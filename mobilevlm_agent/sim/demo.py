"""`demo`: the agent in the simulator, recorded: camera view beside a top-down map, the trajectory, a summary."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import cv2
import numpy as np

from mobilevlm_agent.agent.loop import Agent, reached, run_episode
from mobilevlm_agent.agent.oracle_planner import OraclePlanner
from mobilevlm_agent.agent.planner import ModelPlanner
from mobilevlm_agent.agent.safety import SafetyGovernor
from mobilevlm_agent.chat import ChatSession
from mobilevlm_agent.generate import SamplingParams
from mobilevlm_agent.model.vlm import MobileVLM
from mobilevlm_agent.sim.scene import COLOURS, SceneSpec
from mobilevlm_agent.sim.world import ROBOT_RADIUS, SimEnv

MAP_SIZE = 240


def top_down(scene: SceneSpec, path: list[tuple[float, float, float]], target_name: str) -> np.ndarray:
    """A map of the room: objects in their colours (target ringed), the path so far, the robot's pose."""
    w, d = scene.room
    scale = (MAP_SIZE - 20) / max(w, d)
    to_px = lambda x, y: (int(MAP_SIZE / 2 + x * scale), int(MAP_SIZE / 2 - y * scale))  # noqa: E731
    img = np.full((MAP_SIZE, MAP_SIZE, 3), 245, np.uint8)
    cv2.rectangle(img, to_px(-w / 2, d / 2), to_px(w / 2, -d / 2), (90, 90, 90), 2)
    for o in scene.objects:
        colour = tuple(int(255 * c) for c in COLOURS[o.colour][::-1])  # BGR
        centre, radius = to_px(o.x, o.y), max(3, int(o.size * scale))
        if o.shape == "cube":
            cv2.rectangle(img, (centre[0] - radius, centre[1] - radius), (centre[0] + radius, centre[1] + radius), colour, -1)
        else:
            cv2.circle(img, centre, radius, colour, -1)
        cv2.circle(img, centre, radius + 1, (60, 60, 60), 1)
        if o.name == target_name:
            cv2.circle(img, centre, radius + 6, (0, 160, 0), 2)
    points = np.array([to_px(x, y) for x, y, _ in path], np.int32)
    if len(points) > 1:
        cv2.polylines(img, [points], False, (200, 80, 30), 2)
    x, y, yaw = path[-1]
    cv2.circle(img, to_px(x, y), int(ROBOT_RADIUS * scale), (40, 40, 40), 2)
    cv2.line(img, to_px(x, y), to_px(x + 0.35 * math.cos(yaw), y + 0.35 * math.sin(yaw)), (0, 0, 220), 2)
    return img


def compose(camera_rgb: np.ndarray, map_bgr: np.ndarray, lines: list[str]) -> np.ndarray:
    frame = np.concatenate([cv2.cvtColor(camera_rgb, cv2.COLOR_RGB2BGR), cv2.resize(map_bgr, (camera_rgb.shape[0], camera_rgb.shape[0]))], axis=1)
    band = np.full((22 * len(lines) + 8, frame.shape[1], 3), 30, np.uint8)
    for i, text in enumerate(lines):
        cv2.putText(band, text[:90], (6, 20 + 22 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (235, 235, 235), 1, cv2.LINE_AA)
    return np.concatenate([frame, band], axis=0)


def run_demo(out_dir: str | Path, model: MobileVLM | None, seed: int, instruction: str | None, question: str, planner: str, say=print) -> dict:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    env = SimEnv()
    obs = env.reset(seed=seed)
    target = env.scene.objects[0]
    instruction = instruction or f"go to the {target.label}"
    chat = ChatSession(model) if model is not None else None
    chosen = ModelPlanner(model) if planner == "model" and model is not None else OraclePlanner(env, target)
    planner_name = "model" if isinstance(chosen, ModelPlanner) else "oracle"
    agent = Agent(chosen, SafetyGovernor(dry_run=False), chat=chat, max_steps=80)
    agent.observe(obs)
    answer = ""
    if chat is not None:
        say(f"Q: {question}\nA: ", end="")
        answer = "".join(_stream(agent, question, say)).strip()
        say("")
    else:
        say("(no --model: skipping the question; planning with the oracle)")
    say(f"instruction: {instruction}   planner: {planner_name}")
    path = [(obs.odom.x, obs.odom.y, obs.odom.yaw)]
    writer = None
    decisions: list[float] = []

    def record(o, decision):
        nonlocal writer
        path.append((o.odom.x, o.odom.y, o.odom.yaw))
        decisions.append(decision.latency_ms)
        say(f"  step {len(path) - 1:3d}: {decision.action:<10} -> vx {decision.twist.vx:+.2f} wz {decision.twist.wz:+.2f} ({decision.reason})")
        frame = compose(o.image, top_down(env.scene, path, target.name),
                        [f"{instruction}  [{planner_name}]", f"step {len(path) - 1}: {decision.action}", f"Q: {question}  A: {answer}"[:90]])
        if writer is None:
            writer = cv2.VideoWriter(str(out / "demo.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 4, (frame.shape[1], frame.shape[0]))
        writer.write(frame)

    t0 = time.perf_counter()
    episode = run_episode(agent, env, instruction, on_step=record)
    elapsed = time.perf_counter() - t0
    if writer is not None:
        writer.release()
    cv2.imwrite(str(out / "trajectory.png"), top_down(env.scene, path, target.name))
    summary = {
        "seed": seed, "instruction": instruction, "target": target.label, "planner": planner_name, "question": question, "answer": answer,
        "status": episode.status, "success": reached(env, target, episode), "steps": episode.steps, "collisions": env.collisions,
        "actions": episode.history, "stops_vetoed": getattr(chosen, "stops_vetoed", 0), "turns_held": getattr(chosen, "turns_held", 0),
        "decisions_per_s": len(decisions) / elapsed if elapsed else 0.0,
        "mean_decision_ms": float(np.mean(decisions)) if decisions else 0.0,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    env.close()
    say(f"{'success' if summary['success'] else 'no success'} in {episode.steps} steps; wrote {out / 'demo.mp4'}, {out / 'trajectory.png'}, {out / 'summary.json'}")
    return summary


def _stream(agent: Agent, question: str, say) -> list[str]:
    pieces = []
    for delta in agent.answer(question, SamplingParams(max_new_tokens=48)):
        say(delta, end="", flush=True)
        pieces.append(delta)
    return pieces
