"""Fine-tuning a fuser on stored jobs (``manage.py fuser train``).

Examples come from the jobs' ``audit export --format mixinstruct`` lines
(``db/queries_audit.py``), so they read each request's prompt exactly as the fusion stage
did. One example per request that has a ranking and a target:

- inputs: the instruction, the input and the job's top-K candidates in the ranker's
  order, best first (what ``workers/fusion/tasks.py`` gives the fuser);
- target: the reference for the request's custom_id where one is given, else the best
  candidate by auditor labels: among the candidates the labels mention, the highest
  ``human`` score (each decided pair +1 to the better, -1 to the worse); ties at the top
  go to the ranker's order. Labels that decide nothing (only ties) give no target.

The prompt is built by the fuser classes themselves (``GenFuser.build_prompt``,
``AggregatorFuser.build_conversation`` through the generator's ``prompt_ids``), so
training sees what inference sees. Loss: token cross-entropy on the target only (the
prompt's tokens are masked out), target cut to ``max_target_tokens`` and closed with the
end-of-sequence token so the fuser learns where to stop. AdamW; the learning-rate schedule
is ``ranker train``'s (constant, or warm-up then linear decay).
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlmodel import Session

from db.models import Job
from db.queries_audit import AuditError, export_lines
from workers.fusion.aggregator import AggregatorFuser
from workers.fusion.genfuser import GenFuser
from workers.generation.prompts import fit_prompt, prompt_ids
from workers.ranking.training import _rate

IGNORED = -100  # the label value torch's cross-entropy skips


class ExampleError(ValueError):
    """The stored jobs give nothing to train on, or name something that is not there."""


@dataclass(frozen=True)
class FuserExample:
    instruction: str
    input: str
    candidates: tuple[str, ...]  # the top-K, best first
    target: str
    origin: str  # "reference" or "label"
    source: str  # job_id/custom_id, for messages


def examples_from_lines(lines: Iterable[Mapping[str, Any]], references: Mapping[str, str],
                        top_k: int, counts: Counter[str] | None = None,
                        ) -> list[FuserExample]:
    """Examples from ``mixinstruct`` export lines; ``counts`` tallies why requests were
    left out (``unranked``, ``no_target``) and where targets came from."""
    if top_k < 1:
        raise ExampleError(f"top_k must be >= 1, got {top_k}")
    tally = counts if counts is not None else Counter()
    out: list[FuserExample] = []
    for line in lines:
        ranked = sorted((c for c in line["candidates"] if "ranker_rank" in c["scores"]),
                        key=lambda c: c["scores"]["ranker_rank"])
        if not ranked:
            tally["unranked"] += 1
            continue
        custom_id = str(line["id"])
        target = references.get(custom_id)
        origin = "reference"
        if target is None:
            target, origin = _best_labelled(line, ranked), "label"
        if target is None:
            tally["no_target"] += 1
            continue
        tally[origin] += 1
        out.append(FuserExample(
            instruction=str(line["instruction"]), input=str(line["input"] or ""),
            candidates=tuple(str(c["text"]) for c in ranked[:top_k]), target=target,
            origin=origin, source=f"{line.get('job_id', '?')}/{custom_id}"))
    return out


def _best_labelled(line: Mapping[str, Any], ranked: list[dict[str, Any]]) -> str | None:
    mentioned: set[int] = set()
    for label in line.get("labels") or []:
        mentioned.update(label.get("ranking") or [])
        mentioned.update(x for x in (label.get("candidate_a"), label.get("candidate_b"))
                         if x is not None)
    judged = [c for c in line["candidates"] if c["candidate_id"] in mentioned
              and "human" in c["scores"]]
    scores = {c["candidate_id"]: float(c["scores"]["human"]) for c in judged}
    if len(set(scores.values())) < 2:
        return None  # nothing decided: one candidate, or only ties
    top = max(scores.values())
    # Ranked candidates first, in the ranker's order, so a tie at the top goes its way.
    order = [c for c in ranked if c["candidate_id"] in scores] + \
            [c for c in judged if c not in ranked]
    return next(str(c["text"]) for c in order if scores[c["candidate_id"]] == top)


def examples_for_jobs(session: Session, job_ids: Iterable[str], references: Mapping[str, str],
                      top_k: int | None = None, counts: Counter[str] | None = None,
                      ) -> list[FuserExample]:
    """Every job's examples, in job then request order; ``top_k`` None: each job's own."""
    tally = counts if counts is not None else Counter()
    out: list[FuserExample] = []
    for job_id in job_ids:
        job = session.get(Job, job_id)
        if job is None:
            raise ExampleError(f"no job {job_id}")
        try:
            lines = list(export_lines(session, job_id, "mixinstruct"))
        except AuditError as exc:
            raise ExampleError(str(exc)) from exc
        tally["requests"] += len(lines)
        out += examples_from_lines(lines, references, top_k or job.top_k, tally)
    if not out:
        raise ExampleError(
            f"no examples: of {tally['requests']} requests with a candidate, "
            f"{tally['unranked']} have no ranking and {tally['no_target']} neither a "
            "reference (--references, keyed by custom_id) nor labels that pick a best "
            "candidate (audit label)")
    return out


# -- turning examples into token ids --------------------------------------------------------
@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]  # for a causal LM, IGNORED over the prompt; same length as input_ids


def encode(fuser: GenFuser | AggregatorFuser, example: FuserExample,
           max_target_tokens: int) -> Encoded:
    """The example as the fuser reads it at inference, and its target."""
    if isinstance(fuser, GenFuser):
        tok = fuser.tokenizer
        prompt = fuser.build_prompt(example.instruction, example.input,
                                    list(example.candidates))
        # As GenFuser.fuse: the prompt carries its own </s>, no special tokens added.
        ids = list(tok(prompt, add_special_tokens=False, verbose=False)["input_ids"])
        return Encoded(ids, _target_ids(tok, example.target, max_target_tokens,
                                        tok.eos_token_id))
    generator = fuser.generator
    tok = generator.tokenizer
    conversation = AggregatorFuser.build_conversation(
        example.instruction, example.input, list(example.candidates),
        fuser.max_candidate_chars)
    target = _target_ids(tok, example.target, max_target_tokens, _stop_token(generator))
    context = int(getattr(generator.model.config, "max_position_embeddings", 0) or 2048)
    # The generator cuts a long prompt from the left in the same way (room for the answer).
    fitted, error = fit_prompt(prompt_ids(tok, conversation), context, len(target),
                               "truncate")
    if fitted is None:
        raise ExampleError(f"{example.source}: {error}")
    return Encoded(fitted + target, [IGNORED] * len(fitted) + target)


def _target_ids(tok: Any, text: str, limit: int, stop: int | None) -> list[int]:
    ids = list(tok(text, add_special_tokens=False, verbose=False)["input_ids"])
    if stop is None:
        return ids[:limit]
    return [*ids[:max(limit - 1, 0)], stop]


def _stop_token(generator: Any) -> int | None:
    """The token that ends the answer at inference (the generation config's end of
    sequence; the tokenizer's where both name one and it is among them)."""
    eos = generator.model.generation_config.eos_token_id
    tokenizer_eos = generator.tokenizer.eos_token_id
    if eos is None:
        return None if tokenizer_eos is None else int(tokenizer_eos)
    options = [int(e) for e in eos] if isinstance(eos, list) else [int(eos)]
    return int(tokenizer_eos) if tokenizer_eos in options else options[0]


# -- training -------------------------------------------------------------------------------
def model_of(fuser: GenFuser | AggregatorFuser) -> Any:
    return fuser.model if isinstance(fuser, GenFuser) else fuser.generator.model


def tokenizer_of(fuser: GenFuser | AggregatorFuser) -> Any:
    return fuser.tokenizer if isinstance(fuser, GenFuser) else fuser.generator.tokenizer


def train(fuser: GenFuser | AggregatorFuser, examples: list[FuserExample], *,
          epochs: int = 1, lr: float = 1e-5, batch_size: int = 4, seed: int = 0,
          warmup: float | None = None, max_target_tokens: int = 128,
          progress: Callable[[int, float], None] | None = None) -> list[float]:
    """Fine-tune the fuser's model in place; returns the mean loss of each epoch."""
    import torch

    if not examples:
        raise ExampleError("no examples")
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    torch.manual_seed(seed)
    rng = random.Random(seed)
    model = model_of(fuser)
    tok = tokenizer_of(fuser)
    device = next(model.parameters()).device
    rows = [encode(fuser, e, max_target_tokens) for e in examples]
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    total_steps = epochs * math.ceil(len(rows) / batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: _rate(step, total_steps, warmup))
    seq2seq = isinstance(fuser, GenFuser)
    losses: list[float] = []
    model.train()
    try:
        for epoch in range(epochs):
            rng.shuffle(rows)
            total = 0.0
            for start in range(0, len(rows), batch_size):
                batch = rows[start:start + batch_size]
                inputs = _batch(batch, tok.pad_token_id, seq2seq, device)
                loss = model(**inputs).loss
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                scheduler.step()
                total += float(loss.detach()) * len(batch)
            losses.append(total / len(rows))
            if progress is not None:
                progress(epoch + 1, losses[-1])
    finally:
        model.eval()
    return losses


def _batch(rows: list[Encoded], pad_id: int, seq2seq: bool, device: Any) -> dict[str, Any]:
    """Right-padded tensors; padded label positions are IGNORED."""
    import torch

    def padded(seqs: list[list[int]], value: int) -> torch.Tensor:
        width = max(len(s) for s in seqs)
        return torch.tensor([s + [value] * (width - len(s)) for s in seqs], device=device)

    ids = [r.input_ids for r in rows]
    mask = padded([[1] * len(s) for s in ids], 0)
    # Seq2seq: labels are the decoder's sequence (the model shifts them right itself);
    # causal: aligned with input_ids, prompt positions already IGNORED.
    return {"input_ids": padded(ids, pad_id), "attention_mask": mask,
            "labels": padded([r.labels for r in rows], IGNORED)}


def save(fuser: GenFuser | AggregatorFuser, output: Any) -> None:
    """Weights and tokenizer in the Hugging Face layout the fuser loads from."""
    model_of(fuser).save_pretrained(output)
    tokenizer_of(fuser).save_pretrained(output)
