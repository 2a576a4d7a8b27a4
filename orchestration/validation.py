"""Validation of a JSONL input file, whole, before anything is stored or dispatched.

Two line shapes are accepted:
- native: ``{"custom_id", "instruction", "input", "params", "metadata"}``; the instruction
  may be left out when an input is given (the input is then the prompt), and ``metadata``
  is the caller's own object, kept and given back on the result line
- an OpenAI Batch request line: ``{"custom_id", "method", "url", "body": {"messages": [...]}}``;
  its messages are kept for the generators and rendered into instruction/input for the
  ranker and the fuser (``db/prompts.py``)

Every problem names its line (1-based), its field and the reason.
"""

from __future__ import annotations

import codecs
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, cast

from db.prompts import render_conversation

MAX_LINE_BYTES = 1_000_000
# The whole file is held in memory while it is validated; the OpenAI Batch API's own limit.
MAX_FILE_BYTES = 200_000_000
MAX_REQUESTS = 50_000
MAX_CUSTOM_ID = 512
MAX_ERRORS_KEPT = 100
CHAT_URL = "/v1/chat/completions"
ROLES = ("system", "developer", "user", "assistant")
NATIVE_FIELDS = {"custom_id", "instruction", "input", "params", "metadata"}
# A native line's own metadata, as JSON; bounded so that it cannot outweigh the request.
MAX_METADATA_BYTES = 16_384
OPENAI_FIELDS = {"custom_id", "method", "url", "body"}
PARAM_TYPES: dict[str, tuple[type, ...]] = {
    "max_new_tokens": (int,),
    "temperature": (int, float),
    "top_p": (int, float),
    "seed": (int,),
}


@dataclass(frozen=True)
class LineError:
    line: int
    field: str
    message: str
    code: str | None = None  # a machine-readable reason where one is defined

    def as_dict(self) -> dict[str, Any]:
        found = {"line": self.line, "field": self.field, "message": self.message}
        return found if self.code is None else {**found, "code": self.code}

    def __str__(self) -> str:
        return f"line {self.line}: {self.field}: {self.message}"


@dataclass
class ParsedRequest:
    line_no: int
    custom_id: str
    instruction: str
    input: str = ""
    messages: list[dict[str, str]] | None = None
    params: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] | None = None


@dataclass
class ValidationResult:
    requests: list[ParsedRequest]
    errors: list[LineError]
    error_count: int = 0

    @property
    def ok(self) -> bool:
        return not self.errors


