"""Tokenized buckets, packing, the step sampler, SFT/multimodal label masking, and bad data."""
from __future__ import annotations

import gzip
import json

import cv2
import numpy as np
import pytest
import torch

from mobilevlm_agent.conversation import get_template
from mobilevlm_agent.errors import InputError
from mobilevlm_agent.model.random_init import random_model
from mobilevlm_agent.tokenizer import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from mobilevlm_agent.preprocess import load_image, preprocess
from mobilevlm_agent.train.datasets import ConversationDataset, ImageCache, LabelDataset, PackedDataset, StepSampler, mirror_text
from mobilevlm_agent.train.tokenize_data import tokenize_corpus


def test_packing_keeps_every_token_once_with_eos_between_documents(data_world, tokenizer):
    ds = PackedDataset(data_world["tokens"], seq_len=37)
    stream = np.concatenate([ds.window(i) for i in range(len(ds))])
    docs = [tokenizer.encode(line.strip(), bos=False) for line in (data_world["root"] / "corpus.txt").read_text().splitlines()]
    expected = np.concatenate([np.array(d + [tokenizer.eos_id]) for d in docs])
    assert np.array_equal(stream, expected)
    last = ds[len(ds) - 1]
    pad = 37 * len(ds) - len(expected)
    assert last["labels"][37 - pad :] == [IGNORE_INDEX] * pad


def test_sampler_is_deterministic_per_seed_and_a_permutation_per_epoch():
    def order(seed):
        return [i for batch in StepSampler(50, seed, 10, 5, 1, 0, 0, 10) for i in batch]

    a, b = order(1), order(2)
    assert a == order(1) and a != b
    assert sorted(a[:50]) == list(range(50)) and sorted(a[50:]) == list(range(50))  # each epoch sees each sample once
    assert a[:50] != a[50:]  # reshuffled per epoch


def test_processes_times_accumulation_split_sees_the_same_samples():
    one = [i for batch in StepSampler(40, 0, 8, 2, 1, 0, 0, 3) for i in batch]
    two = [[i for batch in StepSampler(40, 0, 8, 2, 2, r, 0, 3) for i in batch] for r in (0, 1)]
    for step in range(3):
        assert sorted(one[step * 8 : step * 8 + 8]) == sorted(two[0][step * 4 : step * 4 + 4] + two[1][step * 4 : step * 4 + 4])


def test_resumed_sampler_continues_exactly():
    full = list(StepSampler(30, 3, 6, 3, 1, 0, 0, 12))
    assert list(StepSampler(30, 3, 6, 3, 1, 0, 7, 12)) == full[7 * 2 :]


def test_sft_labels_cover_exactly_the_replies(data_world, tokenizer):
    ds = ConversationDataset(data_world["sft"], tokenizer, "v1", 512)
    sample, record = ds[0], ds.records[0]
    ids, labels = sample["ids"], sample["labels"]
    target = [i for i, l in zip(ids, labels) if l != IGNORE_INDEX]
    replies = [t["value"] for t in record["conversations"] if t["from"] == "gpt"]
    assert target == sum((tokenizer.encode(r, bos=False) + [tokenizer.eos_id] for r in replies), [])
    assert all(l in (IGNORE_INDEX, i) for i, l in zip(ids, labels))
    assert ids[0] == tokenizer.bos_id and labels[0] == IGNORE_INDEX


def test_sft_prompt_tokens_match_inference_prompt(data_world, tokenizer):
    from mobilevlm_agent.conversation import Conversation

    ds = ConversationDataset(data_world["sft"], tokenizer, "v1", 512)
    sample, turns = ds[0], ds.records[0]["conversations"]
    conv = Conversation(get_template("v1"))
    conv.add_user(turns[0]["value"])
    conv.add_assistant(None)
    prompt = tokenizer.encode_with_image(conv.prompt())
    assert sample["ids"][: len(prompt)] == prompt


