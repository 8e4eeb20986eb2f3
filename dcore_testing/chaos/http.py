"""A minimal HTTP/1.1 server on asyncio streams, enough for the Toxiproxy API.

Stdlib only, so the embedded server runs wherever Python does. It supports
keep-alive, ``Content-Length`` and chunked request bodies, and the timeouts of
Go's ``net/http`` server as Toxiproxy configures it: 15 s to read a request
(counted from its first byte, or from the accept for the first request), 60 s
idle between requests, 30 s to write a response; a timeout closes the connection
without an answer, as Go does. Anything it cannot parse gets Go's plain
``400 Bad Request`` (``431`` for a head over 1 MiB) and a close.

Differences from Toxiproxy v2.12.0 (DIFFERENCES.md), all set by :class:`HttpLimits`:
a request body over ``max_body_bytes`` (4 MiB) is answered 413 and the connection
closed; beyond ``max_connections`` (64) open API connections a new one is answered
503 and closed; every timeout can be changed. Those answers use the API's error
shape (``text/plain`` JSON ``{"error":…,"status":…}`` and a newline); the real
server has none of these limits.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, fields
from http import HTTPStatus
from urllib.parse import unquote

from . import gojson

MAX_HEADER_BYTES = 1 << 20
LINGER = 1.0
"""Seconds to keep reading (and discarding) after an early error answer, so the client
reads the answer instead of a reset caused by its own unread request bytes."""


@dataclass(frozen=True)
class HttpLimits:
    """Limits of the API's HTTP server. Sizes in bytes, times in seconds."""

    max_body_bytes: int = 4 << 20
    max_connections: int = 64
    read_timeout: float = 15.0
    idle_timeout: float = 60.0
    write_timeout: float = 30.0

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError(
                    f"HttpLimits.{item.name} must be a number, got {type(value).__name__} {value!r}"
                )
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(
                    f"HttpLimits.{item.name} must be a positive finite number, got {value!r}; "
                    f"the default is {item.default!r}"
                )


class BadRequest(Exception):
    """The bytes on the wire are not an HTTP/1.x request we can serve."""


class HeadTooLarge(BadRequest):
    """The request line and headers exceed :data:`MAX_HEADER_BYTES` (Go answers 431)."""


class Refused(Exception):
    """A request that is answered with an API error and then a close (a limit was hit)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Request:
    """One parsed request; header names are lower-cased."""

    method: str
    target: str
    version: str
    headers: dict[str, str]
    body: bytes = b""

    @property
    def path(self) -> str:
        """The percent-decoded path, without the query string (as gorilla/mux matches)."""
        return unquote(self.target.split("?", 1)[0])

    @property
    def keep_alive(self) -> bool:
        connection = self.headers.get("connection", "").lower()
        if self.version == "HTTP/1.0":
            return connection == "keep-alive"
        return connection != "close"


@dataclass
class Response:
    """A response; ``headers`` keep their order and case as written."""

    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None


Handler = Callable[[Request], Awaitable[Response]]


def error_response(message: str, status: int) -> Response:
    """The real server's ``http.Error`` shape: JSON in a ``text/plain`` body, newline."""
    body = gojson.dumps({"error": message, "status": status}) + b"\n"
    return Response(
        status,
        body,
        [("Content-Type", "text/plain; charset=utf-8"), ("X-Content-Type-Options", "nosniff")],
    )


def body_too_large(limit: int, size: int | None) -> Refused:
    amount = f"{size} bytes" if size is not None else f"more than {limit} bytes (chunked)"
    return Refused(
        413,
        f"request body too large: {amount}, the limit is {limit} bytes; raise "
        "HttpLimits.max_body_bytes (python -m dcore_testing.chaos --max-body-bytes)",
    )


def encode_response(response: Response, *, keep_alive: bool) -> bytes:
    """Serialise like Go: ``Date``, and ``Content-Length`` except on 204/304."""
    try:
        reason = HTTPStatus(response.status).phrase
    except ValueError:
        reason = ""
    lines = [f"HTTP/1.1 {response.status} {reason}"]
    lines += [f"{name}: {value}" for name, value in response.headers]
    lines.append(f"Date: {email.utils.formatdate(usegmt=True)}")
    if response.status not in (204, 304):
        lines.append(f"Content-Length: {len(response.body)}")
    if not keep_alive:
        lines.append("Connection: close")
    head = "\r\n".join(lines) + "\r\n\r\n"
    return head.encode("latin-1") + response.body


