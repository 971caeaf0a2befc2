"""encoder_node: ViT + LDP on the latest camera frame only -> visual tokens as a 32FC1 Image (tokens x hidden)."""
from __future__ import annotations

import sys
import threading
import time

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from sensor_msgs.msg import CompressedImage, Image

from mobilevlm_agent.errors import InputError
from mobilevlm_agent.preprocess import frame_key
from ros_nodes.messages import compressed_to_rgb, image_to_rgb, tokens_to_image
from ros_nodes.model_node import ModelNode
from ros_nodes.node_tools import LATEST_QOS, RELIABLE_QOS, SENSOR_QOS, Param, diagnostics, run

PARAMS = (
    Param("input_compressed", False, "subscribe to camera/image_raw/compressed (JPEG/PNG) instead of camera/image_raw"),
    Param("diagnostics_period_s", 1.0, "seconds between /diagnostics messages"),
)


class EncoderNode(ModelNode):
    """One inference in flight: the callback only stores the newest frame; a worker encodes whatever is newest."""

    def __init__(self, shared_model=None, **kwargs) -> None:
        super().__init__("encoder_node", PARAMS, shared_model, **kwargs)
        self.pending: tuple[object, np.ndarray] | None = None  # (header, rgb)
        self.wakeup = threading.Condition()
        self.stopping = False
        self.stats = {"frames_in": 0, "encoded": 0, "dropped_frames": 0, "reused": 0, "encode_ms": 0.0}
        self.last_key: str | None = None
        self.last_tokens: np.ndarray | None = None
        self.worker = threading.Thread(target=self.encode_loop, name="encoder", daemon=True)

    def create_entities(self) -> None:
        if self.p.input_compressed:
            self.create_subscription(CompressedImage, "camera/image_raw/compressed", self.on_frame, SENSOR_QOS)
        else:
            self.create_subscription(Image, "camera/image_raw", self.on_frame, SENSOR_QOS)
        self.tokens_pub = self.create_lifecycle_publisher(Image, "agent/visual_tokens", LATEST_QOS)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", RELIABLE_QOS)
        self.create_timer(self.p.diagnostics_period_s, self.publish_diagnostics)
        self.t_start = time.monotonic()
        if not self.worker.is_alive():
            self.worker.start()

    def on_frame(self, msg) -> None:
        if not self.active:
            self.counters.add("inactive")
            return
        try:
            rgb = compressed_to_rgb(msg) if isinstance(msg, CompressedImage) else image_to_rgb(msg)
        except InputError as e:
            self.counters.reject("bad_image", e)
            return
        with self.wakeup:
            self.stats["frames_in"] += 1
            if self.pending is not None:
                self.stats["dropped_frames"] += 1  # replaced before the worker got to it
            self.pending = (msg.header, rgb)
            self.wakeup.notify()

    def encode_loop(self) -> None:
        while True:
            with self.wakeup:
                while self.pending is None and not self.stopping:
                    self.wakeup.wait(0.5)
                if self.stopping:
                    return
                header, rgb = self.pending
                self.pending = None
            try:
                self.publish_tokens(header, rgb)
            except Exception as e:  # a failing frame must not kill the worker
                self.counters.reject("encode_error", e)

    def publish_tokens(self, header, rgb: np.ndarray) -> None:
        key = frame_key(rgb)
        if key == self.last_key and self.last_tokens is not None:
            tokens = self.last_tokens  # visual tokens cached per frame
            self.stats["reused"] += 1
        else:
            t0 = time.perf_counter()
            tokens = self.model.encode_rgb(rgb)[0].float().cpu().numpy()
            ms = (time.perf_counter() - t0) * 1000
            self.stats["encode_ms"] = ms if not self.stats["encoded"] else 0.8 * self.stats["encode_ms"] + 0.2 * ms
            self.last_key, self.last_tokens = key, tokens
        self.stats["encoded"] += 1
        if self.active:
            self.tokens_pub.publish(tokens_to_image(tokens, header))

    def publish_diagnostics(self) -> None:
        elapsed = max(time.monotonic() - self.t_start, 1e-6)
        values = {**self.stats, "fps": self.stats["encoded"] / elapsed, **self.model_info(), **self.counters.snapshot()}
        self.diag_pub.publish(diagnostics(self, "encoding" if self.active else "inactive", values, hardware_id=values["device"]))

    def close(self) -> None:
        with self.wakeup:
            self.stopping = True
            self.wakeup.notify()


def main(args: list[str] | None = None) -> None:
    run(lambda: [EncoderNode().start()], args if args is not None else sys.argv)


if __name__ == "__main__":
    main()