def test_multimodal_labels_ignore_image_and_prompt(data_world, tokenizer):
    model = random_model("tiny-vlm")
    ds = ConversationDataset(data_world["finetune"], tokenizer, "v1", 256, image_size=112, visual_tokens=16)
    sample = ds[0]
    assert sample["ids"].count(IMAGE_TOKEN_INDEX) == 1 and sample["pixels"].shape == (3, 112, 112)
    with torch.no_grad():
        embeds, labels = model.training_batch([sample["ids"]], [sample["labels"]], sample["pixels"][None])
    pos = sample["ids"].index(IMAGE_TOKEN_INDEX)
    assert embeds.shape[1] == len(sample["ids"]) - 1 + 16
    assert (labels[0, pos : pos + 16] == IGNORE_INDEX).all()
    assert labels[0][labels[0] != IGNORE_INDEX].tolist() == tokenizer.encode("red .", bos=False) + [tokenizer.eos_id]


def test_plain_template_targets_caption_only(data_world, tokenizer):
    ds = ConversationDataset(data_world["pretrain"], tokenizer, "plain", 256, image_size=112, visual_tokens=16)
    sample = ds[0]
    assert sample["ids"][:2] == [tokenizer.bos_id, IMAGE_TOKEN_INDEX]
    assert sample["labels"][:2] == [IGNORE_INDEX, IGNORE_INDEX]
    assert sample["labels"][2:] == tokenizer.encode("a red square .\n", bos=False)


def test_tokenize_counts_bad_lines_and_reads_gzip(tmp_path, tokenizer_path):
    src = tmp_path / "c.jsonl.gz"
    with gzip.open(src, "wt") as f:
        f.write('{"text": "a red cube"}\n{broken\n{"no_text": 1}\n\n{"text": "a blue ball"}\n')
    (tmp_path / "bad.txt").write_bytes(b"ok line\n\xff\xfe not utf8\n")
    manifest = tokenize_corpus([src, tmp_path / "bad.txt"], tokenizer_path, tmp_path / "out", workers=2)
    assert (manifest["documents"], manifest["bad_lines"], manifest["dtype"]) == (3, 3, "uint16")
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["tokens"] == manifest["tokens"]


