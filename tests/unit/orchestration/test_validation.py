"""validate_lines: both line shapes are accepted and mapped; every bad line is reported with
its physical line number and the field at fault, and no input crashes the validator."""

from __future__ import annotations

import json
from typing import Any

import pytest

from orchestration import validation
from orchestration.validation import LineError, ValidationResult, validate_lines


def jl(obj: Any) -> bytes:
    """One JSONL line as a file iterator yields it."""
    return json.dumps(obj).encode("utf-8") + b"\n"


def native(custom_id: str = "r1", **extra: Any) -> dict[str, Any]:
    return {"custom_id": custom_id, "instruction": "Say hi", **extra}


def openai(custom_id: str = "r1", body: Any = None, **extra: Any) -> dict[str, Any]:
    line = {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": body if body is not None else {
                "messages": [{"role": "user", "content": "Say hi"}]}}
    line.update(extra)
    return line


def only_error(result: ValidationResult) -> LineError:
    assert not result.ok
    assert result.requests == []
    assert len(result.errors) == 1, result.errors
    assert result.error_count == 1
    return result.errors[0]


def error_of(raw_line: bytes, *, before: int = 0) -> LineError:
    """The one error of a file with ``before`` valid lines and then ``raw_line``."""
    lines = [jl(native(f"ok{i}")) for i in range(before)] + [raw_line]
    result = validate_lines(lines)
    assert len(result.errors) == 1, result.errors
    assert result.error_count == 1
    assert [r.custom_id for r in result.requests] == [f"ok{i}" for i in range(before)]
    return result.errors[0]


# -- accepted lines -----------------------------------------------------------------------

def test_native_line_is_mapped_field_by_field() -> None:
    result = validate_lines([jl({"custom_id": "a-1", "instruction": "Translate",
                                 "input": "bonjour",
                                 "params": {"max_new_tokens": 16, "temperature": 0.5,
                                            "top_p": 1, "seed": 7}})])
    assert result.ok and result.errors == [] and result.error_count == 0
    [req] = result.requests
    assert (req.line_no, req.custom_id, req.instruction, req.input) == (
        1, "a-1", "Translate", "bonjour")
    assert req.messages is None
    assert req.params == {"max_new_tokens": 16, "temperature": 0.5, "top_p": 1, "seed": 7}


@pytest.mark.parametrize("seed", [0, -(2**63), 2**63 - 1])
def test_seed_limits_are_inclusive(seed: int) -> None:
    [req] = validate_lines([jl(native("s", params={"seed": seed}))]).requests
    assert req.params == {"seed": seed}


def test_native_input_and_params_are_optional() -> None:
    [req] = validate_lines([jl(native("x"))]).requests
    assert req.input == "" and req.params == {}


def test_openai_line_keeps_messages_and_renders_the_whole_conversation() -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "first answer"},
        {"role": "developer", "content": "no lists"},
        {"role": "user", "content": "second question"},
    ]
    body = {"model": "gpt-4o-mini", "messages": messages, "max_tokens": 64,
            "temperature": 0.2, "top_p": 0.9, "seed": 3}
    result = validate_lines([jl(openai("c1", body))])
    assert result.ok
    [req] = result.requests
    assert req.custom_id == "c1"
    # db/prompts.py: the question asked now, then everything around it in order.
    assert req.instruction == "second question"
    assert req.input == ("System: Be brief.\n\nUser: first question\n\n"
                         "Assistant: first answer\n\nDeveloper: no lists")
    assert req.messages == messages
    assert req.params == {"max_new_tokens": 64, "temperature": 0.2, "top_p": 0.9, "seed": 3,
                          "requested_model": "gpt-4o-mini"}


def test_openai_max_completion_tokens_wins_over_max_tokens() -> None:
    body = {"messages": [{"role": "user", "content": "q"}], "max_tokens": 10,
            "max_completion_tokens": 20}
    [req] = validate_lines([jl(openai("c", body))]).requests
    assert req.params == {"max_new_tokens": 20}


