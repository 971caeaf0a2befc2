"""agent_node: the perception -> reasoning -> planning loop as a goal state machine.

agent/instruction (latched: a late joiner gets the current goal) starts a goal; an empty instruction or "cancel"
ends it. At control_hz the node asks the planner for the next action on the latest view, re-asks when an
answer is late (replanning), and ends the goal when the planner says stop or on timeout. Velocities are the
safety_node's business; at a timeout or cancel this node sends a stop action so the base halts at once.
"""
from __future__ import annotations

import sys
import time

from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from std_msgs.msg import String

from mobilevlm_agent.agent.actions import ACTIONS
from mobilevlm_agent.errors import InputError
from ros_nodes.messages import json_from_message, json_message
from ros_nodes.node_tools import LATCHED_QOS, RELIABLE_QOS, InputCounters, Param, declare_parameters, diagnostics, run

PARAMS = (
    Param("control_hz", 2.0, "planning decisions per second while a goal runs"),
    Param("max_steps", 120, "a goal times out after this many decisions"),
    Param("goal_timeout_s", 120.0, "a goal times out after this many seconds"),
    Param("replan_after_s", 1.5, "re-send the plan request when no action answered it within this time"),
    Param("max_instruction_chars", 500, "longer instructions are rejected and counted"),
)
CANCEL_WORDS = {"", "cancel", "stop", "abort"}


class AgentNode(Node):
    def __init__(self, **kwargs) -> None:
        super().__init__("agent_node", **kwargs)
        self.p = declare_parameters(self, PARAMS)
        self.counters = InputCounters(self)
        self.goal_id, self.request_id = 0, 0
        self.instruction, self.status, self.history = "", "idle", []
        self.goal_start = 0.0
        self.outstanding: tuple[int, float] | None = None  # (request id, sent at)
        self.stats = {"decisions": 0, "replans": 0, "late_actions": 0, "decision_ms": 0.0, "decisions_per_s": 0.0}
        self.request_pub = self.create_publisher(String, "agent/plan_request", RELIABLE_QOS)
        self.action_pub = self.create_publisher(String, "agent/action", RELIABLE_QOS)
        self.status_pub = self.create_publisher(String, "agent/status", LATCHED_QOS)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", RELIABLE_QOS)
        self.create_subscription(String, "agent/instruction", self.on_instruction, LATCHED_QOS)
        self.create_subscription(String, "agent/action", self.on_action, RELIABLE_QOS)
        self.create_timer(1.0 / self.p.control_hz, self.tick)
        self.create_timer(1.0, self.publish_status)

    def now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def on_instruction(self, msg: String) -> None:
        text = msg.data.strip()
        if len(text) > self.p.max_instruction_chars or "\ufffd" in text:
            self.counters.reject("bad_instruction", f"instruction of {len(text)} characters (or invalid UTF-8) rejected")
            return
        if text.lower() in CANCEL_WORDS:
            if self.status == "running":
                self.finish("cancelled")
            return
        self.goal_id += 1
        self.instruction, self.status, self.history = text, "running", []
        self.goal_start, self.outstanding = self.now(), None
        self.get_logger().info(f"goal {self.goal_id}: {text!r}")
        self.publish_status()

    def tick(self) -> None:
        if self.status != "running":
            return
        now = self.now()
        if len(self.history) >= self.p.max_steps or now - self.goal_start > self.p.goal_timeout_s:
            self.finish("timeout")
            return
        if self.outstanding is not None:
            if now - self.outstanding[1] < self.p.replan_after_s:
                return
            self.stats["replans"] += 1
        self.request_id += 1
        self.outstanding = (self.request_id, now)
        previous = self.history[-1] if self.history else None  # the planner must not turn straight back (see plan())
        self.request_pub.publish(json_message({"id": self.request_id, "goal": self.goal_id, "instruction": self.instruction, "previous": previous}))

    def on_action(self, msg: String) -> None:
        try:
            reply = json_from_message(msg)
        except InputError as e:
            self.counters.reject("bad_action", e)
            return
        if reply.get("source") == "agent_node":
            return  # our own stop
        if self.outstanding is None or reply.get("id") != self.outstanding[0]:
            self.stats["late_actions"] += 1  # answers a request we already gave up on
            return
        action = reply.get("action")
        if action not in ACTIONS:
            self.counters.reject("bad_action", f"{action!r} is not in the grammar")
            return
        ms = (self.now() - self.outstanding[1]) * 1000
        self.outstanding = None
        self.history.append(action)
        self.stats["decisions"] += 1
        self.stats["decision_ms"] = ms
        elapsed = max(self.now() - self.goal_start, 1e-6)
        self.stats["decisions_per_s"] = len(self.history) / elapsed
        if action == "stop":
            self.finish("done")

    def finish(self, status: str) -> None:
        self.status, self.outstanding = status, None
        if status != "done":  # the planner did not stop the base itself
            self.action_pub.publish(json_message({"action": "stop", "source": "agent_node", "id": None}))
        self.get_logger().info(f"goal {self.goal_id} {status} after {len(self.history)} decisions")
        self.publish_status()

    def publish_status(self) -> None:
        status = {"goal": self.goal_id, "instruction": self.instruction, "status": self.status, "steps": len(self.history),
                  "history": self.history[-8:], "stamp": time.time(), **self.stats, "rejected": self.counters.snapshot()}
        self.status_pub.publish(json_message(status))
        self.diag_pub.publish(diagnostics(self, self.status, {k: v for k, v in status.items() if k not in ("history", "rejected")}))


def main(args: list[str] | None = None) -> None:
    run(lambda: [AgentNode()], args if args is not None else sys.argv)


if __name__ == "__main__":
    main()
