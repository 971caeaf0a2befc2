"""Official MobileVLM / MobileLLaMA checkpoints: the only file that knows HF key names and config.json fields.

Reads `model.safetensors`, sharded `*.safetensors` (+ index), or `pytorch_model*.bin` (+ index) with
`torch.load(weights_only=True)`. The vision tower's shape is inferred from the weights, never from a hub.
"""
from __future__ import annotations

import json
import math
import os
import pickle
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import save_file

from mobilevlm_agent.errors import CheckpointError, ConfigError
from mobilevlm_agent.model.config import LlamaConfig, MobileVLMConfig, VisionConfig
from mobilevlm_agent.model.vlm import MobileVLM
from mobilevlm_agent.tokenizer import Tokenizer

# (official prefix, internal prefix); the first match wins, so the most specific comes first.
KEY_PREFIXES = (
    ("model.vision_tower.vision_tower.vision_model.", "vision."),
    ("model.mm_projector.", "projector."),
    ("lm_head.", "llm.lm_head."),
    ("model.", "llm."),
)
# Present in official files but never used: buffers older transformers saved, and CLIP's post-LN.
IGNORED_KEYS = re.compile(r"(\.position_ids$|\.rotary_emb\.inv_freq$|^vision\.post_layernorm\.)")
VISION_LAYER_KEY = re.compile(r"^vision\.encoder\.layers\.(\d+)\.")


def to_internal(key: str) -> str:
    for official, internal in KEY_PREFIXES:
        if key.startswith(official):
            return internal + key[len(official) :]
    return key


def to_official(key: str) -> str:
    for official, internal in KEY_PREFIXES:
        if key.startswith(internal):
            return official + key[len(internal) :]
    return key


# -- reading weight files ------------------------------------------------------------------------------------------
def weight_files(directory: Path) -> list[Path]:
    """The weight files of a checkpoint directory, safetensors preferred."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = directory / index_name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (ValueError, KeyError) as e:
                raise CheckpointError(f"{index} is not a valid shard index (needs a 'weight_map'): {e}") from e
            return [directory / name for name in sorted(set(weight_map.values()))]
    for pattern in ("model.safetensors", "*.safetensors", "pytorch_model.bin", "pytorch_model-*.bin"):
        found = sorted(directory.glob(pattern))
        if found:
            return found
    raise CheckpointError(f"no weights in {directory}: expected model.safetensors, *.safetensors or pytorch_model*.bin")


@dataclass(frozen=True)
class StoredTensor:
    """One tensor of a checkpoint, read only when asked: loading takes one piece of the model at a time."""

    shape: torch.Size
    read: Callable[[], torch.Tensor]


def open_weight_file(path: Path) -> dict[str, StoredTensor]:
    """Tensors of one file by official key, unread: safetensors through its header, .bin through torch.load(mmap=True)."""
    if not path.is_file():
        raise CheckpointError(f"weight file listed in the index is missing: {path}")
    if path.suffix == ".safetensors":
        return open_safetensors(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"refusing to load {path}: it holds pickled objects other than tensors "
            "(only torch.load(weights_only=True) is allowed for .bin files; convert trusted files to safetensors)"
        ) from e
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"corrupt or truncated checkpoint file {path}: {e}") from e
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} is not a state dict of tensors")
    return {k: StoredTensor(v.shape, lambda v=v: v) for k, v in state.items()}  # zip files are mmap'd: pages load on use


SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "I64": torch.int64,
                      "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}


def safetensors_layout(path: Path) -> dict[str, tuple[torch.dtype, torch.Size, int, int]]:
    """Read and check a safetensors header: per tensor (dtype, shape, byte offset in the file, byte length). Every
    tensor must lie inside the file at exactly its shape's size, and nothing may follow the last one."""
    def corrupt(why: str) -> CheckpointError:
        return CheckpointError(f"corrupt or truncated safetensors file {path}: {why}")

    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if not 0 < n <= min(size - 8, 100 << 20):
            raise corrupt("bad header length")
        try:
            header = json.loads(f.read(n))
        except (ValueError, UnicodeDecodeError) as e:
            raise corrupt(f"header is not JSON ({e})") from e
    if not isinstance(header, dict):
        raise corrupt("header is not a JSON object")
    header.pop("__metadata__", None)
    data_start, data_len, layout, end_max = 8 + n, size - 8 - n, {}, 0
    for key, entry in header.items():
        try:
            dtype, shape, (begin, end) = SAFETENSORS_DTYPES[entry["dtype"]], torch.Size(entry["shape"]), entry["data_offsets"]
        except (KeyError, TypeError, ValueError) as e:
            raise corrupt(f"bad entry for {key!r} ({e})") from e
        if not (0 <= begin <= end <= data_len and end - begin == shape.numel() * dtype.itemsize):
            raise corrupt(f"tensor {key!r} lies outside the file or does not match its shape")
        end_max = max(end_max, end)
        layout[key] = (dtype, shape, data_start + begin, end - begin)
    if end_max != data_len:
        raise corrupt(f"{data_len - end_max} bytes after the last tensor")
    return layout


