"""A minimal HTTP/1.1 server on asyncio streams, enough for the Toxiproxy API.

Stdlib only, so the embedded server runs wherever Python does. It supports
keep-alive, ``Content-Length`` and chunked request bodies, and the timeouts of
Go's ``net/http`` server as Toxiproxy configures it (15 s to read a request, 60 s
idle). Anything it cannot parse gets Go's plain ``400 Bad Request`` and a close.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from urllib.parse import unquote

READ_TIMEOUT = 15.0
IDLE_TIMEOUT = 60.0
MAX_HEADER_BYTES = 1 << 20
MAX_BODY_BYTES = 64 << 20


class BadRequest(Exception):
    """The bytes on the wire are not an HTTP/1.x request we can serve."""


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


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
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
        if len(body) + size > MAX_BODY_BYTES:
            raise BadRequest("body too large")
        body += await reader.readexactly(size)
        await reader.readexactly(2)


async def read_request(reader: asyncio.StreamReader) -> Request | None:
    """Read one request; ``None`` when the peer closed cleanly between requests."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial.strip():
            return None
        raise BadRequest("truncated request head") from None
    except asyncio.LimitOverrunError:
        raise BadRequest("request head too large") from None
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
        body = await _read_chunked(reader)
    else:
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError:
            raise BadRequest("bad Content-Length") from None
        if length < 0 or length > MAX_BODY_BYTES:
            raise BadRequest("bad Content-Length")
        body = await reader.readexactly(length) if length else b""
    return Request(method, target, version, headers, body)


_BAD_REQUEST = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Connection: close\r\n\r\n400 Bad Request"
)


async def serve_connection(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, handler: Handler
) -> None:
    """Serve requests on one connection until the peer leaves or asks to close."""
    try:
        first = True
        while True:
            try:
                timeout = READ_TIMEOUT if first else IDLE_TIMEOUT
                request = await asyncio.wait_for(read_request(reader), timeout)
            except BadRequest:
                writer.write(_BAD_REQUEST)
                await writer.drain()
                return
            except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                return
            if request is None:
                return
            first = False
            response = await handler(request)
            writer.write(encode_response(response, keep_alive=request.keep_alive))
            await writer.drain()
            if not request.keep_alive:
                return
    except (ConnectionError, OSError):
        return
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()
