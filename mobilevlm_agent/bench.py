"""Speed measurements behind `mobilevlm-agent bench`: prefill and decode tok/s, encode ms, time to first token, peak RSS.

Any config in models/ runs with random weights (speed does not depend on their values); a checkpoint directory runs
with its own. Every number is the median of `repeats` timed runs after one warm-up run.
"""
from __future__ import annotations

import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

from mobilevlm_agent.errors import CheckpointError, ConfigError
from mobilevlm_agent.model.config import MobileVLMConfig, available_configs
from mobilevlm_agent.model.quant import check_modes, quantize_model, quantize_part, vision_parts, weight_bytes
from mobilevlm_agent.tokenizer import IGNORE_INDEX

BACKENDS = ("torch", "ort")


@dataclass
class BenchResult:
    """The stable `bench --json` contract: these keys are always present (null when that task did not measure them)."""

    task: str
    config: str
    backend: str
    quant: str
    vision_quant: str
    threads: int
    device: str
    prompt_tokens: int
    new_tokens: int
    prefill_tok_s: float | None = None
    decode_tok_s: float | None = None
    encode_ms: float | None = None
    ttft_ms: float | None = None
    ttft_warm_ms: float | None = None  # the image already prefilled when the question comes (ChatSession.prefill_image)
    peak_rss_mb: float = 0.0
    llm_weight_mb: float = 0.0
    decode_gb_s: float | None = None  # weight bytes streamed per decoded token x tokens/s
    runs: dict[str, list[float]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time(fn: Callable[[], object], repeats: int, device: torch.device) -> tuple[float, list[float]]:
    """Median seconds of `repeats` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def load_bench_model(target: str, backend: str = "torch", quant: str = "none", group_size: int = 64, vision_quant: str = "none", device: str = "cpu",
                     threads: int | None = None, task: str = "decode"):
    """A named config (random weights, quantised piece by piece) or a checkpoint directory (its weights, quantised).

    ort: an ONNX export directory runs as it is; a config name or checkpoint is exported to a temporary directory
    first, the vision graph alone for `encode`.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "ort":
        return load_ort_bench_model(target, quant, group_size, vision_quant, threads, decoder=task != "encode")
    check_modes(quant, group_size, vision_quant)
    from mobilevlm_agent.model.checkpoint import load_pretrained
    from mobilevlm_agent.model.random_init import random_model

    if target not in available_configs():  # a checkpoint directory, or a bundled model such as `demo`
        return load_pretrained(checkpoint_dir(target), dtype=torch.float32, device=device, quant=quant, group_size=group_size, vision_quant=vision_quant)
    config = MobileVLMConfig.from_name(target)
    if torch.device(device).type == "cpu":
        return random_model(config, quant=quant, group_size=group_size, vision_quant=vision_quant)
    # the packed int4 layout is CPU-only: quantise on the device itself
    return quantize_model(random_model(config).to(device), quant, group_size, vision_quant)


def checkpoint_dir(target: str):
    from mobilevlm_agent.model.checkpoint import resolve_model_dir

    try:
        return resolve_model_dir(target)
    except CheckpointError:
        raise ConfigError(f"{target!r} is neither a checkpoint directory nor a config in models/ ({', '.join(available_configs())})") from None


def load_ort_bench_model(target: str, quant: str, group_size: int, vision_quant: str, threads: int | None, decoder: bool = True):
    import multiprocessing
    import tempfile
    from pathlib import Path

    from mobilevlm_agent.export.onnx import MANIFEST, check_onnx_quant
    from mobilevlm_agent.model.ort import OrtMobileVLM

    if (Path(target) / MANIFEST).is_file():
        return OrtMobileVLM(target, threads)
    check_onnx_quant(quant, group_size)
    if target not in available_configs():
        checkpoint_dir(target)  # a clear error before a process starts
    elif not decoder and MobileVLMConfig.from_name(target).vision is None:
        raise ConfigError(f"{target} has no vision tower to benchmark")
    with tempfile.TemporaryDirectory(prefix="mobilevlm-onnx-") as tmp:
        # a child process exports, so this one's peak RSS is the onnxruntime model's own
        child = multiprocessing.get_context("spawn").Process(target=export_for_bench, args=(target, tmp, quant, group_size, vision_quant, decoder))
        child.start()
        child.join()
        if child.exitcode != 0:
            how = f"was killed by signal {-child.exitcode}" if child.exitcode < 0 else f"exited with code {child.exitcode}"
            raise ConfigError(f"exporting {target} to ONNX failed: the export process {how}"
                              + (" (SIGKILL: most often the kernel's out-of-memory killer)" if child.exitcode == -9 else ""))
        return OrtMobileVLM(tmp, threads)  # onnxruntime has read every file, and the mapped embedding outlives its unlink


def export_for_bench(target: str, out: str, quant: str, group_size: int, vision_quant: str, decoder: bool = True) -> None:
    from mobilevlm_agent.export.onnx import export_model, export_onnx
    from mobilevlm_agent.model.random_init import random_model

    if target in available_configs():
        export_model(random_model(MobileVLMConfig.from_name(target), vision_only=not decoder), out, quant, group_size, vision_quant, decoder)
    else:
        export_onnx(target, out, quant, group_size, vision_quant, decoder)


def random_prompt(vocab_size: int, length: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab_size, (1, length), generator=g)  # skip <unk>, <s>, </s>


@torch.inference_mode()
def bench_decode(model, prompt_tokens: int, new_tokens: int, repeats: int) -> dict[str, float | list[float]]:
    """Prefill a random prompt, then decode `new_tokens` greedily; tok/s for each phase."""
    llm, device = model.llm, model.device
    ids = random_prompt(llm.config.vocab_size, prompt_tokens).to(device)
    llm.setup_cache(1, prompt_tokens + new_tokens + 1)

    def prefill():
        return llm.prefill(llm.embed_tokens(ids), 0)

    prefill_s, prefill_runs = median_time(prefill, repeats, device)
    logits = prefill()

    def decode():
        token = logits.argmax(-1)
        for i in range(new_tokens):
            token = llm.decode_one(token, prompt_tokens + i).argmax(-1)
        return token

    decode_s, decode_runs = median_time(decode, repeats, device)
    return {
        "prefill_tok_s": prompt_tokens / prefill_s,
        "decode_tok_s": new_tokens / decode_s,
        "runs": {"prefill_s": prefill_runs, "decode_s": decode_runs},
    }


def random_pixels(model) -> torch.Tensor:
    size = model.config.vision.image_size
    return torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0)).to(model.device) * 2 - 1


