"""The API's edge checks as pure functions: opaque request ids, text the database cannot
store, the body.model rule, the streamed job body, the page stylesheet's heat-map shades,
and the input lines a back-office export produces."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from ops.api.json_stream import BodyError, read_job_body
from ops.api.model_names import ModelCheck, first_model, generator_set
from ops.api.pages import HERE, shade_rules
from ops.api.public_ids import RequestIds
from ops.api.text_checks import BadText, check_json, text_problem
from orchestration.registry import load_registry
from orchestration.validation import InvalidLine, ParsedRequest, validate_lines

REGISTRY = load_registry(None)  # the built-in tiny models


# -- opaque request ids -----------------------------------------------------------------------
def test_request_ids_are_opaque_reversible_and_keyed() -> None:
    ids = RequestIds(b"k" * 32)
    shown = [ids.encode(n) for n in range(1, 2001)]
    assert all(re.fullmatch(r"req_[0-9a-f]{16}", s) for s in shown)
    assert [ids.decode(s) for s in shown] == list(range(1, 2001))
    # Consecutive rows give unrelated ids: no order, no count to read off them.
    assert sorted(shown) != shown
    assert len({s[4:6] for s in shown}) > 200
    # Another secret (another installation) gives other ids for the same rows.
    assert RequestIds(b"x" * 32).encode(1) != shown[0]
    assert ids.encode(2**63 - 1) and ids.decode(ids.encode(2**63 - 1)) == 2**63 - 1


@pytest.mark.parametrize("forged", ["1", "41", "req_41", "req_" + "f" * 16, "req_" + "0" * 16,
                                    "req_" + "g" * 16, "9223372036854775808", "", "req_\x00"])
def test_anything_not_issued_decodes_to_nothing(forged: str) -> None:
    ids = RequestIds(b"k" * 32)
    decoded = ids.decode(forged)
    # Either not an id at all, or (for a well-formed string) a row id nobody was given.
    assert decoded is None or decoded not in range(1, 10**6)


def test_a_row_id_outside_bigint_is_no_request() -> None:
    with pytest.raises(ValueError):
        RequestIds(b"k" * 32).encode(2**63)


# -- text the database cannot store -----------------------------------------------------------
@pytest.mark.parametrize(("value", "free", "bad"), [
    ("plain text", False, False), ("tab\tand\nnewline", True, False),
    ("tab\there", False, True), ("nul\x00", True, True), ("bell\x07", True, True),
    ("c1\x85", True, True), ("lone \ud800 surrogate", True, True), ("ünïcödé ✓", False, False)])
def test_text_problems_name_the_character(value: str, free: bool, bad: bool) -> None:
    problem = text_problem(value, free_text=free)
    assert (problem is not None) == bad
    if bad:
        assert "U+" in (problem or "")


def test_json_values_are_walked_to_the_bad_field() -> None:
    check_json({"a": [1, 2.5, "x", {"b": None}]}, "metadata")
    for value, where in (({"a": {"b\x00": 1}}, "metadata.a.b\\u0000"),
                         ({"a": ["ok", "\x00"]}, "metadata.a[1]"),
                         ({"n": float("nan")}, "metadata.n"),
                         ({"n": float("inf")}, "metadata.n")):
        with pytest.raises(BadText) as caught:
            check_json(value, "metadata")
        assert caught.value.where == where


# -- body.model -------------------------------------------------------------------------------
def _line(n: int, model: str | None) -> ParsedRequest:
    params = {} if model is None else {"requested_model": model}
    return ParsedRequest(n, f"q{n}", "hi", params=params)


def test_model_names_are_the_alias_or_a_set_of_registered_generators() -> None:
    assert generator_set(REGISTRY, "blendq") == []
    assert generator_set(REGISTRY, "tiny-a+tiny-b") == ["tiny-a", "tiny-b"]
    assert generator_set(REGISTRY, "blendq:tiny-c") == ["tiny-c"]
    for unknown in ("gpt-4o", "tiny-a+gpt-4o", "tiny-ranker", "tiny-a+tiny-a", "tiny-a+", ""):
        assert generator_set(REGISTRY, unknown) is None, unknown


def test_the_model_check_gives_openais_codes_per_line() -> None:
    check = ModelCheck(REGISTRY, ["tiny-a", "tiny-b"])
    check(_line(1, None))  # a line naming none runs the batch's ensemble
    check(_line(2, "tiny-b+tiny-a"))
    for line, model, code in ((3, "gpt-4o", "model_not_found"),
                              (4, "blendq", "mismatched_model"),
                              (5, "tiny-a+tiny-b", "mismatched_model")):
        with pytest.raises(InvalidLine) as caught:
            check(_line(line, model))
        assert (caught.value.field, caught.value.code) == ("body.model", code), model
    # A set other than the job's models is refused even as the file's first model.
    with pytest.raises(InvalidLine) as other:
        ModelCheck(REGISTRY, ["tiny-a", "tiny-b"])(_line(1, "tiny-c"))
    assert other.value.code == "mismatched_model"


def test_the_first_model_of_a_file_is_found_cheaply() -> None:
    lines = [b"not json\n", b'{"custom_id": "a", "instruction": "x"}\n',
             b'{"custom_id": "b", "body": {"model": "tiny-c", "messages": []}}\n',
             b'{"custom_id": "c", "body": {"model": "tiny-a"}}\n']
    assert first_model(lines) == "tiny-c"
    assert first_model([b'\xef\xbb\xbf{"body": {"model": "blendq"}}\n']) == "blendq"
    assert first_model([b'{"x": 1}\n'] * 200 + lines) is None


# -- the streamed job body --------------------------------------------------------------------
class Chunks:
    """A request body in chunks that counts how much of it was read."""

    def __init__(self, body: bytes, size: int = 4096) -> None:
        self.parts = [body[i:i + size] for i in range(0, len(body), size)]
        self.read = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for part in self.parts:
            self.read += 1
            yield part


def _read(body: bytes, size: int = 4096, cap: int = 50_000) -> tuple[object, Chunks]:
    chunks = Chunks(body, size)

    async def run() -> object:
        try:
            return await read_job_body(chunks.__aiter__(), cap)
        except BodyError as exc:
            return exc

    return asyncio.run(run()), chunks


def test_requests_are_read_one_by_one_whatever_the_chunking() -> None:
    payload = {"options": {"models": ["tiny-a"], "top_k": 1},
               "requests": [{"custom_id": f"q{i}", "instruction": "é" * (i % 7) + str(i),
                             "params": {"seed": 10**i}} for i in range(40)],
               "metadata": {"team": "ops"}}
    body = json.dumps(payload, ensure_ascii=False).encode()
    for size in (1, 3, 7, 64, 10**6):  # numbers and multibyte characters cut anywhere
        got, _ = _read(body, size)
        assert not isinstance(got, BodyError), (size, got)
        assert [json.loads(line) for line in got.lines] == payload["requests"]  # type: ignore[attr-defined]
        assert got.options == payload["options"] and got.metadata == {"team": "ops"}  # type: ignore[attr-defined]


def test_the_request_past_the_cap_stops_the_read() -> None:
    """The finding: 1.4 million tiny requests were parsed whole before the cap answered."""
    item = b'{"custom_id": "x", "instruction": "y"}'
    body = b'{"requests": [' + b",".join([item] * 200_000) + b"]}"
    got, chunks = _read(body, cap=1000)
    assert isinstance(got, BodyError) and got.status == 413
    assert got.code == "too_many_requests" and "1000" in got.message
    # Only what held the first 1001 requests was read: about 1 of every 200.
    assert chunks.read < len(chunks.parts) / 100


@pytest.mark.parametrize(("body", "where"), [
    (b"", "body"), (b"[]", "body"), (b'{"requests": []}', "requests"), (b"{}", "requests"),
    (b'{"requests": [1] "x"}', "body"), (b'{"requests": [1}', "requests"),
    (b'{"requests": [{"a": ]}', "requests[0]"), (b'{"nope": 1, "requests": [1]}', "nope"),
    (b'{"requests": [1], "requests": [2]}', "requests"), (b'{"requests": [1]} x', "body"),
    (b'{"requests": [1], "options": []}', "options"), (b'\xff{"requests": [1]}', "UTF-8"),
    (b'{"requests": [' + b"[" * 100_000 + b"]", "requests[0]")])
def test_a_malformed_body_is_a_400_naming_where(body: bytes, where: str) -> None:
    got, _ = _read(body, 5)
    assert isinstance(got, BodyError) and got.status == 400, got
    assert where in got.message, got.message


# -- the pages' stylesheet ---------------------------------------------------------------------
def test_the_stylesheet_has_every_heat_map_shade() -> None:
    """The policy allows no inline style, so each shade is a class of audit.css."""
    css = (Path(HERE) / "static" / "audit.css").read_text()
    assert shade_rules() in css


# -- what a back-office export produces ---------------------------------------------------------
def _validate(lines: list[bytes]) -> Iterator[str]:
    result = validate_lines(lines)
    yield from (str(e) for e in result.errors)


def test_a_file_starting_with_a_bom_is_read() -> None:
    result = validate_lines([b'\xef\xbb\xbf{"custom_id": "a", "instruction": "Hi"}\n',
                             b'{"custom_id": "b", "instruction": "Yo"}\n'])
    assert result.ok, result.errors
    assert [r.custom_id for r in result.requests] == ["a", "b"]
    # Only at the start of the file: a BOM inside it is an error.
    assert not validate_lines([b'{"custom_id": "a", "instruction": "Hi"}\n',
                               b'\xef\xbb\xbf{"custom_id": "b", "instruction": "Yo"}\n']).ok


def test_an_input_without_instruction_is_the_prompt() -> None:
    result = validate_lines([b'{"custom_id": "a", "input": "Translate: bonjour"}\n',
                             b'{"custom_id": "b", "instruction": "", "input": "Hello"}\n',
                             b'{"custom_id": "c", "instruction": "Sum up", "input": "text"}\n'])
    assert result.ok, result.errors
    assert [(r.instruction, r.input) for r in result.requests] == [
        ("Translate: bonjour", ""), ("Hello", ""), ("Sum up", "text")]
    assert list(_validate([b'{"custom_id": "d", "instruction": "", "input": " "}\n'])) == [
        "line 1: instruction: is empty"]
    assert list(_validate([b'{"custom_id": "e"}\n'])) == ["line 1: instruction: is missing"]


def test_a_native_line_carries_its_own_metadata_bounded() -> None:
    result = validate_lines([b'{"custom_id": "a", "instruction": "Hi", '
                             b'"metadata": {"ticket": 7, "tags": ["x"]}}\n'])
    assert result.ok and result.requests[0].metadata == {"ticket": 7, "tags": ["x"]}
    big = json.dumps({"custom_id": "b", "instruction": "Hi",
                      "metadata": {"blob": "x" * 20_000}}).encode()
    errors = list(_validate([big, b'{"custom_id": "c", "instruction": "Hi", "metadata": 3}',
                             b'{"custom_id": "d", "instruction": "Hi", '
                             b'"metadata": {"k\\u0000": 1}}',
                             b'{"custom_id": "e", "instruction": "Hi", "metadata": {"n": NaN}}']))
    assert [e.split(":")[0] + ":" + e.split(":")[1] for e in errors] == [
        "line 1: metadata", "line 2: metadata", "line 3: metadata (a key)", "line 4: metadata.n"]
