"""Contrast views for the planner: one close-up image, two instructions.

The oracle only ever drives up to its target, so in its trajectories a big object straight ahead nearly always *is*
the target, and a cloned policy learns "close object ahead -> stop" whatever it is. The shipped demo model failed that
way (27 of 28 failed episodes ended in a confident stop in front of a distractor sharing the target's colour or
shape). Here the robot is placed in front of each object, near (where the oracle stops) or on the approach, and that
one view is labelled twice by the camera-only oracle: for the object in front (stop / forward) and for another object
of the room, preferably one sharing its colour or shape (search or turn). Only the instruction tells the two apart.
On the previous demo weights this data did not help: they could not fit those pairs even on their training views
(models/demo/MODEL_CARD.md, "Contrast views").
"""
from __future__ import annotations

import math
import random
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from mobilevlm_agent.sim.dataset import NAV_TEMPLATES, base_mix, nav_prompt, sample, save_view, scene_seeds, write_round
from mobilevlm_agent.sim.oracle import oracle_action
from mobilevlm_agent.sim.scene import ObjectSpec
from mobilevlm_agent.sim.world import ROBOT_RADIUS, SimEnv

GAPS = {"near": (0.15, 0.40), "approach": (0.8, 1.8)}  # metres from the robot to the object's surface


def facing_pose(rng: random.Random, env: SimEnv, obj: ObjectSpec, gap: tuple[float, float]) -> tuple[float, float, float] | None:
    """A free pose `gap` metres from `obj`'s surface, looking at it (within ±10°); None when none fits the room."""
    w, d = env.scene.room
    for _ in range(30):
        angle, reach = rng.uniform(-math.pi, math.pi), obj.size + ROBOT_RADIUS + rng.uniform(*gap)
        x, y = obj.x + reach * math.cos(angle), obj.y + reach * math.sin(angle)
        inside = abs(x) < w / 2 - 0.35 and abs(y) < d / 2 - 0.35
        if inside and all(o is obj or math.hypot(x - o.x, y - o.y) > o.size + ROBOT_RADIUS + 0.1 for o in env.scene.objects):
            return x, y, angle + math.pi + rng.uniform(-0.17, 0.17)
    return None


def contrast_samples(rng: random.Random, env: SimEnv, name: str, out: Path, label_records: list[dict]) -> list[dict]:
    """For every object with a label unique in its room, one near and one approach view, each labelled for it and for
    one other object (sharing its colour or shape when the room has one)."""
    counts = Counter(o.label for o in env.scene.objects)
    unique = [o for o in env.scene.objects if counts[o.label] == 1]
    samples = []
    for i, obj in enumerate(unique):
        others = [o for o in unique if o is not obj]
        if not others:
            continue
        alike = [o for o in others if o.colour == obj.colour or o.shape == obj.shape]
        for where, gap in GAPS.items():
            pose = facing_pose(rng, env, obj, gap)
            if pose is None:
                continue
            env.teleport(*pose)
            view = f"{name}_o{i}_{where}"
            label_records.append(save_view(out, view, env))
            visible = env.visible_objects()  # ray-cast once per view, shared by its two labels
            for j, target in enumerate((obj, rng.choice(alike or others))):
                action = oracle_action(env, target, camera_only=True)
                searching = target not in visible
                instruction = rng.choice(NAV_TEMPLATES).format(target.label)
                samples.append(sample(f"{view}_i{j}", label_records[-1]["image"], nav_prompt(instruction), action, kind="nav", mirror=not searching))
    return samples


def write_contrast(data_dir: str | Path, seed: int, scenes: int, base: str = "balanced.json") -> dict:
    """Write DATA/contrastS.json (the new samples, images beside the dataset's) and DATA/balanced_contrastS.json (`base`
    plus the new samples, S = `seed`). Stops are not repeated here as `balanced` does for trajectories: each stop has
    its own image's non-stop twin, and the pair must weigh alike."""
    out = Path(data_dir)
    base_mix(out, base)
    rng, env, samples, label_records = random.Random(seed), SimEnv(), [], []
    for scene_seed in tqdm(scene_seeds(seed, scenes), desc="contrast"):
        env.reset(seed=scene_seed)
        samples += contrast_samples(rng, env, f"c{scene_seed}", out, label_records)
    env.close()
    return {"scenes": scenes, "seed": seed, "views": len(label_records), **write_round(out, f"contrast{seed}", samples, base, samples, seed)}