@torch.inference_mode()
def bench_encode(model, repeats: int) -> dict[str, float | list[float]]:
    """ViT + projector on one image: milliseconds."""
    if model.config.vision is None:
        raise ConfigError(f"{model.config.name} has no vision tower to benchmark")
    pixels = random_pixels(model)
    seconds, runs = median_time(lambda: model.encode_images(pixels), repeats, model.device)
    return {"encode_ms": seconds * 1000, "runs": {"encode_s": runs}}


@torch.inference_mode()
def bench_ttft(model, prompt_tokens: int, repeats: int) -> dict[str, float | list[float]]:
    """A new image and a `prompt_tokens`-token question to the first answer token: encode + prefill + one sample."""
    if model.config.vision is None:
        raise ConfigError(f"{model.config.name} has no vision tower; ttft measures image + question")
    llm = model.llm
    pixels = random_pixels(model)
    ids = random_prompt(llm.config.vocab_size, prompt_tokens).to(model.device)
    llm.setup_cache(1, model.config.num_visual_tokens + prompt_tokens + 1)
    timings: dict[str, list[float]] = {"encode_s": [], "prefill_s": []}

    def first_token():
        t0 = time.perf_counter()
        features = model.encode_images(pixels)
        sync(model.device)
        t1 = time.perf_counter()
        embeds = torch.cat([features, llm.embed_tokens(ids).to(features.dtype)], dim=1)
        token = int(llm.prefill(embeds, 0).argmax(-1))
        t2 = time.perf_counter()
        timings["encode_s"].append(t1 - t0)
        timings["prefill_s"].append(t2 - t1)
        return token

    def first_token_after_prefilled_image():
        return int(llm.prefill(llm.embed_tokens(ids).to(model.dtype), model.config.num_visual_tokens).argmax(-1))

    seconds, runs = median_time(first_token, repeats, model.device)
    # the image's positions stay in the cache: each warm run overwrites only the question's
    warm_seconds, warm_runs = median_time(first_token_after_prefilled_image, repeats, model.device)
    prefill_len = model.config.num_visual_tokens + prompt_tokens
    return {
        "ttft_ms": seconds * 1000,
        "ttft_warm_ms": warm_seconds * 1000,
        "encode_ms": statistics.median(timings["encode_s"][1:]) * 1000,
        "prefill_tok_s": prefill_len / statistics.median(timings["prefill_s"][1:]),
        "runs": {"ttft_s": runs, "ttft_warm_s": warm_runs},
    }


