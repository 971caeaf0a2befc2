"""What every node shares: typed parameter declaration, QoS profiles, diagnostics, bad-input accounting, main()."""
from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Callable

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from std_msgs.msg import Header

SENSOR_QOS = qos_profile_sensor_data  # camera: best effort, keep last 5; matches reliable and best-effort publishers
RELIABLE_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
# an answer's chunks come in bursts faster than a busy reader takes them: keep a whole answer's worth (one chunk a
# token, so up to max_new_tokens + 2), or the reader sees a gap in `seq`
STREAM_QOS = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
LATEST_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
LATCHED_QOS = QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)  # late joiners get the current value


@dataclass(frozen=True)
class Param:
    name: str
    default: Any  # its Python type is the parameter's type
    description: str


def declare_parameters(node: Node, params: tuple[Param, ...]) -> SimpleNamespace:
    """Declare each parameter with its type and description, and return the values in effect."""
    values = {}
    for p in params:
        node.declare_parameter(p.name, p.default, ParameterDescriptor(description=p.description))
        values[p.name] = node.get_parameter(p.name).value
    return SimpleNamespace(**values)


class InputCounters:
    """Counts every message rejected or dropped, by reason, and logs it (throttled); nothing is dropped silently."""

    def __init__(self, node: Node) -> None:
        self.node, self.counts, self.lock = node, Counter(), threading.Lock()

    def reject(self, reason: str, error: Exception | str) -> None:
        with self.lock:
            self.counts[reason] += 1
            n = self.counts[reason]
        self.node.get_logger().warn(f"{reason} #{n}: {error}", throttle_duration_sec=1.0)

    def add(self, reason: str, n: int = 1) -> None:
        with self.lock:
            self.counts[reason] += n

    def snapshot(self) -> dict[str, int]:
        with self.lock:
            return dict(self.counts)


def diagnostics(node: Node, message: str, values: dict[str, Any], level: bytes = DiagnosticStatus.OK, hardware_id: str = "") -> DiagnosticArray:
    status = DiagnosticStatus(level=level, name=f"{node.get_fully_qualified_name()}", message=message, hardware_id=hardware_id,
                              values=[KeyValue(key=k, value=f"{v:.3f}" if isinstance(v, float) else str(v)) for k, v in values.items()])
    return DiagnosticArray(header=Header(stamp=node.get_clock().now().to_msg()), status=[status])


def run(make_nodes: Callable[[], list[Node]], args: list[str] | None = None, threads: int = 1) -> None:
    """rclpy.init, spin until Ctrl-C/SIGTERM or shutdown, then clean up: the body of every node's main()."""
    rclpy.init(args=args)
    nodes: list[Node] = []
    try:
        nodes = make_nodes()
        executor = MultiThreadedExecutor(num_threads=threads) if threads > 1 else SingleThreadedExecutor()
        for node in nodes:
            executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        for node in nodes:
            close = getattr(node, "close", None)
            if close is not None:
                close()
            node.destroy_node()
        rclpy.try_shutdown()
