"""planner_node: MobileLLaMA on the latest visual tokens. Queries -> streamed answers; plan requests -> grammar actions.

Topics (relative, so a namespace applies):
  agent/query (String)            -> agent/answer_stream (String, JSON chunks {id, seq, delta, done[, finish_reason]})
                                  -> agent/answer (String, the full text)
  agent/plan_request (String JSON {id, instruction, previous}) -> agent/action (String JSON {id, action, scores, ...})
"""
from __future__ import annotations

import sys
import threading
import time
from collections import deque

import torch
from diagnostic_msgs.msg import DiagnosticArray
from sensor_msgs.msg import Image
from std_msgs.msg import String

from mobilevlm_agent.agent.actions import ACTIONS
from mobilevlm_agent.agent.planner import plan
from mobilevlm_agent.chat import ChatSession
from mobilevlm_agent.errors import InputError
from mobilevlm_agent.generate import SamplingParams
from ros_nodes.messages import image_to_tokens, json_from_message, json_message, stamp_seconds, string_from_cdr
from ros_nodes.model_node import ModelNode
from ros_nodes.node_tools import LATEST_QOS, RELIABLE_QOS, STREAM_QOS, Param, diagnostics, run

PARAMS = (
    Param("max_new_tokens", 64, "longest answer, in tokens"),
    Param("temperature", 0.0, "answer sampling temperature (0 = greedy)"),
    Param("max_query_chars", 2000, "longer queries are rejected and counted"),
    Param("max_pending_queries", 4, "queries waiting beyond this are rejected and counted"),
    Param("max_token_age_s", 2.0, "visual tokens older than this (by header stamp) are too stale to plan on"),
    Param("diagnostics_period_s", 1.0, "seconds between /diagnostics messages"),
    Param("verify_stop", True, "a planned stop must agree with the model's own answers to the instruction's goal questions, else the search move is sent (counted as stops_vetoed)"),
    Param("hold_turns", True, "a planned turn straight back after the request's previous turn is sent as that turn again (counted as turns_held)"),
    Param("prefill_image", True, "while idle, run each new frame's visual tokens through the KV cache so a query prefills only its text (one image prefill per new frame)"),
)
# While plan requests keep coming (a goal is running) they bring their own frames at the control rate, and an idle
# prefill would only delay the next one; prefill_image waits this long after the last plan request.
PLANNING_QUIET_S = 1.0