def run_bench(task: str, target: str, backend: str = "torch", quant: str = "none", group_size: int = 64, vision_quant: str = "none",
              threads: int | None = None, prompt_tokens: int | None = None, new_tokens: int = 32, repeats: int = 3, device: str = "cpu") -> BenchResult:
    if threads:
        torch.set_num_threads(threads)
    if prompt_tokens is None:
        prompt_tokens = 30 if task == "ttft" else 200
    model = load_bench_model(target, backend, quant, group_size, vision_quant, device, threads, task)
    result = BenchResult(task, model.config.name, backend, getattr(model, "quant", quant), getattr(model, "vision_quant", None) or vision_quant,
                         threads or torch.get_num_threads(), str(model.device), prompt_tokens, new_tokens if task == "decode" else 0)
    measured = {"decode": lambda: bench_decode(model, prompt_tokens, new_tokens, repeats),
                "encode": lambda: bench_encode(model, repeats),
                "ttft": lambda: bench_ttft(model, prompt_tokens, repeats)}[task]()
    result.runs = measured.pop("runs")
    for key, value in measured.items():
        setattr(result, key, value)
    if model.llm is not None:  # None: an ort vision-only export
        llm_bytes, embed_bytes = weight_bytes(model.llm), weight_bytes(model.llm.embed_tokens)  # either backend
        result.llm_weight_mb = llm_bytes / 2**20
        if result.decode_tok_s:  # the embedding table is looked up, not streamed
            result.decode_gb_s = (llm_bytes - embed_bytes) * result.decode_tok_s / 1e9
    result.peak_rss_mb = peak_rss_mb()
    return result


def memory_bandwidth_gb_s(threads: int, megabytes: int = 512, repeats: int = 5) -> float:
    """Read bandwidth (the decode roofline): the best of `repeats` passes over a buffer far larger than any cache, by
    the faster of two one-pass reads. A plain sum alone is bound by its reduction on some CPUs: on 2 cores of an
    AVX-512 EPYC it read 28.7 GB/s where `dot(x, x)` read 32-40 GB/s, and one runtime decoded at 119 % of its "limit"."""
    torch.set_num_threads(threads)
    buffer = torch.ones(megabytes * 2**20 // 4)
    best = min(min(median_time(read, repeats, torch.device("cpu"))[1]) for read in (buffer.sum, lambda: torch.dot(buffer, buffer)))
    return buffer.numel() * 4 / best / 1e9


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean cosine over rows (positions or visual tokens)."""
    return float(torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1).mean())


@torch.inference_mode()
def llm_quality(model_dir: str, samples_path: str, modes: list[str], group_size: int = 64, limit: int = 200) -> dict[str, dict[str, float]]:
    """Per decoder mode, against fp32 on held-out LLaVA-format samples (`limit` of them): the cosine of the answer
    positions' logits, and the perplexity of the answers given image and question (teacher-forced), i.e. the model
    on its own task. The vision tower stays fp32 in every mode."""
    from mobilevlm_agent.model.checkpoint import load_pretrained
    from mobilevlm_agent.train.datasets import ConversationDataset

    def load(mode: str = "none"):
        return load_pretrained(model_dir, dtype=torch.float32, device="cpu", quant=mode, group_size=group_size)

    def answer_logits(model) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(logits predicting each answer token, those tokens) per sample."""
        out = []
        for i in range(min(limit, len(data))):
            sample = data[i]
            pixels = sample["pixels"][None] if sample["pixels"] is not None else None
            embeds, labels = model.training_batch([sample["ids"]], [sample["labels"]], pixels)
            logits, targets = model.llm(inputs_embeds=embeds)[0, :-1].float(), labels[0, 1:]
            keep = targets != IGNORE_INDEX
            out.append((logits[keep], targets[keep]))
        return out

    def perplexity(scored: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
        nll = sum(torch.nn.functional.cross_entropy(lg, t, reduction="sum") for lg, t in scored)
        return float(torch.exp(nll / sum(t.numel() for _, t in scored)))

    reference = load()
    cfg = reference.config
    data = ConversationDataset(samples_path, reference.tokenizer, cfg.conv_template, cfg.llm.max_position_embeddings,
                               cfg.vision.image_size if cfg.vision else 0, cfg.num_visual_tokens, pad_to_square=cfg.image_aspect_ratio == "pad")
    ref = answer_logits(reference)
    base_ppl = perplexity(ref)
    results = {"none": {"logits_cosine": 1.0, "ppl": base_ppl, "ppl_delta": 0.0}}
    for mode in modes:
        if mode == "none":
            continue
        scored = answer_logits(load(mode))
        ppl = perplexity(scored)
        cosine = statistics.mean(_cosine(a, b) for (a, _), (b, _) in zip(scored, ref))
        results[mode] = {"logits_cosine": cosine, "ppl": ppl, "ppl_delta": ppl - base_ppl}
    return results


@torch.inference_mode()
def vision_quality(model, pixels: torch.Tensor, modes: list[str]) -> dict[str, float]:
    """Per vision mode: cosine of the visual tokens (ViT + projector output) against the model as given (fp32).

    Only the vision side is copied, so this also runs for a 1.7B model without duplicating its decoder."""
    import copy

    reference = model.encode_images(pixels).float()
    out = {}
    for mode in modes:
        side = torch.nn.Module()
        side.vision, side.projector = copy.deepcopy(model.vision), copy.deepcopy(model.projector)
        for parent, attr, _, kind in vision_parts(side):
            quantize_part(parent, attr, kind, mode, 64)
        features = side.vision(pixels.to(side.vision.pre_layrnorm.weight.dtype))
        out[mode] = _cosine(side.projector(features.to(next(side.projector.parameters()).dtype)), reference)
    return out
