"""Where the onnxruntime vision encoder spends its time: onnxruntime's own profiler, summed per operator type.

    python bench/profile_vision.py [--config MobileVLM_V2-1.7B] [--vision-quant int8] [--threads 2] [--repeats 3] [--pairs 5]

Exports the config's ViT + projector (random weights, as `bench` uses) with our exporter, runs it `--sessions` times
in fresh sessions of this process, and prints each session's median encode and the per-operator split of the last.
`--pairs N` then alternates N times: transformers' CLIPVisionModel in bf16 (its own process, as in bench/compare.py),
then a fresh session of ours, and prints each pair's ratio: on a host whose speed drifts by a third within minutes,
only interleaved pairs compare like with like.
"""
from __future__ import annotations

import argparse
import collections
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="MobileVLM_V2-1.7B")
    ap.add_argument("--vision-quant", default="int8", choices=["none", "int8"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per session after one warm-up")
    ap.add_argument("--sessions", type=int, default=2, help="fresh sessions on the same graph (their speed differs)")
    ap.add_argument("--pairs", type=int, default=0, help="interleaved (transformers bf16, ours) encodes to compare")
    args = ap.parse_args()

    from mobilevlm_agent.export.onnx import export_vision
    from mobilevlm_agent.model.ort import make_session
    from mobilevlm_agent.model.random_init import random_model

    with tempfile.TemporaryDirectory() as tmp:
        model = random_model(args.config)
        size = model.config.vision.image_size
        path = export_vision(model, Path(tmp) / "vision.onnx", args.vision_quant)
        del model
        pixels = {"pixel_values": np.random.default_rng(0).standard_normal((1, 3, size, size), dtype=np.float32)}

        def fresh_session_ms() -> tuple[float, list[float]]:
            session = make_session(path, args.threads)
            session.run(None, pixels)
            runs = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                session.run(None, pixels)
                runs.append((time.perf_counter() - start) * 1000)
            return statistics.median(runs), runs

        for i in range(args.sessions):
            median, runs = fresh_session_ms()
            print(f"session {i + 1}: encode {median:.0f} ms (runs {', '.join(f'{r:.0f}' for r in runs)})")
        if args.pairs:
            from compare import worker  # bench/compare.py, beside this script

            ratios = []
            print(f"\n{'pair':>4s} {'transformers bf16 ms':>21s} {'ours ms':>8s} {'ratio':>6s}")
            for i in range(args.pairs):
                theirs = worker("transformers-vit", args.config, "bf16", str(args.threads))["encode_ms"]
                mine, _ = fresh_session_ms()
                ratios.append(theirs / mine)
                print(f"{i + 1:4d} {theirs:21.0f} {mine:8.0f} {ratios[-1]:5.2f}x", flush=True)
            print(f"median ratio {statistics.median(ratios):.2f}x (min {min(ratios):.2f}x, max {max(ratios):.2f}x); target >= 2x")
        profiled = make_session(path, args.threads, profile_prefix=str(Path(tmp) / "profile"))
        for _ in range(args.repeats + 1):
            profiled.run(None, pixels)
        per_op: collections.Counter[str] = collections.Counter()
        for event in json.loads(Path(profiled.end_profiling()).read_text()):
            if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
                per_op[event["args"]["op_name"]] += event["dur"]
    total = sum(per_op.values())
    print(f"\nprofiled session, per encode ({args.config} ViT {args.vision_quant}, {args.threads} threads):")
    print(f"{'operator':28s} {'ms':>8s} {'share':>7s}")
    for op, micros in per_op.most_common(12):
        print(f"{op:28s} {micros / (args.repeats + 1) / 1000:8.1f} {100 * micros / total:6.1f} %")


if __name__ == "__main__":
    main()
