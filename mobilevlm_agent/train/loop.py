"""One training loop for every stage: setup -> fit, with atomic, resumable checkpoints. torchrun-ready."""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader
from tqdm import tqdm

from mobilevlm_agent.errors import CheckpointError, ConfigError
from mobilevlm_agent.model.checkpoint import read_state_dict, save_pretrained
from mobilevlm_agent.model.random_init import random_model
from mobilevlm_agent.model.vlm import MobileVLM
from mobilevlm_agent.tokenizer import IGNORE_INDEX, Tokenizer
from mobilevlm_agent.train import dist
from mobilevlm_agent.train.datasets import DOMINANT, ConversationDataset, LabelDataset, PackedDataset, StepSampler, collate
from mobilevlm_agent.train.lora import apply_lora, merge_lora
from mobilevlm_agent.train.recipe import Recipe, load_recipe, to_dict

PARTS = ("llm", "vision", "projector")


# -- setup ---------------------------------------------------------------------------------------------------------
def build_model(recipe: Recipe) -> MobileVLM:
    if Path(recipe.model).is_dir():
        model = MobileVLM.from_pretrained(recipe.model, dtype=torch.float32, device="cpu")
    else:
        model = random_model(recipe.model, seed=recipe.seed)
        if not recipe.tokenizer:
            raise ConfigError(f"recipe model {recipe.model!r} is a config name: set `tokenizer` to a tokenizer.model")
        model.tokenizer = Tokenizer(recipe.tokenizer)
    for part, source in recipe.init_from.items():
        load_part(model, part, source)
    if recipe.image_size:
        if model.vision is None:
            raise ConfigError(f"image_size {recipe.image_size}: {model.config.name} has no vision tower")
        if recipe.image_size != model.config.vision.image_size:
            model.resize_images(recipe.image_size)
    if recipe.stage in ("sft", "finetune"):  # the saved model chats in the template it was fine-tuned on
        model.config = dataclasses.replace(model.config, conv_template=recipe.data.template)
    if model.tokenizer is None:
        raise ConfigError(f"{recipe.model} has no tokenizer.model")
    if model.tokenizer.vocab_size > model.config.llm.vocab_size:
        raise ConfigError(f"tokenizer has {model.tokenizer.vocab_size} pieces but the model's vocab is {model.config.llm.vocab_size}")
    return model


def load_part(model: MobileVLM, part: str, source: str) -> None:
    """Initialise one part (llm | vision | projector) from another checkpoint directory."""
    if part not in PARTS or getattr(model, part) is None:
        raise ConfigError(f"init_from: {part!r} is not a part of {model.config.name} (parts: {', '.join(p for p in PARTS if getattr(model, p) is not None)})")
    module = getattr(model, part)
    wanted = module.state_dict()
    state = {k[len(part) + 1 :]: v for k, v in read_state_dict(Path(source)).items() if k.startswith(part + ".") and k[len(part) + 1 :] in wanted}
    missing = sorted(set(wanted) - set(state))
    if missing:
        raise CheckpointError(f"init_from {part}={source}: missing {len(missing)} keys, e.g. {missing[0]}")
    bad = [f"{k} {tuple(v.shape)} vs {tuple(wanted[k].shape)}" for k, v in state.items() if v.shape != wanted[k].shape]
    if bad:
        raise CheckpointError(f"init_from {part}={source}: shape mismatch: {'; '.join(bad[:4])}")
    module.load_state_dict({k: v.float() for k, v in state.items()})


