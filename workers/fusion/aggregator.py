"""Fusion by any chat LLM, the Mixture-of-Agents way: the model reads the instruction and
the numbered top candidates and writes one better answer. Needs no seq2seq weights."""

from __future__ import annotations

from workers.generation.transformers_backend import Conversation, TransformersGenerator

# The aggregate-and-synthesize prompt of Mixture-of-Agents (Wang et al. 2024), shortened.
SYSTEM_PROMPT = (
    "You have been provided with a set of responses from various models to the latest user "
    "query. Your task is to synthesize these responses into a single, high-quality "
    "response. Critically evaluate the information provided in these responses, "
    "recognizing that some of it may be biased or incorrect. Do not simply replicate the "
    "given answers; offer a refined, accurate and comprehensive reply to the instruction."
    "\n\nResponses from models:"
)


class AggregatorFuser:
    def __init__(self, path: str, revision: str | None = None,
                 max_candidate_chars: int = 2000) -> None:
        self.generator = TransformersGenerator(path, revision=revision)
        self.generator.load()
        self.max_candidate_chars = max_candidate_chars

    @property
    def revision(self) -> str:
        return self.generator.revision

    @staticmethod
    def build_conversation(instruction: str, input: str, candidates: list[str],
                           max_candidate_chars: int = 2000) -> Conversation:
        numbered = "\n".join(f"{i}. {c[:max_candidate_chars]}"
                             for i, c in enumerate(candidates, start=1))
        user = instruction + (f"\n\n{input}" if input else "")
        return [{"role": "system", "content": f"{SYSTEM_PROMPT}\n{numbered}"},
                {"role": "user", "content": user}]

    def fuse(self, items: list[tuple[str, str, list[str]]], *, num_beams: int = 1,
             max_new_tokens: int = 256, batch_size: int = 4) -> list[str]:
        # Greedy: beams buy little for a chat model and cost memory in proportion.
        conversations = [self.build_conversation(i, x, c, self.max_candidate_chars)
                         for i, x, c in items]
        results = self.generator.generate(conversations, max_new_tokens=max_new_tokens,
                                          batch_size=batch_size)
        failed = [r.error for r in results if r.error]
        if failed:
            raise RuntimeError(f"aggregator: {failed[0]}")
        return [r.text.strip() for r in results]
