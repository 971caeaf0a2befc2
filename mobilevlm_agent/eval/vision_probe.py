"""`eval vision`: what a vision-stage checkpoint's visual tokens tell about each object, on views it was not trained on.

For every object that shows enough pixels, the head's logits are averaged over the cells the object covers and the
argmax within each class group (colour, shape) is compared with the object's own class. The head is the vision
stage's throwaway one (`head.safetensors` beside the checkpoint's model), so this scores checkpoints, not exports.
"""
from __future__ import annotations

import math
from collections import Counter, defaultdict
from pathlib import Path

import cv2
import torch
from safetensors.torch import load_file
from tqdm import tqdm

from mobilevlm_agent.errors import CheckpointError, InputError
from mobilevlm_agent.model.vlm import MobileVLM
from mobilevlm_agent.train.datasets import LabelDataset

MIN_PIXELS = 150  # of the frame (about 12 x 12 px): fewer and a person could not name the shape either
SIZE_BUCKETS = (500, 2000)  # pixels of the frame: small / medium / large, where accuracy is reported apart


def size_bucket(pixels: int) -> str:
    """The object-size bucket of an object covering `pixels` of the frame; under MIN_PIXELS, "0-149 px" (`eval sim`
    reports its QA there, the probe skips such objects)."""
    bounds = (MIN_PIXELS, *SIZE_BUCKETS)
    lower = max([0, *(b for b in bounds if b <= pixels)])
    upper = min([b for b in bounds if b > pixels], default=None)
    return f"{lower}-{upper - 1} px" if upper else f">={lower} px"


@torch.no_grad()
def probe(checkpoint: str | Path, labels: str | Path, limit: int | None = None) -> dict:
    """Per group accuracy over objects and how many objects were scored; `by_size` the same per object size (the
    pixels it covers in the frame), since small objects are where a low-resolution tower fails."""
    checkpoint = Path(checkpoint)
    if not (checkpoint / "head.safetensors").is_file():
        raise CheckpointError(f"{checkpoint}: no head.safetensors; point at a vision-stage checkpoint (RUN/checkpoints/step-N)")
    model = MobileVLM.from_pretrained(checkpoint / "model", dtype=torch.float32, device="cpu").eval()
    head = load_file(checkpoint / "head.safetensors")
    weight, bias = head["head.weight"], head["head.bias"]
    data = LabelDataset(labels, model.config.vision.image_size, math.isqrt(model.config.num_visual_tokens))
    if not data.groups:
        raise InputError(f"{labels}: no class groups to score")
    scores: dict[str, Counter] = defaultdict(Counter)  # bucket -> objects and correct answers per group
    for i, record in enumerate(tqdm(data.records[:limit], desc="vision probe", leave=False)):
        logits = model.encode_images(data[i]["pixels"][None])[0] @ weight.T + bias  # [tokens, classes]
        mask = cv2.imread(str(data.image_folder / record["mask"]), cv2.IMREAD_UNCHANGED)
        for k, classes in record["objects"].items():
            pixels = int((mask == int(k)).sum())
            if pixels < MIN_PIXELS:
                continue
            cells = data.cell_targets(mask, {k: [0]})[:, 0] > 0  # this object's cells only
            if not cells.any():
                continue
            mean = logits[cells].mean(0)
            score = scores[size_bucket(pixels)]
            score["objects"] += 1
            for name, group in data.groups.items():
                score[name] += max(group, key=lambda c: mean[c]) in classes

    def rates(score: Counter) -> dict:
        return {"objects": score["objects"], **{name: score[name] / max(1, score["objects"]) for name in data.groups}}

    report = rates(sum(scores.values(), Counter()))
    smallest_first = map(size_bucket, (MIN_PIXELS, *SIZE_BUCKETS))
    report["by_size"] = {bucket: rates(scores[bucket]) for bucket in smallest_first if bucket in scores}
    return report
