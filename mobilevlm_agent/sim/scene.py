"""Scene specs as data (YAML round-trip) and a seeded procedural generator with difficulty knobs."""
from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import dataclass
from pathlib import Path

import yaml

from mobilevlm_agent.errors import ConfigError

COLOURS = {
    "red": (0.85, 0.10, 0.10), "green": (0.10, 0.70, 0.15), "blue": (0.10, 0.25, 0.90), "yellow": (0.95, 0.85, 0.10),
    "purple": (0.55, 0.15, 0.75), "orange": (1.00, 0.50, 0.05), "white": (0.95, 0.95, 0.95), "black": (0.05, 0.05, 0.05),
}
SHAPES = ("cube", "ball", "cylinder", "capsule")


@dataclass(frozen=True)
class ObjectSpec:
    name: str
    shape: str  # one of SHAPES
    colour: str  # one of COLOURS
    size: float  # half-extent / radius in metres
    x: float
    y: float
    yaw: float = 0.0

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ConfigError(f"object {self.name}: unknown shape {self.shape!r}; known: {', '.join(SHAPES)}")
        if self.colour not in COLOURS:
            raise ConfigError(f"object {self.name}: unknown colour {self.colour!r}; known: {', '.join(COLOURS)}")

    @property
    def label(self) -> str:
        return f"{self.colour} {self.shape}"

    @property
    def height(self) -> float:
        """Half-height: objects rest on the floor, so their centre is this high."""
        return self.size * (2.0 if self.shape == "capsule" else 1.0)


@dataclass(frozen=True)
class SceneSpec:
    room: tuple[float, float] = (6.0, 6.0)  # inner width (x) and depth (y), metres, centred on the origin
    wall_height: float = 0.8
    floor_rgb: tuple[float, float, float] = (0.55, 0.50, 0.45)
    wall_rgb: tuple[float, float, float] = (0.80, 0.80, 0.75)
    floor_checker: bool = True  # textured floor (helps see motion); plain when False
    light_intensity: float = 0.8
    light_dir: tuple[float, float, float] = (0.3, 0.2, -1.0)
    objects: tuple[ObjectSpec, ...] = ()
    robot_start: tuple[float, float, float] = (0.0, 0.0, 0.0)  # x, y, yaw
    seed: int = 0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "SceneSpec":
        data = dict(data)
        objects = tuple(ObjectSpec(**o) for o in data.pop("objects", ()))
        known = {f.name for f in dataclasses.fields(cls)}
        if set(data) - known:
            raise ConfigError(f"unknown scene fields {sorted(set(data) - known)}")
        tuples = {k: tuple(v) for k, v in data.items() if isinstance(v, list)}
        return cls(objects=objects, **{**data, **tuples})

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(json_ready(self.to_dict()), sort_keys=False))

    @classmethod
    def load(cls, path: str | Path) -> "SceneSpec":
        return cls.from_dict(yaml.safe_load(Path(path).read_text()))

    def object(self, name: str) -> ObjectSpec:
        return next(o for o in self.objects if o.name == name)

    def wall_boxes(self) -> list[tuple[float, float, float, float]]:
        """The four walls as (centre x, centre y, half x, half y), 10 cm thick, just outside the room."""
        w, d = self.room
        return [(0, d / 2 + 0.05, w / 2 + 0.1, 0.05), (0, -d / 2 - 0.05, w / 2 + 0.1, 0.05),
                (w / 2 + 0.05, 0, 0.05, d / 2 + 0.1), (-w / 2 - 0.05, 0, 0.05, d / 2 + 0.1)]


def json_ready(value):
    if isinstance(value, (tuple, list)):
        return [json_ready(v) for v in value]
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class Difficulty:
    """Knobs of the generator."""

    min_objects: int = 3
    max_objects: int = 6
    same_colour_distractors: int = 1  # objects sharing the target's colour, different shape
    same_shape_distractors: int = 1  # objects sharing the target's shape, different colour
    clutter: float = 0.0  # 0..1: shrinks the spacing between objects
    room_range: tuple[float, float] = (4.5, 6.0)
    size_range: tuple[float, float] = (0.14, 0.24)  # half-extent, metres: big enough to resolve at the demo model's input (chosen at 168 px)


def generate_scene(seed: int, difficulty: Difficulty = Difficulty()) -> SceneSpec:
    """A random room whose first object is a unique (colour, shape) target; the rest follow the knobs."""
    rng = random.Random(seed)
    width, depth = (round(rng.uniform(*difficulty.room_range), 2) for _ in range(2))
    n = rng.randint(difficulty.min_objects, difficulty.max_objects)
    target = (rng.choice(list(COLOURS)), rng.choice(SHAPES))
    kinds = [target]
    for _ in range(min(difficulty.same_colour_distractors, n - len(kinds))):
        kinds.append((target[0], rng.choice([s for s in SHAPES if s != target[1]])))
    for _ in range(min(difficulty.same_shape_distractors, n - len(kinds))):
        kinds.append((rng.choice([c for c in COLOURS if c != target[0]]), target[1]))
    while len(kinds) < n:
        kind = (rng.choice(list(COLOURS)), rng.choice(SHAPES))
        if kind != target:
            kinds.append(kind)
    start = (round(rng.uniform(-width / 4, width / 4), 3), round(rng.uniform(-depth / 4, depth / 4), 3), round(rng.uniform(-math.pi, math.pi), 3))
    spacing = 0.8 - 0.4 * difficulty.clutter  # free gap between object surfaces, metres
    placed: list[ObjectSpec] = []
    for i, (colour, shape) in enumerate(kinds):
        size = round(rng.uniform(*difficulty.size_range), 3)
        for _ in range(500):
            x = rng.uniform(-width / 2 + 0.4, width / 2 - 0.4)
            y = rng.uniform(-depth / 2 + 0.4, depth / 2 - 0.4)
            far_from_robot = math.hypot(x - start[0], y - start[1]) > 1.2
            if far_from_robot and all(math.hypot(x - o.x, y - o.y) > spacing + size + o.size for o in placed):
                placed.append(ObjectSpec(f"obj{i}", shape, colour, size, round(x, 3), round(y, 3), round(rng.uniform(0, math.pi), 3)))
                break
        else:
            if len(placed) >= difficulty.min_objects:
                break  # a crowded room keeps the objects that fit
            raise ConfigError(f"scene seed {seed}: cannot place {n} objects in a {width}x{depth} m room; lower max_objects or clutter")
    return SceneSpec(room=(width, depth), objects=tuple(placed), robot_start=start, seed=seed,
                     light_intensity=round(rng.uniform(0.6, 1.0), 2), floor_checker=rng.random() < 0.7)
