"""MobileVLM on onnxruntime: loads a directory written by `mobilevlm-agent export onnx` and plugs into the same
ChatSession / planner / bench code as the torch model (same attributes and methods, torch tensors in and out).

The KV cache is one preallocated buffer per layer that GroupQueryAttention reads and writes in place (bound as both
past and present), so a decode step copies nothing but one token's embedding in and the logits out.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from mobilevlm_agent.errors import CheckpointError, ConfigError
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


def map_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Read-only memory maps of a safetensors file's tensors (header checked by the checkpoint loader's own parser):
    an embedding lookup then pages in only the rows it touches (a V2 1.7B int8 table is 66 MB, of which a session
    reads a few hundred rows). The torch path reads checkpoints without mmap; see open_safetensors for why."""
    try:
        layout = safetensors_layout(path)
        return {name: np.memmap(path, dtype=torch.empty(0, dtype=dtype).numpy().dtype, mode="r", offset=offset, shape=tuple(shape))
                for name, (dtype, shape, offset, _) in layout.items()}
    except (CheckpointError, OSError, TypeError, ValueError) as e:  # TypeError: a dtype NumPy lacks (bf16)
        raise CheckpointError(f"{path} is not a readable safetensors file: {e}") from e


class OrtEmbedding:
    """The token embedding table, looked up in NumPy: ids (torch) -> fp32 embeddings (torch). An int8 table (int
    exports) has one scale per row."""

    def __init__(self, table: np.ndarray, scale: np.ndarray | None = None) -> None:
        self.weight, self.scale = table, scale
        self.weight_bytes = table.nbytes + (scale.nbytes if scale is not None else 0)

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        ids = ids.cpu().numpy()
        rows = self.weight[ids].astype(np.float32, copy=False)
        return torch.from_numpy(rows if self.scale is None else rows * self.scale[ids][..., None])


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
            tensors = map_safetensors(embeddings)
            if "embed_tokens" not in tensors:
                raise CheckpointError(f"{embeddings} holds no embed_tokens tensor")
            table = OrtEmbedding(tensors["embed_tokens"], tensors.get("embed_scale"))
            self.llm = OrtDecoder(directory / "decoder.onnx", self.config.llm, table, threads)
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

