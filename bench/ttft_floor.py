"""How low the time to first token can go on this CPU: the matmuls of an image + question alone, at the speed the
same kernels reach on the same shapes in isolation.

    python bench/ttft_floor.py [--config MobileVLM_V2-1.7B] [--threads 2] [--prompt-tokens 30] [--group-size 128] [--export DIR]

A cold TTFT runs the ViT up to its selected layer and the projector on one image, then prefills the visual tokens and
the question through the decoder. This counts their multiply-accumulates per matmul shape, times one-node onnxruntime
graphs of the kernels our int4 + int8 export uses on exactly those shapes (DynamicQuantizeMatMul for the ViT and the
projector, MatMulNBits int4 at accuracy level 4 for the decoder, fp32 MatMul for the ViT's attention), and prints the
sum: the TTFT if nothing but these matmuls ran, beside the 1,000 ms target. torch's bf16 matmul on the same ViT shapes
is timed too (the other kernel a user could pick). With `--export DIR` (an `export onnx` output of the same config)
the real TTFT is measured in the same run, so the floor and the measurement sit side by side.
"""
from __future__ import annotations

import argparse
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

TARGET_MS = 1000.0  # issue 6: image + 30-token question, MobileVLM 1.7B dims, 2 cores


@dataclass
class MatmulShape:
    part: str  # vision | projector | attention | decoder
    m: int
    k: int
    n: int
    count: int  # how many times one TTFT runs it
    batch: int = 1  # attention: one matmul per head

    @property
    def macs(self) -> int:
        return self.batch * self.m * self.k * self.n * self.count


def ttft_matmuls(config, prompt_tokens: int) -> list[MatmulShape]:
    """Every matmul of a cold TTFT; what is left out (norms, softmax, activations, the decoder's attention over < 200
    positions) is a few per cent of the multiply-accumulates."""
    v, llm = config.vision, config.llm
    grid = v.image_size // v.patch_size
    tokens = grid * grid + 1  # + the class token
    layers = v.num_hidden_layers + config.vision_select_layer + 1 if config.vision_select_layer < 0 else config.vision_select_layer
    head_dim = v.hidden_size // v.num_attention_heads
    positions = config.num_visual_tokens + prompt_tokens
    kv = llm.num_key_value_heads * llm.head_dim
    return [
        MatmulShape("vision", grid * grid, 3 * v.patch_size**2, v.hidden_size, 1),  # patch embedding
        MatmulShape("vision", tokens, v.hidden_size, v.hidden_size, 4 * layers),  # q, k, v, out
        MatmulShape("vision", tokens, v.hidden_size, v.intermediate_size, layers),
        MatmulShape("vision", tokens, v.intermediate_size, v.hidden_size, layers),
        MatmulShape("attention", tokens, head_dim, tokens, 2 * layers, v.num_attention_heads),  # q k^T and p v
        *projector_matmuls(config.projector_type, grid, v.hidden_size, llm.hidden_size),
        MatmulShape("decoder", positions, llm.hidden_size, llm.hidden_size, 2 * llm.num_hidden_layers),  # q, out
        MatmulShape("decoder", positions, llm.hidden_size, kv, 2 * llm.num_hidden_layers),  # k, v
        MatmulShape("decoder", positions, llm.hidden_size, llm.intermediate_size, 2 * llm.num_hidden_layers),  # gate, up
        MatmulShape("decoder", positions, llm.intermediate_size, llm.hidden_size, llm.num_hidden_layers),  # down
        MatmulShape("decoder", 1, llm.hidden_size, llm.vocab_size, 1),  # the first token's logits
    ]


def projector_matmuls(projector_type: str, grid: int, vision: int, hidden: int) -> list[MatmulShape]:
    """The projector's dense matmuls (its depthwise convs are left out), as mobilevlm_agent/model/projector.py builds it."""
    from mobilevlm_agent.model.projector import make_divisible

    tokens = grid * grid
    if projector_type == "linear":
        return [MatmulShape("projector", tokens, vision, hidden, 1)]
    depth = 2 if projector_type.startswith("ldpnet") else int(projector_type[3:-6])  # mlpNx_gelu
    shapes = [MatmulShape("projector", tokens, vision, hidden, 1), MatmulShape("projector", tokens, hidden, hidden, depth - 1)]
    if projector_type.startswith("ldpnet") and not projector_type.startswith("ldpnetv2"):
        # V1's two MobileNetV3 blocks (stride 1, then 2): a pointwise conv each, and a squeeze-excitation on one position
        squeeze = make_divisible(hidden // 4)
        shapes += [MatmulShape("projector", tokens, hidden, hidden, 1), MatmulShape("projector", math.ceil(grid / 2) ** 2, hidden, hidden, 1),
                   MatmulShape("projector", 1, hidden, squeeze, 2), MatmulShape("projector", 1, squeeze, hidden, 2)]
    return [shape for shape in shapes if shape.count]  # mlp1x_gelu has no second linear


def one_node_session(shape: MatmulShape, group_size: int, threads: int, tmp: Path):
    """An onnxruntime session running only the kernel our export uses for this shape."""
    import onnx
    from onnx import TensorProto, helper

    from mobilevlm_agent.export.onnx import OPSET, GraphBuilder, quantize_matmuls_int8
    from mobilevlm_agent.model.ort import make_session

    rng = np.random.default_rng(0)
    path = tmp / f"{shape.part}_{shape.m}_{shape.k}_{shape.n}.onnx"
    b = GraphBuilder()
    if shape.part == "attention":
        b.node("MatMul", ["x", "y"], "out")
        inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [shape.batch, shape.m, shape.k]),
                  helper.make_tensor_value_info("y", TensorProto.FLOAT, [shape.batch, shape.k, shape.n])]
        feeds = {"x": rng.standard_normal((shape.batch, shape.m, shape.k), np.float32),
                 "y": rng.standard_normal((shape.batch, shape.k, shape.n), np.float32)}
    else:
        weight = torch.from_numpy(rng.standard_normal((shape.n, shape.k), np.float32) * 0.02)
        if shape.part == "decoder":
            b.linear("x", weight, "w", "int4", group_size)
        else:  # fp32 here; quantize_dynamic below makes it the export's DynamicQuantizeMatMul
            b.linear("x", weight, "w", "none", group_size)
        inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [shape.m, shape.k])]
        feeds = {"x": rng.standard_normal((shape.m, shape.k), np.float32)}
    out = helper.make_tensor_value_info(b.nodes[-1].output[0], TensorProto.FLOAT, None)
    graph = helper.make_graph(b.nodes, "matmul", inputs, [out], b.initializers)
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("com.microsoft", 1)]), path)
    if shape.part in ("vision", "projector"):
        quantized = path.with_suffix(".int8.onnx")
        quantize_matmuls_int8(path, quantized)  # what export_vision does to the whole vision graph
        path = quantized
    return make_session(path, threads), feeds


