"""Training data: packed token windows (stage 0), ShareGPT dialogues (stage 1), LLaVA image dialogues (stage 2).

Sample order is a pure function of (seed, sample counter), so the sampler's state is one integer and a resumed
run sees exactly the samples an uninterrupted one would.
"""
from __future__ import annotations

import ctypes
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from mobilevlm_agent.conversation import get_template, tokenize_conversation
from mobilevlm_agent.errors import InputError
from mobilevlm_agent.preprocess import fit_image, load_image, normalize
from mobilevlm_agent.tokenizer import IGNORE_INDEX, IMAGE_TOKEN, IMAGE_TOKEN_INDEX, Tokenizer


class PackedDataset(Dataset):
    """Memory-mapped token buckets as one stream (EOS after every document) cut into seq_len windows.

    Windows partition the stream: every token is in exactly one window; the last one is padded with -100 labels.
    """

    def __init__(self, directory: str | Path, seq_len: int, pad_id: int = 0) -> None:
        d = Path(directory)
        manifest_path = d / "manifest.json"
        if not manifest_path.is_file():
            raise InputError(f"{d} is not a tokenized corpus (no manifest.json); run `mobilevlm-agent data tokenize` first")
        self.manifest = json.loads(manifest_path.read_text())
        self.buckets = [np.memmap(d / f"bucket-{b:05d}.bin", dtype=self.manifest["dtype"], mode="r") for b in range(self.manifest["buckets"])]
        self.index = np.fromfile(d / "index.bin", dtype=np.int64).reshape(-1, 3)
        if len(self.index) == 0:
            raise InputError(f"tokenized corpus {d} has no documents")
        self.ends = np.cumsum(self.index[:, 2] + 1)  # stream offset just past each document's EOS
        self.seq_len, self.pad_id, self.eos_id = seq_len, pad_id, self.manifest["eos_id"]
        self.total_tokens = int(self.ends[-1])

    def __len__(self) -> int:
        return math.ceil(self.total_tokens / self.seq_len)

    def window(self, i: int) -> np.ndarray:
        """Stream tokens [i*seq_len, (i+1)*seq_len), possibly shorter for the last window."""
        start, end = i * self.seq_len, min((i + 1) * self.seq_len, self.total_tokens)
        doc = int(np.searchsorted(self.ends, start, side="right"))
        out, pos = [], start
        while pos < end:
            bucket, offset, length = self.index[doc]
            doc_start = int(self.ends[doc]) - length - 1
            tokens = np.append(self.buckets[bucket][offset : offset + length].astype(np.int64), self.eos_id)
            out.append(tokens[pos - doc_start : end - doc_start])
            pos = min(int(self.ends[doc]), end)
            doc += 1
        return np.concatenate(out)

    def __getitem__(self, i: int) -> dict:
        tokens = torch.from_numpy(self.window(i))
        ids = torch.full((self.seq_len,), self.pad_id, dtype=torch.long)
        labels = torch.full((self.seq_len,), IGNORE_INDEX, dtype=torch.long)
        ids[: len(tokens)] = tokens
        labels[: len(tokens)] = tokens
        return {"ids": ids.tolist(), "labels": labels.tolist(), "pixels": None}