def test_bad_data_errors(tmp_path, tokenizer, tokenizer_path, data_world):
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(InputError, match="no documents found"):
        tokenize_corpus([tmp_path / "empty.txt"], tokenizer_path, tmp_path / "o")
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(InputError, match="unsupported corpus file"):
        tokenize_corpus([tmp_path / "x.csv"], tokenizer_path, tmp_path / "o")
    (tmp_path / "d.jsonl").write_text('{"conversations": []}\n{corrupt\n')
    with pytest.raises(InputError, match=r"d.jsonl:2: corrupt JSON line"):
        ConversationDataset(tmp_path / "d.jsonl", tokenizer, "v1", 64)
    (tmp_path / "m.json").write_text(json.dumps([{"image": "nope.png", "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "x"}]}]))
    with pytest.raises(InputError, match="image not found"):
        ConversationDataset(tmp_path / "m.json", tokenizer, "v1", 64, image_size=112, visual_tokens=16)[0]
    with pytest.raises(InputError, match="not a tokenized corpus"):
        PackedDataset(tmp_path, 16)


def test_vision_targets_follow_the_mask_through_the_padding(tmp_path):
    """A 240x320 frame pads to 320x320 (40 rows above and below): an object in the frame's top-left corner lands in
    cell (0, 0) of a 4x4 grid only below the pad (half the cell), and one filling the bottom-right cell's frame part
    lands there (its upper half); targets are the covered fractions."""
    mask = np.zeros((240, 320), np.uint8)
    mask[:40, :80] = 1  # rows 40..80 of the padded square: the lower half of cell (0, 0)
    mask[200:, 240:] = 2  # rows 240..280: the upper half of cell (3, 3)
    mask[100:102, 150:152] = 3  # 4 px: under MIN_COVER of a 80x80 cell
    cv2.imwrite(str(tmp_path / "m.png"), mask)
    cv2.imwrite(str(tmp_path / "i.png"), np.zeros((240, 320, 3), np.uint8))
    (tmp_path / "labels.json").write_text(json.dumps({"classes": ["a", "b", "c", "near"], "records": [
        {"image": "i.png", "mask": "m.png", "objects": {"1": [0, 3], "2": [1], "3": [2]}}]}))
    sample = LabelDataset(tmp_path / "labels.json", image_size=56, grid=4)[0]
    target = sample["labels"].reshape(4, 4, 4)
    assert target[0, 0].tolist() == [0.5, 0, 0, 0.5] and target[3, 3].tolist() == [0, 0.5, 0, 0]
    assert target.sum() == 1.5 and sample["pixels"].shape == (3, 56, 56)
    mirrored = LabelDataset(tmp_path / "labels.json", image_size=56, grid=4, mirror=True)
    assert len(mirrored) == 2
    flipped = mirrored[1]["labels"].reshape(4, 4, 4)
    assert flipped[0, 3].tolist() == [0.5, 0, 0, 0.5] and flipped[3, 0].tolist() == [0, 0.5, 0, 0] and flipped.sum() == 1.5
    (tmp_path / "labels.json").write_text(json.dumps({"num_targets": 4, "records": []}))
    with pytest.raises(InputError, match="labels file"):
        LabelDataset(tmp_path / "labels.json", image_size=56, grid=4)
    for groups in ({"g": [0, 4]}, {"g": []}, [[0, 1]]):  # a class out of range, an empty group, not named
        (tmp_path / "labels.json").write_text(json.dumps({"classes": ["a", "b", "c", "near"], "groups": groups, "records": []}))
        with pytest.raises(InputError, match="groups"):
            LabelDataset(tmp_path / "labels.json", image_size=56, grid=4)


def test_small_objects_get_a_dominant_cell_only_when_asked(tmp_path):
    """A 20x20 px object inside one 80x80 cell covers 1/16 of it, under DOMINANT: by default it stays at 1/16 (the
    colour/shape term never sees it); with small_objects the cell holding it counts as DOMINANT, and an object that
    already dominates a cell, or one under MIN_COVER, is left as it is."""
    from mobilevlm_agent.train.datasets import DOMINANT

    mask = np.zeros((240, 320), np.uint8)
    mask[60:80, 100:120] = 1  # padded rows 100..120, columns 100..120: cell (1, 1) only
    mask[160:200, 240:] = 2  # half of cell (2, 3)
    mask[10:12, 10:12] = 3  # 4 px: under MIN_COVER
    cv2.imwrite(str(tmp_path / "m.png"), mask)
    cv2.imwrite(str(tmp_path / "i.png"), np.zeros((240, 320, 3), np.uint8))
    (tmp_path / "labels.json").write_text(json.dumps({"classes": ["a", "b", "c"], "records": [
        {"image": "i.png", "mask": "m.png", "objects": {"1": [0], "2": [1], "3": [2]}}]}))
    plain = LabelDataset(tmp_path / "labels.json", image_size=56, grid=4)[0]["labels"].reshape(4, 4, 3)
    small = LabelDataset(tmp_path / "labels.json", image_size=56, grid=4, small_objects=True, mirror=True)
    raised, mirrored = (small[i]["labels"].reshape(4, 4, 3) for i in (0, 1))
    assert plain[1, 1, 0] == pytest.approx(1 / 16) and raised[1, 1, 0] == DOMINANT and mirrored[1, 2, 0] == DOMINANT
    assert torch.equal(raised[..., 1:], plain[..., 1:]) and raised[..., 0].count_nonzero() == 1
    assert plain[2, 3, 1] == pytest.approx(0.5) and raised[..., 2].sum() == 0


def test_image_cache_gives_the_decoded_pixels_and_keeps_to_its_budget(tmp_path):
    """Cached pixels equal a fresh decode; a second read of a kept image decodes nothing, images past the budget
    are decoded (and counted) every time, and budget 0 keeps nothing."""
    rng = np.random.default_rng(0)
    paths = []
    for k in range(3):
        paths.append(tmp_path / f"{k}.png")
        cv2.imwrite(str(paths[-1]), rng.integers(0, 256, (30, 40, 3), dtype=np.uint8))
    one_image_mb = 56 * 56 * 3 / 2**20
    cache = ImageCache(56, pad_to_square=True, budget_mb=1)  # 1 MB holds all three 56x56 images
    for _ in range(2):
        for p in paths:
            assert torch.equal(cache.pixels(p), preprocess(load_image(p), 56, pad_to_square=True)[0])
    assert cache.misses == 3 and cache.used == 3 * 56 * 56 * 3
    assert all(np.shares_memory(kept, cache._slab) for kept in cache._fitted.values())  # one block: no heap fragments
    tight = ImageCache(56, pad_to_square=True, budget_mb=2.5 * one_image_mb)  # room for two
    for _ in range(2):
        for p in paths:
            tight.pixels(p)
    assert tight.misses == 4 and tight.used == 2 * 56 * 56 * 3
    off = ImageCache(56, pad_to_square=True)
    off.pixels(paths[0]), off.pixels(paths[0])
    assert off.misses == 2 and off.used == 0 and off._slab is None


def test_cached_label_dataset_matches_the_uncached_one(data_world):
    plain = LabelDataset(data_world["labels_grouped"], image_size=56, grid=4, mirror=True)
    cached = LabelDataset(data_world["labels_grouped"], image_size=56, grid=4, mirror=True, cache_mb=16)
    for _ in range(2):
        for i in range(len(plain)):
            a, b = plain[i], cached[i]
            assert torch.equal(a["pixels"], b["pixels"]) and torch.equal(a["labels"], b["labels"])
    assert cached.images.misses == len(plain.records) and plain.images.misses == 2 * len(plain)


def test_cached_label_targets_are_handed_out_as_copies(data_world):
    """A DataLoader worker holds a file descriptor for every tensor it has sent that is still alive; handing out the
    cached targets themselves ran a 22,000-view vision stage out of descriptors (errno 24) at step 1,244."""
    cached = LabelDataset(data_world["labels_grouped"], image_size=56, grid=4, cache_mb=16)
    first, again = cached[0]["labels"], cached[0]["labels"]
    assert torch.equal(first, again) and first.untyped_storage().data_ptr() != again.untyped_storage().data_ptr()
    first.zero_()
    assert torch.equal(cached[0]["labels"], again)


def test_mirror_text_swaps_sides_only():
    assert mirror_text("turn_left") == "turn_right" and mirror_text("turn_right") == "turn_left"
    assert mirror_text("I see a red ball on the left, a cube on the right. Left?") == "I see a red ball on the right, a cube on the left. Right?"
    assert mirror_text("a bright leftover") == "a bright leftover"


def test_mirror_doubles_image_samples_and_keeps_conventions(tmp_path, tokenizer):
    """Index n + i is sample i mirrored: the image flipped and left/right swapped in the text; a record marked
    "mirror": false and a text-only record come back unchanged."""
    image = np.zeros((40, 60, 3), np.uint8)
    image[:, :20] = (255, 0, 0)  # a red band on the left
    cv2.imwrite(str(tmp_path / "a.png"), image)
    turn = lambda action, **extra: {"image": "a.png", **extra, "conversations": [  # noqa: E731
        {"from": "human", "value": "<image>\nInstruction: go to the red cube. What is the next action?"}, {"from": "gpt", "value": action}]}
    records = [turn("turn_left"), turn("turn_left", mirror=False), {"conversations": [{"from": "human", "value": "left?"}, {"from": "gpt", "value": "left"}]}]
    (tmp_path / "d.json").write_text(json.dumps(records))
    plain = ConversationDataset(tmp_path / "d.json", tokenizer, "v1", 256, image_size=56, visual_tokens=16)
    ds = ConversationDataset(tmp_path / "d.json", tokenizer, "v1", 256, image_size=56, visual_tokens=16, mirror=True)
    assert len(plain) == 3 and len(ds) == 6
    answer = lambda sample: tokenizer.decode([t for t in sample["labels"] if t != IGNORE_INDEX and t != tokenizer.eos_id])  # noqa: E731
    assert answer(ds[0]) == "turn_left" and answer(ds[3]) == "turn_right"
    assert torch.equal(ds[3]["pixels"], ds[0]["pixels"].flip(-1)) and not torch.equal(ds[3]["pixels"], ds[0]["pixels"])
    for i in (1, 2):  # marked unmirrorable, and text only
        assert ds[3 + i]["ids"] == ds[i]["ids"] and ds[3 + i]["labels"] == ds[i]["labels"]
    assert torch.equal(ds[4]["pixels"], ds[1]["pixels"]) and ds[5]["pixels"] is None
