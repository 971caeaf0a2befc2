"""Does llama.cpp itself run our GGUF export? Export MODEL_DIR's decoder at f16, q8_0 and q4_0, load each with
llama-cpp-python, and print its last-position logits against our torch model's on the same prompt. Then load the
mmproj through llama.cpp's mtmd and print its visual tokens against ours on three images, and against ours run in
llama.cpp's own token order (its LLaVA graph appends the class token after the patches, so each patch takes its
neighbour's position: a llama.cpp bug, not one of the export). llama.cpp's LDP graphs take only a 24 x 24 patch grid
(336 px), so a tower of another size is resampled to 336 px first (its positions interpolated, as `image_size`
does), which is said in the output.

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
    import llama_cpp
    from llama_cpp import mtmd_cpp as mtmd

    from mobilevlm_agent.export.gguf import LLAMA_CPP_LDP_GRID, export_gguf
    from mobilevlm_agent.preprocess import preprocess

    size = LLAMA_CPP_LDP_GRID * model.config.vision.patch_size
    if model.config.vision.image_size != size:
        print(f"\nmmproj: the tower takes {model.config.vision.image_size} px; resampled to {size} px for llama.cpp")
        model.resize_images(size)
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
    print(f"{'image':18} {'tokens':>7} {'cosine vs ours: min':>20} {'mean':>7} {'vs ours in llama.cpp order: min':>32} {'mean':>7}")
    for name, image in images.items():
        theirs = mtmd_visual_tokens(mtmd, ctx, image, model.config.llm.hidden_size)
        pixels = preprocess(image, size, pad_to_square=True)
        with torch.inference_mode():
            ours = model.encode_images(pixels)[0].double().numpy()
            reordered = encode_cls_last(model, pixels)[0].double().numpy()
        same, bug = cosines(ours, theirs), cosines(reordered, theirs)
        print(f"{name:18} {len(theirs):7d} {same.min():20.5f} {same.mean():7.5f} {bug.min():32.5f} {bug.mean():7.5f}")
    mtmd.mtmd_free(ctx)
    llm.close()


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def encode_cls_last(model, pixels: torch.Tensor) -> torch.Tensor:
    """Our tower and projector in the order llama.cpp's LLaVA graph (0.3.36's) runs them: the class token appended
    after the patches, positions added in row order, rows 1..n kept. CLIP puts the class token first, so there every
    patch takes its neighbour's position, the first patch is dropped and the class token is sent as the last one."""
    vision = model.vision
    emb = vision.embeddings
    patches = emb.patch_embedding(pixels).flatten(2).transpose(1, 2)
    x = torch.cat([patches, emb.class_embedding.expand(1, 1, -1)], 1) + emb.position_embedding.weight
    x = vision.pre_layrnorm(x)
    for layer in vision.encoder.layers:
        x = layer(x)
    return model.projector(x[:, 1:])


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
