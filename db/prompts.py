"""One rendering of a chat conversation into MixInstruct's ``instruction`` / ``input``.

The generators read an OpenAI Batch line's messages as they are; the ranker, the fuser, the
auditor views and the training exports read two fields, ``instruction`` and ``input``
(LLM-Blender's MixInstruct layout; the ranker's source is ``instruction\\ninput``). So that
all of them see the whole prompt the generators answered, a conversation is rendered:

- ``instruction``: the last user turn, as written;
- ``input``: every other message in the order sent, each as ``Role: content`` (System,
  Developer, User, Assistant), separated by a blank line; empty when the conversation is
  that one user turn alone.

The question being asked comes first: the ranker and the fuser cut a long source from its
end, so a long history is what gets cut, never the question. Validation stores this
rendering (``orchestration/validation.py``); the audit reads and exports render the
stored messages again, so rows stored before it existed export the full prompt too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

ROLE_LABELS = {"system": "System", "developer": "Developer", "user": "User",
               "assistant": "Assistant"}


def render_conversation(messages: Sequence[dict[str, Any]]) -> tuple[str, str]:
    """``(instruction, input)`` for a conversation holding at least one user turn."""
    last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"),
                    default=None)
    if last_user is None:
        raise ValueError("a conversation needs at least one message with role 'user'")
    context = [f"{ROLE_LABELS.get(str(m.get('role')), str(m.get('role')).title())}: "
               f"{m.get('content', '')}"
               for i, m in enumerate(messages) if i != last_user]
    return str(messages[last_user].get("content", "")), "\n\n".join(context)


def prompt_fields(instruction: str, input: str,
                  messages: Sequence[dict[str, Any]] | None) -> tuple[str, str]:
    """What a stored request's prompt is in the MixInstruct layout: the rendered
    conversation for a chat line, its own two fields for a native line."""
    return render_conversation(messages) if messages else (instruction, input)
