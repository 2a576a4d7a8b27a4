"""Models that cost no compute, for measuring the control plane (``ops/bench/fleet.py``).

Registry entries with ``backend = "null"`` (any role) load these: a generator that echoes a
short answer, a ranker whose logit is a stable function of the two texts, a fuser that
keeps the best candidate. ``latency_ms`` in the entry's params adds a fixed wait per call
(a latency model of a remote or GPU backend) without using a core. Their answers mean
nothing; what they exercise is everything around the model: messages, claims, leases,
writes and counts.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Iterator

from workers.generation.prompts import GenerationResult, Prompt

REVISION = "null"


def _wait(latency_ms: float) -> None:
    if latency_ms > 0:
        time.sleep(latency_ms / 1000)


class NullGenerator:
    revision = REVISION

    def __init__(self, latency_ms: float = 0.0) -> None:
        self.latency_ms = latency_ms

    def load(self) -> None:
        return None

    def warm_up(self) -> None:
        return None

    def generate_prompts(self, prompts: list[Prompt], *,
                         token_budget: int | None = None) -> list[GenerationResult]:
        _wait(self.latency_ms)
        return [GenerationResult(text=f"answer {_score(p.conversation[-1]['content'])}",
                                 prompt_tokens=len(p.conversation[-1]["content"]) // 4,
                                 completion_tokens=2, finish_reason="stop")
                for p in prompts]

    def generate(self, conversations: list[list[dict[str, str]]], **_: object,
                 ) -> list[GenerationResult]:
        return self.generate_prompts([Prompt(conversation=c) for c in conversations])


class NullRanker:
    revision = REVISION

    def __init__(self, latency_ms: float = 0.0) -> None:
        self.latency_ms = latency_ms

    def iter_compare(self, pairs: list[tuple[str, str, str]], batch_size: int | None = None,
                     token_budget: int = 0, batch_cost: int = 0,
                     ) -> Iterator[tuple[list[int], list[float]]]:
        _wait(self.latency_ms)
        yield list(range(len(pairs))), [_score(a) - _score(b) for _, a, b in pairs]


class NullFuser:
    revision = REVISION

    def __init__(self, latency_ms: float = 0.0) -> None:
        self.latency_ms = latency_ms

    def fuse(self, items: list[tuple[str, str, list[str]]], **_: object) -> list[str]:
        _wait(self.latency_ms)
        return [candidates[0] for _, _, candidates in items]


def _score(text: str) -> float:
    return (zlib.crc32(text.encode()) % 1000) / 1000


def create(role: str, latency_ms: float) -> NullGenerator | NullRanker | NullFuser:
    if role == "generator":
        return NullGenerator(latency_ms)
    if role == "ranker":
        return NullRanker(latency_ms)
    return NullFuser(latency_ms)
