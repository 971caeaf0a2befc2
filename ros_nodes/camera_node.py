"""camera_node: an OpenCV device, a video file or a folder of images -> sensor_msgs/Image at a set rate and size."""
from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
from rclpy.node import Node
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from ros_nodes.messages import rgb_to_compressed, rgb_to_image
from ros_nodes.node_tools import SENSOR_QOS, InputCounters, Param, declare_parameters, run

PARAMS = (
    Param("source", "0", "camera device index or path (/dev/video0), a video file, or a folder of images"),
    Param("rate_hz", 10.0, "frames published per second"),
    Param("width", 320, "output width in pixels (0 keeps the source's)"),
    Param("height", 240, "output height in pixels (0 keeps the source's)"),
    Param("frame_id", "camera_optical_frame", "header.frame_id of every image (REP-103 optical frame)"),
    Param("loop", True, "restart a video file or image folder at its end"),
    Param("compressed", False, "publish JPEG sensor_msgs/CompressedImage on image_raw/compressed instead of raw images"),
)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}


class FrameSource:
    """Frames as RGB arrays from a device, a video or a folder; None when a non-looping source ends."""

    def __init__(self, source: str, loop: bool) -> None:
        self.loop, self.files, self.index, self.capture = loop, [], 0, None
        path = Path(source)
        if path.is_dir():
            self.files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not self.files:
                raise FileNotFoundError(f"camera source folder {source} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        else:
            device = int(source) if source.isdigit() else source
            if isinstance(device, str) and not device.startswith("/dev/") and not path.is_file():
                raise FileNotFoundError(f"camera source {source!r} is not a device, a video file or an image folder")
            self.capture = cv2.VideoCapture(device)
            if not self.capture.isOpened():
                raise OSError(f"cannot open camera source {source!r}")

    def read(self) -> np.ndarray | None:
        if self.capture is None:
            if self.index >= len(self.files):
                if not self.loop:
                    return None
                self.index = 0
            bgr = cv2.imread(str(self.files[self.index]), cv2.IMREAD_COLOR)
            self.index += 1
        else:
            ok, bgr = self.capture.read()
            if not ok and self.loop:
                self.capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
                ok, bgr = self.capture.read()
            bgr = bgr if ok else None
        return None if bgr is None else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def close(self) -> None:
        if self.capture is not None:
            self.capture.release()


class CameraNode(Node):
    def __init__(self, **kwargs) -> None:
        super().__init__("camera_node", **kwargs)
        self.p = declare_parameters(self, PARAMS)
        self.source = FrameSource(self.p.source, self.p.loop)
        self.counters = InputCounters(self)
        if self.p.compressed:
            self.publisher = self.create_publisher(CompressedImage, "camera/image_raw/compressed", SENSOR_QOS)
        else:
            self.publisher = self.create_publisher(Image, "camera/image_raw", SENSOR_QOS)
        self.published = 0
        self.timer = self.create_timer(1.0 / self.p.rate_hz, self.tick)
        self.get_logger().info(f"camera {self.p.source!r} at {self.p.rate_hz} Hz -> {self.publisher.topic_name}")

    def tick(self) -> None:
        rgb = self.source.read()
        if rgb is None:
            self.get_logger().info(f"camera source ended after {self.published} frames", once=True)
            return
        if self.p.width and self.p.height and (rgb.shape[1], rgb.shape[0]) != (self.p.width, self.p.height):
            rgb = cv2.resize(rgb, (self.p.width, self.p.height), interpolation=cv2.INTER_AREA)
        header = Header(stamp=self.get_clock().now().to_msg(), frame_id=self.p.frame_id)
        self.publisher.publish(rgb_to_compressed(rgb, header) if self.p.compressed else rgb_to_image(rgb, header))
        self.published += 1

    def close(self) -> None:
        self.source.close()


def main(args: list[str] | None = None) -> None:
    run(lambda: [CameraNode()], args if args is not None else sys.argv)


if __name__ == "__main__":
    main()
