"""Planners choose the next action on the closed grammar. The model planner can only ever pick a grammar word."""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from mobilevlm_agent.agent.actions import ACTIONS
from mobilevlm_agent.chat import ChatSession
from mobilevlm_agent.conversation import Conversation
from mobilevlm_agent.model.vlm import MobileVLM
from mobilevlm_agent.sim.dataset import colour_question, nav_prompt, shape_question
from mobilevlm_agent.sim.oracle import SEARCH
from mobilevlm_agent.sim.scene import COLOURS, SHAPES


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


def likeliest_choice(session: ChatSession, prompt: str, choices: tuple[str, ...]) -> str:
    """The model's answer to a closed question about the session's image: the best-scored of `choices`."""
    return choices[int(np.argmax(score_choices(session, prompt, choices)))]


class ModelPlanner:
    """MobileVLM as the planner: the current view plus instruction -> the likeliest grammar action, a `stop` only
    once the model's own answers about the view agree with the instruction, and no turn straight back (see `plan`)."""

    def __init__(self, model: MobileVLM, verify_stop: bool = True, hold_turns: bool = True) -> None:
        self.session = ChatSession(model)
        self.verify_stop, self.hold_turns = verify_stop, hold_turns
        self.stops_vetoed = self.turns_held = 0

    def next_action(self, image: np.ndarray, instruction: str, history: list[str]) -> str:
        self.session.set_image(image)
        previous = history[-1] if history and self.hold_turns else None
        decision = plan(self.session, instruction, self.verify_stop, previous)
        self.stops_vetoed += decision.stop_vetoed
        self.turns_held += decision.turn_held
        return decision.action


def choose_action(session: ChatSession, instruction: str) -> tuple[str, dict[str, float]]:
    """The likeliest grammar action for the session's current image, and every action's log-likelihood."""
    scores = score_choices(session, nav_prompt(instruction), ACTIONS)
    return ACTIONS[int(np.argmax(scores))], dict(zip(ACTIONS, scores))


@dataclass(frozen=True)
class Plan:
    action: str  # what to execute
    scores: dict[str, float]  # every grammar action's log-likelihood
    stop_vetoed: bool = False  # the likeliest action was `stop`, and a goal question contradicted it
    turn_held: bool = False  # the likeliest action reversed the previous turn; that turn was kept instead


REVERSED_TURN = {"turn_left": "turn_right", "turn_right": "turn_left"}


def goal_questions(instruction: str) -> list[tuple[str, tuple[str, ...], str]]:
    """(question, allowed answers, the answer the instruction implies) for an instruction that names a colour and a
    shape of the simulator's vocabulary ("go to the red cube": the red object's shape, the cube's colour); else none."""
    words = re.findall(r"[a-z]+", instruction.lower())
    colour = next((w for w in words if w in COLOURS), None)
    shape = next((w for w in words if w in SHAPES), None)
    if colour is None or shape is None:
        return []
    return [(shape_question(colour), SHAPES, shape), (colour_question(shape), tuple(COLOURS), colour)]


def plan(session: ChatSession, instruction: str, verify_stop: bool = True, previous: str | None = None) -> Plan:
    """The next action for the session's current image.

    With `previous` (the action executed last), a turn straight back is replaced by the previous turn again. The
    policy sees only the current view and the simulator is deterministic, so a left turn whose view asks for a right
    turn back comes back to the same view and the same answer: the robot then alternates for the rest of the episode
    (most of the bundled model's timeouts). The hold costs a detour where turning back was right: the oracle's own
    labels reverse 11 % of their turns (MODEL_CARD.md, "Holding a turn instead of reversing it").

    With `verify_stop` a `stop` must survive the goal questions, each answered by the model about the same view
    (grammar-scored as in `eval sim`): an answer that contradicts the instruction turns the stop into the search
    move. At its wrong stops the bundled model faces an object of the target's colour but another shape, which its
    own answers name correctly (MODEL_CARD.md, "Stopping only where its answers agree")."""
    action, scores = choose_action(session, instruction)
    turn_held = previous in REVERSED_TURN and action == REVERSED_TURN[previous]
    if turn_held:
        action = previous
    if action == "stop" and verify_stop:
        for question, answers, expected in goal_questions(instruction):
            if likeliest_choice(session, question, answers) != expected:
                return Plan(SEARCH, scores, stop_vetoed=True)
    return Plan(action, scores, turn_held=turn_held)