def read_records(path: str | Path) -> list[dict]:
    """A JSON list or JSON-lines file of samples; a corrupt line is an error naming the line."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"data file not found: {p}")
    text = p.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(f"{p}: invalid JSON at line {e.lineno}: {e.msg}") from e
    else:
        records = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise InputError(f"{p}:{n}: corrupt JSON line ({e.msg})") from e
    if not records:
        raise InputError(f"{p} holds no samples")
    return records


def conversation_turns(record: dict, where: str) -> list[tuple[str, str]]:
    """ShareGPT/LLaVA `conversations` ([{from: human|gpt, value}]) -> (user, assistant) pairs."""
    convs = record.get("conversations")
    if not isinstance(convs, list) or len(convs) < 2:
        raise InputError(f"{where}: needs a `conversations` list of at least one human/gpt pair")
    if convs[0].get("from") != "human":  # ShareGPT dumps sometimes open with the assistant: drop that turn
        convs = convs[1:]
    turns = []
    for user, bot in zip(convs[0::2], convs[1::2]):
        if user.get("from") != "human" or bot.get("from") != "gpt":
            raise InputError(f"{where}: turns must alternate human/gpt, got {user.get('from')!r}/{bot.get('from')!r}")
        turns.append((str(user.get("value", "")), str(bot.get("value", ""))))
    return turns


_SIDES = {"left": "right", "right": "left", "Left": "Right", "Right": "Left"}
_SIDE_WORD = re.compile(r"(?<![A-Za-z])(left|right|Left|Right)(?![A-Za-z])")  # also inside turn_left


def mirror_text(text: str) -> str:
    """The text of a left-right mirrored image: left and right swapped."""
    return _SIDE_WORD.sub(lambda m: _SIDES[m.group(1)], text)


def mirror_pixels(pixels: torch.Tensor) -> torch.Tensor:
    return pixels.flip(-1)


def fix_mmap_threshold(size: int = 128 * 1024) -> None:
    """glibc: every buffer of `size` bytes or more gets its own mmap, returned to the system when freed.

    glibc's default raises that threshold as such buffers are freed, after which a DataLoader worker that keeps
    images while it decodes and sends others fragments its heap without bound: a 224 px 2b run's worker reached 24 GB
    on a 4 GB cache and thrashed. Fixed, its memory stays the cache plus ~0.5 GB. A no-op without glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    M_MMAP_THRESHOLD = -3
    libc.mallopt(M_MMAP_THRESHOLD, size)


class ImageCache:
    """Training images decoded and resized once per process, kept as uint8 up to `budget_mb` (0: none kept).

    After the first epoch a sample costs a normalise instead of a PNG decode and a bicubic resize, which is most of
    a small model's step on 2 cores (8 ms an image against 5 ms of compute). Images past the budget are decoded
    every time, and `misses` counts those decodes. The kept images live in one slab allocated at the first store.
    """

    def __init__(self, image_size: int, pad_to_square: bool, budget_mb: float = 0) -> None:
        self.image_size, self.pad_to_square = image_size, pad_to_square
        self.budget = int(budget_mb * 2**20)
        self.used, self.misses = 0, 0
        self._fitted: dict[Path, np.ndarray] = {}  # views into the slab
        self._slab: np.ndarray | None = None  # allocated lazily, so in the DataLoader worker that fills it

    def pixels(self, path: Path) -> torch.Tensor:
        """Normalised pixel values [3, S, S] of the image at `path`."""
        fitted = self._fitted.get(path)
        if fitted is None:
            self.misses += 1
            fitted = fit_image(load_image(path), self.image_size, self.pad_to_square)
            if self.used + fitted.nbytes <= self.budget:
                if self._slab is None:
                    fix_mmap_threshold()
                    self._slab = np.empty(self.budget, dtype=np.uint8)  # pages are committed only when written
                kept = self._slab[self.used : self.used + fitted.nbytes].reshape(fitted.shape)
                kept[...] = fitted
                self._fitted[path] = kept
                self.used += fitted.nbytes
        return normalize(fitted)[0]


