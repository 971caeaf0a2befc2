"""Does llama.cpp itself run our GGUF export? Export MODEL_DIR's decoder at f16, q8_0 and q4_0, load each with
llama-cpp-python, and print its last-position logits against our torch model's on the same prompt.

    python bench/gguf_llama_cpp.py [MODEL_DIR] [--prompt TEXT]

Needs llama-cpp-python (`pip install llama-cpp-python`, a ~6 minute compile), so it stays out of the test suite.
"""
from __future__ import annotations

import argparse
import tempfile

import numpy as np
import torch


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", default="demo", help="checkpoint directory or bundled name (default: demo)")
    parser.add_argument("--prompt", default="USER: Is there a red ball in the image? ASSISTANT:")
    args = parser.parse_args()
    try:
        import llama_cpp
    except ImportError:
        print("llama-cpp-python is not installed: pip install llama-cpp-python")
        return 1
    from mobilevlm_agent.export.gguf import export_gguf
    from mobilevlm_agent.model.checkpoint import load_model, resolve_model_dir

    model = load_model(args.model, dtype=torch.float32, device="cpu")
    ids = model.tokenizer.encode(args.prompt)
    with torch.inference_mode():
        ours = model.llm(torch.tensor([ids]))[0, -1].double().numpy()
    print(f"llama-cpp-python {llama_cpp.__version__}, {len(ids)}-token prompt, model {resolve_model_dir(args.model)}")
    print(f"{'gguf':6} {'logits cosine vs ours':>22} {'same top token':>15}")
    with tempfile.TemporaryDirectory() as tmp:
        for quant in ("f16", "q8_0", "q4_0"):
            path = export_gguf(str(resolve_model_dir(args.model)), f"{tmp}/{quant}", quant)[0]
            llm = llama_cpp.Llama(model_path=str(path), n_ctx=len(ids) + 8, logits_all=True, verbose=False)
            llm.eval(ids)
            theirs = np.asarray(llm.scores[len(ids) - 1], dtype=np.float64)
            cosine = float(ours @ theirs / np.linalg.norm(ours) / np.linalg.norm(theirs))
            print(f"{quant:6} {cosine:22.5f} {str(int(ours.argmax()) == int(theirs.argmax())):>15}")
            llm.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