class PlannerNode(ModelNode):
    def __init__(self, shared_model=None, **kwargs) -> None:
        super().__init__("planner_node", PARAMS, shared_model, **kwargs)
        self.jobs = threading.Condition()
        self.queries: deque[tuple[int, str]] = deque()
        self.plan_request: dict | None = None  # only the newest request matters
        self.last_plan_request = -1e9  # time.monotonic() of the last one
        self.tokens: tuple[float, torch.Tensor] | None = None  # (stamp seconds, visual tokens)
        self.session_frame: tuple[float, torch.Tensor] | None = None  # the frame whose tokens the session holds
        self.stopping = False
        self.query_id = 0
        self.stats = {"queries": 0, "answers": 0, "plans": 0, "plans_superseded": 0, "stops_vetoed": 0, "turns_held": 0, "ttft_ms": 0.0, "plan_ms": 0.0,
                      "image_prefills": 0, "image_prefill_ms": 0.0}
        self.worker = threading.Thread(target=self.work_loop, name="planner", daemon=True)

    def create_entities(self) -> None:
        self.session = ChatSession(self.model)
        self.create_subscription(String, "agent/query", self.on_query, RELIABLE_QOS, raw=True)
        self.create_subscription(String, "agent/plan_request", self.on_plan_request, RELIABLE_QOS)
        self.create_subscription(Image, "agent/visual_tokens", self.on_tokens, LATEST_QOS)
        self.stream_pub = self.create_lifecycle_publisher(String, "agent/answer_stream", STREAM_QOS)
        self.answer_pub = self.create_lifecycle_publisher(String, "agent/answer", RELIABLE_QOS)
        self.action_pub = self.create_lifecycle_publisher(String, "agent/action", RELIABLE_QOS)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", RELIABLE_QOS)
        self.create_timer(self.p.diagnostics_period_s, self.publish_diagnostics)
        if not self.worker.is_alive():
            self.worker.start()

    # --- callbacks: validate, enqueue, return at once ---
    def on_tokens(self, msg: Image) -> None:
        try:
            tokens = image_to_tokens(msg)
            expected = (self.model.config.num_visual_tokens, self.model.config.llm.hidden_size)
            if tokens.shape != expected:
                raise InputError(f"visual tokens {tokens.shape} do not fit {self.model.config.name} (expects {expected})")
        except InputError as e:
            self.counters.reject("bad_visual_tokens", e)
            return
        self.tokens = (stamp_seconds(msg.header.stamp), torch.from_numpy(tokens)[None])
        if self.p.prefill_image:
            with self.jobs:
                self.jobs.notify()

    def on_query(self, raw: bytes) -> None:
        if not self.active:
            self.counters.add("inactive")
            return
        try:
            text = string_from_cdr(raw, self.p.max_query_chars).strip()
            if not text:
                raise InputError("empty query")
        except InputError as e:
            self.counters.reject("bad_query", e)
            return
        with self.jobs:
            if len(self.queries) >= self.p.max_pending_queries:
                self.counters.reject("queries_overflow", f"{len(self.queries)} queries already waiting")
                return
            self.query_id += 1
            self.queries.append((self.query_id, text))
            self.stats["queries"] += 1
            self.jobs.notify()

    def on_plan_request(self, msg: String) -> None:
        if not self.active:
            self.counters.add("inactive")
            return
        try:
            request = json_from_message(msg)
            if not isinstance(request.get("instruction"), str) or not request["instruction"].strip():
                raise InputError("plan request needs a non-empty 'instruction' string")
            if request.get("previous") not in (None, *ACTIONS):
                raise InputError(f"plan request 'previous' must be a grammar action or null, got {str(request['previous'])[:40]!r}")
        except InputError as e:
            self.counters.reject("bad_plan_request", e)
            return
        with self.jobs:
            if self.plan_request is not None:
                self.stats["plans_superseded"] += 1
            self.plan_request = request
            self.last_plan_request = time.monotonic()
            self.jobs.notify()

    # --- the worker: the model runs here, one job at a time ---
    def work_loop(self) -> None:
        while True:
            with self.jobs:
                while not (self.queries or self.plan_request or self.stopping or self.frame_to_prefill()):
                    self.jobs.wait(0.5)
                if self.stopping:
                    return
                request, self.plan_request = self.plan_request, None
                query = self.queries.popleft() if request is None and self.queries else None  # planning first: the robot is waiting
            try:
                if request is not None:
                    self.plan(request)
                elif query is not None:
                    self.answer(*query)
                else:
                    self.prefill_frame()
            except Exception as e:  # whatever one job raises, the worker lives on to serve the next
                self.counters.reject("model_error", e)

    def frame_to_prefill(self) -> tuple[float, torch.Tensor] | None:
        latest = self.tokens
        planning = time.monotonic() - self.last_plan_request < PLANNING_QUIET_S
        if self.p.prefill_image and self.active and not planning and latest is not None and latest is not self.session_frame:
            return latest
        return None

    def prefill_frame(self) -> None:
        latest = self.frame_to_prefill()
        if latest is not None:
            self.use_frame(latest)
            self.stats["image_prefill_ms"] = self.session.prefill_image()
            self.stats["image_prefills"] += 1

    def use_frame(self, latest: tuple[float, torch.Tensor] | None) -> None:
        """Give the session this frame's visual tokens; the same frame again keeps its cached positions."""
        if latest is None:
            self.session.image_features = None
        elif latest is not self.session_frame:
            self.session.set_image_features(latest[1])
        self.session_frame = latest

    def fresh_tokens(self) -> tuple[float, torch.Tensor] | None:
        """(stamp, visual tokens) of the newest frame, unless older than max_token_age_s."""
        latest = self.tokens  # one read: the subscription may replace it meanwhile
        if latest is None or self.get_clock().now().nanoseconds * 1e-9 - latest[0] > self.p.max_token_age_s:
            return None
        return latest

    def plan(self, request: dict) -> None:
        latest = self.fresh_tokens()
        if latest is None:
            self.counters.reject("no_fresh_visual_tokens", "plan request skipped: no visual tokens within max_token_age_s")
            return
        image_stamp = latest[0]
        t0 = time.perf_counter()
        self.use_frame(latest)
        previous = request.get("previous") if self.p.hold_turns else None
        decision = plan(self.session, request["instruction"], self.p.verify_stop, previous)
        ms = (time.perf_counter() - t0) * 1000
        self.stats["plans"] += 1
        self.stats["stops_vetoed"] += decision.stop_vetoed
        self.stats["turns_held"] += decision.turn_held
        self.stats["plan_ms"] = ms
        if self.active:
            self.action_pub.publish(json_message({"id": request.get("id"), "action": decision.action, "stop_vetoed": decision.stop_vetoed,
                                                  "turn_held": decision.turn_held,
                                                  "latency_ms": round(ms, 2), "image_stamp": image_stamp,
                                                  "scores": {k: round(v, 3) for k, v in decision.scores.items()}}))

    def answer(self, query_id: int, text: str) -> None:
        latest = self.fresh_tokens()
        if latest is None:  # answer from text alone, and say so
            self.counters.add("answered_without_image")
        self.use_frame(latest)
        self.session.reset()
        params = SamplingParams(max_new_tokens=self.p.max_new_tokens, temperature=self.p.temperature)
        seq = 0
        self.stream_pub.publish(json_message({"id": query_id, "seq": seq, "delta": "", "done": False, "query": text[:200]}))
        try:
            for delta in self.session.stream(text, params=params):
                seq += 1
                self.stream_pub.publish(json_message({"id": query_id, "seq": seq, "delta": delta, "done": False}))
        except InputError as e:  # e.g. the prompt does not fit the context window
            self.counters.reject("bad_query", e)
            self.stream_pub.publish(json_message({"id": query_id, "seq": seq + 1, "delta": "", "done": True, "finish_reason": "error", "error": str(e)}))
            return
        answer = self.session.last_answer
        self.stats["answers"] += 1
        self.stats["ttft_ms"] = answer.timings["ttft_ms"]
        self.stream_pub.publish(json_message({"id": query_id, "seq": seq + 1, "delta": "", "done": True, "finish_reason": answer.finish_reason,
                                              "text": answer.text, "ttft_ms": round(answer.timings["ttft_ms"], 2),
                                              "prefill_tokens": int(answer.timings["prefill_tokens"])}))
        self.answer_pub.publish(String(data=answer.text))

    def publish_diagnostics(self) -> None:
        values = {**self.stats, **self.model_info(), **self.counters.snapshot(), "pending_queries": len(self.queries)}
        self.diag_pub.publish(diagnostics(self, "serving" if self.active else "inactive", values, hardware_id=values["device"]))

    def close(self) -> None:
        with self.jobs:
            self.stopping = True
            self.jobs.notify()


def main(args: list[str] | None = None) -> None:
    run(lambda: [PlannerNode().start()], args if args is not None else sys.argv)


if __name__ == "__main__":
    main()
