"""Training recipes as dataclasses: loaded from YAML, overridden with `--set a.b=value`, validated once."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mobilevlm_agent.errors import ConfigError

STAGES = ("pretrain", "sft", "projector", "finetune", "vision")


@dataclass
class DataArgs:
    kind: str = "packed"  # packed (token buckets) | sft (ShareGPT JSON) | multimodal (LLaVA JSON) | labels (vision stage)
    path: str = ""  # bucket directory, or a JSON file
    image_folder: str = ""  # multimodal: where image paths are relative to (default: the JSON's folder)
    seq_len: int = 2048  # tokens per sample (packed windows; SFT/multimodal samples are truncated to it)
    template: str = "v1"  # sft/multimodal: v1 (fine-tuning) or plain (projector pretraining)
    image_aspect_ratio: str = "pad"  # pad = expand2square (fine-tuning); square = resize + centre crop
    num_workers: int = 0  # DataLoader workers (images are decoded there)
    mirror: bool = False  # images: also train on each one mirrored left-right, left/right swapped in its text
    cache_mb: int = 0  # images: keep this many MB of decoded, resized images per worker (0: decode every time)
    small_objects: bool = False  # vision stage: name the colour/shape of objects too small to dominate a cell (LabelDataset)


@dataclass
class OptimArgs:
    lr: float = 3e-4  # peak learning rate
    min_lr: float = 3e-5  # cosine floor
    warmup_steps: int = 2000
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.1
    grad_clip: float = 1.0  # 0 disables clipping
    projector_lr: float = 0.0  # MobileVLM V2: a separate projector lr (0 = same as lr)


@dataclass
class LoRAArgs:
    r: int = 0  # rank; 0 disables LoRA
    alpha: float = 16.0
    dropout: float = 0.05
    targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])


@dataclass
class Recipe:
    stage: str = "pretrain"  # pretrain | sft | projector (2a) | finetune (2b) | vision (no CLIP offline); decides what trains
    model: str = "tiny-llama"  # a config name (fresh random init) or a checkpoint directory
    init_from: dict[str, str] = field(default_factory=dict)  # part (llm|vision|projector) -> checkpoint dir
    tokenizer: str = ""  # tokenizer.model, when `model` is a config name
    data: DataArgs = field(default_factory=DataArgs)
    optim: OptimArgs = field(default_factory=OptimArgs)
    lora: LoRAArgs = field(default_factory=LoRAArgs)
    micro_batch: int = 4  # sequences per process per forward
    global_batch: int = 0  # sequences per optimizer step over all processes (0 = micro_batch x processes)
    global_batch_tokens: int = 0  # alternative for pretraining: tokens per step (global_batch = this / seq_len)
    max_steps: int = 100
    save_every: int = 0  # optimizer steps between checkpoints (0 = only at the end)
    keep_last: int = 2  # checkpoints kept
    seed: int = 0
    precision: str = "auto"  # auto (bf16 autocast where the hardware has it) | bf16 | fp32
    grad_checkpointing: bool = False
    strategy: str = "ddp"  # ddp | zero1 (ZeroRedundancyOptimizer) | fsdp
    train_vision: bool = False  # the vision tower is frozen in every official stage
    image_size: int = 0  # fine-tune at a new input resolution (position embeddings resampled); 0 keeps the model's
    vision_pooled_weight: float = 0.0  # vision stage: weight of the per-region pooled group term (VisionForward)

    def validate(self, world_size: int = 1) -> None:
        """Raise one ConfigError listing every problem."""
        problems = []
        if self.stage not in STAGES:
            problems.append(f"stage {self.stage!r} is not one of {STAGES}")
        if self.data.kind not in ("packed", "sft", "multimodal", "labels"):
            problems.append(f"data.kind {self.data.kind!r} is not packed, sft, multimodal or labels")
        if (self.stage == "vision") != (self.data.kind == "labels"):
            problems.append(f"stage vision goes with data.kind labels (got stage {self.stage}, kind {self.data.kind})")
        if not self.data.path:
            problems.append("data.path is empty")
        elif not Path(self.data.path).exists():
            problems.append(f"data.path {self.data.path!r} does not exist")
        if self.stage in ("projector", "finetune") and self.data.kind != "multimodal":
            problems.append(f"stage {self.stage} needs data.kind multimodal, got {self.data.kind}")
        if self.vision_pooled_weight < 0 or (self.vision_pooled_weight and self.stage != "vision"):
            problems.append(f"vision_pooled_weight {self.vision_pooled_weight} must be >= 0, and only the vision stage has that term")
        if self.image_size < 0:
            problems.append(f"image_size {self.image_size} is negative")
        if self.data.cache_mb < 0:
            problems.append(f"data.cache_mb {self.data.cache_mb} is negative")
        if self.strategy not in ("ddp", "zero1", "fsdp"):
            problems.append(f"strategy {self.strategy!r} is not ddp, zero1 or fsdp")
        if self.precision not in ("auto", "bf16", "fp32"):
            problems.append(f"precision {self.precision!r} is not auto, bf16 or fp32")
        if self.max_steps < 1 or self.micro_batch < 1:
            problems.append("max_steps and micro_batch must be >= 1")
        if self.global_batch % (self.micro_batch * world_size):
            problems.append(f"global_batch {self.global_batch} is not a multiple of micro_batch {self.micro_batch} x {world_size} processes")
        if problems:
            raise ConfigError("bad recipe: " + "; ".join(problems))

    def resolve(self, world_size: int) -> "Recipe":
        """Fill the derived batch size; returns self."""
        if self.global_batch_tokens:
            self.global_batch = max(1, self.global_batch_tokens // self.data.seq_len)
            self.global_batch -= self.global_batch % (self.micro_batch * world_size)
        if not self.global_batch:
            self.global_batch = self.micro_batch * world_size
        self.validate(world_size)
        return self

    def grad_accum(self, world_size: int) -> int:
        return self.global_batch // (self.micro_batch * world_size)


def _build(cls, data: dict[str, Any], where: str):
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown recipe key(s) {', '.join(where + k for k in unknown)}; known under {where or 'top level'}: {', '.join(sorted(fields))}")
    kwargs = {}
    for name, value in data.items():
        sub = {"data": DataArgs, "optim": OptimArgs, "lora": LoRAArgs}.get(name) if cls is Recipe else None
        if sub is not None:
            if not isinstance(value, dict):
                raise ConfigError(f"recipe key {where}{name} must be a mapping")
            value = _build(sub, value, f"{where}{name}.")
        elif name == "betas":
            value = tuple(value)
        elif fields[name].type in ("float", float) and isinstance(value, (str, int)) and not isinstance(value, bool):
            value = _to_float(value, where + name)  # YAML 1.1 reads `6e-4` (no dot) as a string
        kwargs[name] = value
    return cls(**kwargs)


def _to_float(value: str | int, key: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise ConfigError(f"recipe key {key} must be a number, got {value!r}") from None


def set_override(tree: dict[str, Any], assignment: str) -> None:
    """Apply `a.b.c=value` (value parsed as YAML) to a nested dict."""
    if "=" not in assignment:
        raise ConfigError(f"--set expects key=value, got {assignment!r}")
    key, raw = assignment.split("=", 1)
    *parents, leaf = key.strip().split(".")
    node = tree
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {key}: {part} is not a mapping")
    node[leaf] = yaml.safe_load(raw)


def load_recipe(path: str | Path | None, overrides: list[str] = ()) -> Recipe:
    tree: dict[str, Any] = {}
    if path:
        p = recipe_path(str(path))
        tree = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        if not isinstance(tree, dict):
            raise ConfigError(f"recipe {p} must be a YAML mapping")
    for assignment in overrides:
        set_override(tree, assignment)
    return _build(Recipe, tree, "")


def recipe_path(name: str) -> Path:
    """A recipe file, or the name of a shipped one (mobilevlm_agent/train/recipes/NAME.yaml)."""
    p = Path(name)
    if p.is_file():
        return p
    shipped = Path(__file__).parent / "recipes" / f"{name}.yaml"
    if shipped.is_file():
        return shipped
    names = sorted(q.stem for q in (Path(__file__).parent / "recipes").glob("*.yaml"))
    raise ConfigError(f"no recipe file {name!r}; shipped recipes: {', '.join(names)}")


def to_dict(recipe: Recipe) -> dict[str, Any]:
    d = dataclasses.asdict(recipe)
    d["optim"]["betas"] = list(d["optim"]["betas"])
    return d