def open_safetensors(path: Path) -> dict[str, StoredTensor]:
    """Read the header only; each tensor is read later with plain file reads. Not mmap: touched pages of a mapping
    count as our resident memory, and a 1.7B checkpoint read through one stayed resident at its full 3.3 GB."""
    return {key: StoredTensor(shape, partial(_read_tensor, path, offset, nbytes, dtype, shape))
            for key, (dtype, shape, offset, nbytes) in safetensors_layout(path).items()}


def _read_tensor(path: Path, offset: int, nbytes: int, dtype: torch.dtype, shape: torch.Size) -> torch.Tensor:
    buffer = bytearray(nbytes)
    with open(path, "rb") as f:
        f.seek(offset)
        if f.readinto(buffer) != nbytes:
            raise CheckpointError(f"corrupt or truncated safetensors file {path}: file shrank while loading")
    return torch.frombuffer(buffer, dtype=dtype).reshape(shape) if nbytes else torch.empty(shape, dtype=dtype)


def open_state_dict(directory: Path) -> dict[str, StoredTensor]:
    """Every tensor of a checkpoint directory under internal key names, unread."""
    state: dict[str, StoredTensor] = {}
    for path in weight_files(directory):
        for key, tensor in open_weight_file(path).items():
            state[to_internal(key)] = tensor
    return state


