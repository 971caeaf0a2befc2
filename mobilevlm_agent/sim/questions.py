"""More rooms: the colour, shape and POPE questions of another `sim dataset` directory added to a mix, and the vision
stage's labelled views of several such directories in one file.

Held-out QA rose with the number of rooms its questions came from, not with how often each was seen (MODEL_CARD.md,
"More QA data, and an ensemble"), and a dataset of views without navigation episodes is cheap to render.
"""
from __future__ import annotations

import json
import os
import random
from pathlib import Path

from mobilevlm_agent.errors import ConfigError, InputError
from mobilevlm_agent.sim.dataset import base_mix, write_round
from mobilevlm_agent.train.datasets import read_labels, read_records

KINDS = ("colour", "shape")  # added whole; POPE is sampled, as many "No" as "Yes"


def question_samples(source: Path, data_dir: Path, pope_per_answer: int, seed: int) -> list[dict]:
    """`source`'s colour and shape questions, and `pope_per_answer` of its POPE "Yes" and as many "No" (sampled), with
    image paths made relative to `data_dir`, where the mix is written and read from."""
    records = read_records(source / "llava.json")
    rng = random.Random(seed)
    pope = {answer: [r for r in records if r.get("kind") == "pope" and r["conversations"][1]["value"] == answer] for answer in ("Yes", "No")}
    if min(len(v) for v in pope.values()) < pope_per_answer:
        raise ConfigError(f"{source} has {len(pope['Yes'])} POPE 'Yes' and {len(pope['No'])} 'No' questions; "
                          f"--pope-per-answer {pope_per_answer} needs that many of each")
    chosen = [r for r in records if r.get("kind") in KINDS] + [r for v in pope.values() for r in rng.sample(v, pope_per_answer)]
    prefix = Path(os.path.relpath(source, data_dir))
    return [{**r, "image": str(prefix / r["image"])} for r in chosen]


def write_questions(data_dir: str | Path, source_dir: str | Path, base: str = "balanced.json", pope_per_answer: int = 4000,
                    seed: int = 0) -> dict:
    """Write DATA/questions.json (the added questions) and DATA/balanced_questions.json (`base` plus them, shuffled)."""
    out, source = Path(data_dir), Path(source_dir)
    base_mix(out, base)
    if out.resolve() == source.resolve():
        raise ConfigError(f"--source must be another `sim dataset` directory than --data ({out}): its questions are already in the mix")
    samples = question_samples(source, out, pope_per_answer, seed)
    return {"source": str(source), **write_round(out, "questions", samples, base, samples, seed)}


def merge_labels(out_file: str | Path, sources: list[str | Path]) -> dict:
    """Write one labels file (the vision stage's `LabelDataset`) holding the views of every source directory's
    labels.json, image and mask paths made relative to OUT_FILE's folder; the sources must share classes and groups."""
    out = Path(out_file)
    first, records = None, []
    for source in map(Path, sources):
        labels = read_labels(source / "labels.json")
        if first is not None and (labels["classes"], labels["groups"]) != (first["classes"], first["groups"]):
            raise InputError(f"{source / 'labels.json'}: its classes or groups differ from {sources[0]}'s; views labelled differently cannot share a head")
        first = first or labels
        prefix = Path(os.path.relpath(source, out.parent))
        records += [{**r, "image": str(prefix / r["image"]), "mask": str(prefix / r["mask"])} for r in labels["records"]]
    if not records:
        raise InputError("no labelled views in the sources")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"classes": first["classes"], "groups": first["groups"], "records": records}))
    return {"out": str(out), "sources": len(sources), "views": len(records)}
