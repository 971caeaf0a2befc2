"""Token generation: a pure `sample`, a prefill-then-decode token generator, and text streaming with stop strings."""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from mobilevlm_agent.errors import ConfigError
from mobilevlm_agent.model.llama import MobileLLaMA
from mobilevlm_agent.tokenizer import Tokenizer


@dataclass(frozen=True)
class SamplingParams:
    """How to pick each next token. temperature 0 is greedy; top_k 0 and top_p 1 disable those filters."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.max_new_tokens < 1:
            problems.append(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            problems.append(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            problems.append(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            problems.append(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if problems:
            raise ConfigError("; ".join(problems))


def sample(logits: torch.Tensor, params: SamplingParams, history: Sequence[int] = (), generator: torch.Generator | None = None) -> int:
    """Pick the next token from logits [V]. `history` (ids seen so far) feeds the repetition penalty."""
    logits = logits.float()
    if params.repetition_penalty != 1.0 and history:
        seen = torch.tensor(sorted({i for i in history if i >= 0}), device=logits.device, dtype=torch.long)
        picked = logits[seen]
        logits = logits.clone()
        logits[seen] = torch.where(picked > 0, picked / params.repetition_penalty, picked * params.repetition_penalty)
    if params.temperature == 0:
        return int(logits.argmax())
    logits = logits / params.temperature
    if 0 < params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop = cumulative - sorted_logits.softmax(-1) >= params.top_p  # keep the smallest set reaching top_p
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
    return int(torch.multinomial(logits.softmax(-1), 1, generator=generator))


def make_generator(seed: int | None, device: torch.device) -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.manual_seed(seed) if seed is not None else generator.seed()
    return generator


@torch.inference_mode()
def generate_tokens(
    llm: MobileLLaMA,
    inputs_embeds: torch.Tensor,
    params: SamplingParams,
    eos_id: int,
    start: int = 0,
    history: Sequence[int] = (),
) -> Iterator[int]:
    """Prefill `inputs_embeds` [1, T, H] at positions [start, start+T), then decode one token at a time.

    Positions before `start` must already be in the KV cache. Stops after EOS or max_new_tokens; the caller stops
    early on stop strings by closing the iterator.
    """
    generator = make_generator(params.seed, inputs_embeds.device)
    llm.setup_cache(1, start + inputs_embeds.shape[1] + params.max_new_tokens)
    logits = llm.prefill(inputs_embeds, start)[0]
    pos = start + inputs_embeds.shape[1]
    seen = list(history)
    for _ in range(params.max_new_tokens):
        token = sample(logits, params, seen, generator)
        yield token
        if token == eos_id:
            return
        seen.append(token)
        logits = llm.decode_one(torch.tensor([token], device=inputs_embeds.device), pos)[0]
        pos += 1


class TextStream:
    """Turns generated ids into text deltas: waits out incomplete UTF-8 pieces and partial stop strings."""

    def __init__(self, tokenizer: Tokenizer, stop: Sequence[str] = ()) -> None:
        self.tokenizer, self.stop = tokenizer, tuple(s for s in stop if s)
        self.ids: list[int] = []
        self.emitted = 0  # characters of the final text already handed out
        self.stopped = False

    def push(self, token: int) -> str:
        """Add a token; return the text that is now safe to show (possibly empty)."""
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids)
        for s in self.stop:
            cut = text.find(s)
            if cut >= 0:
                self.stopped = True
                return self._take(text[:cut])
        if text.endswith("\ufffd"):  # a multi-byte character split across tokens
            return ""
        hold = max((n for s in self.stop for n in range(len(s) - 1, 0, -1) if text.endswith(s[:n])), default=0)
        return self._take(text[: len(text) - hold])

    def finish(self) -> str:
        """Whatever was held back, once generation has ended without a stop string."""
        return "" if self.stopped else self._take(self.tokenizer.decode(self.ids).rstrip("\ufffd"))

    def _take(self, text: str) -> str:
        delta = text[self.emitted :]
        self.emitted = max(self.emitted, len(text))
        return delta

