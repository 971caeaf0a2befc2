"""MobileVLM on onnxruntime: loads a directory written by `mobilevlm-agent export onnx` and plugs into the same
ChatSession / planner / bench code as the torch model (same attributes and methods, torch tensors in and out).

The KV cache is one preallocated buffer per layer that GroupQueryAttention reads and writes in place (bound as both
past and present), so a decode step copies nothing but one token's embedding in and the logits out.
"""
from __future__ import annotations

import json
import os
import weakref
from pathlib import Path

import numpy as np
import torch

from mobilevlm_agent.errors import CheckpointError, ConfigError, InputError
from mobilevlm_agent.export.onnx import MANIFEST
from mobilevlm_agent.model.checkpoint import safetensors_layout
from mobilevlm_agent.model.config import MobileVLMConfig
from mobilevlm_agent.model.llama import CachedPrefix, grown_capacity
from mobilevlm_agent.model.memory import limit_heap_retention
from mobilevlm_agent.model.vlm import MobileVLM
from mobilevlm_agent.tokenizer import Tokenizer


def _ort():
    try:
        import onnxruntime
    except ImportError as e:
        raise ConfigError("--backend ort needs onnxruntime: pip install 'mobilevlm_agent[onnx]'") from e
    return onnxruntime


def make_session(path: Path, threads: int | None, profile_prefix: str | None = None):
    """An onnxruntime CPU session; with `profile_prefix`, onnxruntime's profiler records every node (end_profiling())."""
    ort = _ort()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types for unreadable or invalid graphs
        raise CheckpointError(f"onnxruntime cannot load {path}: {e}") from e


def shrinking_run_options():
    """RunOptions that hand the CPU arena's free chunks back after the run: a prefill's or an image's activations
    (tens of MB each) then do not stay reserved beside the other session's, which sets the process's peak RSS."""
    options = _ort().RunOptions()
    options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    return options


class OrtEmbedding:
    """The token embedding table, read from its safetensors file a row at a time as tokens are looked up: ids (torch)
    -> fp32 embeddings (torch). A session holds an open file and, for an int8 table (int exports), its per-row scales.

    Rows are read with pread, not a memory map: mapped, 30 looked-up rows of a V2 1.7B table kept 17-44 MB of it
    resident (2026-12-05), the kernel mapping far more than each touched row (whole page-cache folios, most likely)."""

    def __init__(self, path: Path) -> None:
        try:
            layout = safetensors_layout(path)
        except (CheckpointError, OSError) as e:
            raise CheckpointError(f"{path} is not a readable safetensors file: {e}") from e
        if "embed_tokens" not in layout or len(layout["embed_tokens"][1]) != 2:
            raise CheckpointError(f"{path} holds no embed_tokens tensor of shape [vocab, hidden]")
        dtype, (self.num_rows, self.width), self._offset, nbytes = layout["embed_tokens"]
        try:
            self.dtype = torch.empty(0, dtype=dtype).numpy().dtype
        except TypeError as e:
            raise CheckpointError(f"{path}: embed_tokens is {dtype}, which NumPy cannot read") from e
        self._row_bytes = self.width * self.dtype.itemsize
        self.path = path
        self._fd = os.open(path, os.O_RDONLY)  # kept open: a bench export's directory is deleted once it is loaded
        weakref.finalize(self, os.close, self._fd)
        self.scale = None
        if "embed_scale" in layout:
            scale_dtype, scale_shape, offset, scale_bytes = layout["embed_scale"]
            if scale_dtype != torch.float32 or tuple(scale_shape) != (self.num_rows,):
                raise CheckpointError(f"{path}: embed_scale must be float32 [{self.num_rows}]")
            self.scale = np.frombuffer(os.pread(self._fd, scale_bytes, offset), np.float32)
            nbytes += scale_bytes
        self.weight_bytes = nbytes

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        flat = ids.cpu().numpy().reshape(-1)
        if flat.size and (flat.min() < 0 or flat.max() >= self.num_rows):
            raise InputError(f"token ids must be in 0..{self.num_rows - 1}, got {flat.min()}..{flat.max()}")
        size = self._row_bytes
        data = b"".join(os.pread(self._fd, size, self._offset + int(i) * size) for i in flat)
        if len(data) != flat.size * size:
            raise CheckpointError(f"{self.path} was truncated after it was opened")
        rows = np.frombuffer(data, self.dtype).reshape(*ids.shape, self.width).astype(np.float32)
        if self.scale is not None:
            rows *= self.scale[flat].reshape(*ids.shape, 1)
        return torch.from_numpy(rows)


