"""Training data from the simulator: LLaVA-format QA and navigation samples, a stage-0 corpus, ShareGPT dialogues.

Every file is consumable unchanged by the training pipeline (`data tokenize`, sft and multimodal datasets).
"""
from __future__ import annotations

import json
import math
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from mobilevlm_agent.agent.actions import action_to_twist
from mobilevlm_agent.errors import ConfigError
from mobilevlm_agent.sim.oracle import oracle_action
from mobilevlm_agent.sim.scene import COLOURS, SHAPES, ObjectSpec
from mobilevlm_agent.sim.world import ROBOT_RADIUS, SimEnv
from mobilevlm_agent.train.datasets import read_records

NAV_TEMPLATES = ("go to the {}", "drive to the {}", "navigate to the {}", "find the {} and stop next to it", "move to the {}")
POPE_SPLITS = ("random", "popular", "adversarial")
LABELS = tuple(f"{c} {s}" for c in COLOURS for s in SHAPES)
HELD_OUT = 1_000_000  # evaluation scene seeds start here; training scene seeds stay below
SCENE_SEED_STRIDE = 100_003  # dataset seed k uses scene seeds k * stride + i
NEAR = 1.0  # metres: "near" targets of the vision stage (where the planner must decide to stop)
# What each visual token of the vision stage learns to tell: the colour and the shape of the object it shows, and
# whether it is near. Factored, not the 32 colour x shape labels: shape is then learned from every colour's examples
# (the joint labels left the shape of held-out objects at chance, 0.24 of 4, after 2b).
VISION_CLASSES = (*COLOURS, *SHAPES, "near")
VISION_GROUPS = {"colour": [VISION_CLASSES.index(c) for c in COLOURS], "shape": [VISION_CLASSES.index(s) for s in SHAPES]}  # one of each per object


def existence_question(label: str) -> str:
    return f"Is there a {label} in the image?"


def colour_question(shape: str) -> str:
    return f"What colour is the {shape}?"


def shape_question(colour: str) -> str:
    return f"What shape is the {colour} object?"


def nav_prompt(instruction: str) -> str:
    """The planner's prompt; the same function builds training samples and the agent's queries.

    It shows no previous actions: with the expert's last four in the prompt, the cloned policy learned to repeat them
    (a turning streak predicts the next turn better than the image does) and turned on the spot past its target.
    """
    return f"Instruction: {instruction}. What is the next action?"


def where(env: SimEnv, obj: ObjectSpec) -> str:
    bearing = math.degrees(env.bearing_to(obj))
    return "on the left" if bearing > 12 else "on the right" if bearing < -12 else "ahead"


def describe(env: SimEnv, visible: list[ObjectSpec]) -> str:
    if not visible:
        return "I see no objects, only the room."
    ordered = sorted(visible, key=lambda o: -env.bearing_to(o))
    return "I see " + ", ".join(f"a {o.label} {where(env, o)}" for o in ordered) + "."


def label_record(env: SimEnv, image: str, mask: str) -> dict:
    """The vision stage's targets for one view: its object mask, and each object's classes (label, and "near")."""
    objects = {}
    for i, obj in enumerate(env.scene.objects):
        classes = [VISION_CLASSES.index(obj.colour), VISION_CLASSES.index(obj.shape)] + ([VISION_CLASSES.index("near")] if env.distance_to(obj) <= NEAR else [])
        objects[str(i + 1)] = classes
    return {"image": image, "mask": mask, "objects": objects}


def pope_negatives(rng: random.Random, visible: list[ObjectSpec], popular: list[str], glimpsed: list[ObjectSpec]) -> dict[str, str]:
    """One absent label per POPE split: random, popular (frequent in the data), adversarial (shares colour or shape).
    Absent means not even a glimpse: a label with a few pixels in view is never asked about."""
    present = {o.label for o in glimpsed}  # glimpsed holds every visible object too
    absent = [label for label in LABELS if label not in present]
    adversarial = [label for label in absent if any(label.split()[0] == o.colour or label.split()[1] == o.shape for o in visible)]
    popular_absent = [label for label in popular if label not in present]
    return {
        "random": rng.choice(absent),
        "popular": popular_absent[0] if popular_absent else rng.choice(absent),
        "adversarial": rng.choice(adversarial) if adversarial else rng.choice(absent),
    }