def best_ms(fn, repeats: int) -> float:
    """The floor: the best of `repeats` calls after a warm-up (packing, arena growth)."""
    from mobilevlm_agent.bench import median_time

    return min(median_time(fn, repeats, torch.device("cpu"))[1]) * 1000


def measured_ttft_ms(export: str, threads: int, prompt_tokens: int, repeats: int) -> dict:
    from mobilevlm_agent.bench import bench_ttft
    from mobilevlm_agent.model.ort import OrtMobileVLM

    result = bench_ttft(OrtMobileVLM(export, threads), prompt_tokens, repeats)
    return {k: result[k] for k in ("ttft_ms", "encode_ms", "prefill_tok_s")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="MobileVLM_V2-1.7B")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=30)
    ap.add_argument("--group-size", type=int, default=128, help="the decoder's int4 block size")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--export", help="an `export onnx` directory of the same config: also measure its TTFT in this run")
    args = ap.parse_args()

    from mobilevlm_agent.model.config import MobileVLMConfig

    torch.set_num_threads(args.threads)
    config = MobileVLMConfig.from_name(args.config)
    shapes = ttft_matmuls(config, args.prompt_tokens)
    rows, totals = [], {}
    with tempfile.TemporaryDirectory(prefix="ttft-floor-") as tmp:
        for shape in shapes:
            session, feeds = one_node_session(shape, args.group_size, args.threads, Path(tmp))
            ort_ms = best_ms(lambda: session.run(None, feeds), args.repeats)
            bf16_ms = None
            if shape.part in ("vision", "projector", "attention"):
                x = torch.from_numpy(next(iter(feeds.values()))).bfloat16()
                w = torch.randn(*((shape.batch, shape.k, shape.n) if shape.part == "attention" else (shape.k, shape.n))).bfloat16()
                bf16_ms = best_ms(lambda: torch.matmul(x, w), args.repeats)
            rows.append((shape, ort_ms, bf16_ms))
            totals[shape.part] = totals.get(shape.part, 0.0) + ort_ms * shape.count
    print(f"{config.name}: one image + {args.prompt_tokens}-token question, {args.threads} threads; the best of "
          f"{args.repeats} runs of each kernel alone\n")
    print(f"| part | m × k × n | runs per TTFT | kernel | ms each | GMAC/s | ms per TTFT | torch bf16 ms each |")
    print("|---|---|---|---|---|---|---|---|")
    kernels = {"vision": "DynamicQuantizeMatMul (int8)", "projector": "DynamicQuantizeMatMul (int8)",
               "attention": "MatMul (fp32)", "decoder": f"MatMulNBits (int4 g{args.group_size}, int8 compute)"}
    for shape, ort_ms, bf16_ms in rows:
        dims = f"{shape.batch} × " if shape.batch > 1 else ""
        rate = shape.macs / shape.count / ort_ms / 1e6
        bf16 = f"{bf16_ms:.2f}" if bf16_ms is not None else "–"
        print(f"| {shape.part} | {dims}{shape.m} × {shape.k} × {shape.n} | {shape.count} | {kernels[shape.part]} | {ort_ms:.2f} | "
              f"{rate:.0f} | {ort_ms * shape.count:.0f} | {bf16} |")
    floor = sum(totals.values())
    macs = sum(s.macs for s in shapes)
    print(f"\n{macs / 1e9:.0f} GMAC in all. The matmuls alone: " + ", ".join(f"{p} {ms:.0f} ms" for p, ms in totals.items())
          + f"; **floor {floor:.0f} ms** against the {TARGET_MS:.0f} ms target ({floor / TARGET_MS:.2f}×).")
    if args.export:
        measured = measured_ttft_ms(args.export, args.threads, args.prompt_tokens, args.repeats)
        print(f"Measured on {args.export} in this run: TTFT {measured['ttft_ms']:.0f} ms (encode {measured['encode_ms']:.0f} ms, "
              f"prefill {measured['prefill_tok_s']:.0f} tok/s); the matmul floor is {floor / measured['ttft_ms']:.0%} of it.")


if __name__ == "__main__":
    main()
