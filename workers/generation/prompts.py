"""What every generation backend takes and returns, with no ML imports.

A ``Prompt`` carries its own decoding parameters, so one backend call can hold prompts
gathered from many chunks (and requests that override the registry's defaults) without
the caller grouping them by parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Conversation = list[dict[str, str]]


@dataclass
class GenerationResult:
    text: str
    prompt_tokens: int
    completion_tokens: int
    error: str | None = None  # per-prompt failure reason; text is "" then
    finish_reason: str | None = None  # "stop" (end of sequence) or "length" (ran out)


@dataclass(frozen=True)
class Prompt:
    conversation: Conversation
    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0

    def problem(self) -> str | None:
        """Why no backend can run this prompt, or None; a per-prompt error, never a raise,
        so one bad request line fails alone."""
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            return f"max_new_tokens must be a whole number >= 1, got {self.max_new_tokens!r}"
        if not isinstance(self.temperature, int | float) or self.temperature < 0:
            return f"temperature must be a number >= 0, got {self.temperature!r}"
        if not isinstance(self.top_p, int | float) or not 0 < self.top_p <= 1:
            return f"top_p must be a number in (0, 1], got {self.top_p!r}"
        if self.seed is not None and not isinstance(self.seed, int):
            return f"seed must be a whole number, got {self.seed!r}"
        return None


def prompts_for(conversations: list[Conversation], *, max_new_tokens: int = 64,
                temperature: float = 0.0, top_p: float = 1.0,
                seed: int | None = None) -> list[Prompt]:
    """The old call shape (one set of parameters for all conversations) as prompts."""
    return [Prompt(c, max_new_tokens, temperature, top_p, seed) for c in conversations]


def prompt_ids(tokenizer: Any, conversation: Conversation) -> list[int]:
    """Token ids of ``conversation`` ready for generation, by the model's chat template
    (or the messages joined by newlines when the tokenizer has none)."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(conversation, add_generation_prompt=True,
                                             tokenize=False)
        # The template already carries bos and role markers.
        ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    else:
        text = "\n".join(m.get("content", "") for m in conversation)
        ids = tokenizer(text, verbose=False)["input_ids"]
    return list(ids)


def fit_prompt(ids: list[int], context: int, max_new_tokens: int,
               overflow: str) -> tuple[list[int] | None, str | None]:
    """The ids to send (cut from the left when too long) or the per-prompt error."""
    room = context - max_new_tokens
    if room < 1:
        return None, (f"max_new_tokens {max_new_tokens} leaves no room for the prompt in a "
                      f"context of {context} tokens")
    if len(ids) <= room:
        return ids, None
    if overflow == "fail":
        return None, (f"prompt is {len(ids)} tokens; the context leaves room for {room} "
                      f"(overflow = fail)")
    # Keep the end: the latest turns and the generation prompt matter most.
    return ids[-room:], None
