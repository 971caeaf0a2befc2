"""Prompt templates: Vicuna v1 (chat / fine-tuning; `v1_nosys` without its system prompt) and `plain` (projector pretraining), with multi-turn history."""
from __future__ import annotations

from dataclasses import dataclass, field

from mobilevlm_agent.errors import ConfigError
from mobilevlm_agent.tokenizer import IGNORE_INDEX, IMAGE_TOKEN, Tokenizer

VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


@dataclass(frozen=True)
class Template:
    name: str
    system: str
    roles: tuple[str, str]
    seps: tuple[str, str]  # separator after a user turn, after an assistant turn
    role_sep: str  # between a role name and its message
    stop: str  # the string that ends an assistant turn


TEMPLATES = {
    # system + " " + "USER: <image>\nQ" + " " + "ASSISTANT: A" + "</s>" + "USER: ..." (SeparatorStyle.TWO)
    "v1": Template("v1", VICUNA_SYSTEM, ("USER", "ASSISTANT"), (" ", "</s>"), ": ", "</s>"),
    # "<image>" + caption + "\n": no roles, no system (projector pretraining)
    "plain": Template("plain", "", ("", ""), ("", "\n"), "", "\n"),
    # v1 without the system prompt: for small models whose small tokenizer spends ~90 tokens on it
    "v1_nosys": Template("v1_nosys", "", ("USER", "ASSISTANT"), (" ", "</s>"), ": ", "</s>"),
}


def get_template(name: str) -> Template:
    if name not in TEMPLATES:
        raise ConfigError(f"unknown conversation template {name!r}; available: {', '.join(TEMPLATES)}")
    return TEMPLATES[name]


@dataclass
class Conversation:
    """A chat history. `messages` alternate user/assistant; the last assistant message may be None (to be generated)."""

    template: Template
    messages: list[tuple[str, str | None]] = field(default_factory=list)

    def add_user(self, text: str, with_image: bool = False) -> None:
        if with_image and IMAGE_TOKEN not in text:
            text = f"{IMAGE_TOKEN}\n{text}" if self.template.name != "plain" else IMAGE_TOKEN + text
        self.messages.append((self.template.roles[0], text))

    def add_assistant(self, text: str | None) -> None:
        self.messages.append((self.template.roles[1], text))

    def prompt(self) -> str:
        t = self.template
        out = t.system + t.seps[0] if t.system else ""
        for i, (role, message) in enumerate(self.messages):
            if message is None:  # the turn to be generated: "ASSISTANT:" (nothing for plain)
                out += role + t.role_sep.rstrip()
            else:
                out += f"{role}{t.role_sep}{message}{t.seps[i % 2]}"
        return out

    def copy(self) -> "Conversation":
        return Conversation(self.template, list(self.messages))


def tokenize_conversation(tokenizer: Tokenizer, template: Template, turns: list[tuple[str, str]]) -> tuple[list[int], list[int]]:
    """(user, assistant) turns -> (ids, labels) with labels IGNORE_INDEX everywhere but the assistant's replies.

    Prompt parts are tokenized exactly as `Conversation.prompt()` is at inference (BOS once, `<image>` chunks);
    each reply is tokenized on its own and ends with the template's closing separator (`</s>` for v1).
    """
    ids: list[int] = []
    labels: list[int] = []
    prefix = template.system + template.seps[0] if template.system else ""
    user_role, bot_role = template.roles
    for i, (user, reply) in enumerate(turns):
        text = f"{prefix}{user_role}{template.role_sep}{user}{template.seps[0]}{bot_role}{template.role_sep.rstrip()}"
        prompt = tokenizer.encode_with_image(text, bos=i == 0)
        answer = tokenizer.encode(reply + template.seps[1], bos=False)
        ids += prompt + answer
        labels += [IGNORE_INDEX] * len(prompt) + answer
        prefix = ""
    return ids, labels
