"""The one place that converts between ROS messages and the library's types. Every decoder validates and raises InputError."""
from __future__ import annotations

import json
import math

import cv2
import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Twist as TwistMsg
from geometry_msgs.msg import TwistStamped
from nav_msgs.msg import Odometry as OdometryMsg
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header, String

from mobilevlm_agent.agent.types import Odometry, Twist
from mobilevlm_agent.errors import InputError

# encoding -> (channels, how to get RGB); the set vla_ros2 also accepts, plus mono8
COLOUR_ENCODINGS = {
    "rgb8": (3, None),
    "bgr8": (3, cv2.COLOR_BGR2RGB),
    "rgba8": (4, cv2.COLOR_RGBA2RGB),
    "bgra8": (4, cv2.COLOR_BGRA2RGB),
    "mono8": (1, cv2.COLOR_GRAY2RGB),
}
TOKENS_ENCODING = "32FC1"


def image_to_rgb(msg: Image) -> np.ndarray:
    """sensor_msgs/Image -> RGB uint8 [H, W, 3] (a copy). Raises InputError on anything malformed."""
    if msg.encoding not in COLOUR_ENCODINGS:
        raise InputError(f"unsupported image encoding {msg.encoding!r}; supported: {', '.join(COLOUR_ENCODINGS)}")
    channels, conversion = COLOUR_ENCODINGS[msg.encoding]
    data = _checked_rows(msg, channels * 1)
    rgb = data[:, : msg.width * channels].reshape(msg.height, msg.width, channels)
    return np.ascontiguousarray(rgb) if conversion is None else cv2.cvtColor(rgb, conversion)


def compressed_to_rgb(msg: CompressedImage) -> np.ndarray:
    buffer = np.frombuffer(bytes(msg.data), np.uint8)
    bgr = cv2.imdecode(buffer, cv2.IMREAD_COLOR) if buffer.size else None
    if bgr is None:
        raise InputError(f"compressed image ({msg.format!r}, {buffer.size} bytes) could not be decoded")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def rgb_to_image(rgb: np.ndarray, header: Header) -> Image:
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise InputError(f"expected RGB uint8 [H, W, 3], got {rgb.dtype} {rgb.shape}")
    h, w, _ = rgb.shape
    return Image(header=header, height=h, width=w, encoding="rgb8", is_bigendian=0, step=w * 3, data=np.ascontiguousarray(rgb).tobytes())


def rgb_to_compressed(rgb: np.ndarray, header: Header, quality: int = 90) -> CompressedImage:
    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise InputError("JPEG encoding failed")
    return CompressedImage(header=header, format="rgb8; jpeg compressed bgr8", data=jpeg.tobytes())


def tokens_to_image(tokens: np.ndarray, header: Header) -> Image:
    """Visual tokens [N, hidden] float32 -> a 32FC1 Image (height = tokens, width = hidden)."""
    tokens = np.ascontiguousarray(tokens, dtype=np.float32)
    if tokens.ndim != 2:
        raise InputError(f"visual tokens must be [tokens, hidden], got shape {tokens.shape}")
    n, hidden = tokens.shape
    return Image(header=header, height=n, width=hidden, encoding=TOKENS_ENCODING, is_bigendian=int(np.little_endian is False),
                 step=hidden * 4, data=tokens.tobytes())


def image_to_tokens(msg: Image) -> np.ndarray:
    if msg.encoding != TOKENS_ENCODING:
        raise InputError(f"visual tokens must be encoded {TOKENS_ENCODING}, got {msg.encoding!r}")
    rows = _checked_rows(msg, 4)
    dtype = np.dtype(">f4" if msg.is_bigendian else "<f4")
    tokens = rows[:, : msg.width * 4].copy().view(dtype).astype(np.float32).reshape(msg.height, msg.width)
    if not np.isfinite(tokens).all():
        raise InputError("visual tokens contain NaN or infinity")
    return tokens


def _checked_rows(msg: Image, bytes_per_pixel: int) -> np.ndarray:
    """The data as [height, step] bytes, after checking the sizes agree with each other."""
    if msg.height == 0 or msg.width == 0:
        raise InputError(f"empty image ({msg.width}x{msg.height})")
    if msg.step < msg.width * bytes_per_pixel:
        raise InputError(f"step {msg.step} is smaller than width {msg.width} x {bytes_per_pixel} bytes ({msg.encoding})")
    data = np.frombuffer(msg.data, np.uint8)
    if data.size != msg.step * msg.height:
        raise InputError(f"image data has {data.size} bytes, but step {msg.step} x height {msg.height} = {msg.step * msg.height}")
    return data.reshape(msg.height, msg.step)


def twist_message(twist: Twist, stamped: bool, header: Header) -> TwistStamped | TwistMsg:
    msg = TwistMsg()
    msg.linear.x, msg.linear.y, msg.angular.z = twist.vx, twist.vy, twist.wz
    return TwistStamped(header=header, twist=msg) if stamped else msg


def twist_from_message(msg: TwistStamped | TwistMsg) -> Twist:
    inner = msg.twist if isinstance(msg, TwistStamped) else msg
    return Twist(inner.linear.x, inner.linear.y, inner.angular.z)  # Twist validates finiteness


def odometry_message(odom: Odometry, header: Header, child_frame_id: str) -> OdometryMsg:
    msg = OdometryMsg(header=header, child_frame_id=child_frame_id)
    msg.pose.pose.position.x, msg.pose.pose.position.y = odom.x, odom.y
    msg.pose.pose.orientation.z, msg.pose.pose.orientation.w = math.sin(odom.yaw / 2), math.cos(odom.yaw / 2)
    msg.twist.twist.linear.x, msg.twist.twist.linear.y, msg.twist.twist.angular.z = odom.vx, odom.vy, odom.wz
    return msg


def stamp_seconds(stamp: Time) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


def json_message(payload: dict) -> String:
    return String(data=json.dumps(payload, separators=(",", ":")))


def json_from_message(msg: String, max_bytes: int = 65536) -> dict:
    if len(msg.data) > max_bytes:
        raise InputError(f"JSON message of {len(msg.data)} characters exceeds the {max_bytes} limit")
    try:
        payload = json.loads(msg.data)
    except ValueError as e:
        raise InputError(f"not JSON: {msg.data[:80]!r}") from e
    if not isinstance(payload, dict):
        raise InputError(f"expected a JSON object, got {type(payload).__name__}")
    return payload


def string_from_cdr(raw: bytes, max_chars: int) -> str:
    """A serialized std_msgs/String -> its text, strictly: rclpy would silently replace invalid UTF-8 with U+FFFD."""
    if len(raw) < 9 or raw[0] != 0 or raw[1] not in (0, 1):
        raise InputError(f"not a CDR-encoded std_msgs/String ({len(raw)} bytes)")
    length = int.from_bytes(raw[4:8], "little" if raw[1] == 1 else "big")
    if length < 1 or 8 + length > len(raw) or raw[8 + length - 1] != 0:
        raise InputError(f"truncated or malformed string: declared {length} bytes, message has {len(raw) - 8}")
    if length - 1 > 4 * max_chars:
        raise InputError(f"text of {length - 1} bytes exceeds the {max_chars}-character limit")
    try:
        text = raw[8 : 8 + length - 1].decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"text is not valid UTF-8 (byte {e.start}: {raw[8 + e.start:8 + e.start + 4]!r})") from e
    if len(text) > max_chars:
        raise InputError(f"text of {len(text)} characters exceeds the {max_chars}-character limit")
    return text
