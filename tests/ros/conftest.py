"""Real rclpy over loopback: node processes with a unique ROS_DOMAIN_ID per test, a probe node in the test, bounded waits."""
from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

rclpy = pytest.importorskip("rclpy", reason="ROS 2 rclpy not installed (pip install -e '.[ros]')")

from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.signals import SignalHandlerOptions  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
_ids = itertools.count(1)


@pytest.fixture
def domain_id(worker_id) -> int:
    """Unique per test and per xdist worker, inside the valid 1..101 range."""
    worker = 0 if worker_id == "master" else int(worker_id.removeprefix("gw"))
    return 1 + (worker * 50 + next(_ids)) % 100


@pytest.fixture
def ros_env(domain_id) -> dict:
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain_id), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", MUJOCO_GL="egl",
               PYTHONUNBUFFERED="1", RCUTILS_LOGGING_BUFFERED_STREAM="0", OMP_NUM_THREADS="1")
    env.pop("ROS_LOCALHOST_ONLY", None)
    return env


class NodeProcess:
    """A node (or any command) in its own process; output to a log file that failures print."""

    def __init__(self, cmd: list[str], env: dict, log: Path) -> None:
        self.log_path = log
        self.log = open(log, "w")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)

    def output(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig=signal.SIGINT, timeout: float = 10.0) -> int:
        if self.alive():
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.log.close()
        return self.proc.returncode


@pytest.fixture
def spawn(ros_env, tmp_path):
    started: list[NodeProcess] = []

    def start(node: str, params: dict | None = None, extra: list[str] | None = None, cmd: list[str] | None = None) -> NodeProcess:
        """A node by name with parameters, or any command (`cmd`) logged under that name."""
        if cmd is not None:
            p = NodeProcess(cmd, ros_env, tmp_path / f"{node}-{len(started)}.log")
            started.append(p)
            return p
        cmd = [sys.executable, "-m", f"ros_nodes.{node}"]
        ros_args = [a for k, v in (params or {}).items() for a in ("-p", f"{k}:={_yaml(v)}")] + (extra or [])
        if ros_args:
            cmd += ["--ros-args", *ros_args]
        p = NodeProcess(cmd, ros_env, tmp_path / f"{node}-{len(started)}.log")
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()
    for p in started:
        print(f"----- {p.log_path.name} -----\n{p.output()[-3000:]}")


def _yaml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class Probe:
    """The test's own rclpy node, in a private context on the test's domain."""

    def __init__(self, domain: int) -> None:
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain, signal_handler_options=SignalHandlerOptions.NO)
        self.node = rclpy.create_node("probe", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.subscriptions: dict = {}
        self.executor.add_node(self.node)

    def collect(self, msg_type, topic: str, qos, raw: bool = False) -> list:
        got: list = []
        self.subscriptions[topic] = self.node.create_subscription(msg_type, topic, lambda m: got.append((time.monotonic(), m)), qos, raw=raw)
        return got

    def matched(self, *topics: str) -> bool:
        """Every named subscription has matched a publisher (so nothing published from now on is missed)."""
        return all(self.subscriptions[t].get_publisher_count() > 0 for t in topics)

    def publisher(self, msg_type, topic: str, qos):
        return self.node.create_publisher(msg_type, topic, qos)

    @staticmethod
    def diagnostic_values(diags: list, node: str) -> dict[str, str]:
        """The key/values of `node`'s newest status among collected /diagnostics messages ({} if none yet)."""
        for _, d in reversed(diags):
            for s in d.status:
                if s.name == f"/{node}":
                    return {kv.key: kv.value for kv in s.values}
        return {}

    def spin_until(self, predicate, timeout: float, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.executor.spin_once(timeout_sec=0.05)
            if predicate():
                return
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")

    def spin_for(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.executor.spin_once(timeout_sec=0.02)

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


@pytest.fixture
def probe(domain_id, ros_env):
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    p = Probe(domain_id)
    yield p
    p.close()


@pytest.fixture(scope="session")
def vlm_dir(tmp_path_factory, tokenizer_path) -> Path:
    """A small random MobileVLM checkpoint (LDPv2, with tokenizer) for node tests that need a model but not a good one."""
    from mobilevlm_agent.model.random_init import random_checkpoint

    out = tmp_path_factory.mktemp("ros-vlm")
    random_checkpoint("tiny-vlm-v2", out, tokenizer=tokenizer_path, seed=0)
    return out
