"""A native job's JSON body, read as it arrives: ``{"requests": [...], "options": {...},
"metadata": {...}}``.

The body used to be parsed whole before anything looked at it, so 48 MiB of tiny requests
took the server to half a gigabyte before the 50,000-request cap refused them. Here each
request is decoded on its own as its bytes arrive, kept as one compact JSON line (what
validation reads), and the request past the cap ends the read at once.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from orchestration.validation import MAX_LINE_BYTES, MAX_REQUESTS

FIELDS = ("requests", "options", "metadata")
# A value still undecoded after this many characters is too large (or not JSON at all).
MAX_VALUE_CHARS = MAX_LINE_BYTES + 1024
_WHITESPACE = " \t\r\n"


class BodyError(ValueError):
    """The body cannot be a job: ``status`` 400 (its shape) or 413 (too many requests)."""

    def __init__(self, message: str, *, param: str | None = None, status: int = 400,
                 code: str = "invalid_request") -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.status = status
        self.code = code


@dataclass
class JobBody:
    lines: list[bytes] = field(default_factory=list)  # one JSON line per request
    options: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] | None = None


class _Reader:
    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self.chunks = chunks
        self.decoder = codecs.getincrementaldecoder("utf-8")()
        self.buffer = ""
        self.pos = 0
        self.eof = False
        self.json = json.JSONDecoder()

    async def more(self) -> bool:
        """Read the next chunk into the buffer; False at the end of the body."""
        if self.eof:
            return False
        if self.pos > 65536:  # drop what has been parsed: memory stays one value wide
            self.buffer, self.pos = self.buffer[self.pos:], 0
        try:
            chunk = await self.chunks.__anext__()
        except StopAsyncIteration:
            chunk, self.eof = b"", True
        try:
            self.buffer += self.decoder.decode(chunk, final=self.eof)
        except UnicodeDecodeError:
            raise BodyError("The body is not UTF-8 text.") from None
        return True

    async def peek(self) -> str:
        """The next character after whitespace ("" at the end of the body)."""
        while True:
            while self.pos < len(self.buffer) and self.buffer[self.pos] in _WHITESPACE:
                self.pos += 1
            if self.pos < len(self.buffer):
                return self.buffer[self.pos]
            if not await self.more():
                return ""

    async def expect(self, char: str, where: str) -> None:
        found = await self.peek()
        if found != char:
            shown = repr(found) if found else "the end of the body"
            raise BodyError(f"{where}: expected {char!r}, found {shown}.")
        self.pos += 1

    async def value(self, where: str) -> Any:
        """One JSON value; it is taken only once a character after it has arrived (a
        number cut between two chunks would otherwise parse as its first part)."""
        await self.peek()
        while True:
            try:
                value, end = self.json.raw_decode(self.buffer, self.pos)
            except RecursionError:
                raise BodyError(f"{where}: JSON nested too deeply.", param=where) from None
            except ValueError as exc:
                if self.eof:
                    raise BodyError(f"{where}: not valid JSON ({exc}).", param=where) from None
            else:
                if end < len(self.buffer) or self.eof:
                    self.pos = end
                    return value
            if len(self.buffer) - self.pos > MAX_VALUE_CHARS:
                raise BodyError(f"{where}: larger than {MAX_LINE_BYTES} bytes, or not "
                                "valid JSON.", param=where)
            await self.more()


async def read_job_body(chunks: AsyncIterator[bytes],
                        max_requests: int = MAX_REQUESTS) -> JobBody:
    reader = _Reader(chunks)
    found = JobBody()
    seen: set[str] = set()
    await reader.expect("{", "body")
    if await reader.peek() == "}":
        reader.pos += 1
    else:
        while True:
            name = await reader.value("body")
            if not isinstance(name, str):
                raise BodyError("body: expected a field name.")
            if name not in FIELDS:
                raise BodyError(f"{name[:64]}: unknown field (expected "
                                f"{', '.join(FIELDS)}).", param=name[:64])
            if name in seen:
                raise BodyError(f"{name}: given twice.", param=name)
            seen.add(name)
            await reader.expect(":", name)
            if name == "requests":
                await _requests(reader, found, max_requests)
            else:
                value = await reader.value(name)
                if name == "metadata" and value is None:
                    pass
                elif not isinstance(value, dict):
                    raise BodyError(f"{name}: must be an object.", param=name)
                else:
                    setattr(found, name, value)
            if await reader.peek() == ",":
                reader.pos += 1
                continue
            await reader.expect("}", "body")
            break
    if await reader.peek() != "":
        raise BodyError("body: more after the closing '}'.")
    if "requests" not in seen:
        raise BodyError("requests: is missing.", param="requests")
    if not found.lines:
        raise BodyError("requests: give at least one request.", param="requests")
    return found


async def _requests(reader: _Reader, found: JobBody, max_requests: int) -> None:
    await reader.expect("[", "requests")
    if await reader.peek() == "]":
        reader.pos += 1
        return
    while True:
        where = f"requests[{len(found.lines)}]"
        item = await reader.value(where)
        if len(found.lines) >= max_requests:
            raise BodyError(f"requests: more than {max_requests} requests in one job.",
                            param="requests", status=413, code="too_many_requests")
        # surrogatepass: a lone surrogate escape reaches validation, which names it.
        found.lines.append(json.dumps(item, ensure_ascii=False).encode("utf-8",
                                                                       "surrogatepass"))
        following = await reader.peek()
        reader.pos += 1
        if following == "]":
            return
        if following != ",":
            shown = repr(following) if following else "the end of the body"
            raise BodyError(f"requests: expected ',' or ']' after {where}, found {shown}.",
                            param="requests")
