"""Model configs as named data: the LLaMA decoder, the CLIP vision tower, and their MobileVLM composition."""
from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mobilevlm_agent.errors import ConfigError

PROJECTOR_TYPE = re.compile(r"^(ldpnetv2|ldpnet|linear|mlp\d+x_gelu)")


@dataclass(frozen=True)
class LlamaConfig:
    """MobileLLaMA / LLaMA decoder hyper-parameters (field names follow HF's LlamaConfig)."""

    vocab_size: int = 32000
    hidden_size: int = 2048
    intermediate_size: int = 5632
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    num_key_value_heads: int = 0  # 0 means "same as num_attention_heads" (MHA)
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    bos_token_id: int = 1
    eos_token_id: int = 2
    pad_token_id: int = 0

    def __post_init__(self) -> None:
        if self.num_key_value_heads == 0:
            object.__setattr__(self, "num_key_value_heads", self.num_attention_heads)
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(f"hidden_size {self.hidden_size} is not divisible by num_attention_heads {self.num_attention_heads}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(f"num_attention_heads {self.num_attention_heads} is not a multiple of num_key_value_heads {self.num_key_value_heads}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


@dataclass(frozen=True)
class VisionConfig:
    """CLIP ViT vision tower (defaults: openai/clip-vit-large-patch14-336)."""

    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    image_size: int = 336
    patch_size: int = 14
    layer_norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ConfigError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(f"vision hidden_size {self.hidden_size} is not divisible by {self.num_attention_heads} heads")

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2


@dataclass(frozen=True)
class MobileVLMConfig:
    """A MobileVLM: vision tower + projector + MobileLLaMA. `vision=None` is a text-only MobileLLaMA."""

    name: str
    llm: LlamaConfig
    vision: VisionConfig | None = None
    projector_type: str = "ldpnet"
    vision_select_layer: int = -2  # HF hidden_states index; -2 = output of the second-to-last layer
    image_aspect_ratio: str = "pad"  # "pad" = expand2square before resize; anything else = resize + center crop
    conv_template: str = "v1"
    source: str = ""

    def __post_init__(self) -> None:
        if self.vision is None:
            return
        if not PROJECTOR_TYPE.match(self.projector_type):
            raise ConfigError(f"unknown mm_projector_type {self.projector_type!r}; expected ldpnet, ldpnetv2, mlpNx_gelu or linear")
        if self.projector_type.startswith("ldpnet") and self.llm.hidden_size % 8:
            raise ConfigError(f"ldpnet projectors need hidden_size divisible by 8, got {self.llm.hidden_size}")
        if not -self.vision.num_hidden_layers <= self.vision_select_layer <= self.vision.num_hidden_layers:
            raise ConfigError(f"mm_vision_select_layer {self.vision_select_layer} is outside the {self.vision.num_hidden_layers}-layer vision tower")

    @property
    def is_multimodal(self) -> bool:
        return self.vision is not None

    @property
    def vision_layers_used(self) -> int:
        """Encoder layers that must run to produce hidden_states[vision_select_layer] (hidden_states has L+1 entries)."""
        assert self.vision is not None
        n = self.vision.num_hidden_layers
        return self.vision_select_layer % (n + 1)

    @property
    def visual_grid(self) -> int:
        """Side of the square grid of visual tokens the projector hands to the LLM."""
        assert self.vision is not None
        g = self.vision.grid_size
        return math.ceil(g / 2) if self.projector_type.startswith("ldpnet") else g

    @property
    def num_visual_tokens(self) -> int:
        return self.visual_grid**2 if self.vision is not None else 0

    # -- serialisation ---------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MobileVLMConfig":
        data = dict(data)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown model config fields {sorted(unknown)}; known: {sorted(known)}")
        try:
            llm = LlamaConfig(**data.pop("llm"))
            vision = data.pop("vision", None)
            return cls(llm=llm, vision=VisionConfig(**vision) if vision else None, **data)
        except (TypeError, KeyError) as e:
            raise ConfigError(f"bad model config: {e}") from e

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "MobileVLMConfig":
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(yaml.safe_load(f))

    @classmethod
    def from_name(cls, name: str) -> "MobileVLMConfig":
        """A named config from `models/NAME.yaml` (or a path to a YAML file)."""
        if name.endswith((".yaml", ".yml")) and Path(name).is_file():
            return cls.from_file(name)
        for directory in config_dirs():
            path = directory / f"{name}.yaml"
            if path.is_file():
                return cls.from_file(path)
        raise ConfigError(f"no model config named {name!r}; available: {', '.join(available_configs())}")


def config_dirs() -> list[Path]:
    """Where named configs live: $MOBILEVLM_AGENT_MODELS, the source tree's models/, the installed share dir."""
    import sys

    dirs = []
    if os.environ.get("MOBILEVLM_AGENT_MODELS"):
        dirs.append(Path(os.environ["MOBILEVLM_AGENT_MODELS"]))
    dirs.append(Path(__file__).resolve().parents[2] / "models")
    dirs.append(Path(sys.prefix) / "share" / "mobilevlm_agent" / "models")
    return [d for d in dirs if d.is_dir()]


def available_configs() -> list[str]:
    return sorted({p.stem for d in config_dirs() for p in d.glob("*.yaml")})
