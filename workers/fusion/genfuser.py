"""GenFuser: a seq2seq model (llm-blender's Flan-T5 fuser) that merges the top candidates.

The prompt is llm-blender's ``GenFuserDataset`` format. One difference on purpose: the
reference cuts the whole prompt to ``max_length`` tokens, which drops the closing
instruction when the input is long; here the source and each candidate are cut first,
so the prompt always ends with the instruction.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from workers.devices import pick_device, pick_dtype, weights_revision

PROMPT_SUFFIX = "Summarize candidates into a better one for the given instruction:"


class GenFuser:
    def __init__(
        self,
        path: str,
        device: str | None = None,
        revision: str | None = None,
        candidate_maxlength: int = 128,
        source_maxlength: int = 1024,
    ) -> None:
        self.path = path
        self.device = pick_device(device)
        self._revision = revision
        self.candidate_maxlength = candidate_maxlength
        self.source_maxlength = source_maxlength
        self.model: Any = None
        self.tokenizer: Any = None
        self.load()

    @classmethod
    def from_pretrained(
        cls, path: str, device: str | None = None, revision: str | None = None
    ) -> GenFuser:
        return cls(path, device=device, revision=revision)

    def load(self) -> None:
        if not Path(self.path).is_dir():
            raise FileNotFoundError(f"fuser model directory not found: {self.path}")
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        model = AutoModelForSeq2SeqLM.from_pretrained(self.path, dtype=pick_dtype(self.device))
        model.to(self.device)
        model.eval()
        self.model = model

    @property
    def revision(self) -> str:
        if self._revision is None:
            self._revision = weights_revision(self.path)
        return self._revision

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])

    def _cut(self, text: str, limit: int, mark: str = "") -> str:
        ids = self._ids(text)
        if len(ids) <= limit:
            return text
        return str(self.tokenizer.decode(ids[: max(limit, 0)])) + mark

    def build_prompt(self, instruction: str, input: str, candidates: list[str]) -> str:
        """``Instruction: i</s>Input: x</s>Candidate 0: <extra_id_0>:c0</s>...</s>Summarize...``

        Candidates over the limit are cut and end in "..." as in the reference. The source
        budget goes to the instruction first, the input gets what is left.
        """
        instruction = self._cut(instruction, self.source_maxlength)
        input = self._cut(input, self.source_maxlength - len(self._ids(instruction)))
        cands = [self._cut(c, self.candidate_maxlength, "...") for c in candidates]
        parts = [f"Instruction: {instruction}", f"Input: {input}"]
        parts.append("</s>".join(f"Candidate {i}: <extra_id_{i}>:{c}" for i, c in enumerate(cands)))
        return "</s>".join(parts) + "</s>" + PROMPT_SUFFIX

    def fuse(
        self,
        items: list[tuple[str, str, list[str]]],
        *,
        num_beams: int = 4,
        max_new_tokens: int = 128,
        batch_size: int = 4,
    ) -> list[str]:
        """One fused text per (instruction, input, candidates), in order."""
        import torch

        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        prompts = [self.build_prompt(i, x, c) for i, x, c in items]
        outputs: list[str] = []
        for start in range(0, len(prompts), batch_size):
            # The reference tokenizes without special tokens: the prompt carries its own </s>.
            enc = self.tokenizer(
                prompts[start : start + batch_size],
                add_special_tokens=False,
                padding=True,
                return_tensors="pt",
            )
            with torch.inference_mode():
                out = self.model.generate(
                    input_ids=enc["input_ids"].to(self.device),
                    attention_mask=enc["attention_mask"].to(self.device),
                    num_beams=num_beams,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                )
            outputs.extend(self.tokenizer.batch_decode(out, skip_special_tokens=True))
        return outputs
