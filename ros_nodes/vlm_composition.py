"""The encoder and planner in one process, sharing one model in memory, on a multi-threaded executor."""
from __future__ import annotations

import sys

from ros_nodes.encoder_node import EncoderNode
from ros_nodes.node_tools import run
from ros_nodes.planner_node import PlannerNode


def make_nodes() -> list:
    encoder = EncoderNode().start()
    if encoder.model is None:
        raise SystemExit("encoder_node could not load its model (see the log above)")
    planner = PlannerNode(shared_model=encoder.model).start()  # the planner's own `model` parameter is ignored
    return [encoder, planner]


def main(args: list[str] | None = None) -> None:
    run(make_nodes, args if args is not None else sys.argv, threads=4)


if __name__ == "__main__":
    main()
