"""MobileVLM: CLIP vision tower -> projector -> visual tokens spliced into MobileLLaMA's input embeddings."""
from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING

import torch
from torch import nn

from mobilevlm_agent.errors import InputError
from mobilevlm_agent.model.config import MobileVLMConfig
from mobilevlm_agent.model.llama import MobileLLaMA
from mobilevlm_agent.model.projector import build_projector
from mobilevlm_agent.model.vision import CLIPVisionTower
from mobilevlm_agent.tokenizer import IGNORE_INDEX, IMAGE_TOKEN_INDEX

if TYPE_CHECKING:
    from mobilevlm_agent.tokenizer import Tokenizer


class MobileVLM(nn.Module):
    def __init__(self, config: MobileVLMConfig) -> None:
        super().__init__()
        self.config = config
        self.llm = MobileLLaMA(config.llm)
        self.vision: CLIPVisionTower | None = None
        self.projector: nn.Module | None = None
        if config.vision is not None:
            self.vision = CLIPVisionTower(config.vision, config.vision_layers_used)
            self.projector = build_projector(config.projector_type, config.vision.hidden_size, config.llm.hidden_size)
        self.tokenizer: Tokenizer | None = None  # attached by from_pretrained when the directory has one

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, dtype: torch.dtype | None = None, device: str | torch.device | None = None,
                        quant: str = "none", group_size: int = 64, vision_quant: str = "none") -> "MobileVLM":
        """Load an official (HF-layout) or converted MobileVLM / MobileLLaMA directory, quantised while loading when
        asked (see checkpoint.load_pretrained). Never touches the network."""
        from mobilevlm_agent.model.checkpoint import load_pretrained

        return load_pretrained(path, dtype=dtype, device=device, quant=quant, group_size=group_size, vision_quant=vision_quant)

    def save_pretrained(self, path: str | os.PathLike, dtype: torch.dtype | None = None) -> None:
        from mobilevlm_agent.model.checkpoint import save_pretrained

        save_pretrained(self, path, dtype=dtype)

    def resize_images(self, image_size: int) -> None:
        """Take images of image_size px from now on (the ViT's patch positions resampled; fine-tune afterwards)."""
        if self.vision is None:
            raise InputError(f"{self.config.name} is a text-only model: it takes no images")
        self.config = dataclasses.replace(self.config, vision=self.vision.resize(image_size))

    @property
    def device(self) -> torch.device:
        return self.llm.norm.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """The activations' dtype (the final norm is never quantised, unlike the token table)."""
        return self.llm.norm.weight.dtype

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] -> visual tokens [B, N_visual, H] in the LLM's dtype."""
        if self.vision is None or self.projector is None:
            raise InputError(f"{self.config.name} is a text-only model: it cannot take an image")
        p = self.vision.pre_layrnorm.weight
        features = self.vision(pixel_values.to(device=p.device, dtype=p.dtype))
        return self.projector(features).to(self.dtype)

    def encode_rgb(self, rgb) -> torch.Tensor:
        """One RGB uint8 [H, W, 3] frame -> visual tokens [1, N_visual, H], preprocessed as the model was trained."""
        from mobilevlm_agent.preprocess import preprocess

        if self.config.vision is None:
            raise InputError(f"{self.config.name} is a text-only model: it cannot take an image")
        pixels = preprocess(rgb, self.config.vision.image_size, pad_to_square=self.config.image_aspect_ratio == "pad")
        with torch.inference_mode():
            return self.encode_images(pixels)

    def embed(self, ids: list[int], image_features: torch.Tensor | None = None) -> torch.Tensor:
        """Token ids with IMAGE_TOKEN_INDEX placeholders -> input embeddings [1, L, H].

        Each placeholder k is replaced by image_features[k] ([N_visual, H]), so
        L = len(ids) - n_images + n_images * N_visual.
        """
        n_images = ids.count(IMAGE_TOKEN_INDEX)
        n_given = 0 if image_features is None else image_features.shape[0]
        if n_images != n_given:
            raise InputError(f"prompt has {n_images} <image> placeholder(s) but {n_given} image(s) were given")
        pieces, run = [], []
        image_iter = iter(image_features) if image_features is not None else iter(())
        for token in ids + [IMAGE_TOKEN_INDEX]:  # the sentinel flushes the last run of text
            if token != IMAGE_TOKEN_INDEX:
                run.append(token)
                continue
            if run:
                pieces.append(self.llm.embed_tokens(torch.tensor(run, device=self.device)))
                run = []
            pieces.append(next(image_iter, None))
        return torch.cat([p for p in pieces if p is not None])[None]

    def training_batch(self, ids: list[list[int]], labels: list[list[int]], pixels: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded input embeddings [B, L, H] and labels [B, L]: image positions and padding get -100.

        `pixels` holds one image per placeholder, in batch order.
        """
        features = self.encode_images(pixels) if pixels is not None else None
        embeds, targets, used = [], [], 0
        for sample_ids, sample_labels in zip(ids, labels):
            n = sample_ids.count(IMAGE_TOKEN_INDEX)
            embeds.append(self.embed(sample_ids, features[used : used + n] if n else None)[0])
            used += n
            expanded: list[int] = []
            for token, label in zip(sample_ids, sample_labels):
                expanded += [IGNORE_INDEX] * self.config.num_visual_tokens if token == IMAGE_TOKEN_INDEX else [label]
            targets.append(torch.tensor(expanded, device=self.device))
        length = max(e.shape[0] for e in embeds)
        batch = torch.zeros(len(embeds), length, embeds[0].shape[-1], device=self.device, dtype=embeds[0].dtype)
        label_batch = torch.full((len(embeds), length), IGNORE_INDEX, device=self.device, dtype=torch.long)
        for i, (e, t) in enumerate(zip(embeds, targets)):
            batch[i, : e.shape[0]] = e
            label_batch[i, : t.shape[0]] = t
        return batch, label_batch
