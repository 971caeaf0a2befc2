"""Everything torch.distributed: process group from torchrun's env, model wrapping, optimizer sharding, state I/O."""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as td
from torch import nn



@dataclass(frozen=True)
class DistInfo:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> DistInfo:
    """Single process without torchrun; otherwise a process group (NCCL on GPUs, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1 and not td.is_initialized():
        td.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank, world, local_rank, device)


def shutdown() -> None:
    if td.is_initialized():
        td.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.world > 1:
        td.barrier()


def mean_across(value: torch.Tensor, info: DistInfo) -> float:
    if info.world > 1:
        value = value.detach().clone()
        td.all_reduce(value)
        value /= info.world
    return float(value)


def wrap_model(model: nn.Module, strategy: str, info: DistInfo) -> nn.Module:
    if info.world == 1:
        return model
    if strategy in ("ddp", "zero1"):
        ids = [info.device.index] if info.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=False)
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    from mobilevlm_agent.model.llama import DecoderLayer
    from mobilevlm_agent.model.vision import CLIPEncoderLayer

    # a unit per transformer layer, so only one layer's full weights exist at a time; use_orig_params keeps
    # per-parameter requires_grad (frozen vision tower) and the original names for checkpoints
    policy = ModuleWrapPolicy({DecoderLayer, CLIPEncoderLayer})
    return FSDP(model, device_id=info.device, use_orig_params=True, auto_wrap_policy=policy)


def no_sync(model: nn.Module, skip: bool):
    """Skip the gradient all-reduce on all but the last micro-batch of an accumulation."""
    return model.no_sync() if skip and hasattr(model, "no_sync") else contextlib.nullcontext()


def build_optimizer(groups: list[dict], lr: float, betas, weight_decay: float, strategy: str, info: DistInfo) -> torch.optim.Optimizer:
    # fused AdamW: one kernel over all tensors (CPU and CUDA); the unfused loop is memory-bound on big embeddings
    kwargs = dict(lr=lr, betas=betas, weight_decay=weight_decay, fused=True)
    if strategy == "zero1" and info.world > 1:
        from torch.distributed.optim import ZeroRedundancyOptimizer

        return ZeroRedundancyOptimizer(groups, optimizer_class=torch.optim.AdamW, **kwargs)
    return torch.optim.AdamW(groups, **kwargs)


def optimizer_state(opt: torch.optim.Optimizer, model: nn.Module, info: DistInfo) -> dict | None:
    """The full optimizer state on the main process (None elsewhere); every process must call this."""
    if type(opt).__name__ == "ZeroRedundancyOptimizer":
        opt.consolidate_state_dict(to=0)
        return opt.state_dict() if info.is_main else None
    if type(model).__name__ == "FullyShardedDataParallel":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        state = get_optimizer_state_dict(model, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=info.device.type == "cuda"))
        return state if info.is_main else None
    return opt.state_dict() if info.is_main else None


def load_optimizer_state(opt: torch.optim.Optimizer, model: nn.Module, state: dict) -> None:
    if type(model).__name__ == "FullyShardedDataParallel":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(model, opt, state, options=StateDictOptions(full_state_dict=True))
    else:
        opt.load_state_dict(state)


def model_state(model: nn.Module, info: DistInfo) -> dict[str, torch.Tensor] | None:
    """The full (unsharded, unwrapped) model state on the main process."""
    if type(model).__name__ == "FullyShardedDataParallel":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        # cpu_offload gathers onto rank 0 only; on a CPU (gloo) group it crashes, and there the state is on CPU anyway
        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=info.device.type == "cuda"))
        return state if info.is_main else None
    return getattr(model, "module", model).state_dict() if info.is_main else None


# -- pickle-free nested state -> (tensors, JSON) -------------------------------------------------------------------
def flatten_state(tree, tensors: dict[str, torch.Tensor], path: str = "s"):
    """Tensors go to `tensors` (for safetensors); the rest becomes JSON. Dict keys keep their int/str type."""
    if isinstance(tree, torch.Tensor):
        tensors[path] = tree.detach().cpu().contiguous()
        return {"__tensor__": path}
    if isinstance(tree, dict):
        return {"__dict__": [[k, flatten_state(v, tensors, f"{path}.{k}")] for k, v in tree.items()]}
    if isinstance(tree, (list, tuple)):
        return [flatten_state(v, tensors, f"{path}.{i}") for i, v in enumerate(tree)]
    return tree


def unflatten_state(tree, tensors: dict[str, torch.Tensor]):
    if isinstance(tree, dict) and "__tensor__" in tree:
        return tensors[tree["__tensor__"]]
    if isinstance(tree, dict) and "__dict__" in tree:
        return {k: unflatten_state(v, tensors) for k, v in tree["__dict__"]}
    if isinstance(tree, list):
        return [unflatten_state(v, tensors) for v in tree]
    return tree
