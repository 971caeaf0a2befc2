"""Small training worlds: a text corpus, ShareGPT dialogues and LLaVA samples with drawn images."""
from __future__ import annotations

import json
import random

import cv2
import numpy as np
import pytest

from mobilevlm_agent.train.tokenize_data import tokenize_corpus

COLOURS = {"red": (0, 0, 255), "green": (0, 200, 0), "blue": (255, 0, 0), "yellow": (0, 230, 230)}
SHAPES = ("square", "ball")


def draw(colour: str, shape: str) -> np.ndarray:
    img = np.full((112, 112, 3), 128, np.uint8)
    if shape == "square":
        cv2.rectangle(img, (28, 28), (84, 84), COLOURS[colour], -1)
    else:
        cv2.circle(img, (56, 56), 30, COLOURS[colour], -1)
    return img


@pytest.fixture(scope="session")
def data_world(tmp_path_factory, tokenizer_path) -> dict:
    root = tmp_path_factory.mktemp("world")
    rng = random.Random(0)
    sentences = [f"the {c} {s} is on the table ." for c in COLOURS for s in SHAPES]
    (root / "corpus.txt").write_text("\n".join(rng.choice(sentences) for _ in range(200)) + "\n")
    tokens = root / "tokens"
    tokenize_corpus([root / "corpus.txt"], tokenizer_path, tokens)

    sft = [{"conversations": [{"from": "human", "value": f"what colour is the {s} ?"}, {"from": "gpt", "value": f"the {s} is {c} ."},
                              {"from": "human", "value": "and the shape ?"}, {"from": "gpt", "value": f"a {s} ."}]}
           for c in COLOURS for s in SHAPES]
    (root / "sft.json").write_text(json.dumps(sft))

    (root / "images").mkdir()
    pretrain, finetune = [], []
    for c in COLOURS:
        for s in SHAPES:
            name = f"images/{c}_{s}.png"
            cv2.imwrite(str(root / name), draw(c, s))
            pretrain.append({"image": name, "conversations": [{"from": "human", "value": "<image>\nDescribe."}, {"from": "gpt", "value": f"a {c} {s} ."}]})
            finetune.append({"image": name, "conversations": [{"from": "human", "value": "What colour is it?\n<image>"}, {"from": "gpt", "value": f"{c} ."}]})
    finetune.append(sft[0])  # text-only samples mix in
    (root / "pretrain.json").write_text(json.dumps(pretrain))
    (root / "masks").mkdir()
    records = []  # the vision stage: each drawn shape is object 1, of class (colour, shape)
    for i, r in enumerate(pretrain):
        mask = r["image"].replace("images/", "masks/")
        cv2.imwrite(str(root / mask), (cv2.imread(str(root / r["image"])) != 128).any(-1).astype(np.uint8))
        records.append({"image": r["image"], "mask": mask, "objects": {"1": [i]}})
    names = [f"{c} {s}" for c in COLOURS for s in SHAPES]
    (root / "labels.json").write_text(json.dumps({"classes": names, "records": records}))
    factored = [*COLOURS, *SHAPES]  # the simulator's form: each object one colour and one shape, in named groups
    grouped = [{**r, "objects": {"1": [factored.index(c), factored.index(s)]}} for r, (c, s) in zip(records, ((c, s) for c in COLOURS for s in SHAPES))]
    groups = {"colour": list(range(len(COLOURS))), "shape": list(range(len(COLOURS), len(factored)))}
    (root / "labels_grouped.json").write_text(json.dumps({"classes": factored, "groups": groups, "records": grouped}))
    (root / "finetune.jsonl").write_text("\n".join(json.dumps(r) for r in finetune))
    return {"root": root, "tokens": tokens, "sft": root / "sft.json", "pretrain": root / "pretrain.json", "labels": root / "labels.json", "labels_grouped": root / "labels_grouped.json", "finetune": root / "finetune.jsonl", "tokenizer": tokenizer_path}


def overrides(world: dict, **extra) -> list[str]:
    base = {"tokenizer": world["tokenizer"]}
    return [f"{k.replace('__', '.')}={v}" for k, v in {**base, **extra}.items()]