def set_trainable(model: MobileVLM, recipe: Recipe) -> list[dict]:
    """Freeze by stage; returns AdamW param groups (no decay on norms/biases; V2's separate projector lr)."""
    trains = {"pretrain": {"llm"}, "sft": {"llm"}, "projector": {"projector"}, "finetune": {"llm", "projector"}, "vision": {"vision", "projector"}}[recipe.stage]
    if recipe.train_vision:
        trains = trains | {"vision"}
    for p in model.parameters():
        p.requires_grad_(False)
    for part in trains:
        module = getattr(model, part)
        if module is None:
            raise ConfigError(f"stage {recipe.stage} trains the {part}, which {model.config.name} does not have")
        if part == "llm" and recipe.lora.r:
            apply_lora(module, recipe.lora.r, recipe.lora.alpha, recipe.lora.dropout, recipe.lora.targets)
        else:
            module.requires_grad_(True)
    groups: dict[tuple[bool, bool], list] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            is_projector = name.startswith("projector.") and recipe.optim.projector_lr > 0
            groups.setdefault((p.ndim >= 2, is_projector), []).append(p)
    return [
        {"params": ps, "weight_decay": recipe.optim.weight_decay if decay else 0.0, "lr_scale": recipe.optim.projector_lr / recipe.optim.lr if proj else 1.0}
        for (decay, proj), ps in sorted(groups.items())
    ]


def build_dataset(recipe: Recipe, model: MobileVLM):
    d = recipe.data
    if d.kind == "packed":
        return PackedDataset(d.path, d.seq_len, pad_id=model.config.llm.pad_token_id)
    vision = model.config.vision
    if d.kind == "labels":
        if vision is None:
            raise ConfigError(f"the vision stage needs a multimodal model, {model.config.name} is text-only")
        return LabelDataset(d.path, vision.image_size, math.isqrt(model.config.num_visual_tokens), d.image_folder,
                            pad_to_square=d.image_aspect_ratio == "pad", mirror=d.mirror, cache_mb=d.cache_mb, small_objects=d.small_objects)
    return ConversationDataset(
        d.path, model.tokenizer, d.template, d.seq_len,
        image_size=vision.image_size if vision else 0, visual_tokens=model.config.num_visual_tokens,
        image_folder=d.image_folder, pad_to_square=d.image_aspect_ratio == "pad", mirror=d.mirror, cache_mb=d.cache_mb,
    )


def lr_at(step: int, recipe: Recipe) -> float:
    """Linear warm-up to the peak, then cosine down to min_lr at max_steps."""
    o = recipe.optim
    if step < o.warmup_steps:
        return o.lr * (step + 1) / o.warmup_steps
    progress = (step - o.warmup_steps) / max(1, recipe.max_steps - o.warmup_steps)
    return o.min_lr + 0.5 * (o.lr - o.min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))


def autocast(recipe: Recipe, device: torch.device):
    if recipe.precision == "fp32" or (recipe.precision == "auto" and not (device.type == "cuda" and torch.cuda.is_bf16_supported())):
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=torch.bfloat16)


class TrainForward(torch.nn.Module):
    """What DDP/FSDP wrap: the whole step's forward (vision, projector, splicing, LLM) inside one call."""

    def __init__(self, model: MobileVLM) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: list[list[int]], labels: list[list[int]], pixels: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.model
        embeds, labels_t = m.training_batch(ids, labels, pixels)
        targets = labels_t[:, 1:]
        logits = m.llm(inputs_embeds=embeds)
        n_targets = (targets != IGNORE_INDEX).sum()
        # sum / count rather than mean: a micro-batch whose targets were all truncated away gives 0, not NaN
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum") / n_targets.clamp(min=1)
        if pixels is None and m.projector is not None and any(p.requires_grad for p in m.projector.parameters()):
            # a text-only micro-batch: touch the projector so every trainable weight gets a gradient (DDP needs it)
            v = m.config.vision
            loss = loss + 0.0 * m.projector(torch.zeros(1, v.num_patches, v.hidden_size, device=embeds.device)).sum()
        return loss, n_targets


