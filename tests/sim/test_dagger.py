"""DAgger: the driver's states, the camera-only oracle's labels, and the fine-tuning mix."""
from __future__ import annotations

import json
import random

import pytest

from mobilevlm_agent.agent.actions import ACTIONS, action_to_twist
from mobilevlm_agent.cli import main
from mobilevlm_agent.errors import ConfigError
from mobilevlm_agent.sim.dataset import DatasetConfig, navigation_samples, random_pose, scene_seeds
from mobilevlm_agent.sim.oracle import oracle_action
from mobilevlm_agent.sim.world import SimEnv


def test_the_driver_moves_and_the_oracle_labels(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    cfg = DatasetConfig(max_nav_steps=12)
    env = SimEnv()
    try:
        env.reset(seed=4)
        samples = navigation_samples(random.Random(0), env, "d", tmp_path, cfg, [], driver=lambda image, instruction: "turn_right")
        # replay: the robot followed the driver (always turn_right); each label is the oracle's in that state
        replay = random.Random(0)
        env.reset(seed=4)
        env.teleport(*random_pose(replay, env))
        prompt = samples[0]["conversations"][0]["value"]  # "... the {colour} {shape}[ and stop next to it]. What ..."
        target_label = prompt.split("the ", 1)[1].split(".")[0].removesuffix(" and stop next to it")
        target = next(o for o in env.scene.objects if o.label == target_label)
        labels = []
        for record in samples:
            labels.append(oracle_action(env, target, camera_only=True))
            assert record["conversations"][1]["value"] == labels[-1]
            env.step(action_to_twist("turn_right"), cfg.control_period)
    finally:
        env.close()
    assert len(samples) == cfg.max_nav_steps  # the driver never said stop
    assert "turn_left" in labels  # the oracle would have searched the other way: the labels are not the driver's


def test_dagger_round_writes_samples_and_the_mix(sim_data, official_checkpoint, capsys):
    base = json.loads((sim_data / "balanced.json").read_text())
    assert main(["sim", "dagger", "--model", str(official_checkpoint), "--data", str(sim_data), "--scenes", "1", "--episodes", "1", "--seed", "7"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    samples = json.loads((sim_data / "dagger7.json").read_text())
    mix = json.loads((sim_data / "balanced_dagger7.json").read_text())
    assert report["samples"] == len(samples) > 0 and report["mix"] == len(mix)
    assert set(report["labels"]) <= set(ACTIONS) and sum(report["model_actions"].values()) > 0
    assert all(r["kind"] == "nav" and (sim_data / r["image"]).is_file() for r in samples)
    assert len(mix) >= len(base) + len(samples)  # the base mix, every new sample, stops repeated
    assert {r["id"] for r in samples} <= {r["id"] for r in mix}


def test_training_scene_seeds_never_reach_the_held_out_scenes():
    assert scene_seeds(1, 40) == range(100_003, 100_043)
    with pytest.raises(ConfigError, match="held-out"):
        scene_seeds(10, 40)