async def _read_chunked(reader: asyncio.StreamReader, limit: int) -> bytes:
    body = bytearray()
    while True:
        size_line = await reader.readuntil(b"\r\n")
        try:
            size = int(size_line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise BadRequest("bad chunk size") from None
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":
                pass
            return bytes(body)
        if len(body) + size > limit:
            raise body_too_large(limit, None)
        body += await reader.readexactly(size)
        await reader.readexactly(2)


async def read_request(
    reader: asyncio.StreamReader, max_body_bytes: int, start: bytes = b""
) -> Request | None:
    """Read one request; ``None`` when the peer closed cleanly between requests.

    ``start`` is the request's first byte when the caller already read it (it must not
    be CR or LF, so the head's blank line cannot straddle it).
    """
    try:
        head = start + await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not (start + exc.partial).strip():
            return None
        raise BadRequest("truncated request head") from None
    except asyncio.LimitOverrunError:
        raise HeadTooLarge("request head too large") from None
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadRequest(f"malformed request line {lines[0]!r}")
    method, target, version = parts
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise BadRequest(f"malformed header {line!r}")
        headers[name.lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = await _read_chunked(reader, max_body_bytes)
    else:
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError:
            raise BadRequest("bad Content-Length") from None
        if length < 0:
            raise BadRequest("bad Content-Length")
        if length > max_body_bytes:
            raise body_too_large(max_body_bytes, length)
        body = await reader.readexactly(length) if length else b""
    return Request(method, target, version, headers, body)


async def _first_byte(reader: asyncio.StreamReader) -> bytes | None:
    """Wait for a request to begin; ``None`` if the peer closes first."""
    return await reader.read(1) or None


async def _skip_blank_lines(reader: asyncio.StreamReader, byte: bytes) -> bytes | None:
    """RFC 9112 §2.2: ignore CRLFs before a request line (Go does too)."""
    while byte in (b"\r", b"\n"):
        try:
            byte = await reader.readexactly(1)
        except asyncio.IncompleteReadError:
            return None
    return byte


async def next_request(
    reader: asyncio.StreamReader, limits: HttpLimits, *, first: bool
) -> Request | None:
    """The next request under Go's deadlines: ``idle_timeout`` until a keep-alive
    request begins, then ``read_timeout`` from its first byte (from the accept for the
    first request). Raises ``TimeoutError`` when one runs out."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(limits.read_timeout if first else limits.idle_timeout) as deadline:
        byte = await _first_byte(reader)
        if byte is None:
            return None
        if not first:
            deadline.reschedule(loop.time() + limits.read_timeout)
        start = await _skip_blank_lines(reader, byte)
        if start is None:
            return None
        return await read_request(reader, limits.max_body_bytes, start)


_BAD_REQUEST = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Connection: close\r\n\r\n400 Bad Request"
)
_HEAD_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n"
    b"431 Request Header Fields Too Large"
)


async def answer_and_close(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes
) -> None:
    """Send a final answer, half-close, and discard input for up to :data:`LINGER` s.

    Closing with unread input makes the kernel send an RST, which can destroy the
    answer before the client reads it (a client still sending its body, or one that
    sent its request after a connection was refused). Go's ``closeWriteAndWait`` does
    the same. The reading is bounded in time and keeps nothing.
    """
    writer.write(data)
    with contextlib.suppress(ConnectionError, OSError, TimeoutError):
        async with asyncio.timeout(LINGER):
            await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
            while await reader.read(1 << 16):
                pass


def _refusal(refused: Refused) -> bytes:
    return encode_response(error_response(refused.message, refused.status), keep_alive=False)


async def serve_connection(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    handler: Handler,
    limits: HttpLimits | None = None,
    on_finish: Callable[[], None] | None = None,
) -> None:
    """Serve requests on one connection until the peer leaves, asks to close, or times out.

    ``on_finish`` runs once serving stops and *before* the socket closes, so a
    connection slot it frees is free by the time the peer sees the close.
    """
    limits = limits or HttpLimits()
    try:
        first = True
        while True:
            try:
                request = await next_request(reader, limits, first=first)
            except Refused as refused:
                await answer_and_close(reader, writer, _refusal(refused))
                return
            except HeadTooLarge:
                await answer_and_close(reader, writer, _HEAD_TOO_LARGE)
                return
            except BadRequest:
                writer.write(_BAD_REQUEST)
                await writer.drain()
                return
            except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                return  # Go does not answer a request it could not read in time
            if request is None:
                return
            first = False
            response = await handler(request)
            writer.write(encode_response(response, keep_alive=request.keep_alive))
            async with asyncio.timeout(limits.write_timeout):
                await writer.drain()
            if not request.keep_alive:
                return
    except (ConnectionError, OSError, TimeoutError):
        return
    finally:
        if on_finish is not None:
            on_finish()
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()


def too_many_connections(limits: HttpLimits) -> bytes:
    """The answer to a connection over ``max_connections``."""
    refused = Refused(
        503,
        f"too many connections: the API already serves {limits.max_connections}; close idle "
        "keep-alive connections or raise HttpLimits.max_connections "
        "(python -m dcore_testing.chaos --max-connections)",
    )
    return _refusal(refused)
