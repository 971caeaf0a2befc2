"""SimEnv: a MuJoCo room with a planar (x, y, yaw) mobile base, a forward RGB camera and ground-truth queries.

Rendering is headless: set MUJOCO_GL=egl (done here when unset).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from mobilevlm_agent.agent.types import Observation, Odometry, Twist
from mobilevlm_agent.sim.scene import COLOURS, ObjectSpec, SceneSpec, generate_scene

os.environ.setdefault("MUJOCO_GL", "egl")
import mujoco  # noqa: E402

ROBOT_RADIUS = 0.18
PHYSICS_DT = 0.005


@dataclass(frozen=True)
class SimConfig:
    width: int = 320
    height: int = 240
    fovy: float = 60.0  # vertical field of view, degrees
    camera_height: float = 0.35  # metres above the floor
    camera_pitch: float = 0.17  # radians, looking down
    max_linear: float = 0.6  # m/s
    max_angular: float = 1.5  # rad/s
    max_linear_accel: float = 1.5  # m/s^2
    max_angular_accel: float = 4.0  # rad/s^2
    control_dt: float = 0.25  # default step length, seconds
    camera_far: float = 15.0  # metres: the Gazebo camera's far clip plane (beyond any room's diagonal)


def scene_xml(scene: SceneSpec, cfg: SimConfig) -> str:
    w, d = scene.room
    h = scene.wall_height
    floor = scene.floor_rgb
    texture = (f'<texture name="floor" type="2d" builtin="checker" rgb1="{floor[0]} {floor[1]} {floor[2]}" '
               f'rgb2="{floor[0] * 0.8:.3f} {floor[1] * 0.8:.3f} {floor[2] * 0.8:.3f}" width="256" height="256"/>'
               '<material name="floor" texture="floor" texrepeat="6 6"/>') if scene.floor_checker else \
              f'<material name="floor" rgba="{floor[0]} {floor[1]} {floor[2]} 1"/>'
    walls = "".join(
        f'<geom name="wall{i}" type="box" pos="{x} {y} {h / 2}" size="{sx} {sy} {h / 2}" rgba="{scene.wall_rgb[0]} {scene.wall_rgb[1]} {scene.wall_rgb[2]} 1"/>'
        for i, (x, y, sx, sy) in enumerate(scene.wall_boxes()))
    objects = "".join(object_xml(o) for o in scene.objects)
    lx, ly, lz = scene.light_dir
    li = scene.light_intensity
    x0, y0, yaw0 = scene.robot_start
    return f"""
<mujoco model="room">
  <option timestep="{PHYSICS_DT}" gravity="0 0 -9.81" integrator="implicitfast"/>
  <visual><global offwidth="{max(cfg.width, 640)}" offheight="{max(cfg.height, 480)}"/><headlight ambient="0.35 0.35 0.35" diffuse="0.2 0.2 0.2"/></visual>
  <asset>{texture}</asset>
  <worldbody>
    <light directional="true" dir="{lx} {ly} {lz}" diffuse="{li} {li} {li}" castshadow="false"/>
    <geom name="floor" type="plane" size="{w / 2 + 1} {d / 2 + 1} 0.1" material="floor" contype="0" conaffinity="0"/>
    {walls}
    {objects}
    <body name="robot" pos="0 0 0.1">
      <joint name="x" type="slide" axis="1 0 0" ref="0" damping="0"/>
      <joint name="y" type="slide" axis="0 1 0" damping="0"/>
      <joint name="yaw" type="hinge" axis="0 0 1" damping="0"/>
      <geom name="robot" type="cylinder" size="{ROBOT_RADIUS} 0.08" rgba="0.2 0.2 0.25 1" mass="10"/>
      <geom name="robot_nose" type="box" pos="{ROBOT_RADIUS - 0.03} 0 0.09" size="0.03 0.05 0.02" rgba="0.9 0.9 0.9 1" contype="0" conaffinity="0" mass="0.1"/>
      <camera name="front" pos="{ROBOT_RADIUS - 0.02} 0 {cfg.camera_height - 0.1:.3f}" xyaxes="0 -1 0 {math.sin(cfg.camera_pitch):.4f} 0 {math.cos(cfg.camera_pitch):.4f}" fovy="{cfg.fovy}"/>
    </body>
  </worldbody>
  <actuator>
    <velocity name="vx" joint="x" kv="4000" ctrlrange="-5 5" ctrllimited="true"/>
    <velocity name="vy" joint="y" kv="4000" ctrlrange="-5 5" ctrllimited="true"/>
    <velocity name="wz" joint="yaw" kv="200" ctrlrange="-10 10" ctrllimited="true"/>
  </actuator>
  <keyframe><key qpos="{x0} {y0} {yaw0}"/></keyframe>
