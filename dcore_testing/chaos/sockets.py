"""The two sockets of a proxied connection, as asyncio buffered protocols.

A :class:`Side` is one socket. What it reads goes to the :class:`~.link.Link` it feeds
(``reads_into``) from the transport's callback, with no task in between; what a link
writes to it goes straight to its transport. Reading is paused for as long as any
reason holds: the connection is being set up, the link's first queue is full, or the
socket the link writes to cannot take more (its transport's write buffer is over the
high-water mark). That last one is the back-pressure of a plain relay; a stalled
toxic still back-pressures the socket through the queues.

One receive buffer is shared by all connections of a proxy: they run on one loop, and
a read is handed on before the next one starts. It is large, so a bulk transfer
through a link without toxics takes few reads; a link with toxics cuts what it
reads into chunks of the real server's 32 KiB, so toxics see the chunk sizes they
would see in Toxiproxy.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from .link import Link

CHUNK_SIZE: Final = 32 * 1024
"""Bytes per chunk on a link with toxics: the real server's read buffer size."""
READ_SIZE: Final = 1 << 20
"""Bytes per read: fewer, larger reads for bulk transfers."""


class ReadBuffers:
    """The receive buffer of the connections of one proxy (one event loop)."""

    def __init__(self) -> None:
        self.direct = memoryview(bytearray(READ_SIZE))

    def renew_direct(self) -> None:
        """A transport kept a view of the buffer to send later: read into a new one.

        (CPython 3.12+ queues a view of the unsent rest of a write; 3.11 copied it.)
        """
        self.direct = memoryview(bytearray(READ_SIZE))


class Side(asyncio.BufferedProtocol):
    """One socket of a proxied connection."""

    def __init__(
        self, buffers: ReadBuffers, on_connected: Callable[[Side], None] | None = None
    ) -> None:
        self.buffers = buffers
        self.transport: asyncio.Transport | None = None
        self.reads_into: Link | None = None
        self.writes_from: Link | None = None
        self.lost = False
        self._on_connected = on_connected
        self._pauses: set[str] = set()
        self._writable = asyncio.Event()
        self._writable.set()

    # reading ------------------------------------------------------------------
    def pause(self, reason: str) -> None:
        if not self._pauses and self.transport is not None:
            self.transport.pause_reading()
        self._pauses.add(reason)

    def resume(self, reason: str) -> None:
        if reason not in self._pauses:
            return
        self._pauses.discard(reason)
        if not self._pauses and self.transport is not None:
            self.transport.resume_reading()

    def attach(self, reads_into: Link, writes_from: Link) -> None:
        """Join the connection's links; reading starts once every pause is lifted."""
        self.reads_into = reads_into
        self.writes_from = writes_from
        if self.lost:
            reads_into.feed_eof()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.pause("setup")
        if self._on_connected is not None:
            self._on_connected(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.buffers.direct

    def buffer_updated(self, nbytes: int) -> None:
        # The transport calls this right after reading into get_buffer()'s buffer.
        if self.reads_into is not None:
            self.reads_into.feed(self.buffers.direct[:nbytes])

    def eof_received(self) -> bool:
        if self.reads_into is not None:
            self.reads_into.feed_eof()
        return True  # keep the socket open: the close travels through the link's toxics

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._writable.set()  # wake a writer, which then sees the transport closing
        if self.reads_into is not None:
            self.reads_into.feed_eof()

    # writing ------------------------------------------------------------------
    def pause_writing(self) -> None:
        self._writable.clear()
        if self.writes_from is not None:
            self.writes_from.source.pause("output")

    def resume_writing(self) -> None:
        self._writable.set()
        if self.writes_from is not None:
            self.writes_from.source.resume("output")

    async def drain(self) -> None:
        """Wait until the transport's write buffer is under its high-water mark."""
        await self._writable.wait()
