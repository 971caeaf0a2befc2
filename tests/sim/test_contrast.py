"""Contrast views: one close-up image, labelled for the object in front and for another object of the room."""
from __future__ import annotations

import json
import random
from collections import defaultdict

from mobilevlm_agent.cli import main
from mobilevlm_agent.sim.contrast import contrast_samples
from mobilevlm_agent.sim.world import SimEnv


def test_one_view_two_instructions_two_labels(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    env, records = SimEnv(), []
    try:
        env.reset(seed=12)
        samples = contrast_samples(random.Random(0), env, "c", tmp_path, records)
        labels = {o.label for o in env.scene.objects}
    finally:
        env.close()
    by_image = defaultdict(list)
    for r in samples:
        by_image[r["image"]].append(r)
    assert len(by_image) == len(records) >= 2 and all((tmp_path / img).is_file() for img in by_image)
    near = [pair for img, pair in by_image.items() if "_near" in img]
    assert near
    for image, pair in by_image.items():
        assert len(pair) == 2
        prompts = [r["conversations"][0]["value"] for r in pair]
        assert prompts[0] != prompts[1]  # the same image, asked about two different objects
        named = [next(label for label in labels if f"the {label}" in p) for p in prompts]
        assert named[0] != named[1]
    for own, other in near:
        assert own["conversations"][1]["value"] == "stop"  # in front of the object it names
        assert other["conversations"][1]["value"] != "stop"  # the same view, another object: keep looking
    # a search turn is a convention, not a side of the image: it is never mirrored
    assert all(r["conversations"][1]["value"] == "turn_left" for r in samples if r.get("mirror") is False)


def test_contrast_command_writes_samples_and_the_mix(sim_data, capsys):
    base = json.loads((sim_data / "balanced.json").read_text())
    assert main(["sim", "contrast", "--data", str(sim_data), "--scenes", "2", "--seed", "8"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    samples = json.loads((sim_data / "contrast8.json").read_text())
    mix = json.loads((sim_data / "balanced_contrast8.json").read_text())
    assert report["samples"] == len(samples) > 0 and report["mix"] == len(mix)
    assert len(mix) == len(base) + len(samples)  # once each: a stop and its image's twin weigh alike
    assert {r["id"] for r in samples} <= {r["id"] for r in mix}
