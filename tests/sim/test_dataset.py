"""The simulator dataset: consistent with ground truth, and consumable unchanged by the training pipeline."""
from __future__ import annotations

import json

import pytest
import torch

from mobilevlm_agent.agent.actions import ACTIONS
from mobilevlm_agent.cli import main
from mobilevlm_agent.errors import InputError
from mobilevlm_agent.sim.questions import merge_labels
from mobilevlm_agent.tokenizer import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from mobilevlm_agent.train.datasets import ConversationDataset, LabelDataset, PackedDataset
from mobilevlm_agent.train.tokenize_data import tokenize_corpus


def test_manifest_and_sample_kinds(sim_data):
    manifest = json.loads((sim_data / "manifest.json").read_text())
    records = json.loads((sim_data / "llava.json").read_text())
    assert manifest["samples"] == len(records) and manifest["images"] == len({r["image"] for r in records})
    assert {"pope", "colour", "shape", "count", "describe", "nav"} <= set(manifest["by_kind"])
    assert {r["conversations"][1]["value"] for r in records if r["kind"] == "nav"} <= set(ACTIONS)
    assert {r["conversations"][1]["value"] for r in records if r["kind"] == "pope"} == {"Yes", "No"}
    splits = {r.get("split") for r in records if r["kind"] == "pope"}
    assert {"random", "popular", "adversarial"} <= splits
    assert all((sim_data / r["image"]).is_file() for r in records)


def test_pope_negatives_are_absent_and_positives_visible(sim_data):
    records = json.loads((sim_data / "llava.json").read_text())
    by_image: dict[str, dict[str, str]] = {}
    for r in records:
        if r["kind"] == "pope":
            label = r["conversations"][0]["value"].removeprefix("<image>\nIs there a ").removesuffix(" in the image?")
            by_image.setdefault(r["image"], {})[label] = r["conversations"][1]["value"]
    for answers in by_image.values():
        yes = {label for label, a in answers.items() if a == "Yes"}
        no = {label for label, a in answers.items() if a == "No"}
        assert not yes & no


def test_pope_no_answers_have_no_pixel_in_the_object_mask(sim_data):
    """Masks, label records and POPE agree: a "No" label has not one pixel in its view's object mask."""
    import cv2

    from mobilevlm_agent.sim.dataset import VISION_CLASSES

    labels = {r["image"]: r for r in json.loads((sim_data / "labels.json").read_text())["records"]}
    checked = 0
    for r in json.loads((sim_data / "llava.json").read_text()):
        if r["kind"] == "pope" and r["conversations"][1]["value"] == "No":
            label = r["conversations"][0]["value"].removeprefix("<image>\nIs there a ").removesuffix(" in the image?")
            record = labels[r["image"]]
            mask = cv2.imread(str(sim_data / record["mask"]), cv2.IMREAD_UNCHANGED)
            colour, shape = (VISION_CLASSES.index(word) for word in label.split())
            ids = [int(k) for k, classes in record["objects"].items() if colour in classes and shape in classes]
            assert not any((mask == k).any() for k in ids), (r["id"], label)
            checked += 1
    assert checked > 10


def test_files_feed_the_training_loaders(sim_data, tokenizer, tmp_path, tokenizer_path):
    llava = ConversationDataset(sim_data / "llava.json", tokenizer, "v1", 256, image_size=112, visual_tokens=16)
    sample = llava[0]
    assert sample["ids"].count(IMAGE_TOKEN_INDEX) == 1 and sample["pixels"].shape == (3, 112, 112)
    assert any(label != IGNORE_INDEX for label in sample["labels"])
    sft = ConversationDataset(sim_data / "sharegpt.json", tokenizer, "v1", 256)
    assert sft[0]["pixels"] is None
    manifest = tokenize_corpus([sim_data / "corpus.txt"], tokenizer_path, tmp_path / "tokens")
    assert manifest["documents"] > 0 and len(PackedDataset(tmp_path / "tokens", 32)) > 0