class OrtDecoder(CachedPrefix):
    """MobileLLaMA's generation interface (setup_cache, prefill, decode_one, cache_keys) over decoder.onnx."""

    def __init__(self, path: Path, config, embed_tokens: OrtEmbedding, threads: int | None) -> None:
        self.session = make_session(path, threads)
        self.config = config
        self.embed_tokens = embed_tokens
        self.cache_keys = []
        self._cache: list = []  # OrtValues [1, kv_heads, capacity, head_dim]: past.0.key, past.0.value, past.1.key, ...
        self._capacity = 0
        self._binding = None  # the cache buffers stay bound between calls; only the small inputs change
        self._shrink = shrinking_run_options()  # for prefills; decode steps reuse their few small buffers as they are
        data = path.with_name(path.name + ".data")
        self.weight_bytes = (data.stat().st_size if data.is_file() else path.stat().st_size) + embed_tokens.weight_bytes

    @property
    def cache_capacity(self) -> int:
        return self._capacity

    def setup_cache(self, batch: int, max_seq: int) -> None:
        if batch != 1:
            raise ConfigError("the onnxruntime backend decodes one sequence at a time (batch 1)")
        if max_seq <= self._capacity:
            return
        ort, cfg = _ort(), self.config
        capacity = grown_capacity(max_seq, self._capacity)
        fresh = []
        for i in range(2 * cfg.num_hidden_layers):
            array = np.zeros((1, cfg.num_key_value_heads, capacity, cfg.head_dim), np.float32)
            if self._cache:
                array[:, :, : self._capacity] = self._cache[i].numpy()
            fresh.append(ort.OrtValue.ortvalue_from_numpy(array))
        self._cache, self._capacity = fresh, capacity
        self._binding = self.session.io_binding()
        self._binding.bind_output("logits")  # first, so it is get_outputs()[0]; onnxruntime allocates it per run
        for i in range(cfg.num_hidden_layers):
            for j, kind in enumerate(("key", "value")):
                value = self._cache[2 * i + j]  # the same buffer in and out: attention writes the new positions in place
                self._binding.bind_ortvalue_input(f"past.{i}.{kind}", value)
                self._binding.bind_ortvalue_output(f"present.{i}.{kind}", value)

    def clear_cache(self) -> None:
        self._cache, self._capacity, self._binding, self.cache_keys = [], 0, None, []

    def _run(self, embeds: np.ndarray, start: int) -> torch.Tensor:
        total = start + embeds.shape[1]
        if total > self._capacity:
            raise RuntimeError(f"positions up to {total} do not fit the KV cache ({self._capacity}); call setup_cache first")
        del self.cache_keys[start:]  # overwritten now; the caller labels what it wrote
        binding = self._binding
        binding.bind_cpu_input("inputs_embeds", np.ascontiguousarray(embeds, dtype=np.float32))
        binding.bind_cpu_input("seqlens_k", np.array([total - 1], np.int32))
        binding.bind_cpu_input("total_sequence_length", np.array(total, np.int32))
        self.session.run_with_iobinding(binding, self._shrink if embeds.shape[1] > 1 else None)
        # a copy: onnxruntime reuses the bound logits buffer on the next run
        return torch.from_numpy(binding.get_outputs()[0].numpy()[:, -1].copy())

    def prefill(self, inputs_embeds: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Positions [start, start+T) after a cached prefix -> next-token logits [1, V]."""
        return self._run(inputs_embeds.float().cpu().numpy(), start)

    def decode_one(self, token: torch.Tensor, pos: int) -> torch.Tensor:
        """One token at position `pos` -> logits [1, V]."""
        return self._run(self.embed_tokens(token.view(1, 1)).numpy(), pos)


class OrtMobileVLM:
    """A MobileVLM whose decoder and vision tower run on onnxruntime (CPU)."""

    device = torch.device("cpu")
    dtype = torch.float32

    def __init__(self, directory: str | Path, threads: int | None = None) -> None:
        directory = Path(directory)
        limit_heap_retention()  # onnxruntime's load and prefill temporaries would otherwise stay in glibc's heap
        manifest_path = directory / MANIFEST
        if not manifest_path.is_file():
            raise CheckpointError(f"{directory} is not an ONNX export (no {MANIFEST}); write one with: mobilevlm-agent export onnx MODEL_DIR {directory}")
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            self.config = MobileVLMConfig.from_dict(manifest["config"])
        except (ValueError, KeyError, ConfigError) as e:
            raise CheckpointError(f"{manifest_path} is not a valid export manifest: {e}") from e
        self.quant, self.vision_quant = manifest.get("quant", "none"), manifest.get("vision_quant")
        self.llm = None  # a vision-only export (`bench encode`) encodes images and nothing else
        if "decoder" in manifest.get("parts", ["decoder"]):
            embeddings = directory / "embed_tokens.safetensors"
            if not embeddings.is_file():
                raise CheckpointError(f"{directory} lacks embed_tokens.safetensors")
            self.llm = OrtDecoder(directory / "decoder.onnx", self.config.llm, OrtEmbedding(embeddings), threads)
        self.vision_session = make_session(directory / "vision.onnx", threads) if self.config.vision is not None else None
        self._shrink = shrinking_run_options()
        tokenizer = directory / "tokenizer.model"
        self.tokenizer = Tokenizer(tokenizer) if tokenizer.is_file() else None

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[1, 3, S, S] -> visual tokens [1, N_visual, H]."""
        if self.vision_session is None:
            raise ConfigError(f"{self.config.name} is a text-only model: it cannot take an image")
        tokens = [self.vision_session.run(None, {"pixel_values": p[None].float().cpu().numpy()}, self._shrink)[0] for p in pixel_values]
        return torch.from_numpy(np.concatenate(tokens))

    # Preprocessing and splicing are backend-independent: the torch model's own methods, reused as they are.
    encode_rgb = MobileVLM.encode_rgb
    embed = MobileVLM.embed