def test_openai_text_parts_are_joined_and_extra_message_keys_dropped() -> None:
    body = {"messages": [{"role": "user", "name": "bob", "content": [
        {"type": "text", "text": "part one"}, {"type": "text", "text": "part two"}]}]}
    [req] = validate_lines([jl(openai("c", body))]).requests
    assert req.instruction == "part one\npart two"
    assert req.messages == [{"role": "user", "content": "part one\npart two"}]


def test_null_decoding_fields_are_ignored() -> None:
    body = {"messages": [{"role": "user", "content": "q"}], "max_tokens": None,
            "temperature": None}
    [req] = validate_lines([jl(openai("c", body))]).requests
    assert req.params == {}


def test_both_shapes_mix_in_one_file_and_keep_line_order() -> None:
    result = validate_lines([jl(native("n1")), jl(openai("o1")), jl(native("n2"))])
    assert result.ok
    assert [(r.line_no, r.custom_id) for r in result.requests] == [
        (1, "n1"), (2, "o1"), (3, "n2")]
    assert [r.messages is None for r in result.requests] == [True, False, True]


def test_crlf_non_ascii_and_a_custom_id_at_the_length_limit_are_accepted() -> None:
    long_id = "é" * validation.MAX_CUSTOM_ID
    line = json.dumps({"custom_id": long_id, "instruction": "Übersetze 日本語"},
                      ensure_ascii=False).encode("utf-8") + b"\r\n"
    [req] = validate_lines([line]).requests
    assert req.custom_id == long_id and req.instruction == "Übersetze 日本語"


def test_blank_lines_are_skipped_but_still_counted() -> None:
    result = validate_lines([b"\n", jl(native("a")), b"   \n", b"\t\r\n", jl(native("b")),
                             b"{oops\n"])
    assert [(r.line_no, r.custom_id) for r in result.requests] == [(2, "a"), (5, "b")]
    assert [(e.line, e.field) for e in result.errors] == [(6, "(line)")]


def test_all_errors_are_collected_not_just_the_first() -> None:
    result = validate_lines([jl(native("a")), b"nope\n", jl({"custom_id": "c"}),
                             jl(native("d")), jl(native("e", instruction=""))])
    assert [(e.line, e.field) for e in result.errors] == [
        (2, "(line)"), (3, "instruction"), (5, "instruction")]
    assert result.error_count == 3
    assert [r.custom_id for r in result.requests] == ["a", "d"]
    assert not result.ok


# -- bad lines: each names its line and field ------------------------------------------------

