"""``fuser train``'s examples from stored rows (top-K in rank order, reference or labelled
target, what is left out and why) and its encoding and training on the tiny models: the
prompt is the one the fusion stage builds, the target alone is learned."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlmodel import Session

from db.models import Job, JobStatus
from db.queries_audit import Verdict, find_request, record_label, resolve_candidate
from ops.cli import cli
from tests.unit.db.test_audit_queries import MODELS, make_request
from workers.fusion.aggregator import AggregatorFuser
from workers.fusion.genfuser import GenFuser
from workers.fusion.training import (
    IGNORED,
    ExampleError,
    FuserExample,
    encode,
    examples_for_jobs,
    save,
    train,
)
from workers.generation.prompts import prompt_ids

# m-b first, then m-c, then m-a: not the order the candidates are stored in (by model).
SCORES = {"m-a": -1.0, "m-b": 2.0, "m-c": 0.5}


def _job(session: Session, top_k: int = 2) -> Job:
    job = Job(status=JobStatus.COMPLETED, models=list(MODELS), ranker="rk", top_k=top_k)
    session.add(job)
    session.flush()
    return job


def _label(session: Session, request_id: int | None, kind: str, *models: str) -> None:
    request = find_request(session, request_id=request_id)
    ids = tuple(resolve_candidate(session, request, m).id or 0 for m in models)
    record_label(session, request, Verdict(kind, ids), author="ana")


def test_examples_take_the_top_k_in_rank_order_and_the_right_target(
        session: Session) -> None:
    job = _job(session)
    make_request(session, job, "with-ref", {}, SCORES)
    labelled = make_request(session, job, "labelled", {}, SCORES)
    _label(session, labelled.id, "ranking", "m-a", "m-c", "m-b")
    both = make_request(session, job, "ref-wins", {}, SCORES)
    _label(session, both.id, "a", "m-c", "m-b")
    ties = make_request(session, job, "only-ties", {}, SCORES)
    _label(session, ties.id, "tie", "m-a", "m-b")
    make_request(session, job, "nothing", {}, SCORES)
    counts: Counter[str] = Counter()
    refs = {"with-ref": "the reference", "ref-wins": "another reference", "absent": "x"}
    examples = examples_for_jobs(session, [job.id], refs, counts=counts)

    by_id = {e.source.split("/")[1]: e for e in examples}
    assert set(by_id) == {"with-ref", "labelled", "ref-wins"}
    for example in examples:
        assert example.candidates == ("m-b says hi", "m-c says hi")  # job.top_k = 2
        assert (example.instruction, example.input) == ("Say hi", "politely")
    assert (by_id["with-ref"].target, by_id["with-ref"].origin) == ("the reference",
                                                                    "reference")
    # The label's best is m-a, which the ranker placed last (outside the top-K).
    assert (by_id["labelled"].target, by_id["labelled"].origin) == ("m-a says hi", "label")
    assert by_id["ref-wins"].target == "another reference"
    assert counts == Counter(requests=5, reference=2, label=1, no_target=2)

    wider = examples_for_jobs(session, [job.id], refs, top_k=3)
    assert wider[0].candidates == ("m-b says hi", "m-c says hi", "m-a says hi")


def test_a_tie_at_the_top_of_the_labels_goes_the_rankers_way(session: Session) -> None:
    job = _job(session)
    request = make_request(session, job, "q", {}, SCORES)
    _label(session, request.id, "a", "m-a", "m-b")
    _label(session, request.id, "a", "m-c", "m-b")  # m-a and m-c both +1; ranker: m-c
    [example] = examples_for_jobs(session, [job.id], {})
    assert example.target == "m-c says hi"


def test_no_examples_and_unknown_jobs_are_clear_errors(session: Session) -> None:
    job = _job(session)
    make_request(session, job, "q", {}, SCORES)
    with pytest.raises(ExampleError, match=r"no examples: of 1 requests.*0 have no ranking"
                                           r" and 1 neither a reference \(--references"):
        examples_for_jobs(session, [job.id], {"other": "x"})
    with pytest.raises(ExampleError, match="no job nope"):
        examples_for_jobs(session, ["nope"], {})


def test_bad_references_name_the_line_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "refs.jsonl"
    bad.write_text('{"custom_id": "a", "reference": "x"}\n{"custom_id": "b", "text": "y"}\n')
    out = CliRunner().invoke(cli, ["fuser", "train", "some-job", "--references", str(bad),
                                   "-o", str(tmp_path / "out")])
    assert out.exit_code == 1
    assert f"{bad}: line 2: no 'reference' (or MixInstruct 'output')" in out.output
    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text('{"custom_id": "a", "reference": 3}\n')
    out = CliRunner().invoke(cli, ["fuser", "train", "some-job", "--references", str(wrong),
                                   "-o", str(tmp_path / "out")])
    assert "line 1: field 'reference' must be a string" in out.output


EXAMPLES = [FuserExample("What is the capital of France?", "",
                         ("The capital of France is Paris.", "Python is a programming "
                          "language that is easy to read."),
                         "The capital of France is Paris.", "reference", "j/q1"),
            FuserExample("Please list three benefits of regular exercise.", "a list",
                         ("Exercise improves sleep, mood and heart health.",),
                         "Exercise improves sleep, mood and heart health.", "label",
                         "j/q2")]


def test_genfuser_reads_its_inference_prompt_and_learns_the_target(
        tiny_models: dict[str, Path], tmp_path: Path) -> None:
    fuser = GenFuser.from_pretrained(str(tiny_models["tiny-fuser"]), device="cpu")
    tok = fuser.tokenizer
    encoded = encode(fuser, EXAMPLES[0], max_target_tokens=64)
    prompt = fuser.build_prompt(EXAMPLES[0].instruction, "", list(EXAMPLES[0].candidates))
    assert encoded.input_ids == tok(prompt, add_special_tokens=False)["input_ids"]
    assert encoded.labels[-1] == tok.eos_token_id
    assert tok.decode(encoded.labels, skip_special_tokens=True) == EXAMPLES[0].target
    assert len(encode(fuser, EXAMPLES[0], max_target_tokens=3).labels) == 3

    before = fuser.revision
    # The tiny T5's weights are drawn large (its logits start far off): a large rate.
    losses = train(fuser, EXAMPLES * 4, epochs=6, lr=3e-2, batch_size=4)
    assert losses[-1] < losses[0] * 0.6, losses
    assert not fuser.model.training
    save(fuser, tmp_path / "v2")
    again = GenFuser.from_pretrained(str(tmp_path / "v2"), device="cpu")
    assert again.revision != before


def test_aggregator_reads_its_inference_conversation_and_learns_only_the_answer(
        tiny_models: dict[str, Path], tmp_path: Path) -> None:
    fuser = AggregatorFuser(str(tiny_models["tiny-a"]))
    tok = fuser.generator.tokenizer
    example = EXAMPLES[1]
    encoded = encode(fuser, example, max_target_tokens=64)
    conversation = AggregatorFuser.build_conversation(
        example.instruction, example.input, list(example.candidates))
    prompt = prompt_ids(tok, conversation)
    assert encoded.input_ids[:len(prompt)] == prompt
    assert encoded.labels[:len(prompt)] == [IGNORED] * len(prompt)
    answer = encoded.labels[len(prompt):]
    assert encoded.input_ids[len(prompt):] == answer
    assert tok.decode(answer, skip_special_tokens=True) == example.target
    assert answer[-1] in {tok.eos_token_id, fuser.generator.model.generation_config.eos_token_id}

    losses = train(fuser, EXAMPLES * 4, epochs=3, lr=3e-3, batch_size=4, warmup=0.2)
    assert losses[-1] < losses[0], losses
    save(fuser, tmp_path / "agg")
    assert json.loads((tmp_path / "agg" / "config.json").read_text())["model_type"]
    assert AggregatorFuser(str(tmp_path / "agg")).fuse(
        [(example.instruction, example.input, list(example.candidates))],
        max_new_tokens=4)[0] is not None


@pytest.mark.slow
@pytest.mark.timeout(1800)  # may build the demo models first, as the demo tests do
def test_smollm2_aggregator_learns_answers_that_end_its_turn(tmp_path: Path) -> None:
    from ops.demo.models import install_demo
    from orchestration.registry import load_registry
    from tests.conftest import MODEL_CACHE

    entry = load_registry(install_demo(MODEL_CACHE)).get("smol-aggregator", "fuser")
    fuser = AggregatorFuser(entry.path)
    tok = fuser.generator.tokenizer
    encoded = encode(fuser, EXAMPLES[1], max_target_tokens=64)
    # The chat template closes an assistant turn with <|im_end|>; generation stops there.
    assert tok.convert_ids_to_tokens(encoded.labels[-1:]) == ["<|im_end|>"]
    assert "<|im_start|>assistant" in tok.decode(encoded.input_ids)
    losses = train(fuser, EXAMPLES, epochs=2, lr=1e-4, batch_size=2)
    assert losses[1] < losses[0], losses