class ConversationDataset(Dataset):
    """SFT (text) and multimodal (LLaVA) dialogues; images are decoded here, i.e. in the DataLoader workers.

    `mirror` doubles an image dataset: index n + i is record i mirrored left-right, its text with left and right
    swapped (right only where those are the text's only sided words, as in the simulator's data). A record with
    `"mirror": false` (a convention such as the search turn, not a side of the image) comes back unmirrored.
    """

    def __init__(self, path: str | Path, tokenizer: Tokenizer, template: str, seq_len: int, image_size: int = 0,
                 visual_tokens: int = 0, image_folder: str | Path = "", pad_to_square: bool = True, mirror: bool = False,
                 cache_mb: int = 0) -> None:
        self.records = read_records(path)
        self.path = Path(path)
        self.tokenizer, self.template, self.seq_len = tokenizer, get_template(template), seq_len
        self.image_size, self.visual_tokens, self.pad_to_square = image_size, visual_tokens, pad_to_square
        self.image_folder = Path(image_folder) if image_folder else self.path.parent
        self.mirror = mirror and image_size > 0
        self.images = ImageCache(image_size, pad_to_square, cache_mb)

    def __len__(self) -> int:
        return len(self.records) * (2 if self.mirror else 1)

    def __getitem__(self, i: int) -> dict:
        i, mirrored = i % len(self.records), i >= len(self.records)
        record, where = self.records[i], f"{self.path} sample {i}"
        turns = conversation_turns(record, where)
        mirrored = mirrored and bool(record.get("image")) and record.get("mirror", True) is not False
        if mirrored:
            turns = [(mirror_text(u), mirror_text(b)) for u, b in turns]
        pixels = None
        if record.get("image"):
            if not self.image_size:
                raise InputError(f"{where} has an image but the model is text-only")
            pixels = self.images.pixels(self.image_folder / record["image"])
            if mirrored:
                pixels = mirror_pixels(pixels)
            user = turns[0][0].replace(IMAGE_TOKEN, "").strip()
            # the image always leads the first turn; the plain template keeps nothing but the image
            turns[0] = (IMAGE_TOKEN if self.template.name == "plain" else f"{IMAGE_TOKEN}\n{user}", turns[0][1])
        else:
            turns = [(u.replace(IMAGE_TOKEN, ""), b) for u, b in turns]
        ids, labels = tokenize_conversation(self.tokenizer, self.template, turns)
        # seq_len counts positions after splicing, so an image costs visual_tokens positions
        budget = self.seq_len - (self.visual_tokens - 1) * ids.count(IMAGE_TOKEN_INDEX)
        return {"ids": ids[:budget], "labels": labels[:budget], "pixels": pixels}