def qa_samples(rng: random.Random, env: SimEnv, visible: list[ObjectSpec], popular: list[str]) -> list[dict]:
    """(question, answer, kind) about the current view."""
    # a description lists objects left to right, so its mirror (sides swapped, order kept) is true for one object only
    out = [{"q": "Describe the scene.", "a": describe(env, visible), "kind": "describe", "mirror": len(visible) < 2},
           {"q": "How many objects can you see?", "a": str(len(visible)), "kind": "count"}]
    for obj in visible:
        out.append({"q": existence_question(obj.label), "a": "Yes", "kind": "pope", "split": "positive"})
    glimpsed = env.visible_objects(min_pixels=1)  # too small to count as visible, yet there: no question may hinge on them
    for split, label in pope_negatives(rng, visible, popular, glimpsed).items():
        out.append({"q": existence_question(label), "a": "No", "kind": "pope", "split": split})
    shapes, colours = Counter(o.shape for o in glimpsed), Counter(o.colour for o in glimpsed)
    for obj in visible:
        if shapes[obj.shape] == 1:
            out.append({"q": colour_question(obj.shape), "a": obj.colour, "kind": "colour", "object": obj.name})
        if colours[obj.colour] == 1:
            out.append({"q": shape_question(obj.colour), "a": obj.shape, "kind": "shape", "object": obj.name})
    return out


def random_pose(rng: random.Random, env: SimEnv) -> tuple[float, float, float]:
    w, d = env.scene.room
    for _ in range(200):
        x, y = rng.uniform(-w / 2 + 0.4, w / 2 - 0.4), rng.uniform(-d / 2 + 0.4, d / 2 - 0.4)
        if all(math.hypot(x - o.x, y - o.y) > o.size + ROBOT_RADIUS + 0.25 for o in env.scene.objects):
            return x, y, rng.uniform(-math.pi, math.pi)
    return env.scene.robot_start


def scene_seeds(seed: int, scenes: int) -> range:
    """The training scene seeds of dataset seed `seed`: disjoint across seeds and from the held-out eval scenes."""
    first = seed * SCENE_SEED_STRIDE
    if seed < 0 or scenes > SCENE_SEED_STRIDE or first + scenes > HELD_OUT:
        raise ConfigError(f"dataset seed {seed} with {scenes} scenes overlaps other seeds or the held-out eval scenes (>= {HELD_OUT})")
    return range(first, first + scenes)


def view_towards(rng: random.Random, env: SimEnv) -> tuple[float, float, float]:
    """A random pose looking roughly at a random object, so most views contain something."""
    x, y, _ = random_pose(rng, env)
    obj = rng.choice(env.scene.objects)
    return x, y, math.atan2(obj.y - y, obj.x - x) + rng.uniform(-0.6, 0.6)


@dataclass(frozen=True)
class DatasetConfig:
    scenes: int = 20
    seed: int = 0
    views_per_scene: int = 8
    nav_episodes_per_scene: int = 2
    max_nav_steps: int = 60
    control_period: float = 0.5


def write_dataset(out_dir: str | Path, cfg: DatasetConfig = DatasetConfig()) -> dict:
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(exist_ok=True)
    rng = random.Random(cfg.seed)
    env = SimEnv()
    llava: list[dict] = []
    labels: list[dict] = []
    corpus: list[str] = []
    dialogues: list[dict] = []
    popular: list[str] = []
    label_counts: Counter = Counter()
    for scene_seed in tqdm(scene_seeds(cfg.seed, cfg.scenes), desc="sim dataset"):
        env.reset(seed=scene_seed)
        label_counts.update(o.label for o in env.scene.objects)
        popular = [label for label, _ in label_counts.most_common(5)]
        for v in range(cfg.views_per_scene):
            env.teleport(*(view_towards(rng, env) if v % 4 else random_pose(rng, env)))
            labels.append(save_view(out, f"s{scene_seed}_v{v}", env))
            image, visible = labels[-1]["image"], env.visible_objects()
            for i, qa in enumerate(qa_samples(rng, env, visible, popular)):
                llava.append(sample(f"s{scene_seed}_v{v}_q{i}", image, qa["q"], qa["a"], kind=qa["kind"], split=qa.get("split"), mirror=qa.get("mirror", True)))
            corpus.append(describe(env, visible))
            dialogues.append({"id": f"s{scene_seed}_v{v}", "conversations": [
                {"from": "human", "value": f"The robot sees: {describe(env, visible)} How many objects does it see?"}, {"from": "gpt", "value": str(len(visible))}]})
        for e in range(cfg.nav_episodes_per_scene):
            llava += navigation_samples(rng, env, f"s{scene_seed}_n{e}", out, cfg, labels)
    env.close()
    for obj_label in label_counts:
        corpus.append(f"The {obj_label} is in the room. Go to the {obj_label}.")
    (out / "llava.json").write_text(json.dumps(llava))
    (out / "balanced.json").write_text(json.dumps(balanced(llava)))
    # Stage 2a (plain template, no question) only makes sense on captions, as in the paper's caption pretraining.
    (out / "captions.json").write_text(json.dumps([r for r in llava if r["kind"] == "describe"]))
    (out / "labels.json").write_text(json.dumps({"classes": VISION_CLASSES, "groups": VISION_GROUPS, "records": labels}))
    (out / "corpus.txt").write_text("\n".join(corpus) + "\n")
    (out / "sharegpt.json").write_text(json.dumps(dialogues))
    kinds = Counter(r["kind"] for r in llava)
    manifest = {"scenes": cfg.scenes, "seed": cfg.seed, "samples": len(llava), "labelled_images": len(labels), "by_kind": dict(kinds), "images": len(list((out / "images").iterdir())),
                "corpus_lines": len(corpus), "dialogues": len(dialogues)}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def base_mix(out: Path, base: str) -> Path:
    """The mix a new round of samples (DAgger, contrast views) is added to; checked before the round's long rollout."""
    if not (out / base).is_file():
        raise ConfigError(f"{out / base} not found: run `sim dataset --out {out}` first")
    return out / base


