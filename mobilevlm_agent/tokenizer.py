"""SentencePiece tokenizer with LLaMA slow-tokenizer semantics, and the `<image>` chunking rule."""
from __future__ import annotations

import io
import os
import re
from collections.abc import Iterable
from pathlib import Path

import sentencepiece as spm

from mobilevlm_agent.errors import CheckpointError, InputError

IMAGE_TOKEN = "<image>"
IMAGE_TOKEN_INDEX = -200  # placeholder id where the visual tokens are spliced
IGNORE_INDEX = -100


class Tokenizer:
    """Wraps `tokenizer.model`. Special-token strings (`<s>`, `</s>`) in text map to their ids, as in HF's slow tokenizer."""

    def __init__(self, model_path: str | os.PathLike) -> None:
        path = Path(model_path)
        if not path.is_file():
            raise CheckpointError(f"tokenizer model not found: {path}")
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.Load(str(path))
        except (OSError, RuntimeError) as e:
            raise CheckpointError(f"cannot load SentencePiece model {path}: {e}") from e
        self.path = path
        self.bos_id, self.eos_id = self.sp.bos_id(), self.sp.eos_id()
        self._special = {self.sp.id_to_piece(i): i for i in (self.bos_id, self.eos_id) if i >= 0}
        self._special_re = re.compile("(" + "|".join(re.escape(s) for s in self._special) + ")")

    @property
    def vocab_size(self) -> int:
        return self.sp.GetPieceSize()

    def encode(self, text: str, bos: bool = True) -> list[int]:
        if not isinstance(text, str):
            raise InputError(f"text must be str, got {type(text).__name__}")
        ids = [self.bos_id] if bos else []
        for part in self._special_re.split(text):
            if part in self._special:
                ids.append(self._special[part])
            elif part:
                ids.extend(self.sp.EncodeAsIds(part))
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Decode, skipping special and placeholder ids (skip_special_tokens=True)."""
        # ids beyond the tokenizer (a model with a bigger vocab) show as <unk>, never silently vanish
        n = self.vocab_size
        return self.sp.DecodeIds([i if i < n else 0 for i in ids if i >= 0 and i not in (self.bos_id, self.eos_id)])

    def encode_with_image(self, prompt: str, bos: bool = True) -> list[int]:
        """Chunks around `<image>` are tokenized separately; BOS only on the first; IMAGE_TOKEN_INDEX between."""
        ids: list[int] = []
        for i, chunk in enumerate(prompt.split(IMAGE_TOKEN)):
            if i > 0:
                ids.append(IMAGE_TOKEN_INDEX)
            ids.extend(self.encode(chunk, bos=bos and i == 0))
        return ids


def train_tokenizer(texts: Iterable[str], out_path: str | os.PathLike, vocab_size: int = 512) -> Path:
    """Train a LLaMA-style BPE tokenizer (<unk>=0, <s>=1, </s>=2, byte fallback) and write `tokenizer.model`."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.Train(
        sentence_iterator=iter(texts),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="bpe",
        byte_fallback=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        hard_vocab_limit=False,
        character_coverage=1.0,
        split_digits=True,
        minloglevel=2,
    )
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(model.getvalue())
    return out