</mujoco>"""


def object_xml(o: ObjectSpec) -> str:
    r, g, b = COLOURS[o.colour]
    size = {"cube": f"{o.size} {o.size} {o.size}", "ball": f"{o.size}", "cylinder": f"{o.size} {o.size}", "capsule": f"{o.size * 0.8} {o.size}"}[o.shape]
    kind = {"cube": "box", "ball": "sphere", "cylinder": "cylinder", "capsule": "capsule"}[o.shape]
    return (f'<body name="{o.name}" pos="{o.x} {o.y} {o.height}" euler="0 0 {o.yaw}">'
            f'<geom name="{o.name}" type="{kind}" size="{size}" rgba="{r} {g} {b} 1"/></body>')


def wrap_angle(a: float) -> float:
    return (a + math.pi) % (2 * math.pi) - math.pi


def approach(current: float, target: float, max_delta: float) -> float:
    return current + max(-max_delta, min(max_delta, target - current))


class SimEnv:
    """reset(seed) -> Observation; step(twist, dt) -> Observation. Deterministic for a seed."""

    def __init__(self, config: SimConfig = SimConfig()) -> None:
        self.config = config
        self.scene: SceneSpec | None = None
        self.collisions = 0  # control steps in which the robot touched a wall or an object

    # -- lifecycle -----------------------------------------------------------------------------------------------
    def reset(self, seed: int | None = None, scene: SceneSpec | None = None) -> Observation:
        self.scene = scene if scene is not None else generate_scene(seed or 0)
        self.model = mujoco.MjModel.from_xml_string(scene_xml(self.scene, self.config))
        self.data = mujoco.MjData(self.model)
        mujoco.mj_resetDataKeyframe(self.model, self.data, 0)
        mujoco.mj_forward(self.model, self.data)
        self.renderer = mujoco.Renderer(self.model, self.config.height, self.config.width)
        self.robot_geom = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_GEOM, "robot")
        self.robot_body = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_BODY, "robot")
        self.camera = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_CAMERA, "front")
        self.object_geoms = {o.name: mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_GEOM, o.name) for o in self.scene.objects}
        self.geom_to_object = np.full(self.model.ngeom + 1, -1, dtype=np.int16)  # index ngeom stands for "no geom" (-1)
        for i, o in enumerate(self.scene.objects):
            self.geom_to_object[self.object_geoms[o.name]] = i
        self._mask_state, self._mask = None, None  # object_mask of the last rendered state
        self.command = Twist()  # the velocity actually applied, after acceleration limits
        self.collisions = 0
        self.last_collided = False
        return self.observe()

    def close(self) -> None:
        if getattr(self, "renderer", None) is not None:
            self.renderer.close()
            self.renderer = None

    # -- motion --------------------------------------------------------------------------------------------------
    def step(self, twist: Twist, dt: float | None = None) -> Observation:
        """Apply a body-frame twist for dt seconds (speed and acceleration limited, collisions resolved)."""
        self.advance(twist, dt)
        return self.observe()

    def advance(self, twist: Twist, dt: float | None = None) -> None:
        """`step` without rendering: for callers that render at their own (camera) rate."""
        cfg = self.config
        dt = cfg.control_dt if dt is None else dt
        target = Twist(
            max(-cfg.max_linear, min(cfg.max_linear, twist.vx)),
            max(-cfg.max_linear, min(cfg.max_linear, twist.vy)),
            max(-cfg.max_angular, min(cfg.max_angular, twist.wz)),
        )
        collided = False
        for _ in range(max(1, round(dt / PHYSICS_DT))):
            c = self.command
            self.command = Twist(
                approach(c.vx, target.vx, cfg.max_linear_accel * PHYSICS_DT),
                approach(c.vy, target.vy, cfg.max_linear_accel * PHYSICS_DT),
                approach(c.wz, target.wz, cfg.max_angular_accel * PHYSICS_DT),
            )
            yaw = self.data.qpos[2]
            self.data.ctrl[:] = (
                self.command.vx * math.cos(yaw) - self.command.vy * math.sin(yaw),
                self.command.vx * math.sin(yaw) + self.command.vy * math.cos(yaw),
                self.command.wz,
            )
            mujoco.mj_step(self.model, self.data)
            collided |= self.touching()
        self.last_collided = collided
        self.collisions += collided

    def touching(self) -> bool:
        for i in range(self.data.ncon):
            con = self.data.contact[i]
            if self.robot_geom in (con.geom1, con.geom2) and con.dist < 0:
                return True
        return False

    def teleport(self, x: float, y: float, yaw: float) -> Observation:
        """Place the robot at rest at a pose (for collecting views); counts as a fresh start for collisions."""
        self.data.qpos[:3] = (x, y, yaw)
        self.data.qvel[:] = 0.0
        self.command = Twist()
        self.collisions = 0
        mujoco.mj_forward(self.model, self.data)
        return self.observe()

    # -- observation ---------------------------------------------------------------------------------------------
    def odometry(self) -> Odometry:
        x, y, yaw = (float(v) for v in self.data.qpos[:3])
        vxw, vyw, wz = (float(v) for v in self.data.qvel[:3])
        return Odometry(x, y, wrap_angle(yaw), vxw * math.cos(yaw) + vyw * math.sin(yaw), -vxw * math.sin(yaw) + vyw * math.cos(yaw), wz)

    def render(self) -> np.ndarray:
        self.renderer.update_scene(self.data, camera=self.camera)
        return self.renderer.render().copy()

    def object_mask(self) -> np.ndarray:
        """Per pixel of the camera image, the index of the scene object seen there, or -1: dense ground truth.

        Read-only, and rendered once per simulator state: a dataset view asks for it three times (mask file, visible,
        glimpsed objects)."""
        state = (self.data.time, self.data.qpos.tobytes())
        if state != self._mask_state:
            self._mask, self._mask_state = self._render_object_mask(), state
        return self._mask

    def _render_object_mask(self) -> np.ndarray:
        self.renderer.enable_segmentation_rendering()
        try:
            self.renderer.update_scene(self.data, camera=self.camera)
            seg = self.renderer.render()
        finally:
            self.renderer.disable_segmentation_rendering()
        ids = np.where(seg[..., 1] == int(mujoco.mjtObj.mjOBJ_GEOM), seg[..., 0], -1)
        mask = self.geom_to_object[ids]  # -1 indexes the last entry, which is -1
        mask.flags.writeable = False
        return mask

    def observe(self) -> Observation:
        return Observation(self.render(), self.odometry(), float(self.data.time))

    # -- ground truth --------------------------------------------------------------------------------------------
    def distance_to(self, obj: ObjectSpec) -> float:
        """Robot centre to the object's surface (approximated by its footprint radius)."""
        o = self.odometry()
        return math.hypot(obj.x - o.x, obj.y - o.y) - obj.size - ROBOT_RADIUS

    def bearing_to(self, obj: ObjectSpec) -> float:
        """Angle from the robot's heading to the object, radians, counter-clockwise positive."""
        o = self.odometry()
        return wrap_angle(math.atan2(obj.y - o.y, obj.x - o.x) - o.yaw)

    def visible_objects(self, min_pixels: int | None = None) -> list[ObjectSpec]:
        """Objects covering at least `min_pixels` pixels of the camera image (default: 1/2000 of it, ~38 px at 320x240).

        The segmentation render is the exact frustum and occlusion test: rays to a few points of each object missed
        objects whose side showed past an occluder, and those became wrong "No" answers in the data.
        """
        assert self.scene is not None
        if min_pixels is None:
            min_pixels = max(1, self.config.width * self.config.height // 2000)
        counts = self.object_pixels()
        return [obj for obj in self.scene.objects if counts[obj.name] >= min_pixels]

    def object_pixels(self) -> dict[str, int]:
        """How many camera pixels each scene object covers now (0 when out of view or hidden), by object name."""
        assert self.scene is not None
        counts = np.bincount(self.object_mask().ravel() + 1, minlength=len(self.scene.objects) + 1)[1:]
        return {obj.name: int(n) for obj, n in zip(self.scene.objects, counts)}

    def nav_success(self, obj: ObjectSpec) -> bool:
        """Within 0.6 m of the target, facing it (within 30 degrees), stopped, and never collided."""
        o = self.odometry()
        stopped = math.hypot(o.vx, o.vy) < 0.05 and abs(o.wz) < 0.1
        return self.distance_to(obj) <= 0.6 and abs(self.bearing_to(obj)) <= math.radians(30) and stopped and self.collisions == 0