def write_round(out: Path, name: str, samples: list[dict], base: str, added: list[dict], seed: int) -> dict:
    """Write OUT/NAME.json (the round's samples) and OUT/balanced_NAME.json (`base` plus `added`, shuffled); returns
    the counts for the round's report."""
    mix = read_records(base_mix(out, base)) + added
    random.Random(seed).shuffle(mix)
    (out / f"{name}.json").write_text(json.dumps(samples))
    (out / f"balanced_{name}.json").write_text(json.dumps(mix))
    labels = Counter(r["conversations"][1]["value"] for r in samples)
    return {"samples": len(samples), "labels": dict(labels), "base": base, "mix": len(mix)}


def balanced(samples: list[dict], seed: int = 0) -> list[dict]:
    """The fine-tuning mix for a small model: as many POPE "No" as "Yes" (3 negatives a view made "No" the marginal
    answer, and a small model answered it whatever the image) and every navigation "stop" four times (it is ~1 step in
    12, and the one the episode's success depends on)."""
    rng = random.Random(seed)
    answer = lambda r: r["conversations"][1]["value"]  # noqa: E731
    yes = [r for r in samples if r["kind"] == "pope" and answer(r) == "Yes"]
    no = [r for r in samples if r["kind"] == "pope" and answer(r) == "No"]
    stops = [r for r in samples if r["kind"] == "nav" and answer(r) == "stop"]
    mix = [r for r in samples if r["kind"] != "pope"] + yes + rng.sample(no, min(len(no), len(yes))) + stops * 3
    rng.shuffle(mix)
    return mix


def navigation_samples(rng: random.Random, env: SimEnv, name: str, out: Path, cfg: DatasetConfig, label_records: list[dict],
                       driver: Callable[[np.ndarray, str], str] | None = None, expert_prob: float = 0.0) -> list[dict]:
    """One rollout from a random start; every step is a (view, instruction) -> camera-only oracle action sample.

    The oracle drives, or (DAgger) `driver(image, instruction)` does, overruled by the oracle with `expert_prob`:
    the labels are always the oracle's, for the views the driver reaches.
    """
    env.teleport(*random_pose(rng, env))
    labels = Counter(o.label for o in env.scene.objects)
    target = rng.choice([o for o in env.scene.objects if labels[o.label] == 1])  # unambiguous; obj0 always is
    instruction = rng.choice(NAV_TEMPLATES).format(target.label)
    samples = []
    for step in range(cfg.max_nav_steps):
        action = oracle_action(env, target, camera_only=True)
        rgb = env.render()  # once: saved, and what the driver sees
        label_records.append(save_view(out, f"{name}_t{step}", env, rgb))
        # the search turn is a convention, not the image's left or right: its mirror image would teach the opposite
        searching = target not in env.visible_objects()
        samples.append(sample(f"{name}_t{step}", label_records[-1]["image"], nav_prompt(instruction), action, kind="nav", mirror=not searching))
        if driver is not None and rng.random() >= expert_prob:
            action = driver(rgb, instruction)
        env.step(action_to_twist(action), cfg.control_period)
        if action == "stop":
            break
    return samples


def save_view(out: Path, name: str, env: SimEnv, rgb: np.ndarray | None = None) -> dict:
    """The camera image (`rgb` when already rendered) and its object mask (PNG, 0 = no object, k = scene object k - 1);
    returns the label record."""
    image, mask = f"images/{name}.png", f"masks/{name}.png"
    cv2.imwrite(str(out / image), cv2.cvtColor(env.render() if rgb is None else rgb, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(out / mask), (env.object_mask() + 1).astype(np.uint8))
    return label_record(env, image, mask)


def sample(sample_id: str, image: str, question: str, answer: str, kind: str, split: str | None = None, mirror: bool = True) -> dict:
    """A LLaVA record; `mirror` False marks one whose mirror image (with left and right swapped) is not a true sample."""
    record = {"id": sample_id, "image": image, "kind": kind,
              "conversations": [{"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": answer}]}
    if split:
        record["split"] = split
    if not mirror:
        record["mirror"] = False
    return record
