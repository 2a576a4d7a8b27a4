"""Baselines the demo ranker is measured against (``ops.bench.ranker_quality``).

- ``PointwiseScorer``: each candidate scored alone, ``[CLS]<|source|>src[SEP]
  [CLS]<|candidate|>cand[SEP]`` through the same backbone, PairRM's head shape on
  [source; candidate] giving one score; the logit of A over B is score(A) - score(B). It
  trains through the same ``training.train`` loop and loss as the PairRanker, so the only
  difference left is whether the two candidates are read together.
- ``RandomComparer``: a seeded coin, what a ranker that knows nothing scores.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

from workers.ranking.pairranker import CAND_PREFIX, SOURCE_PREFIX, padded

if TYPE_CHECKING:
    import torch

Segment = tuple[list[int], list[int]]  # input ids, positions of the source and candidate


class PointwiseScorer:
    def __init__(self, backbone: Any, tokenizer: Any, source_maxlength: int = 128,
                 candidate_maxlength: int = 128, drop_out: float = 0.05) -> None:
        from torch import nn

        self.backbone = backbone
        self.tokenizer = tokenizer
        self.source_maxlength = source_maxlength
        self.candidate_maxlength = candidate_maxlength
        hidden = int(backbone.config.hidden_size)
        # PairRM's head, so the baseline differs from the ranker in its input only.
        self.head_layer = nn.Sequential(nn.Dropout(drop_out), nn.Linear(2 * hidden, hidden),
                                        nn.Tanh(), nn.Dropout(drop_out), nn.Linear(hidden, 1))
        self.device = "cpu"
        self.pad_id = tokenizer.pad_token_id or 0
        self.backbone.eval()
        self.head_layer.eval()

    def _segment(self, prefix: str, text: str, max_len: int) -> list[int]:
        tok = self.tokenizer
        ids = list(tok(prefix + text.replace(tok.sep_token, " "), add_special_tokens=False,
                       verbose=False)["input_ids"])
        return [tok.cls_token_id, *ids[:max(max_len - 2, 1)], tok.sep_token_id]

    def encode_one(self, source: str, candidate: str) -> Segment:
        src = self._segment(SOURCE_PREFIX, source, self.source_maxlength)
        # The PairRanker's budget for one candidate, so both see the same text.
        budget = self.candidate_maxlength + (self.source_maxlength - len(src)) // 2
        cand = self._segment(CAND_PREFIX, candidate, budget)
        return src + cand, [1, len(src) + 1]

    def encode(self, source: str, cand_a: str, cand_b: str) -> tuple[Segment, Segment]:
        return self.encode_one(source, cand_a), self.encode_one(source, cand_b)

    def scores_tensor(self, batch: list[Segment]) -> torch.Tensor:
        import torch

        input_ids, mask = padded(batch, self.pad_id)
        hidden = self.backbone(input_ids=input_ids, attention_mask=mask).last_hidden_state
        positions = torch.tensor([pos for _, pos in batch], dtype=torch.long)
        picked = hidden[torch.arange(len(batch)).unsqueeze(-1), positions]
        return self.head_layer(torch.cat([picked[:, 0], picked[:, 1]], dim=-1)).squeeze(-1)

    def logits_tensor(self, batch: list[tuple[Segment, Segment]]) -> torch.Tensor:
        scores = self.scores_tensor([a for a, _ in batch] + [b for _, b in batch])
        return scores[:len(batch)] - scores[len(batch):]

    def compare(self, pairs: list[tuple[str, str, str]], batch_size: int = 32) -> list[float]:
        """Each distinct (source, candidate) is scored once: the pointwise way's saving."""
        import torch

        distinct = sorted({(s, c) for s, a, b in pairs for c in (a, b)})
        score: dict[tuple[str, str], float] = {}
        self.backbone.eval()
        self.head_layer.eval()
        with torch.inference_mode():
            for start in range(0, len(distinct), batch_size):
                chunk = distinct[start:start + batch_size]
                values = self.scores_tensor([self.encode_one(s, c) for s, c in chunk])
                score.update(zip(chunk, values.float().tolist(), strict=True))
        return [score[(s, a)] - score[(s, b)] for s, a, b in pairs]


class RandomComparer:
    def __init__(self, seed: int = 0) -> None:
        self.rng = random.Random(seed)

    def compare(self, pairs: list[tuple[str, str, str]]) -> list[float]:
        return [self.rng.gauss(0.0, 1.0) for _ in pairs]