def test_balanced_mix_has_as_many_no_as_yes_and_more_stops(sim_data):
    records = json.loads((sim_data / "llava.json").read_text())
    mix = json.loads((sim_data / "balanced.json").read_text())
    answers = lambda rs, kind, a: sum(r["kind"] == kind and r["conversations"][1]["value"] == a for r in rs)  # noqa: E731
    assert answers(mix, "pope", "No") == answers(mix, "pope", "Yes") == answers(records, "pope", "Yes") > 0
    assert answers(records, "pope", "No") > answers(records, "pope", "Yes")  # why the mix exists
    assert answers(mix, "nav", "stop") == 4 * answers(records, "nav", "stop") > 0
    assert answers(mix, "nav", "forward") == answers(records, "nav", "forward")


def test_vision_targets_are_one_colour_and_one_shape_per_object(sim_data):
    from mobilevlm_agent.sim.dataset import VISION_CLASSES
    from mobilevlm_agent.sim.scene import COLOURS, SHAPES

    labels = json.loads((sim_data / "labels.json").read_text())
    assert tuple(labels["classes"]) == VISION_CLASSES
    assert {name: [VISION_CLASSES[c] for c in g] for name, g in labels["groups"].items()} == {"colour": list(COLOURS), "shape": list(SHAPES)}
    for record in labels["records"]:
        for classes in record["objects"].values():
            names = [VISION_CLASSES[c] for c in classes]
            assert sum(n in COLOURS for n in names) == 1 and sum(n in SHAPES for n in names) == 1, names
            assert all(len(set(g) & set(classes)) == 1 for g in labels["groups"].values())


def test_only_conventions_are_marked_unmirrorable(sim_data):
    """The search turn (target out of view) and multi-object descriptions (listed left to right) must not be
    mirrored; every other sample may be, and some navigation steps with the target in view are."""
    from mobilevlm_agent.sim.oracle import SEARCH

    records = json.loads((sim_data / "llava.json").read_text())
    fixed = [r for r in records if r.get("mirror") is False]
    assert fixed and {r["kind"] for r in fixed} <= {"nav", "describe"}
    assert {r["conversations"][1]["value"] for r in fixed if r["kind"] == "nav"} == {SEARCH}
    assert all(r["conversations"][1]["value"].count(", ") >= 1 for r in fixed if r["kind"] == "describe")
    in_view = [r for r in records if r["kind"] == "nav" and "mirror" not in r]
    assert {"forward", "stop"} & {r["conversations"][1]["value"] for r in in_view}


def test_merged_labels_give_every_sources_views_unchanged(sim_data, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "labels.json").write_text((sim_data / "labels.json").read_text())  # same records, paths into sim_data's folders
    (other / "images").symlink_to(sim_data / "images")
    (other / "masks").symlink_to(sim_data / "masks")
    out = tmp_path / "mixes" / "labels_all.json"
    assert main(["sim", "labels", str(sim_data), str(other), "--out", str(out)]) == 0
    alone, merged = LabelDataset(sim_data / "labels.json", 56, 4), LabelDataset(out, 56, 4)
    assert len(merged) == 2 * len(alone) > 0
    for i in (0, len(alone) - 1):
        for j in (i, i + len(alone)):
            assert torch.equal(merged[j]["pixels"], alone[i]["pixels"]) and torch.equal(merged[j]["labels"], alone[i]["labels"])


def test_merging_labels_of_other_classes_or_a_missing_source_is_refused(sim_data, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    labels = json.loads((sim_data / "labels.json").read_text())
    (other / "labels.json").write_text(json.dumps({**labels, "classes": labels["classes"][:-1]}))
    with pytest.raises(InputError, match="classes or groups differ"):
        merge_labels(tmp_path / "all.json", [sim_data, other])
    with pytest.raises(InputError, match="not found"):
        merge_labels(tmp_path / "all.json", [sim_data, tmp_path / "nowhere"])
    (other / "labels.json").write_bytes(b"\xff\xfe not json")
    with pytest.raises(InputError, match="not a JSON labels file"):
        merge_labels(tmp_path / "all.json", [sim_data, other])
    (other / "labels.json").write_text(json.dumps([labels]))
    with pytest.raises(InputError, match="a labels file is"):
        merge_labels(tmp_path / "all.json", [sim_data, other])
    assert not (tmp_path / "all.json").exists()
