"""A chat session over one image: templates, visual tokens cached per image, KV-cache reuse across turns, streaming."""
from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from mobilevlm_agent.conversation import Conversation, get_template
from mobilevlm_agent.errors import ContextLengthError, InputError
from mobilevlm_agent.generate import SamplingParams, TextStream, generate_tokens
from mobilevlm_agent.model.vlm import MobileVLM
from mobilevlm_agent.preprocess import load_image
from mobilevlm_agent.tokenizer import IMAGE_TOKEN_INDEX

_IMAGE_IDS = itertools.count(1)


@dataclass
class Answer:
    text: str
    token_ids: list[int]  # generated ids, EOS included when the model emitted it
    prompt_tokens: int  # text tokens of the prompt (the <image> placeholder not counted)
    visual_tokens: int
    finish_reason: str  # "eos" | "stop" (a stop string) | "length" (max_new_tokens) | "context" (window full)
    timings: dict[str, float] = field(default_factory=dict)


def check_text(text: str, what: str = "prompt") -> str:
    if not isinstance(text, str):
        raise InputError(f"{what} must be a str, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InputError(f"{what} is not valid UTF-8 text (position {e.start})") from e
    return text


class ChatSession:
    """Multi-turn chat about (at most) one image. A new image starts a new conversation, as the models were trained.

    The KV cache is kept between turns: each turn only prefills the positions that differ from the previous one.
    """

    def __init__(self, model: MobileVLM, template: str | None = None, system: str | None = None) -> None:
        if model.tokenizer is None:
            raise InputError(f"model {model.config.name} has no tokenizer.model; chat needs one")
        self.model, self.tokenizer = model, model.tokenizer
        self.template = get_template(template or model.config.conv_template)
        if system is not None:
            self.template = replace(self.template, system=system)
        self.image_features: torch.Tensor | None = None
        self._image_id = 0
        self.last_answer: Answer | None = None
        self.reset()

    def reset(self) -> None:
        """Forget the conversation (the image stays; call set_image to change it)."""
        self.conversation = Conversation(self.template)

    def set_image(self, image: np.ndarray | str | os.PathLike) -> float:
        """Encode an image (RGB uint8 array or file path) once; start a new conversation. Returns ms spent."""
        t0 = time.perf_counter()
        rgb = image if isinstance(image, np.ndarray) else load_image(image)
        self.set_image_features(self.model.encode_rgb(rgb))
        return (time.perf_counter() - t0) * 1000

    def set_image_features(self, features: torch.Tensor) -> None:
        """Use visual tokens computed elsewhere (e.g. by an encoder process): [1, num_visual_tokens, llm hidden]."""
        expected = (1, self.model.config.num_visual_tokens, self.model.config.llm.hidden_size)
        if tuple(features.shape) != expected:
            raise InputError(f"visual tokens must have shape {list(expected)} for {self.model.config.name}, got {list(features.shape)}")
        self.image_features = features.to(self.model.device, self.model.dtype)
        self._image_id = next(_IMAGE_IDS)  # unique across sessions: cached visual tokens are never mistaken
        self.reset()

    def prefill_image(self) -> float:
        """Run the first turn's prompt up to the end of the visual tokens through the KV cache now, before any
        question: the next question on this image then prefills only its own text. Returns ms spent (0 when the
        cache already holds it). A robot calls this when a frame arrives, so a query's latency excludes the image."""
        if self.image_features is None:
            raise InputError("prefill_image needs an image; call set_image or set_image_features first")
        t0 = time.perf_counter()
        conversation = Conversation(self.template)
        conversation.add_user("", with_image=True)
        ids = self.tokenizer.encode_with_image(conversation.prompt())
        ids = ids[: ids.index(IMAGE_TOKEN_INDEX) + 1]  # text after the image merges with the question's first piece
        keys = self.position_keys(ids)
        start = self.model.llm.reusable_prefix(keys + [None])  # + a sentinel: every position of `keys` may be reused
        if start == len(keys):
            return 0.0
        with torch.inference_mode():
            embeds = self.model.embed(ids, self.image_features)[:, start:]
            self.model.llm.setup_cache(1, len(keys))
            self.model.llm.prefill(embeds, start)
        self.model.llm.cache_keys = keys
        return (time.perf_counter() - t0) * 1000

    def ask(self, question: str, image=None, params: SamplingParams = SamplingParams(), on_text: Callable[[str], None] | None = None) -> Answer:
        """Answer a question; `on_text` receives the answer as it streams."""
        for delta in self.stream(question, image, params):
            if on_text is not None:
                on_text(delta)
        assert self.last_answer is not None
        return self.last_answer

    def stream(self, question: str, image=None, params: SamplingParams = SamplingParams()) -> Iterator[str]:
        """Yield the answer's text as it is generated; afterwards `last_answer` holds the full Answer."""
        t0 = time.perf_counter()
        timings: dict[str, float] = {}
        if image is not None:
            timings["encode_ms"] = self.set_image(image)
        check_text(question, "question")
        first_turn = not self.conversation.messages
        self.conversation.add_user(question, with_image=first_turn and self.image_features is not None)
        self.conversation.add_assistant(None)
        ids = self.tokenizer.encode_with_image(self.conversation.prompt())
        keys = self.position_keys(ids)
        context = self.model.config.llm.max_position_embeddings
        if len(keys) >= context:
            self.conversation.messages[-2:] = []
            raise ContextLengthError(
                f"prompt needs {len(keys)} positions ({len(ids) - ids.count(IMAGE_TOKEN_INDEX)} text tokens + "
                f"{len(keys) - len(ids) + ids.count(IMAGE_TOKEN_INDEX)} visual) but the context window is {context}; "
                "shorten the question or call reset() to drop the chat history"
            )
        max_new = min(params.max_new_tokens, context - len(keys))
        start = self.model.llm.reusable_prefix(keys)
        features = self.image_features if IMAGE_TOKEN_INDEX in ids else None
        with torch.inference_mode():
            embeds = self.model.embed(ids, features)[:, start:]
        stream = TextStream(self.tokenizer, params.stop + (self.template.stop,))
        tokens = generate_tokens(self.model.llm, embeds, replace(params, max_new_tokens=max_new), self.tokenizer.eos_id, start, history=ids)
        generated: list[int] = []
        pieces: list[str] = []
        t_first = None
        for token in tokens:
            generated.append(token)
            t_first = t_first or time.perf_counter()
            delta = stream.push(token)
            if delta:
                pieces.append(delta)
                yield delta
            if stream.stopped:
                tokens.close()
                break
        tail = stream.finish()
        if tail:
            pieces.append(tail)
            yield tail
        t_end = time.perf_counter()
        # The last sampled token was never fed back, so the cache holds everything before it.
        self.model.llm.cache_keys = keys + generated[:-1]
        text = "".join(pieces).strip()
        self.conversation.messages[-1] = (self.template.roles[1], text)
        if generated[-1] == self.tokenizer.eos_id:
            reason = "eos"
        elif stream.stopped:
            reason = "stop"
        else:
            reason = "context" if max_new < params.max_new_tokens else "length"
        assert t_first is not None
        timings.update(
            ttft_ms=(t_first - t0) * 1000,
            prefill_tokens=float(len(keys) - start),
            decode_ms=(t_end - t_first) * 1000,
            decode_tok_s=(len(generated) - 1) / (t_end - t_first) if len(generated) > 1 else 0.0,
            total_ms=(t_end - t0) * 1000,
        )
        self.last_answer = Answer(text, generated, len(ids) - ids.count(IMAGE_TOKEN_INDEX), self.model.config.num_visual_tokens if features is not None else 0, reason, timings)

    def position_keys(self, ids: list[int]) -> list[Hashable]:
        """One key per sequence position, with each image expanded to its visual tokens."""
        keys: list[Hashable] = []
        for token in ids:
            if token == IMAGE_TOKEN_INDEX:
                keys.extend(("image", self._image_id, j) for j in range(self.model.config.num_visual_tokens))
            else:
                keys.append(token)
        return keys
