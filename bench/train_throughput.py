"""Training throughput: our step (TrainForward + AdamW) vs transformers LlamaForCausalLM, same config/batch/dtype.

    python bench/train_throughput.py [--config MobileLLaMA-1.4B] [--layers 4] [--batch 4] [--seq 256] [--steps 5]

Prints tokens/s side by side. transformers is only a reference here (pip install transformers).
"""
from __future__ import annotations

import argparse
import dataclasses
import time

import torch


def timed_steps(step, n: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    return (time.perf_counter() - t0) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="MobileLLaMA-1.4B", help="named config whose LLM shape is used")
    ap.add_argument("--layers", type=int, default=2, help="decoder layers (shrunk so a CPU step takes seconds)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    args = ap.parse_args()

    import transformers

    from mobilevlm_agent.model.checkpoint import to_official
    from mobilevlm_agent.model.config import MobileVLMConfig
    from mobilevlm_agent.model.vlm import MobileVLM
    from mobilevlm_agent.train.dist import DistInfo, build_optimizer
    from mobilevlm_agent.train.loop import TrainForward

    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    base = MobileVLMConfig.from_name(args.config)
    llm = dataclasses.replace(base.llm, num_hidden_layers=args.layers)
    ours = MobileVLM(MobileVLMConfig(name="bench", llm=llm)).to(device, dtype).train()
    hf_cfg = transformers.LlamaConfig(
        vocab_size=llm.vocab_size, hidden_size=llm.hidden_size, intermediate_size=llm.intermediate_size, num_hidden_layers=llm.num_hidden_layers,
        num_attention_heads=llm.num_attention_heads, num_key_value_heads=llm.num_key_value_heads, max_position_embeddings=llm.max_position_embeddings,
        rms_norm_eps=llm.rms_norm_eps, rope_theta=llm.rope_theta, tie_word_embeddings=False, attn_implementation="sdpa")
    hf = transformers.LlamaForCausalLM(hf_cfg).to(device, dtype).train()
    hf.load_state_dict({to_official(k): v for k, v in ours.state_dict().items()})

    ids = torch.randint(0, llm.vocab_size, (args.batch, args.seq), device=device)
    tokens = args.batch * (args.seq - 1)
    forward = TrainForward(ours)
    opt_ours = build_optimizer([{"params": list(ours.parameters())}], 1e-4, (0.9, 0.999), 0.0, "ddp", DistInfo(0, 1, 0, torch.device(device)))
    opt_hf = torch.optim.AdamW(hf.parameters(), lr=1e-4)
    id_lists = ids.tolist()

    def our_step():
        loss, _ = forward(id_lists, id_lists, None)
        loss.backward()
        opt_ours.step()
        opt_ours.zero_grad(set_to_none=True)

    def hf_step():
        hf(input_ids=ids, labels=ids).loss.backward()
        opt_hf.step()
        opt_hf.zero_grad(set_to_none=True)

    t_ours, t_hf = timed_steps(our_step, args.steps), timed_steps(hf_step, args.steps)
    print(f"config {args.config} x {args.layers} layers, batch {args.batch} x seq {args.seq}, {args.dtype}, {device}, {torch.get_num_threads()} threads")
    print(f"{'trainer':<28}{'s/step':>10}{'tokens/s':>12}")
    print(f"{'mobilevlm_agent':<28}{t_ours:>10.3f}{tokens / t_ours:>12.0f}")
    print(f"{'transformers ' + transformers.__version__:<28}{t_hf:>10.3f}{tokens / t_hf:>12.0f}")
    print(f"ratio (ours / transformers): {t_hf / t_ours:.2f}x  (goal >= 1.0x)")


if __name__ == "__main__":
    main()