def read_labels(path: str | Path) -> dict:
    """A labels file (`sim dataset`'s labels.json), checked: {"classes": [...], "groups": {name: [class, ...]} (may be
    empty), "records": [...]}."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{p}: labels file not found") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{p}: not a JSON labels file ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("records"), list) or not isinstance(data.get("classes"), list):
        raise InputError(f"{p}: a labels file is {{'classes': [...], 'records': [{{'image', 'mask', 'objects'}}, ...]}}")
    groups, num_classes = data.get("groups", {}), len(data["classes"])
    if not isinstance(groups, dict) or not all(isinstance(g, list) and g and all(isinstance(c, int) and 0 <= c < num_classes for c in g) for g in groups.values()):
        raise InputError(f"{p}: 'groups' must map names to lists of class indices below {num_classes}")
    return {"classes": data["classes"], "groups": groups, "records": data["records"]}


DOMINANT = 0.25  # of a cell: covered this much, a cell shows enough of its object to tell its colour and shape


class LabelDataset(Dataset):
    """Images with object masks (`sim dataset`'s labels.json): the vision stage's dense targets.

    File: {"classes": [name, ...], "groups": {name: [class, ...]}, "records": [{"image": path, "mask": path, "objects":
    {"k": [class, ...]}}]}. The mask is a PNG of object ids (0 = none); object k carries its classes; a group (optional)
    lists classes of which every object has exactly one (its colour, its shape). A sample's target is [grid * grid,
    classes]: the fraction of a visual token's cell (row-major, as the tokens) that an object of that class covers,
    under the same padding as the image, 0 below MIN_COVER. `mirror` doubles it: index n + i is record i mirrored
    left-right, image and targets. With `cache_mb`, images (see ImageCache) and targets are computed once per process.

    With `small_objects`, an object that covers less than DOMINANT of every cell counts as covering DOMINANT of the
    cell that holds most of it. The vision stage's colour/shape term only looks at cells covered DOMINANT or more, so
    without it an object under about a quarter of a cell (under ~400 px of a 320x240 frame at an 8x8 grid) never
    has its colour or shape named, only its presence. Measured on the demo model: no better in 3000 steps
    (models/demo/MODEL_CARD.md), so its recipes leave it off.
    """

    MIN_COVER = 0.005  # of a cell: ~14 px of a 320x240 frame at a 6x6 grid (8 px at 8x8), enough for a distant ball

    def __init__(self, path: str | Path, image_size: int, grid: int, image_folder: str | Path = "", pad_to_square: bool = True, mirror: bool = False,
                 cache_mb: int = 0, small_objects: bool = False) -> None:
        self.path = Path(path)
        self.small_objects = small_objects
        data = read_labels(self.path)
        self.records, self.num_classes, self.groups = data["records"], len(data["classes"]), data["groups"]
        self.image_size, self.grid, self.pad_to_square = image_size, grid, pad_to_square
        self.image_folder = Path(image_folder) if image_folder else self.path.parent
        self.mirror = mirror
        self.images = ImageCache(image_size, pad_to_square, cache_mb)
        self._targets: dict[int, torch.Tensor] = {}  # kept only when caching (self.images.budget)

    def __len__(self) -> int:
        return len(self.records) * (2 if self.mirror else 1)

    def __getitem__(self, i: int) -> dict:
        i, mirrored = i % len(self.records), i >= len(self.records)
        pixels = self.images.pixels(self.image_folder / self.records[i]["image"])
        targets = self._targets.get(i)
        if targets is None:
            targets = self.record_targets(i)
            if self.images.budget:
                self._targets[i] = targets
        if mirrored:
            pixels = mirror_pixels(pixels)
            targets = targets.view(self.grid, self.grid, -1).flip(1).reshape(self.grid * self.grid, -1)
        else:  # a copy: a DataLoader worker keeps a file descriptor open for every cached tensor it ever sent
            targets = targets.clone()
        return {"ids": [], "labels": targets, "pixels": pixels}

    def record_targets(self, i: int) -> torch.Tensor:
        record = self.records[i]
        mask = cv2.imread(str(self.image_folder / record["mask"]), cv2.IMREAD_UNCHANGED)
        if mask is None or mask.ndim != 2:
            raise InputError(f"{self.image_folder / record['mask']}: not a single-channel object mask")
        return self.cell_targets(mask, record["objects"])

    def cell_targets(self, mask: np.ndarray, objects: dict[str, list[int]]) -> torch.Tensor:
        h, w = mask.shape
        if self.pad_to_square:  # expand2square: centred, the pad shows no object
            side = max(h, w)
            square = np.zeros((side, side), dtype=mask.dtype)
            square[(side - h) // 2 : (side - h) // 2 + h, (side - w) // 2 : (side - w) // 2 + w] = mask
        else:  # resize_and_crop keeps the centre square
            side = min(h, w)
            square = mask[(h - side) // 2 : (h - side) // 2 + side, (w - side) // 2 : (w - side) // 2 + side]
        target = torch.zeros(self.grid * self.grid, self.num_classes)
        for k, classes in objects.items():
            cover = cv2.resize((square == int(k)).astype(np.float32), (self.grid, self.grid), interpolation=cv2.INTER_AREA)
            cover = torch.from_numpy(np.where(cover >= self.MIN_COVER, cover, 0.0).ravel())
            if self.small_objects and 0 < cover.max() < DOMINANT:
                cover[cover.argmax()] = DOMINANT
            for c in classes:
                target[:, int(c)] = torch.maximum(target[:, int(c)], cover)
        return target


def collate(samples: list[dict]) -> dict:
    images = [s["pixels"] for s in samples if s["pixels"] is not None]
    return {
        "ids": [s["ids"] for s in samples],
        "labels": [s["labels"] for s in samples],
        "pixels": torch.stack(images) if images else None,
    }


@dataclass
class StepSampler:
    """Index lists for one process: global sample k of epoch k // n is permutation(seed, epoch)[k % n].

    Step s uses global samples [s*G, (s+1)*G); micro-batch m of rank r takes the slice starting at
    (m*world + r)*micro_batch, so any (processes x accumulation) split of G sees the same samples.
    """

    n: int
    seed: int
    global_batch: int
    micro_batch: int
    world: int
    rank: int
    start_step: int
    max_steps: int

    def order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.n)

    def indices(self, first: int, count: int) -> list[int]:
        out, cache = [], {}
        for k in range(first, first + count):
            epoch = k // self.n
            if epoch not in cache:
                cache[epoch] = self.order(epoch)
            out.append(int(cache[epoch][k % self.n]))
        return out

    def __iter__(self) -> Iterator[list[int]]:
        accum = self.global_batch // (self.micro_batch * self.world)
        for step in range(self.start_step, self.max_steps):
            for m in range(accum):
                yield self.indices(step * self.global_batch + (m * self.world + self.rank) * self.micro_batch, self.micro_batch)

    def __len__(self) -> int:
        return (self.max_steps - self.start_step) * self.global_batch // (self.micro_batch * self.world)