class VisionForward(torch.nn.Module):
    """The vision stage (our stand-in for CLIP pretraining, which cannot be downloaded here): every visual token learns
    to name the objects in its cell of the image (and whether they are near) through one linear head shared by all
    tokens, then dropped. Dense targets teach the tokens themselves what they show, which is what the LLM reads; an
    image-level head over all tokens at once overfit (held-out shape 43 % against 69 % on the training views).

    Two terms: presence (per class, binary cross-entropy: any cover) and, for each exclusive group of classes
    (colours, shapes), a softmax over the group on the cells its classes cover at least DOMINANT of. Presence alone
    learned colour but left shape at its prior: a sliver of an object in a cell says its colour, not its shape.

    With `pooled_weight`, a third term: per image and group class, the logits averaged over the cells that class alone
    covers at least DOMINANT of must name it (what `eval vision` scores per object). A cell inside a flat face cannot
    tell a cube from a cylinder on its own; averaged, the region's edge cells can carry the answer for it. Measured on
    the demo model: no better than training as long without it (models/demo/MODEL_CARD.md), so its recipe leaves it off."""

    def __init__(self, model: MobileVLM, num_classes: int, groups: dict[str, list[int]] | None = None, pooled_weight: float = 0.0) -> None:
        super().__init__()
        self.model = model
        self.head = torch.nn.Linear(model.config.llm.hidden_size, num_classes)
        self.groups = list((groups or {}).values())
        self.pooled_weight = pooled_weight

    def forward(self, ids, labels: list[torch.Tensor], pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.head(self.model.encode_images(pixels).float())  # [B, tokens, classes]
        cover = torch.stack(labels).to(logits.device)  # fraction of each cell each class covers
        if cover.shape != logits.shape:
            raise ConfigError(f"vision targets {tuple(cover.shape[1:])} do not match the model's visual tokens x classes {tuple(logits.shape[1:])}")
        # most cells show nothing: weigh the positives up so "nothing anywhere" is not the easy answer
        loss = F.binary_cross_entropy_with_logits(logits, (cover > 0).float(), pos_weight=torch.full_like(logits[0, 0], 4.0))
        for group in self.groups:
            part = cover[..., group]
            total = part.sum(-1)
            shown = total >= DOMINANT
            if shown.any():
                loss = loss + F.cross_entropy(logits[..., group][shown], part[shown] / total[shown, None])
            if self.pooled_weight:
                loss = loss + self.pooled_weight * self.pooled_term(logits[..., group], part, total)
        return loss, torch.tensor(len(labels))

    def pooled_term(self, logits: torch.Tensor, part: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
        """logits, part: [B, tokens, group size]; total: [B, tokens]. Cross-entropy of each region's mean logits."""
        alone = ((part >= DOMINANT) & (total[..., None] - part <= 0)).float()  # no other class of the group there
        cells = alone.sum(1)  # [B, group size]
        shown = cells > 0
        if not shown.any():
            return logits.sum() * 0.0
        pooled = torch.einsum("btg,btc->bgc", alone, logits) / cells.clamp(min=1)[..., None]
        target = torch.arange(logits.shape[-1], device=logits.device).expand_as(cells)
        return F.cross_entropy(pooled[shown], target[shown])


# -- checkpoints ---------------------------------------------------------------------------------------------------
def checkpoint_dirs(run_dir: Path) -> list[Path]:
    return sorted(p for p in (run_dir / "checkpoints").glob("step-*") if p.is_dir() and not p.name.endswith(".tmp") and (p / "trainer.json").is_file())


def save_checkpoint(run_dir: Path, step: int, model: MobileVLM, wrapped, opt, recipe: Recipe, info: dist.DistInfo) -> None:
    """Every process calls this (sharded optimizers gather); the main process writes, atomically."""
    opt_state = dist.optimizer_state(opt, wrapped, info)
    full = dist.model_state(wrapped, info)  # gathers shards under FSDP
    final = run_dir / "checkpoints" / f"step-{step:07d}"
    tmp = final.with_name(final.name + ".tmp")
    if info.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        full = {k.removeprefix("model."): v for k, v in full.items()}
        head = {k: v.contiguous() for k, v in full.items() if k.startswith("head.")}  # the vision stage's throwaway head
        if head:
            save_file(head, tmp / "head.safetensors")
        save_pretrained(model, tmp / "model", dtype=torch.float32, state={k: v for k, v in full.items() if ".lora_" not in k and k not in head})
        if recipe.lora.r:
            save_file({k: v.contiguous() for k, v in full.items() if ".lora_" in k}, tmp / "lora.safetensors")
        tensors: dict[str, torch.Tensor] = {}
        tree = dist.flatten_state(opt_state, tensors)
        save_file(tensors, tmp / "optimizer.safetensors")
        (tmp / "trainer.json").write_text(json.dumps({"step": step, "samples_seen": step * recipe.global_batch, "optimizer": tree, "recipe": to_dict(recipe)}))
    dist.barrier(info)
    save_file({"torch": torch.get_rng_state()} | ({"cuda": torch.cuda.get_rng_state()} if torch.cuda.is_available() else {}), tmp / f"rng-{info.rank}.safetensors")
    dist.barrier(info)
    if info.is_main:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)  # readers only ever see whole checkpoints
        for old in checkpoint_dirs(run_dir)[: -recipe.keep_last]:
            shutil.rmtree(old)
    dist.barrier(info)


def load_model_state(ckpt: Path, forward: torch.nn.Module) -> None:
    """Weights (LoRA adapters, the vision head) of a checkpoint, before the model is wrapped for distribution."""
    state = read_state_dict(ckpt / "model")
    if (ckpt / "lora.safetensors").is_file():
        state |= load_file(ckpt / "lora.safetensors")
    forward.model.load_state_dict(state)
    if (ckpt / "head.safetensors").is_file():
        forward.load_state_dict({**{f"model.{k}": v for k, v in forward.model.state_dict().items()}, **load_file(ckpt / "head.safetensors")})


def load_trainer_state(ckpt: Path, wrapped, opt, info: dist.DistInfo) -> int:
    """Optimizer state and this process's RNG; returns the step to continue from."""
    meta = json.loads((ckpt / "trainer.json").read_text())
    dist.load_optimizer_state(opt, wrapped, dist.unflatten_state(meta["optimizer"], load_file(ckpt / "optimizer.safetensors")))
    rng_file = ckpt / f"rng-{info.rank}.safetensors"
    if rng_file.is_file():
        rng = load_file(rng_file)
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
    return int(meta["step"])


# -- fit -----------------------------------------------------------------------------------------------------------
def fit(recipe: Recipe, run_dir: Path, resume: bool = False) -> Path:
    info = dist.init_distributed()
    recipe.resolve(info.world)
    torch.manual_seed(recipe.seed)
    model = build_model(recipe)
    groups = set_trainable(model, recipe)
    model.to(info.device).train()
    model.llm.grad_checkpointing = recipe.grad_checkpointing
    if model.vision is not None and not recipe.train_vision:
        model.vision.eval()
    dataset = build_dataset(recipe, model)
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt = checkpoint_dirs(run_dir)[-1] if resume and checkpoint_dirs(run_dir) else None
    forward = VisionForward(model, dataset.num_classes, dataset.groups, recipe.vision_pooled_weight).to(info.device) if recipe.stage == "vision" else TrainForward(model)
    if recipe.stage == "vision":
        groups.append({"params": list(forward.head.parameters()), "weight_decay": 0.0, "lr_scale": 1.0})
    if ckpt:
        load_model_state(ckpt, forward)
    wrapped = dist.wrap_model(forward, recipe.strategy, info)
    opt = dist.build_optimizer(groups, recipe.optim.lr, recipe.optim.betas, recipe.optim.weight_decay, recipe.strategy, info)
    trainable = [p for g in groups for p in g["params"]]
    start = load_trainer_state(ckpt, wrapped, opt, info) if ckpt else 0
    metrics_path = run_dir / "metrics.jsonl"
    if info.is_main:
        (run_dir / "recipe.yaml").write_text(json.dumps(to_dict(recipe), indent=2))
        kept = [line for line in (metrics_path.read_text().splitlines() if metrics_path.exists() and start else []) if json.loads(line)["step"] <= start]
        metrics_path.write_text("".join(line + "\n" for line in kept))  # drop steps a killed run logged past its checkpoint

    sampler = StepSampler(len(dataset), recipe.seed, recipe.global_batch, recipe.micro_batch, info.world, info.rank, start, recipe.max_steps)
    batches = iter(DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=recipe.data.num_workers))
    accum = recipe.grad_accum(info.world)
    t0 = time.perf_counter()
    bar = tqdm(range(start, recipe.max_steps), initial=start, total=recipe.max_steps, disable=not info.is_main, desc=f"train {recipe.stage}")
    for step in bar:
        t_step = time.perf_counter()
        lr = lr_at(step, recipe)
        for g in opt.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)
        losses, tokens = [], 0
        for m in range(accum):
            batch = next(batches)
            with dist.no_sync(wrapped, skip=m < accum - 1), autocast(recipe, info.device):
                pixels = batch["pixels"].to(info.device) if batch["pixels"] is not None else None
                loss, n = wrapped(batch["ids"], batch["labels"], pixels)
                (loss / accum).backward()
            losses.append(loss.detach())
            tokens += int(n)
        max_norm = recipe.optim.grad_clip if recipe.optim.grad_clip > 0 else float("inf")
        grad_norm = wrapped.clip_grad_norm_(max_norm) if hasattr(wrapped, "clip_grad_norm_") else torch.nn.utils.clip_grad_norm_(trainable, max_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step_loss = dist.mean_across(torch.stack(losses).mean(), info)
        tokens_all = dist.mean_across(torch.tensor(float(tokens)), info) * info.world
        if info.is_main:
            row = {"step": step + 1, "loss": step_loss, "lr": lr, "grad_norm": float(grad_norm), "tokens_per_s": tokens_all / (time.perf_counter() - t_step), "elapsed_s": time.perf_counter() - t0}
            with open(metrics_path, "a") as f:
                f.write(json.dumps(row) + "\n")
            bar.set_postfix(loss=f"{step_loss:.4f}", lr=f"{lr:.2e}")
        if (recipe.save_every and (step + 1) % recipe.save_every == 0) or step + 1 == recipe.max_steps:
            save_checkpoint(run_dir, step + 1, model, wrapped, opt, recipe, info)
    final = run_dir / "model"
    if info.is_main:
        export_final(checkpoint_dirs(run_dir)[-1], final, recipe)
    dist.barrier(info)
    dist.shutdown()
    return final


def export_final(ckpt: Path, out: Path, recipe: Recipe) -> None:
    """The run's model from its last checkpoint (already gathered from every strategy), LoRA merged in."""
    model = MobileVLM.from_pretrained(ckpt / "model", dtype=torch.float32, device="cpu")
    if recipe.lora.r:
        apply_lora(model.llm, recipe.lora.r, recipe.lora.alpha, recipe.lora.dropout, recipe.lora.targets)
        result = model.load_state_dict(load_file(ckpt / "lora.safetensors"), strict=False)  # adapters only
        if result.unexpected_keys:
            raise CheckpointError(f"{ckpt}/lora.safetensors has keys the model lacks: {result.unexpected_keys[:4]}")
        merge_lora(model)
    save_pretrained(model, out, dtype=torch.float32)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mobilevlm_agent.train", description="Train a stage of the MobileVLM recipe (run under torchrun for many processes).")
    p.add_argument("recipe", help="recipe YAML, or the name of a shipped recipe (see mobilevlm_agent/train/recipes)")
    p.add_argument("--out", required=True, help="run directory: metrics.jsonl, checkpoints/, model/")
    p.add_argument("--resume", action="store_true", help="continue from the latest complete checkpoint in --out")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a recipe field, e.g. optim.lr=1e-3 (repeatable)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    recipe = load_recipe(args.recipe, args.overrides)
    fit(recipe, Path(args.out), resume=args.resume)
    return 0