class _Invalid(Exception):
    def __init__(self, field_name: str, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.field = field_name
        self.message = message
        self.code = code


# What a caller's check of each parsed line raises (e.g. the HTTP API's model check).
InvalidLine = _Invalid
LineCheck = Callable[[ParsedRequest], None]


def validate_lines(raw_lines: Iterable[bytes],
                   check: LineCheck | None = None) -> ValidationResult:
    """Parse every line; collect all problems instead of stopping at the first.
    ``check`` sees each line that parsed and may refuse it with ``InvalidLine``."""
    requests: list[ParsedRequest] = []
    errors: list[LineError] = []
    error_count = 0
    seen: dict[str, int] = {}

    def fail(line: int, field_name: str, message: str, code: str | None = None) -> None:
        nonlocal error_count
        error_count += 1
        if len(errors) < MAX_ERRORS_KEPT:
            errors.append(LineError(line, field_name, message, code))

    size = 0
    for line_no, raw in enumerate(raw_lines, start=1):
        size += len(raw)
        if size > MAX_FILE_BYTES:
            fail(line_no, "(file)", f"the file is larger than {MAX_FILE_BYTES} bytes")
            break
        if line_no == 1 and raw.startswith(codecs.BOM_UTF8):
            # Spreadsheet and back-office exports start UTF-8 files with a byte-order mark.
            raw = raw[len(codecs.BOM_UTF8):]
        if not raw.strip():
            continue
        if len(requests) >= MAX_REQUESTS:
            fail(line_no, "(file)", f"more than {MAX_REQUESTS} requests in one job")
            break
        try:
            parsed = _parse_line(raw, line_no)
            if check is not None:
                check(parsed)
        except _Invalid as exc:
            fail(line_no, exc.field, exc.message, exc.code)
            continue
        first = seen.get(parsed.custom_id)
        if first is not None:
            fail(line_no, "custom_id", f"{parsed.custom_id!r} already used on line {first}")
            continue
        seen[parsed.custom_id] = line_no
        requests.append(parsed)
    if not requests and not errors:
        fail(0, "(file)", "the file holds no requests")
    return ValidationResult(requests=requests, errors=errors, error_count=error_count)


def _parse_line(raw: bytes, line_no: int) -> ParsedRequest:
    if len(raw) > MAX_LINE_BYTES:
        raise _Invalid("(line)", f"line is {len(raw)} bytes, the limit is {MAX_LINE_BYTES}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _Invalid("(line)", f"not valid UTF-8 at byte {exc.start}") from None
    if "\x00" in text:
        raise _Invalid("(line)", "contains a NUL character")
    # The line's own terminator is not part of the JSON: parsed, it made the error of a
    # truncated line point at column 1 of a line 2 that does not exist.
    text = text.rstrip("\r\n")
    try:
        obj = json.loads(text)
    except RecursionError:
        raise _Invalid("(line)", "JSON nested too deeply") from None
    except json.JSONDecodeError as exc:
        # pos counts characters from the start of the line, whatever \r it holds.
        raise _Invalid("(line)", f"not valid JSON: {exc.msg} at column {exc.pos + 1}") from None
    except ValueError as exc:  # e.g. an integer literal longer than Python converts
        raise _Invalid("(line)", f"not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise _Invalid("(line)", f"must be a JSON object, got {_kind(obj)}")
    custom_id = _string(obj, "custom_id", max_len=MAX_CUSTOM_ID)
    if "body" in obj or "method" in obj or "url" in obj:
        return _parse_openai(obj, line_no, custom_id)
    return _parse_native(obj, line_no, custom_id)


def _parse_native(obj: dict[str, Any], line_no: int, custom_id: str) -> ParsedRequest:
    _no_unknown(obj, NATIVE_FIELDS, "")
    input_text = _string(obj, "input", required=False, allow_empty=True)
    instruction = _string(obj, "instruction", required=not input_text.strip(),
                          allow_empty=bool(input_text.strip()))
    if not instruction.strip():
        # Only an input (an export with one text column): it is the prompt.
        instruction, input_text = input_text, ""
    params = obj.get("params", {})
    if not isinstance(params, dict):
        raise _Invalid("params", f"must be an object, got {_kind(params)}")
    return ParsedRequest(line_no, custom_id, instruction, input_text,
                         params=_check_params(params, "params."),
                         metadata=_metadata(obj.get("metadata")))


def _metadata(value: Any) -> dict[str, Any] | None:
    """The caller's own metadata: an object of JSON that PostgreSQL can store, bounded."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _Invalid("metadata", f"must be an object, got {_kind(value)}")
    _storable(value, "metadata")
    size = len(json.dumps(value, ensure_ascii=False).encode("utf-8"))
    if size > MAX_METADATA_BYTES:
        raise _Invalid("metadata", f"is {size} bytes as JSON, the limit is {MAX_METADATA_BYTES}")
    return value


def _storable(value: Any, where: str) -> None:
    if isinstance(value, str):
        _text(value, where)
    elif isinstance(value, float) and not math.isfinite(value):
        raise _Invalid(where, f"{value} is not a JSON number")
    elif isinstance(value, dict):
        for key, item in value.items():
            _text(key, f"{where} (a key)")
            _storable(item, f"{where}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _storable(item, f"{where}[{index}]")


def _parse_openai(obj: dict[str, Any], line_no: int, custom_id: str) -> ParsedRequest:
    _no_unknown(obj, OPENAI_FIELDS, "")
    method = _string(obj, "method")
    if method.upper() != "POST":
        raise _Invalid("method", f"must be POST, got {method!r}")
    url = _string(obj, "url")
    if url != CHAT_URL:
        raise _Invalid("url", f"must be {CHAT_URL}, got {url!r}")
    body = obj.get("body")
    if not isinstance(body, dict):
        raise _Invalid("body", f"must be an object, got {_kind(body)}")
    raw_messages = body.get("messages")
    if not isinstance(raw_messages, list) or not raw_messages:
        raise _Invalid("body.messages", "must be a non-empty array")
    messages = [_message(m, i) for i, m in enumerate(raw_messages)]
    if not any(m["role"] == "user" for m in messages):
        raise _Invalid("body.messages", "needs at least one message with role 'user'")
    params: dict[str, Any] = {}
    for ours, theirs in (("max_new_tokens", "max_completion_tokens"),
                         ("max_new_tokens", "max_tokens"), ("temperature", "temperature"),
                         ("top_p", "top_p"), ("seed", "seed")):
        if theirs in body and body[theirs] is not None and ours not in params:
            params[ours] = body[theirs]
            _check_param(ours, body[theirs], f"body.{theirs}")
    if isinstance(body.get("model"), str):
        params["requested_model"] = _text(body["model"], "body.model")
    # The generators read the messages; the ranker and the fuser read the same conversation
    # rendered into instruction/input (db/prompts.py), so none of it is lost to them.
    instruction, context = render_conversation(messages)
    return ParsedRequest(line_no, custom_id, instruction, context, messages=messages,
                         params=params)


def _message(raw: Any, index: int) -> dict[str, str]:
    where = f"body.messages[{index}]"
    if not isinstance(raw, dict):
        raise _Invalid(where, f"must be an object, got {_kind(raw)}")
    role = raw.get("role")
    if role not in ROLES:
        raise _Invalid(f"{where}.role", f"must be one of {', '.join(ROLES)}, got {role!r}")
    content = raw.get("content")
    if isinstance(content, list):
        parts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(
                part.get("text"), str
            ):
                raise _Invalid(f"{where}.content[{j}]", "only text parts are supported")
            parts.append(_text(part["text"], f"{where}.content[{j}].text"))
        content = "\n".join(parts)
    if not isinstance(content, str):
        raise _Invalid(f"{where}.content", f"must be a string, got {_kind(content)}")
    _text(content, f"{where}.content")
    if not content.strip() and role == "user":
        raise _Invalid(f"{where}.content", "is empty")
    return {"role": role, "content": content}


def _check_params(params: dict[str, Any], prefix: str) -> dict[str, Any]:
    _no_unknown(params, set(PARAM_TYPES), prefix)
    for name, value in params.items():
        _check_param(name, value, prefix + name)
    return dict(params)


def _check_param(name: str, value: Any, where: str) -> None:
    types = PARAM_TYPES[name]
    if isinstance(value, bool) or not isinstance(value, types):
        wanted = "an integer" if types == (int,) else "a number"
        raise _Invalid(where, f"must be {wanted}, got {_kind(value)}")
    number = cast(float, value)
    if name == "max_new_tokens" and not 1 <= number <= 32_768:
        raise _Invalid(where, f"must be between 1 and 32768, got {value}")
    if name == "temperature" and not 0 <= number <= 2:
        raise _Invalid(where, f"must be between 0 and 2, got {value}")
    if name == "top_p" and not 0 < number <= 1:
        raise _Invalid(where, f"must be in (0, 1], got {value}")
    # torch.manual_seed raises on anything outside 64 bits, failing the generation instead.
    if name == "seed" and not -(2**63) <= number < 2**63:
        raise _Invalid(where, "must fit in a signed 64-bit integer")


def _string(obj: dict[str, Any], name: str, *, required: bool = True, allow_empty: bool = False,
            max_len: int | None = None) -> str:
    if name not in obj:
        if required:
            raise _Invalid(name, "is missing")
        return ""
    value = obj[name]
    if not isinstance(value, str):
        raise _Invalid(name, f"must be a string, got {_kind(value)}")
    _text(value, name)
    if not allow_empty and not value.strip():
        raise _Invalid(name, "is empty")
    if max_len is not None and len(value) > max_len:
        raise _Invalid(name, f"is {len(value)} characters, the limit is {max_len}")
    return value


def _text(value: str, where: str) -> str:
    """Refuse what JSON escapes can smuggle past the raw-line checks and Postgres refuses:
    NUL (``\\u0000``) and lone surrogates (``\\ud800``), which are not UTF-8."""
    if "\x00" in value:
        raise _Invalid(where, "contains a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise _Invalid(where, f"not valid Unicode at character {exc.start} "
                              "(a lone surrogate escape)") from None
    return value


def _no_unknown(obj: dict[str, Any], allowed: set[str], prefix: str) -> None:
    unknown = sorted(set(obj) - allowed)
    if unknown:
        expected = ", ".join(sorted(allowed))
        raise _Invalid(prefix + unknown[0], f"unknown field (expected {expected})")


def _kind(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
            int: "a number", float: "a number", type(None): "null"}.get(type(value), "a value")
