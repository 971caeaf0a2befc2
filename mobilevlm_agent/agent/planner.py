"""Planners choose the next action on the closed grammar. The model planner can only ever pick a grammar word."""
from __future__ import annotations

import random
from typing import Protocol

import numpy as np
import torch

from mobilevlm_agent.agent.actions import ACTIONS
from mobilevlm_agent.chat import ChatSession
from mobilevlm_agent.conversation import Conversation
from mobilevlm_agent.model.vlm import MobileVLM
from mobilevlm_agent.sim.dataset import nav_prompt


class Planner(Protocol):
    """`history` is the episode's actions so far. The bundled planners decide from the current view alone (see
    `nav_prompt` for why the model's prompt leaves it out); a planner with memory may use it."""

    def next_action(self, image: np.ndarray, instruction: str, history: list[str]) -> str: ...


class RandomPlanner:
    """The lower bound: uniformly random grammar actions (seeded)."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = random.Random(seed)

    def next_action(self, image: np.ndarray, instruction: str, history: list[str]) -> str:
        return self.rng.choice(ACTIONS)


def score_choices(session: ChatSession, prompt: str, choices: tuple[str, ...]) -> list[float]:
    """Log-likelihood of each complete reply (closing EOS included) after the prompt, with the session's image.

    Scoring every allowed reply, instead of free decoding, makes an answer outside `choices` impossible.
    """
    model, tok = session.model, session.tokenizer
    conv = Conversation(session.template)
    conv.add_user(prompt, with_image=session.image_features is not None)
    conv.add_assistant(None)
    prompt_ids = tok.encode_with_image(conv.prompt())
    scores = []
    keys = session.position_keys(prompt_ids)
    start = len(keys)
    with torch.inference_mode():
        replies = [tok.encode(choice + session.template.seps[1], bos=False) for choice in choices]
        model.llm.setup_cache(1, start + max(len(r) for r in replies))
        cached = model.llm.reusable_prefix(keys)  # e.g. the system prompt, from the previous decision
        prefix = model.embed(prompt_ids, session.image_features)[:, cached:]
        first = model.llm.prefill(prefix, cached)[0].float().log_softmax(-1)  # the prompt runs once, for every choice
        model.llm.cache_keys = list(keys)
        for reply in replies:
            score = float(first[reply[0]])
            for pos, (token, following) in enumerate(zip(reply, reply[1:]), start):  # decode_one: any backend has it
                score += float(model.llm.decode_one(torch.tensor([token], device=model.device), pos)[0].float().log_softmax(-1)[following])
            scores.append(score)
    return scores


class ModelPlanner:
    """MobileVLM as the planner: the current view plus instruction -> the likeliest grammar action."""

    def __init__(self, model: MobileVLM) -> None:
        self.session = ChatSession(model)

    def next_action(self, image: np.ndarray, instruction: str, history: list[str]) -> str:
        self.session.set_image(image)
        return choose_action(self.session, instruction)[0]


def choose_action(session: ChatSession, instruction: str) -> tuple[str, dict[str, float]]:
    """The likeliest grammar action for the session's current image, and every action's log-likelihood."""
    scores = score_choices(session, nav_prompt(instruction), ACTIONS)
    return ACTIONS[int(np.argmax(scores))], dict(zip(ACTIONS, scores))