BAD_LINES: list[tuple[str, bytes, str, str]] = [
    # (case, line, field, part of the message)
    ("broken json", b'{"custom_id": "x", "instruction": \n', "(line)", "not valid JSON"),
    ("trailing garbage", jl(native("x"))[:-1] + b" x\n", "(line)", "not valid JSON"),
    ("array", jl([native("x")]), "(line)", "must be a JSON object, got an array"),
    ("string", b'"hello"\n', "(line)", "got a string"),
    ("null", b"null\n", "(line)", "got null"),
    ("missing custom_id", jl({"instruction": "hi"}), "custom_id", "is missing"),
    ("custom_id number", jl({"custom_id": 12, "instruction": "hi"}), "custom_id",
     "must be a string, got a number"),
    ("custom_id null", jl({"custom_id": None, "instruction": "hi"}), "custom_id", "got null"),
    ("custom_id blank", jl({"custom_id": "  ", "instruction": "hi"}), "custom_id", "is empty"),
    ("custom_id too long", jl(native("x" * 513)), "custom_id", "the limit is 512"),
    ("missing instruction", jl({"custom_id": "x"}), "instruction", "is missing"),
    ("blank instruction", jl(native("x", instruction=" \n\t ")), "instruction", "is empty"),
    ("instruction list", jl(native("x", instruction=["a"])), "instruction",
     "must be a string, got an array"),
    ("instruction bool", jl(native("x", instruction=True)), "instruction", "got a boolean"),
    ("input number", jl(native("x", input=3)), "input", "must be a string"),
    ("unknown native field", jl(native("x", temperature=0.5)), "temperature", "unknown field"),
    ("unknown openai field", jl(openai("x", extra="y")), "extra", "unknown field"),
    ("method GET", jl(openai("x", method="GET")), "method", "must be POST, got 'GET'"),
    ("method missing", jl({k: v for k, v in openai("x").items() if k != "method"}), "method",
     "is missing"),
    ("url wrong", jl(openai("x", url="/v1/completions")), "url",
     "must be /v1/chat/completions"),
    ("url missing", jl({k: v for k, v in openai("x").items() if k != "url"}), "url",
     "is missing"),
    ("body array", jl(openai("x", body=[1])), "body", "must be an object, got an array"),
    ("body string", jl(openai("x", body="hi")), "body", "must be an object, got a string"),
    ("body missing", jl({k: v for k, v in openai("x").items() if k != "body"}), "body",
     "got null"),
    ("messages empty", jl(openai("x", {"messages": []})), "body.messages", "non-empty array"),
    ("messages missing", jl(openai("x", {"max_tokens": 5})), "body.messages",
     "non-empty array"),
    ("messages object", jl(openai("x", {"messages": {"role": "user"}})), "body.messages",
     "non-empty array"),
    ("no user message", jl(openai("x", {"messages": [
        {"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}]})),
     "body.messages", "role 'user'"),
    ("message not object", jl(openai("x", {"messages": ["hi"]})), "body.messages[0]",
     "must be an object, got a string"),
    ("bad role", jl(openai("x", {"messages": [
        {"role": "user", "content": "q"}, {"role": "robot", "content": "r"}]})),
     "body.messages[1].role", "got 'robot'"),
    ("missing role", jl(openai("x", {"messages": [{"content": "q"}]})),
     "body.messages[0].role", "got None"),
    ("image part", jl(openai("x", {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "look"},
        {"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]})),
     "body.messages[0].content[1]", "only text parts"),
    ("text part without text", jl(openai("x", {"messages": [{"role": "user", "content": [
        {"type": "text", "text": 5}]}]})), "body.messages[0].content[0]", "only text parts"),
    ("content number", jl(openai("x", {"messages": [{"role": "user", "content": 5}]})),
     "body.messages[0].content", "must be a string, got a number"),
    ("user content blank", jl(openai("x", {"messages": [
        {"role": "system", "content": "s"}, {"role": "user", "content": "   "}]})),
     "body.messages[1].content", "is empty"),
    ("user content empty parts", jl(openai("x", {"messages": [
        {"role": "user", "content": []}]})), "body.messages[0].content", "is empty"),
    ("invalid utf-8", b'{"custom_id": "x", "instruction": "caf\xe9"}\n', "(line)",
     "not valid UTF-8 at byte 38"),
    ("raw NUL byte", b'{"custom_id": "x", "instruction": "a\x00b"}\n', "(line)",
     "NUL character"),
    ("deep nesting", b"[" * 100_000 + b"\n", "(line)", "nested too deeply"),
    ("deep nesting in a field",
     b'{"custom_id": "x", "instruction": ' + b"[" * 100_000 + b"\n", "(line)",
     "nested too deeply"),
    ("integer literal too long to convert",
     b'{"custom_id": "x", "instruction": "q", "params": {"seed": 1' + b"0" * 5000 + b"}}\n",
     "(line)", "not valid JSON"),
    ("params array", jl(native("x", params=[1])), "params", "must be an object, got an array"),
    ("unknown param", jl(native("x", params={"top_k": 5})), "params.top_k", "unknown field"),
    ("max_new_tokens string", jl(native("x", params={"max_new_tokens": "10"})),
     "params.max_new_tokens", "must be an integer, got a string"),
    ("max_new_tokens float", jl(native("x", params={"max_new_tokens": 10.5})),
     "params.max_new_tokens", "must be an integer"),
    ("max_new_tokens bool", jl(native("x", params={"max_new_tokens": True})),
     "params.max_new_tokens", "got a boolean"),
    ("max_new_tokens 0", jl(native("x", params={"max_new_tokens": 0})),
     "params.max_new_tokens", "between 1 and 32768"),
    ("max_new_tokens too big", jl(native("x", params={"max_new_tokens": 32_769})),
     "params.max_new_tokens", "between 1 and 32768"),
    ("temperature negative", jl(native("x", params={"temperature": -0.1})),
     "params.temperature", "between 0 and 2"),
    ("temperature too high", jl(native("x", params={"temperature": 2.01})),
     "params.temperature", "between 0 and 2"),
    ("temperature NaN", b'{"custom_id": "x", "instruction": "q", "params": '
     b'{"temperature": NaN}}\n', "params.temperature", "between 0 and 2"),
    ("temperature string", jl(native("x", params={"temperature": "hot"})),
     "params.temperature", "must be a number, got a string"),
    ("top_p zero", jl(native("x", params={"top_p": 0})), "params.top_p", "in (0, 1]"),
    ("top_p above one", jl(native("x", params={"top_p": 1.5})), "params.top_p", "in (0, 1]"),
    ("seed float", jl(native("x", params={"seed": 1.0})), "params.seed", "must be an integer"),
    ("seed above 64 bits", jl(native("x", params={"seed": 2**63})), "params.seed",
     "signed 64-bit"),
    ("seed below 64 bits", jl(native("x", params={"seed": -(2**63) - 1})), "params.seed",
     "signed 64-bit"),
    ("openai max_tokens 0", jl(openai("x", {"messages": [{"role": "user", "content": "q"}],
                                            "max_tokens": 0})),
     "body.max_tokens", "between 1 and 32768"),
    ("openai max_completion_tokens string", jl(openai("x", {
        "messages": [{"role": "user", "content": "q"}], "max_completion_tokens": "9"})),
     "body.max_completion_tokens", "must be an integer"),
    ("openai temperature", jl(openai("x", {"messages": [{"role": "user", "content": "q"}],
                                           "temperature": 3})),
     "body.temperature", "between 0 and 2"),
    ("openai seed", jl(openai("x", {"messages": [{"role": "user", "content": "q"}],
                                    "seed": "s"})),
     "body.seed", "must be an integer"),
]


@pytest.mark.parametrize(("line", "field", "message"),
                         [case[1:] for case in BAD_LINES], ids=[case[0] for case in BAD_LINES])
def test_bad_line_names_its_line_and_field(line: bytes, field: str, message: str) -> None:
    # Two valid lines and a blank one first: the error must carry the physical line number.
    result = validate_lines([jl(native("ok0")), b"\n", jl(native("ok1")), line])
    assert [r.custom_id for r in result.requests] == ["ok0", "ok1"]
    assert result.error_count == 1 and not result.ok
    [error] = result.errors
    assert (error.line, error.field) == (4, field), error
    assert message in error.message, error
    assert str(error).startswith(f"line 4: {field}: ")
    assert error.as_dict() == {"line": 4, "field": field, "message": error.message}


# -- NUL and other text Postgres cannot store, however the JSON spells it -------------------

ESCAPED_TEXT_FIELDS: list[tuple[str, dict[str, Any], str]] = [
    ("custom_id", {"custom_id": "a\x00", "instruction": "q"}, "custom_id"),
    ("instruction", {"custom_id": "a", "instruction": "q\x00q"}, "instruction"),
    ("input", {"custom_id": "a", "instruction": "q", "input": "\x00"}, "input"),
    ("method", openai("a", method="POST\x00"), "method"),
    ("url", openai("a", url="/v1/chat/completions\x00"), "url"),
    ("message content", openai("a", {"messages": [{"role": "user", "content": "hi\x00"}]}),
     "body.messages[0].content"),
    ("system content", openai("a", {"messages": [{"role": "system", "content": "\x00"},
                                                 {"role": "user", "content": "q"}]}),
     "body.messages[0].content"),
    ("text part", openai("a", {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "ok"}, {"type": "text", "text": "b\x00d"}]}]}),
     "body.messages[0].content[1].text"),
    ("requested model", openai("a", {"model": "m\x00", "messages": [
        {"role": "user", "content": "q"}]}), "body.model"),
]


@pytest.mark.parametrize(("obj", "field"), [c[1:] for c in ESCAPED_TEXT_FIELDS],
                         ids=[c[0] for c in ESCAPED_TEXT_FIELDS])
def test_escaped_nul_in_any_string_field_is_rejected(obj: dict[str, Any], field: str) -> None:
    line = jl(obj)
    assert b"\\u0000" in line and b"\x00" not in line  # the escaped form, not a raw byte
    error = only_error(validate_lines([line]))
    assert (error.line, error.field) == (1, field)
    assert "NUL" in error.message


@pytest.mark.parametrize(("line", "field"), [
    (b'{"custom_id": "a", "instruction": "q\\ud800"}\n', "instruction"),
    (b'{"custom_id": "\\udfff", "instruction": "q"}\n', "custom_id"),
    (b'{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": '
     b'{"messages": [{"role": "user", "content": "x\\ud83d"}]}}\n',
     "body.messages[0].content"),
], ids=["instruction", "custom_id", "message content"])
def test_lone_surrogate_escape_is_rejected(line: bytes, field: str) -> None:
    # json.loads accepts "\ud800"; the string then cannot be encoded to UTF-8 for Postgres.
    error = only_error(validate_lines([line]))
    assert (error.line, error.field) == (1, field)
    assert "surrogate" in error.message


def test_a_valid_surrogate_pair_escape_is_accepted() -> None:
    [req] = validate_lines([b'{"custom_id": "a", "instruction": "smile \\ud83d\\ude00"}\n']
                           ).requests
    assert req.instruction == "smile \U0001f600"


# -- duplicates, sizes and limits -------------------------------------------------------------

def test_duplicate_custom_id_names_the_first_line() -> None:
    result = validate_lines([jl(native("a")), jl(native("b")), b"\n", jl(openai("a")),
                             jl(native("a"))])
    assert [r.custom_id for r in result.requests] == ["a", "b"]
    assert [(e.line, e.field) for e in result.errors] == [(4, "custom_id"), (5, "custom_id")]
    assert all("already used on line 1" in e.message for e in result.errors)


def test_custom_id_of_an_invalid_line_is_not_reserved() -> None:
    # Line 1 is rejected, so line 2 may use its custom_id.
    result = validate_lines([jl(native("a", instruction="")), jl(native("a"))])
    assert [(e.line, e.field) for e in result.errors] == [(1, "instruction")]
    assert [(r.line_no, r.custom_id) for r in result.requests] == [(2, "a")]


def test_line_over_max_line_bytes_is_rejected_before_parsing() -> None:
    big = jl(native("x", instruction="y" * validation.MAX_LINE_BYTES))
    error = error_of(big, before=1)
    assert (error.line, error.field) == (2, "(line)")
    assert f"line is {len(big)} bytes, the limit is {validation.MAX_LINE_BYTES}" == \
        error.message


def test_line_length_limit_is_inclusive(monkeypatch: pytest.MonkeyPatch) -> None:
    line = jl(native("x"))
    monkeypatch.setattr(validation, "MAX_LINE_BYTES", len(line))
    assert validate_lines([line]).ok
    monkeypatch.setattr(validation, "MAX_LINE_BYTES", len(line) - 1)
    error = only_error(validate_lines([line]))
    assert (error.line, error.field) == (1, "(line)")
    assert f"limit is {len(line) - 1}" in error.message


@pytest.mark.parametrize("lines", [[], [b""], [b"\n", b"  \n", b"\r\n"]],
                         ids=["no lines", "one empty line", "blank lines"])
def test_empty_file_is_one_file_error(lines: list[bytes]) -> None:
    error = only_error(validate_lines(lines))
    assert (error.line, error.field) == (0, "(file)")
    assert "no requests" in error.message


def test_file_of_only_bad_lines_does_not_also_say_empty() -> None:
    result = validate_lines([b"[]\n"])
    assert [(e.line, e.field) for e in result.errors] == [(1, "(line)")]


def test_more_than_max_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(validation, "MAX_REQUESTS", 3)
    exactly = validate_lines([jl(native(f"r{i}")) for i in range(3)])
    assert exactly.ok and len(exactly.requests) == 3

    lines = [jl(native("r0")), b"\n", jl(native("r1")), jl(native("r2")), b"\n",
             jl(native("r3")), jl(native("r4")), b"{broken\n"]
    result = validate_lines(lines)
    assert [e.as_dict() for e in result.errors] == [
        {"line": 6, "field": "(file)", "message": "more than 3 requests in one job"}]
    # It stops there: line 8 is never parsed.
    assert result.error_count == 1
    assert len(result.requests) == 3 and not result.ok


def test_errors_beyond_max_errors_kept_are_counted_not_kept(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(validation, "MAX_ERRORS_KEPT", 4)
    lines = [jl(native(f"bad{i}", instruction="")) for i in range(10)] + [jl(native("ok"))]
    result = validate_lines(lines)
    assert [e.line for e in result.errors] == [1, 2, 3, 4]
    assert result.error_count == 10
    assert [r.custom_id for r in result.requests] == ["ok"]
    assert not result.ok


def test_default_max_errors_kept() -> None:
    result = validate_lines([b"x\n"] * 150)
    assert len(result.errors) == validation.MAX_ERRORS_KEPT == 100
    assert result.error_count == 150
    assert result.errors[-1].line == 100


def test_lines_may_come_from_a_generator() -> None:
    result = validate_lines(jl(native(f"g{i}")) for i in range(5))
    assert [r.line_no for r in result.requests] == [1, 2, 3, 4, 5]


def test_a_file_over_the_size_limit_is_refused_at_the_line_that_crosses_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(validation, "MAX_FILE_BYTES", 200)
    line = (json.dumps({"custom_id": "x" * 10, "instruction": "y" * 40}) + "\n").encode()
    lines = [line.replace(b"xxxxxxxxxx", f"{i:010d}".encode()) for i in range(5)]
    result = validation.validate_lines(lines)
    crossing = 200 // len(line) + 1
    assert [(e.line, e.field) for e in result.errors] == [(crossing, "(file)")]
    assert "larger than 200 bytes" in result.errors[0].message


# -- the column of a JSON error ------------------------------------------------------------

@pytest.mark.parametrize("ending", [b"\n", b"\r\n", b""])
def test_a_truncated_line_reports_the_column_where_it_ends(ending: bytes) -> None:
    line = b'{"custom_id": "a", "instruction": "q"'  # 37 characters, the brace never closed
    error = error_of(line + ending)
    assert error.field == "(line)"
    assert error.message == "not valid JSON: Expecting ',' delimiter at column 38"


def test_a_json_error_mid_line_counts_characters_not_bytes() -> None:
    # Non-ASCII before the fault: the column counts characters, as an editor shows them.
    error = error_of('{"custom_id": "ü", "instruction": "q" "x"}\n'.encode())
    assert error.message == "not valid JSON: Expecting ',' delimiter at column 39"


def test_a_system_message_alone_with_one_user_turn_goes_to_input() -> None:
    body = {"messages": [{"role": "system", "content": "Answer in French."},
                         {"role": "user", "content": "Say hi"}]}
    [req] = validate_lines([jl(openai("c", body))]).requests
    assert (req.instruction, req.input) == ("Say hi", "System: Answer in French.")
    [plain] = validate_lines([jl(openai("c"))]).requests
    assert (plain.instruction, plain.input) == ("Say hi", "")
