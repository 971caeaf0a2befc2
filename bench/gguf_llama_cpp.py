"""Does llama.cpp itself run our GGUF export? Export MODEL_DIR's decoder at f16, q8_0 and q4_0, load each with
llama-cpp-python, and print its last-position logits against our torch model's on the same prompt. Then load the
mmproj through llama.cpp's mtmd and print its visual tokens against ours on three images. llama.cpp's LDP graphs take
only a 24 x 24 patch grid (336 px), so a tower of another size is resampled to 336 px first (its positions
interpolated, as `image_size` does), which is said in the output.

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
            path = export_gguf(str(resolve_model_dir(args.model)), f"{tmp}/{quant}", quant, llm_only=True)[0]
            llm = llama_cpp.Llama(model_path=str(path), n_ctx=len(ids) + 8, logits_all=True, verbose=False)
            llm.eval(ids)
            theirs = np.asarray(llm.scores[len(ids) - 1], dtype=np.float64)
            cosine = float(ours @ theirs / np.linalg.norm(ours) / np.linalg.norm(theirs))
            print(f"{quant:6} {cosine:22.5f} {str(int(ours.argmax()) == int(theirs.argmax())):>15}")
            llm.close()
        if model.vision is not None:
            compare_mmproj(model, tmp)
    return 0


def compare_mmproj(model, tmp: str) -> None:
    """Visual tokens from llama.cpp's mtmd (our mmproj-f16.gguf) against ours, per token, on images of size 336."""
    import dataclasses

    import llama_cpp
    from llama_cpp import mtmd_cpp as mtmd

    from mobilevlm_agent.export.gguf import LLAMA_CPP_LDP_GRID, export_gguf
    from mobilevlm_agent.preprocess import preprocess

    size = LLAMA_CPP_LDP_GRID * model.config.vision.patch_size
    if model.config.vision.image_size != size:
        print(f"\nmmproj: the tower takes {model.config.vision.image_size} px; resampled to {size} px for llama.cpp")
        model.config = dataclasses.replace(model.config, vision=model.vision.resize(size))
    model.save_pretrained(f"{tmp}/at{size}")
    llm_path, mmproj_path = export_gguf(f"{tmp}/at{size}", f"{tmp}/mmproj", "f16")
    llm = llama_cpp.Llama(model_path=str(llm_path), n_ctx=512, verbose=False)
    params = mtmd.mtmd_context_params_default()
    params.use_gpu, params.n_threads, params.print_timings = False, 2, False
    ctx = mtmd.mtmd_init_from_file(str(mmproj_path).encode(), llm._model.model, params)
    yy, xx = np.mgrid[0:size, 0:size] / size
    images = {"uniform grey": np.full((size, size, 3), 90, np.uint8),
              "smooth gradients": (np.stack([np.sin(3 * xx + 1), np.cos(2 * yy), np.sin(2 * xx * yy + 2)], -1) * 100 + 128).astype(np.uint8),
              "random noise": np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)}
    print(f"{'image':18} {'tokens':>7} {'cosine vs ours: min':>20} {'mean':>7}")
    for name, image in images.items():
        theirs = mtmd_visual_tokens(mtmd, ctx, image, model.config.llm.hidden_size)
        with torch.inference_mode():
            ours = model.encode_images(preprocess(image, size, pad_to_square=True))[0].double().numpy()
        cosine = (ours * theirs).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(theirs, axis=1)
        print(f"{name:18} {len(theirs):7d} {cosine.min():20.5f} {cosine.mean():7.5f}")
    mtmd.mtmd_free(ctx)
    llm.close()


def mtmd_visual_tokens(mtmd, ctx, image: np.ndarray, hidden: int) -> np.ndarray:
    import ctypes

    pixels = (ctypes.c_uint8 * image.size).from_buffer_copy(image.tobytes())
    bitmap = mtmd.mtmd_bitmap_init(image.shape[1], image.shape[0], pixels)
    chunks = mtmd.mtmd_input_chunks_init()
    prompt = (mtmd.mtmd_default_marker().decode() + " ").encode()
    text = mtmd.mtmd_input_text(prompt, len(prompt), False, True)
    try:
        if mtmd.mtmd_tokenize(ctx, chunks, ctypes.byref(text), (mtmd.mtmd_bitmap_p_ctypes * 1)(bitmap), 1) != 0:
            raise RuntimeError("mtmd_tokenize failed")
        for i in range(mtmd.mtmd_input_chunks_size(chunks)):
            chunk = mtmd.mtmd_input_chunks_get(chunks, i)
            if mtmd.mtmd_input_chunk_get_type(chunk) == mtmd.MTMD_INPUT_CHUNK_TYPE_IMAGE:
                n = mtmd.mtmd_input_chunk_get_n_tokens(chunk)
                if mtmd.mtmd_encode_chunk(ctx, chunk) != 0:
                    raise RuntimeError("mtmd_encode_chunk failed")
                return np.ctypeslib.as_array(mtmd.mtmd_get_output_embd(ctx), shape=(n * hidden,)).reshape(n, hidden).astype(np.float64)
        raise RuntimeError("mtmd made no image chunk")
    finally:
        mtmd.mtmd_input_chunks_free(chunks)
        mtmd.mtmd_bitmap_free(bitmap)


if __name__ == "__main__":
    raise SystemExit(main())