def read_state_dict(directory: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint directory under internal key names, read (training inits, small checkpoints)."""
    return {key: tensor.read() for key, tensor in open_state_dict(directory).items()}


# -- config ------------------------------------------------------------------------------------------------------------
def infer_vision_config(state: dict[str, StoredTensor], hints: dict[str, Any]) -> VisionConfig:
    """CLIP shape from the weights: width and patch from the patch conv, image size from the position count."""
    try:
        width, _, patch, _ = state["vision.embeddings.patch_embedding.weight"].shape
        n_pos = state["vision.embeddings.position_embedding.weight"].shape[0]
        intermediate = state["vision.encoder.layers.0.mlp.fc1.weight"].shape[0]
    except KeyError as e:
        raise CheckpointError(f"config.json describes a VLM but the weights lack the vision tower key {to_official(e.args[0])!r}") from e
    grid = math.isqrt(n_pos - 1)
    if grid * grid != n_pos - 1:
        raise CheckpointError(f"vision position embedding has {n_pos} rows; expected 1 + a square number of patches")
    layers = 1 + max(int(m.group(1)) for k in state if (m := VISION_LAYER_KEY.match(k)))
    return VisionConfig(
        hidden_size=width,
        intermediate_size=intermediate,
        num_hidden_layers=hints.get("num_hidden_layers", layers),
        num_attention_heads=hints.get("num_attention_heads", width // 64),  # CLIP ViTs use head_dim 64
        image_size=grid * patch,
        patch_size=patch,
        layer_norm_eps=hints.get("layer_norm_eps", 1e-5),
    )


def config_from_hf(hf: dict[str, Any], state: dict[str, StoredTensor], name: str) -> MobileVLMConfig:
    if hf.get("rope_scaling"):
        raise CheckpointError(f"rope_scaling {hf['rope_scaling']!r} is not supported")
    try:
        llm = LlamaConfig(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"],
            num_hidden_layers=hf["num_hidden_layers"],
            num_attention_heads=hf["num_attention_heads"],  # not the stale lit-gpt `n_head` of the 3B configs
            num_key_value_heads=hf.get("num_key_value_heads") or 0,
            max_position_embeddings=hf.get("max_sequence_length") or hf.get("max_position_embeddings", 2048),
            rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
            rope_theta=hf.get("rope_theta", 10000.0),
            bos_token_id=hf.get("bos_token_id", 1),
            eos_token_id=hf.get("eos_token_id", 2),
            pad_token_id=hf.get("pad_token_id") or 0,
        )
    except KeyError as e:
        raise CheckpointError(f"config.json lacks the required field {e.args[0]!r}") from e
    if "mm_projector_type" not in hf and "mm_hidden_size" not in hf:
        return MobileVLMConfig(name=name, llm=llm, vision=None)
    vision = infer_vision_config(state, hf.get("vision_config") or {})
    if hf.get("mm_hidden_size", vision.hidden_size) != vision.hidden_size:
        raise CheckpointError(f"config.json mm_hidden_size {hf['mm_hidden_size']} != vision tower width {vision.hidden_size} in the weights")
    return MobileVLMConfig(
        name=name,
        llm=llm,
        vision=vision,
        projector_type=hf.get("mm_projector_type", "linear"),
        vision_select_layer=hf.get("mm_vision_select_layer", -2),
        image_aspect_ratio=hf.get("image_aspect_ratio", "pad"),
        conv_template=hf.get("conv_template", "v1"),
    )


def config_to_hf(cfg: MobileVLMConfig, dtype: torch.dtype) -> dict[str, Any]:
    llm = cfg.llm
    hf: dict[str, Any] = {
        "architectures": ["MobileLlamaForCausalLM" if cfg.vision else "LlamaForCausalLM"],
        "model_type": "mobilevlm" if cfg.vision else "llama",
        **{k: getattr(llm, k) for k in LlamaConfig.__dataclass_fields__},
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "rope_scaling": None,
        "torch_dtype": str(dtype).removeprefix("torch."),
    }
    if cfg.vision is not None:
        used = cfg.vision_layers_used  # only these layers are saved, so the selected layer becomes a positive index
        hf.update(
            mm_projector_type=cfg.projector_type,
            mm_hidden_size=cfg.vision.hidden_size,
            mm_vision_select_layer=used,
            mm_vision_select_feature="patch",
            mm_vision_tower="embedded",
            vision_tower_type="clip",
            mm_use_im_start_end=False,
            mm_use_im_patch_token=False,
            image_aspect_ratio=cfg.image_aspect_ratio,
            conv_template=cfg.conv_template,
            vision_config={**vars(cfg.vision), "num_hidden_layers": used},
        )
    return hf


# -- loading -------------------------------------------------------------------------------------------------------
def check_state_dict(model: MobileVLM, state: dict[str, StoredTensor | torch.Tensor]) -> dict[str, StoredTensor | torch.Tensor]:
    """Drop keys the model never uses; raise one error listing every missing, unexpected or mis-shaped key (tensors or
    unread StoredTensors: only shapes are looked at)."""
    expected = {k: v.shape for k, v in model.state_dict().items()}
    used_layers = model.config.vision_layers_used if model.config.vision else 0
    kept: dict[str, StoredTensor | torch.Tensor] = {}
    unexpected = []
    for key, tensor in state.items():
        m = VISION_LAYER_KEY.match(key)
        if IGNORED_KEYS.search(key) or (m and int(m.group(1)) >= used_layers and key not in expected):
            continue
        if key in expected:
            kept[key] = tensor
        else:
            unexpected.append(key)
    problems = []
    missing = sorted(set(expected) - set(kept))
    if missing:
        problems.append(f"missing keys ({len(missing)}): {', '.join(to_official(k) for k in missing[:8])}{' ...' if len(missing) > 8 else ''}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {', '.join(to_official(k) for k in sorted(unexpected)[:8])}{' ...' if len(unexpected) > 8 else ''}")
    for key, tensor in kept.items():
        if tensor.shape != expected[key]:
            problems.append(f"shape mismatch for {to_official(key)}: checkpoint {tuple(tensor.shape)}, model {tuple(expected[key])}")
    if problems:
        raise CheckpointError(f"checkpoint does not match {model.config.name}: " + "; ".join(problems))
    return kept


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 on GPUs that support it, fp32 on CPU (bf16 matmuls are slow on most CPUs)."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16 if device.type == "cuda" else torch.float32


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_model_dir(path: str | os.PathLike) -> Path:
    """A checkpoint directory, or the name of a bundled one (e.g. `demo` -> models/demo)."""
    from mobilevlm_agent.model.config import config_dirs

    directory = Path(path)
    if directory.is_dir():
        return directory
    if directory.name == str(path):
        for base in config_dirs():
            if (base / directory.name / "config.json").is_file():
                return base / directory.name
    raise CheckpointError(f"model directory not found: {path} (give a checkpoint directory, or a bundled name such as 'demo')")


def load_pretrained(path: str | os.PathLike, dtype: torch.dtype | None = None, device: str | torch.device | None = None,
                    quant: str = "none", group_size: int = 64, vision_quant: str = "none") -> MobileVLM:
    """Load a checkpoint directory piece by piece (decoder layer, ViT layer, ...), each quantised as soon as it is read:
    a 1.7B checkpoint loads to int4 without its fp32 weights ever being whole in memory."""
    from mobilevlm_agent.model.quant import check_modes, quantize_model

    check_modes(quant, group_size, vision_quant)
    directory = resolve_model_dir(path)
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{directory} has no config.json")
    try:
        hf = json.loads(config_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{config_path} is not valid JSON: {e}") from e
    state = open_state_dict(directory)
    if "llm.lm_head.weight" not in state and hf.get("tie_word_embeddings") and "llm.embed_tokens.weight" in state:
        state["llm.lm_head.weight"] = state["llm.embed_tokens.weight"]
    try:
        config = config_from_hf(hf, state, name=directory.name)
    except ConfigError as e:
        raise CheckpointError(f"{config_path}: {e}") from e
    device = resolve_device(device)
    dtype = dtype or default_dtype(device)
    with torch.device("meta"):
        model = MobileVLM(config)
    state = check_state_dict(model, state)
    names = {id(module): name for name, module in model.named_modules()}

    def materialise(piece: torch.nn.Module) -> None:
        prefix = names[id(piece)] + "."
        piece.load_state_dict({k[len(prefix):]: t.read().to(device=device, dtype=dtype) for k, t in state.items() if k.startswith(prefix)}, assign=True)

    quantize_model(model, quant, group_size, vision_quant, materialise=materialise)
    unread = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if unread:  # model_parts must cover the whole model
        raise CheckpointError(f"internal error: {len(unread)} tensors were never loaded, e.g. {unread[0]}")
    if (directory / "tokenizer.model").is_file():
        model.tokenizer = Tokenizer(directory / "tokenizer.model")
    return model.eval()


def load_model(target: str | os.PathLike, backend: str = "torch", dtype: torch.dtype | None = None, device: str | torch.device | None = None,
               threads: int | None = None, quant: str = "none", group_size: int = 64, vision_quant: str = "none"):
    """One entry point for every backend: a checkpoint directory (torch, quantised while loading) or an `export onnx`
    directory (ort, run as exported); both give an object that ChatSession, the planner and bench take."""
    if backend == "ort":
        if (quant, vision_quant) != ("none", "none"):
            raise ConfigError("the ort backend runs an ONNX export as it was written: choose --quant at `export onnx` time")
        from mobilevlm_agent.model.ort import OrtMobileVLM

        model = OrtMobileVLM(target, threads)
        if model.llm is None:
            raise CheckpointError(f"{target} is a vision-only ONNX export (bench encode writes those); export the whole model with: mobilevlm-agent export onnx MODEL_DIR OUT_DIR")
        return model
    if backend != "torch":
        raise ConfigError(f"unknown backend {backend!r}; choose torch or ort")
    return load_pretrained(target, dtype=dtype, device=device, quant=quant, group_size=group_size, vision_quant=vision_quant)


# -- saving --------------------------------------------------------------------------------------------------------
def save_pretrained(model: MobileVLM, path: str | os.PathLike, dtype: torch.dtype | None = None, state: dict[str, torch.Tensor] | None = None) -> Path:
    """Write config.json, model.safetensors (official key names) and tokenizer.model; atomic per directory.

    `state` replaces model.state_dict() (e.g. one gathered from FSDP shards).
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    dtype = dtype or model.dtype
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        state = model.state_dict() if state is None else state
        weights = {to_official(k): v.detach().to(dtype=dtype, device="cpu").contiguous() for k, v in state.items()}
        save_file(weights, tmp / "model.safetensors", metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config_to_hf(model.config, dtype), indent=2) + "\n")
        if model.tokenizer is not None:
            shutil.copyfile(model.tokenizer.path, tmp / "tokenizer.model")
        tmp.chmod(0o755)  # mkdtemp makes it private
        for f in tmp.iterdir():
            f.chmod(0o644)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
