"""Raw text (.txt one document per line, .jsonl with a `text` field, optionally .gz) -> token-ID bucket files.

Output directory: `bucket-NNNNN.bin` (raw uint16/uint32 token ids, documents back to back), `index.bin`
(int64 rows: bucket, offset, length, one per document) and `manifest.json`. Streams: the corpus is never held in memory.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import multiprocessing as mp
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mobilevlm_agent.errors import InputError
from mobilevlm_agent.tokenizer import Tokenizer

LINES_PER_TASK = 512
_worker_tokenizer: Tokenizer | None = None


def _kind(path: Path) -> str:
    name = path.name.removesuffix(".gz")
    if name.endswith((".jsonl", ".json")):
        return "jsonl"
    if name.endswith(".txt"):
        return "txt"
    raise InputError(f"unsupported corpus file {path}: expected .txt, .jsonl (optionally .gz)")


def read_lines(paths: list[Path], progress: tqdm) -> Iterator[list[tuple[str, bytes]]]:
    """Batches of (kind, raw line); the progress bar advances by compressed bytes read."""
    for path in paths:
        kind = _kind(path)
        with open(path, "rb") as raw, (gzip.open(raw) if path.suffix == ".gz" else raw) as f:
            batch, last = [], 0
            for line in f:
                batch.append((kind, line))
                if len(batch) == LINES_PER_TASK:
                    yield batch
                    batch = []
                    progress.update(raw.tell() - last)
                    last = raw.tell()
            if batch:
                yield batch
            progress.update(raw.tell() - last)


def _init_worker(tokenizer_path: str) -> None:
    global _worker_tokenizer
    _worker_tokenizer = Tokenizer(tokenizer_path)


def encode_lines(batch: list[tuple[str, bytes]]) -> tuple[list[list[int]], int, int]:
    """-> (token lists of good documents, bad line count, blank line count)."""
    assert _worker_tokenizer is not None
    docs, bad, blank = [], 0, 0
    for kind, line in batch:
        try:
            text = line.decode("utf-8")
            if kind == "jsonl":
                if not text.strip():
                    blank += 1
                    continue
                text = json.loads(text)["text"]
                if not isinstance(text, str):
                    raise TypeError("text is not a string")
            text = text.strip()
        except (UnicodeDecodeError, ValueError, KeyError, TypeError):
            bad += 1
            continue
        if not text:
            blank += 1
            continue
        docs.append(_worker_tokenizer.encode(text, bos=False))
    return docs, bad, blank


def tokenize_corpus(inputs: list[str | os.PathLike], tokenizer_path: str | os.PathLike, out_dir: str | os.PathLike, workers: int = 1, bucket_tokens: int = 1 << 28) -> dict:
    paths = [Path(p) for p in inputs]
    for p in paths:
        if not p.is_file():
            raise InputError(f"corpus file not found: {p}")
        _kind(p)
    tokenizer = Tokenizer(tokenizer_path)
    dtype = np.uint16 if tokenizer.vocab_size < 65536 else np.uint32
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stats = {"documents": 0, "tokens": 0, "bad_lines": 0, "blank_lines": 0}
    bucket, bucket_fill, bucket_file = 0, 0, open(out / "bucket-00000.bin", "wb")
    index_file = open(out / "index.bin", "wb")
    progress = tqdm(total=sum(p.stat().st_size for p in paths), unit="B", unit_scale=True, desc="tokenize")
    pool = mp.get_context("spawn").Pool(workers, _init_worker, (str(tokenizer_path),)) if workers > 1 else None
    _init_worker(str(tokenizer_path))
    try:
        batches = read_lines(paths, progress)
        results = pool.imap(encode_lines, batches) if pool else map(encode_lines, batches)
        for docs, bad, blank in results:
            stats["bad_lines"] += bad
            stats["blank_lines"] += blank
            for doc in docs:
                if bucket_fill and bucket_fill + len(doc) > bucket_tokens:
                    bucket_file.close()
                    bucket, bucket_fill = bucket + 1, 0
                    bucket_file = open(out / f"bucket-{bucket:05d}.bin", "wb")
                bucket_file.write(np.asarray(doc, dtype=dtype).tobytes())
                index_file.write(np.array([bucket, bucket_fill, len(doc)], dtype=np.int64).tobytes())
                bucket_fill += len(doc)
                stats["documents"] += 1
                stats["tokens"] += len(doc)
    finally:
        progress.close()
        bucket_file.close()
        index_file.close()
        if pool:
            pool.close()
    if stats["documents"] == 0:
        raise InputError(f"no documents found in {', '.join(map(str, paths))} ({stats['bad_lines']} bad lines)")
    manifest = {
        **stats,
        "buckets": bucket + 1,
        "dtype": np.dtype(dtype).name,
        "vocab_size": tokenizer.vocab_size,
        "eos_id": tokenizer.eos_id,
        "tokenizer_sha256": hashlib.sha256(Path(tokenizer_path).read_bytes()).hexdigest(),
        "sources": [str(p) for p in paths],
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
