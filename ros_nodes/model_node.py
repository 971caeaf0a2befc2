"""Base of the encoder and planner nodes: a managed lifecycle node that loads (or shares) the model in on_configure."""
from __future__ import annotations

import torch
from rclpy.lifecycle import LifecycleNode, State, TransitionCallbackReturn

from mobilevlm_agent.errors import MobileVLMError
from mobilevlm_agent.model.checkpoint import load_pretrained
from mobilevlm_agent.model.vlm import MobileVLM
from ros_nodes.node_tools import InputCounters, Param, declare_parameters

MODEL_PARAMS = (
    Param("model", "demo", "checkpoint directory, or a bundled model name (demo)"),
    Param("device", "auto", "torch device: auto (cuda when present, else cpu), cpu, cuda, cuda:N"),
    Param("dtype", "auto", "auto (bf16 on cuda, fp32 on cpu), float32, bfloat16, float16"),
    Param("quant", "none", "decoder weights: none, bf16, fp16, int8, int4 (quantised while loading, piece by piece)"),
    Param("group_size", 64, "int4 group size (32, 64, 128)"),
    Param("vision_quant", "none", "ViT + projector weights: none, bf16, fp16, int8"),
    Param("threads", 0, "torch intra-op threads of this process (0: torch's default, one per core); give each model "
                        "process its share of the cores, or processes that compute at once oversubscribe them"),
    Param("autostart", True, "configure and activate on start; false waits for a lifecycle manager"),
)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelNode(LifecycleNode):
    """Lifecycle: configure loads the model and creates the entities, activate starts serving, cleanup frees it."""

    def __init__(self, name: str, params: tuple[Param, ...], shared_model: MobileVLM | None = None, **kwargs) -> None:
        super().__init__(name, **kwargs)
        self.p = declare_parameters(self, MODEL_PARAMS + params)
        self.shared_model = shared_model
        self.model: MobileVLM | None = None
        self.active = False
        self.counters = InputCounters(self)

    def start(self) -> "ModelNode":
        if self.p.autostart and self.trigger_configure() == TransitionCallbackReturn.SUCCESS:
            self.trigger_activate()  # after a failed configure the node stays up, unconfigured, its error logged
        return self

    def load_model(self) -> MobileVLM:
        if self.shared_model is not None:
            return self.shared_model
        if self.p.threads < 0:
            raise MobileVLMError(f"threads must be 0 (torch's default) or more, got {self.p.threads}")
        if self.p.threads:
            torch.set_num_threads(self.p.threads)
        device = self.p.device if self.p.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        if self.p.dtype != "auto" and self.p.dtype not in DTYPES:
            raise MobileVLMError(f"dtype must be auto or one of {', '.join(DTYPES)}, got {self.p.dtype!r}")
        dtype = DTYPES.get(self.p.dtype)
        return load_pretrained(self.p.model, dtype=dtype, device=device, quant=self.p.quant, group_size=self.p.group_size, vision_quant=self.p.vision_quant)

    def on_configure(self, state: State) -> TransitionCallbackReturn:
        try:
            self.model = self.load_model()
        except (MobileVLMError, OSError) as e:
            self.get_logger().error(f"cannot load model {self.p.model!r}: {e}")
            return TransitionCallbackReturn.FAILURE
        self.create_entities()
        how = "sharing the process's" if self.shared_model is not None else "loaded"
        weights = f"decoder {self.p.quant}, vision {self.p.vision_quant}" if self.shared_model is None else "as shared"
        self.get_logger().info(f"{how} {self.model.config.name} on {self.model.device} ({self.model.dtype}; weights {weights})")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: State) -> TransitionCallbackReturn:
        self.active = True
        return super().on_activate(state)

    def on_deactivate(self, state: State) -> TransitionCallbackReturn:
        self.active = False
        return super().on_deactivate(state)

    def on_cleanup(self, state: State) -> TransitionCallbackReturn:
        self.active, self.model = False, None
        return TransitionCallbackReturn.SUCCESS

    def create_entities(self) -> None:
        raise NotImplementedError

    def model_info(self) -> dict:
        assert self.model is not None
        return {"model": self.model.config.name, "device": str(self.model.device), "dtype": str(self.model.dtype).replace("torch.", "")}
